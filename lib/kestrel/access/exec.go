package access

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/kestrel/reaper"
	"github.com/volantvm/volant/lib/kestrel/supervisor"
)

// DrainWait bounds how long an exit waits for output still in the pipes
// (or terminal): processes the command left behind may hold them open.
const DrainWait = time.Second

// execState joins an exec's control stream with its attach streams, which
// may arrive in any order.
type execState struct {
	id       string
	claimed  bool                 // the exec request arrived
	ended    bool                 // the exec is over (or failed)
	streams  [3]*agentchan.Stream // by fd
	attached chan struct{}        // one token per attach
	done     chan struct{}        // closed when the exec is over
}

func (s *Server) state(id string) *execState {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.pending[id]
	if st == nil {
		st = &execState{id: id, attached: make(chan struct{}, 3), done: make(chan struct{})}
		s.pending[id] = st
	}
	return st
}

// forget ends an exec's state. It stays known (as ended) for AttachWait,
// so attach streams that arrive after their exec failed end at once.
func (s *Server) forget(st *execState) {
	s.mu.Lock()
	st.ended = true
	s.mu.Unlock()
	time.AfterFunc(s.cfg.AttachWait, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.pending[st.id] == st {
			delete(s.pending, st.id)
		}
	})
}

func validID(id string) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// attach registers a standard stream of an exec and holds it until the
// exec is over (the stream is closed when this handler returns).
func (s *Server) attach(ctx context.Context, stream *agentchan.Stream, req agentchan.AttachRequest) {
	if !validID(req.ID) || req.FD < 0 || req.FD > 2 {
		stream.WriteLine(agentchan.ErrorReply(apierr.New(apierr.InvalidInput, "attach: bad exec id %q or fd %d", req.ID, req.FD)))
		return
	}
	st := s.state(req.ID)
	s.mu.Lock()
	ended, taken := st.ended, st.streams[req.FD] != nil
	if !taken && !ended {
		st.streams[req.FD] = stream
	}
	s.mu.Unlock()
	if ended {
		stream.WriteLine(agentchan.ErrorReply(apierr.New(apierr.Conflict, "exec %s has ended", req.ID)))
		return
	}
	if taken {
		stream.WriteLine(agentchan.ErrorReply(apierr.New(apierr.Conflict, "exec %s already has fd %d attached", req.ID, req.FD)))
		return
	}
	if err := stream.WriteLine(agentchan.Reply{OK: true}); err != nil {
		return
	}
	st.attached <- struct{}{}
	t := time.NewTimer(s.cfg.AttachWait)
	defer t.Stop()
	select {
	case <-st.done:
	case <-t.C:
		s.mu.Lock()
		orphan := !st.claimed
		s.mu.Unlock()
		if orphan {
			// No exec request came for this stream.
			s.forget(st)
			return
		}
		<-st.done
	}
}

