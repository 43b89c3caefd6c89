// Package supervisor runs the workload: one process in its own process
// group, stdout and stderr to kestrel's console, log ring and per-stream
// output store (each stream through its own pipe), restarted
// according to a Policy, stopped gracefully (SIGTERM to the group, a grace
// period, SIGKILL). Its state is an agentapi.WorkloadStatus.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/kestrel/reaper"
	"github.com/volantvm/volant/lib/manifest"
)

// DefaultPath is the workload's PATH unless its manifest sets one.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// DefaultStopGrace is how long a stopping workload has between SIGTERM and
// SIGKILL.
const DefaultStopGrace = 10 * time.Second

// Spec is what to run.
type Spec struct {
	Argv []string
	Env  []string // KEY=VALUE, complete (nothing is inherited from kestrel)
	Dir  string
	// Cred, when set, is the uid/gid to run as (supplementary groups dropped).
	Cred      *syscall.Credential
	Policy    Policy
	StopGrace time.Duration
}

// SpecFromManifest builds a Spec from a manifest's workload: PATH defaults
// to DefaultPath and HOME to /root for uid 0 (else /), the manifest's env
// wins over both; user "uid[:gid]" runs as that uid and gid (gid defaults to
// the uid, never silently to root's group).
func SpecFromManifest(w manifest.Workload) (Spec, error) {
	if len(w.Entrypoint) == 0 || w.Entrypoint[0] == "" {
		return Spec{}, errors.New("workload.entrypoint is empty")
	}
	mode, err := ParseRestart(w.Restart)
	if err != nil {
		return Spec{}, err
	}
	s := Spec{Argv: append([]string(nil), w.Entrypoint...), Dir: w.Workdir, Policy: DefaultPolicy(mode), StopGrace: DefaultStopGrace}
	if s.Dir == "" {
		s.Dir = "/"
	}
	home := "/root"
	if w.User != "" {
		c, err := parseUser(w.User)
		if err != nil {
			return Spec{}, err
		}
		s.Cred = c
		if c.Uid != 0 {
			home = "/"
		}
	}
	env := map[string]string{"PATH": DefaultPath, "HOME": home}
	for k, v := range w.Env {
		env[k] = v
	}
	for k, v := range env {
		s.Env = append(s.Env, k+"="+v)
	}
	sort.Strings(s.Env)
	return s, nil
}

// ParseUser parses "uid[:gid]" (gid defaults to the uid) into a credential
// with no supplementary groups.
func ParseUser(u string) (*syscall.Credential, error) { return parseUser(u) }

func parseUser(u string) (*syscall.Credential, error) {
	us, gs, hasGID := strings.Cut(u, ":")
	uid, err := strconv.ParseUint(us, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("workload.user %q: uid is not a number", u)
	}
	gid := uid
	if hasGID {
		if gid, err = strconv.ParseUint(gs, 10, 32); err != nil {
			return nil, fmt.Errorf("workload.user %q: gid is not a number", u)
		}
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}

func (s Spec) lookPath() (string, error) { return LookPath(s.Argv[0], s.Env) }

// LookPath finds name as a shell would in env's PATH (DefaultPath when env
// has none); a name with a slash is returned as it is.
func LookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	path := DefaultPath
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found in PATH %s", name, path)
}

// Output is where the workload's streams go. When Stdout and Stderr are
// the same writer both streams share one pipe, which keeps their order.
type Output struct {
	Stdout, Stderr io.Writer
}

// Supervisor runs one Spec.
type Supervisor struct {
	spec     Spec
	reaper   *reaper.Reaper
	out      Output
	log      *slog.Logger
	onChange func(agentapi.WorkloadStatus)

	mu     sync.Mutex
	status agentapi.WorkloadStatus
	pgid   int
}

// New returns a supervisor. out receives the workload's stdout and stderr
// (a nil writer discards); onChange (may be nil) is called after every
// state change with a copy of the status, never while holding a lock.
func New(spec Spec, r *reaper.Reaper, out Output, log *slog.Logger, onChange func(agentapi.WorkloadStatus)) *Supervisor {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if spec.StopGrace <= 0 {
		spec.StopGrace = DefaultStopGrace
	}
	if onChange == nil {
		onChange = func(agentapi.WorkloadStatus) {}
	}
	if out.Stdout == nil {
		out.Stdout = io.Discard
	}
	if out.Stderr == nil {
		out.Stderr = io.Discard
	}
	return &Supervisor{spec: spec, reaper: r, out: out, log: log, onChange: onChange,
		status: agentapi.WorkloadStatus{State: agentapi.WorkloadStarting}}
}

// Status returns a copy of the current status.
func (s *Supervisor) Status() agentapi.WorkloadStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

func (s *Supervisor) set(fn func(st *agentapi.WorkloadStatus)) {
	s.mu.Lock()
	fn(&s.status)
	st := s.status
	s.mu.Unlock()
	s.onChange(st)
}

// Run starts the workload and keeps it running per the policy. It returns
// when the workload has ended for good (exited, or failed: see Status), or,
// once ctx is done, after stopping it gracefully.
func (s *Supervisor) Run(ctx context.Context) {
	streak := 0
	for {
		if ctx.Err() != nil {
			s.set(func(st *agentapi.WorkloadStatus) { st.State = agentapi.WorkloadExited })
			return
		}
		start := time.Now()
		exit, drained, err := s.start()
		var ran time.Duration
		success := false
		if err != nil {
			s.log.Error("workload could not be started", "argv", strings.Join(s.spec.Argv, " "), "err", err)
			s.set(func(st *agentapi.WorkloadStatus) {
				st.PID, st.Error = 0, err.Error()
			})
		} else {
			var e reaper.Exit
			select {
			case e = <-exit:
			case <-ctx.Done():
				e = s.stop(exit)
				waitDrained(drained)
				s.finish(e, time.Since(start))
				s.set(func(st *agentapi.WorkloadStatus) { st.State = agentapi.WorkloadExited })
				return
			}
			ran = e.Time.Sub(start)
			success = e.Success()
			waitDrained(drained)
			s.finish(e, ran)
			// The leader is gone; whatever it left in its group goes too,
			// so a restart starts from a clean slate.
			_ = unix.Kill(-e.PID, unix.SIGKILL)
		}
		d := s.spec.Policy.Next(success, ran, streak)
		streak = d.Streak
		switch {
		case d.GiveUp:
			s.log.Error("workload keeps crashing; giving up", "crashes", streak-1, "restart", string(s.spec.Policy.Mode))
			s.set(func(st *agentapi.WorkloadStatus) {
				st.State = agentapi.WorkloadFailed
				st.Error = fmt.Sprintf("gave up after %d crashes in a row (each run shorter than %s)", streak-1, s.spec.Policy.Stable)
			})
			return
		case !d.Restart:
			state := agentapi.WorkloadExited
			if err != nil {
				state = agentapi.WorkloadFailed
			}
			s.log.Info("workload will not be restarted", "restart", string(s.spec.Policy.Mode))
			s.set(func(st *agentapi.WorkloadStatus) { st.State = state })
			return
		}
		s.log.Info("restarting workload", "in", d.Delay, "attempt", streak)
		s.set(func(st *agentapi.WorkloadStatus) { st.State = agentapi.WorkloadRestarting })
		t := time.NewTimer(d.Delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			s.set(func(st *agentapi.WorkloadStatus) { st.State = agentapi.WorkloadExited })
			return
		}
		s.set(func(st *agentapi.WorkloadStatus) {
			st.State = agentapi.WorkloadStarting
			st.Restarts++
		})
	}
}

// OutputDrainWait bounds how long an exit waits for the workload's last
// output: processes it left behind may hold the pipe open indefinitely.
const OutputDrainWait = time.Second

func waitDrained(drained <-chan struct{}) {
	t := time.NewTimer(OutputDrainWait)
	defer t.Stop()
	select {
	case <-drained:
	case <-t.C:
	}
}