// exec runs one command for the host.
func (s *Server) exec(ctx context.Context, ctl *agentchan.Stream, req agentchan.ExecRequest) {
	fail := func(err error) { ctl.WriteLine(agentchan.ExecReply{Reply: agentchan.ErrorReply(err)}) }
	if !validID(req.ID) {
		fail(apierr.New(apierr.InvalidInput, "exec: bad id %q", req.ID))
		return
	}
	if len(req.Argv) == 0 || req.Argv[0] == "" {
		fail(apierr.New(apierr.InvalidInput, "exec: no command given"))
		return
	}
	st := s.state(req.ID)
	s.mu.Lock()
	dup := st.claimed
	st.claimed = true
	s.mu.Unlock()
	if dup {
		fail(apierr.New(apierr.Conflict, "exec %s is already running", req.ID))
		return
	}
	defer s.forget(st)
	defer close(st.done)

	p, err := s.prepare(req)
	if err != nil {
		fail(err)
		return
	}
	need := 2
	if !req.TTY {
		need++
	}
	if !req.Stdin {
		need--
	}
	t := time.NewTimer(s.cfg.AttachWait)
	for got := 0; got < need; {
		select {
		case <-st.attached:
			got++
		case <-t.C:
			fail(apierr.New(apierr.Timeout, "exec %s: its streams did not arrive within %s", req.ID, s.cfg.AttachWait))
			return
		case <-ctx.Done():
			fail(apierr.From(ctx.Err()))
			return
		}
	}
	t.Stop()
	s.mu.Lock()
	streams := st.streams
	s.mu.Unlock()
	if streams[1] == nil || (!req.TTY && streams[2] == nil) || (req.Stdin && streams[0] == nil) {
		fail(apierr.New(apierr.InvalidInput, "exec %s: the attached streams do not match the request (tty %v, stdin %v)", req.ID, req.TTY, req.Stdin))
		return
	}

	proc, err := s.start(p, req)
	if err != nil {
		fail(err)
		return
	}
	s.mu.Lock()
	s.running++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.running--
		s.mu.Unlock()
	}()
	s.log.Debug("exec started", "id", req.ID, "pid", proc.pid, "argv", strings.Join(req.Argv, " "), "tty", req.TTY)
	ctl.WriteLine(agentchan.ExecReply{Reply: agentchan.Reply{OK: true}, PID: proc.pid})

	// Output: pipes (or the terminal) to the attach streams.
	drained := make(chan struct{}, 2)
	outputs := 0
	for fd, r := range proc.outs {
		if r == nil {
			continue
		}
		outputs++
		go func() {
			io.Copy(streams[fd].Conn, r)
			streams[fd].CloseWrite()
			drained <- struct{}{}
		}()
	}
	if proc.in != nil {
		go func() {
			io.Copy(proc.in, streams[0])
			if !req.TTY {
				proc.in.Close()
			}
		}()
	}
	// Control: resizes and signals until the host closes the stream,
	// which means it is gone.
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		for {
			var c agentchan.Control
			if err := ctl.ReadLine(&c); err != nil {
				return
			}
			if c.Resize != nil && proc.tty != nil {
				setSize(proc.tty, *c.Resize)
			}
			if c.Signal != "" {
				if sig, err := parseSignal(c.Signal); err == nil {
					proc.signal(sig)
				} else {
					s.log.Debug("exec: ignoring a bad signal", "id", req.ID, "signal", c.Signal)
				}
			}
		}
	}()

	var exit reaper.Exit
	select {
	case exit = <-proc.exit:
	case <-gone:
		exit = s.hangup(proc)
	case <-ctx.Done():
		exit = s.hangup(proc)
	}
	// Wait for the output to drain, a bounded time.
	deadline := time.NewTimer(DrainWait)
	for got := 0; got < outputs; got++ {
		select {
		case <-drained:
		case <-deadline.C:
			proc.closeOutputs() // background processes hold them open
			got--
			deadline.Reset(time.Hour)
		}
	}
	deadline.Stop()
	proc.close()
	status := agentchan.ExitStatus{Code: exit.Code()}
	if sig := exit.Signal(); sig != 0 {
		status.Code = 128 + int(sig)
		status.Signal = unix.SignalName(sig)
	}
	s.log.Debug("exec ended", "id", req.ID, "pid", proc.pid, "status", exit.String())
	ctl.WriteLine(agentchan.Control{Exit: &status})
}

// hangup ends a process whose client went away: SIGHUP to its session,
// then after HangupGrace SIGKILL to every process still in it.
func (s *Server) hangup(proc *process) reaper.Exit {
	s.log.Debug("exec: client gone, hanging up", "pid", proc.pid)
	_ = unix.Kill(-proc.pid, unix.SIGHUP)
	if proc.tty != nil {
		proc.tty.Close() // the terminal hangs up too
	}
	t := time.NewTimer(agentchan.HangupGrace)
	defer t.Stop()
	var exit reaper.Exit
	select {
	case exit = <-proc.exit:
	case <-t.C:
		killSession(proc.pid)
		exit = <-proc.exit
	}
	killSession(proc.pid) // what it left behind
	return exit
}