func (s *Supervisor) finish(e reaper.Exit, ran time.Duration) {
	s.log.Info("workload exited", "pid", e.PID, "status", e.String(), "ran", ran.Round(time.Millisecond))
	s.set(func(st *agentapi.WorkloadStatus) {
		code := e.Code()
		st.PID, st.ExitCode, st.Signal, st.Error = 0, &code, "", ""
		if sig := e.Signal(); sig != 0 {
			st.Signal = unix.SignalName(sig)
		}
		if !e.Success() {
			st.Error = e.String()
		}
	})
	s.mu.Lock()
	s.pgid = 0
	s.mu.Unlock()
}

// start forks the workload. Its stdout and stderr are pipes (one pipe when
// Output's writers are the same, so their order is kept); a goroutine per
// pipe copies it to its writer until every holder of the write end (the
// workload and anything it spawned) has closed it, then drained is closed.
func (s *Supervisor) start() (exit <-chan reaper.Exit, drained <-chan struct{}, err error) {
	path, err := s.spec.lookPath()
	if err != nil {
		return nil, nil, err
	}
	if st, err := os.Stat(s.spec.Dir); err != nil || !st.IsDir() {
		return nil, nil, fmt.Errorf("workdir %s: not a directory", s.spec.Dir)
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, nil, fmt.Errorf("opening %s: %w", os.DevNull, err)
	}
	defer devnull.Close()
	type pipe struct {
		r, w *os.File
		to   io.Writer
	}
	var pipes []pipe
	closeAll := func(read bool) {
		for _, p := range pipes {
			p.w.Close()
			if read {
				p.r.Close()
			}
		}
	}
	for _, to := range []io.Writer{s.out.Stdout, s.out.Stderr} {
		if len(pipes) == 1 && to == s.out.Stdout {
			break // one pipe for both
		}
		pr, pw, err := os.Pipe()
		if err != nil {
			closeAll(true)
			return nil, nil, fmt.Errorf("creating output pipe: %w", err)
		}
		pipes = append(pipes, pipe{pr, pw, to})
	}
	stderr := pipes[len(pipes)-1].w
	attr := &syscall.ProcAttr{
		Dir:   s.spec.Dir,
		Env:   s.spec.Env,
		Files: []uintptr{devnull.Fd(), pipes[0].w.Fd(), stderr.Fd()},
		Sys:   &syscall.SysProcAttr{Setpgid: true, Credential: s.spec.Cred},
	}
	pid, exit, err := s.reaper.Start(func() (int, error) {
		return syscall.ForkExec(path, s.spec.Argv, attr)
	})
	closeAll(err != nil)
	if err != nil {
		return nil, nil, fmt.Errorf("starting %s: %w", path, err)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	for _, p := range pipes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer p.r.Close()
			_, _ = io.Copy(p.to, p.r)
		}()
	}
	go func() { wg.Wait(); close(done) }()
	now := time.Now()
	s.mu.Lock()
	s.pgid = pid
	s.mu.Unlock()
	s.log.Info("workload started", "pid", pid, "argv", strings.Join(s.spec.Argv, " "))
	s.set(func(st *agentapi.WorkloadStatus) {
		st.State, st.PID, st.StartedAt, st.Error = agentapi.WorkloadRunning, pid, &now, ""
	})
	return exit, done, nil
}

// stop sends SIGTERM to the workload's process group, waits up to the
// grace period, then sends SIGKILL, and returns the leader's exit.
func (s *Supervisor) stop(exit <-chan reaper.Exit) reaper.Exit {
	s.mu.Lock()
	pgid := s.pgid
	s.mu.Unlock()
	s.set(func(st *agentapi.WorkloadStatus) { st.State = agentapi.WorkloadStopping })
	s.log.Info("stopping workload", "pid", pgid, "grace", s.spec.StopGrace)
	_ = unix.Kill(-pgid, unix.SIGTERM)
	t := time.NewTimer(s.spec.StopGrace)
	defer t.Stop()
	select {
	case e := <-exit:
		_ = unix.Kill(-pgid, unix.SIGKILL)
		return e
	case <-t.C:
	}
	s.log.Warn("workload ignored SIGTERM; killing it", "pid", pgid, "grace", s.spec.StopGrace)
	_ = unix.Kill(-pgid, unix.SIGKILL)
	return <-exit
}