// killSession sends SIGKILL to every process in session sid.
func killSession(sid int) {
	_ = unix.Kill(-sid, unix.SIGKILL)
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == sid || pid == 1 {
			continue
		}
		if s, err := unix.Getsid(pid); err == nil && s == sid {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	}
}

// prepared is an exec's resolved program, environment and credentials.
type prepared struct {
	path string
	env  []string
	dir  string
	cred *syscall.Credential
}

func (s *Server) prepare(req agentchan.ExecRequest) (prepared, error) {
	var p prepared
	base, wdir := s.cfg.WorkloadEnv()
	home := "/root"
	if req.User != "" {
		c, err := supervisor.ParseUser(req.User)
		if err != nil {
			return p, apierr.New(apierr.InvalidInput, "exec: %v", err)
		}
		p.cred = c
		if c.Uid != 0 {
			home = "/"
		}
	}
	env := map[string]string{"PATH": supervisor.DefaultPath, "HOME": home}
	for _, kv := range base {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	if req.TTY && env["TERM"] == "" {
		env["TERM"] = "xterm"
	}
	for _, kv := range req.Env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return p, apierr.New(apierr.InvalidInput, "exec: environment entry %q is not KEY=VALUE", kv)
		}
		env[k] = v
	}
	for k, v := range env {
		p.env = append(p.env, k+"="+v)
	}
	sort.Strings(p.env)
	p.dir = req.Dir
	if p.dir == "" {
		p.dir = wdir
	}
	if p.dir == "" {
		p.dir = "/"
	}
	if st, err := os.Stat(p.dir); err != nil || !st.IsDir() {
		return p, apierr.New(apierr.NotFound, "exec: working directory %s does not exist", p.dir).With("dir", p.dir)
	}
	path, err := supervisor.LookPath(req.Argv[0], p.env)
	if err != nil {
		return p, apierr.New(apierr.NotFound, "exec: %s: command not found", req.Argv[0]).
			With("reason", "not_found").With("command", req.Argv[0])
	}
	st, err := os.Stat(path)
	switch {
	case err != nil:
		return p, apierr.New(apierr.NotFound, "exec: %s: command not found", path).With("reason", "not_found").With("command", req.Argv[0])
	case st.IsDir() || st.Mode()&0o111 == 0:
		return p, apierr.New(apierr.PermissionDenied, "exec: %s: not an executable file", path).With("reason", "not_executable").With("command", req.Argv[0])
	}
	p.path = path
	return p, nil
}

// process is a started exec.
type process struct {
	pid  int
	exit <-chan reaper.Exit
	in   io.WriteCloser // stdin pipe or the terminal; nil without stdin
	outs [3]*os.File    // read ends by fd (1, 2); the terminal at 1 with a TTY
	tty  *os.File       // the terminal's master side
}

func (p *process) signal(sig unix.Signal) {
	if p.tty != nil {
		// To the terminal's foreground job, as a keypress would.
		pgrp := 0
		control(p.tty, func(fd int) { pgrp, _ = unix.IoctlGetInt(fd, unix.TIOCGPGRP) })
		if pgrp > 0 {
			_ = unix.Kill(-pgrp, sig)
			return
		}
	}
	// To the command's process group (it leads its own session), as a
	// terminal's Ctrl-C would: `sh -c 'a | b'` ends with its pipeline
	// rather than leaving it to hold the output open.
	if unix.Kill(-p.pid, sig) != nil {
		_ = unix.Kill(p.pid, sig)
	}
}

func (p *process) closeOutputs() {
	for _, f := range p.outs {
		if f != nil {
			f.Close()
		}
	}
}

func (p *process) close() {
	p.closeOutputs()
	if p.in != nil {
		p.in.Close()
	}
	if p.tty != nil {
		p.tty.Close()
	}
}

// start forks the command in a new session: with a terminal (its
// controlling terminal) or with pipes.
func (s *Server) start(p prepared, req agentchan.ExecRequest) (*process, error) {
	var child []*os.File // the child's ends, closed here after the fork
	defer func() {
		for _, f := range child {
			f.Close()
		}
	}()
	proc := &process{}
	sys := &syscall.SysProcAttr{Setsid: true, Credential: p.cred}
	var files []uintptr
	if req.TTY {
		master, slave, err := openPTY()
		if err != nil {
			return nil, fmt.Errorf("exec: allocating a terminal: %w", err)
		}
		child = append(child, slave)
		if req.Size != nil {
			setSize(master, *req.Size)
		}
		proc.tty, proc.outs[1] = master, master
		if req.Stdin {
			proc.in = nopCloser{master}
		}
		files = []uintptr{slave.Fd(), slave.Fd(), slave.Fd()}
		sys.Setctty, sys.Ctty = true, 0
	} else {
		stdin, err := os.Open(os.DevNull)
		if err != nil {
			return nil, err
		}
		if req.Stdin {
			stdin.Close()
			r, w, err := os.Pipe()
			if err != nil {
				return nil, err
			}
			stdin, proc.in = r, w
		}
		child = append(child, stdin)
		files = []uintptr{stdin.Fd()}
		for fd := 1; fd <= 2; fd++ {
			r, w, err := os.Pipe()
			if err != nil {
				proc.close()
				return nil, err
			}
			proc.outs[fd] = r
			child = append(child, w)
			files = append(files, w.Fd())
		}
	}
	attr := &syscall.ProcAttr{Dir: p.dir, Env: p.env, Files: files, Sys: sys}
	pid, exit, err := s.cfg.Reaper.Start(func() (int, error) {
		return syscall.ForkExec(p.path, req.Argv, attr)
	})
	if err != nil {
		proc.close()
		switch {
		case errors.Is(err, unix.ENOENT):
			return nil, apierr.New(apierr.NotFound, "exec: %s: command not found", p.path).With("reason", "not_found").With("command", req.Argv[0])
		case errors.Is(err, unix.EACCES), errors.Is(err, unix.ENOEXEC), errors.Is(err, unix.EPERM):
			return nil, apierr.New(apierr.PermissionDenied, "exec: %s: %v", p.path, err).With("reason", "not_executable").With("command", req.Argv[0])
		}
		return nil, fmt.Errorf("exec: starting %s: %w", p.path, err)
	}
	proc.pid, proc.exit = pid, exit
	return proc, nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// openPTY opens a new pseudo-terminal pair: the master side and the slave
// (the command's terminal).
func openPTY() (master, slave *os.File, err error) {
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, err
	}
	var n uint32
	control(m, func(fd int) {
		if err = unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
			err = fmt.Errorf("unlocking the terminal: %w", err)
			return
		}
		if n, err = unix.IoctlGetUint32(fd, unix.TIOCGPTN); err != nil {
			err = fmt.Errorf("naming the terminal: %w", err)
		}
	})
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.FormatUint(uint64(n), 10), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	return m, s, nil
}

// control runs fn on f's descriptor without File.Fd, which would switch
// f to blocking mode (and then Close could not end a pending read).
func control(f *os.File, fn func(fd int)) {
	if rc, err := f.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { fn(int(fd)) })
	}
}

func setSize(tty *os.File, sz agentchan.Size) {
	control(tty, func(fd int) {
		_ = unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Row: sz.Rows, Col: sz.Cols})
	})
}

// parseSignal accepts "TERM", "SIGTERM" or "15".
func parseSignal(s string) (unix.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil && n > 0 && n < 65 {
		return unix.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal %q", s)
}
