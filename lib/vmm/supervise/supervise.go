// Package supervise runs a VMM process, the same way for every backend.
//
// Start forks the VMM on a goroutine locked to its OS thread and keeps that
// thread until the VMM exits, because the kernel's parent-death signal
// (Pdeathsig, here SIGKILL) fires when the *thread* that forked exits, not
// the process: Go may retire a thread when a locked goroutine ends, and an
// unlocked fork could come from any thread. With the thread held, the VMM
// dies with its supervisor — kill -9 of `volant-launch run` leaves no
// orphan. The VMM gets its own process group, so a terminal's Ctrl-C reaches
// the supervisor (which stops the guest gracefully) and not the VMM.
//
// The VMM's stderr is copied to the caller's writer and its last lines kept,
// so an early exit ("could not open tap device") is reported with its cause.
// WaitReady polls a readiness probe (the VMM answering on its socket) while
// watching for the process to exit, and returns as soon as either happens.
//
// Processes are identified by pid + start time + boot ID (Identity), never a
// bare pid; another process acts on one through a pidfd opened and then
// verified against that identity (Handle). Stop escalates a graceful stop:
// ACPI power button, then hard stop, then SIGKILL.
package supervise

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/volantvm/volant/lib/vmm/jail"
)

// Options describe the process to start.
type Options struct {
	// Argv is the full command line; Argv[0] is the program.
	Argv []string
	// Env is the environment; nil inherits the caller's.
	Env []string
	// Dir is the working directory; "" inherits.
	Dir string
	// Stdout receives the process's stdout; nil discards it.
	Stdout io.Writer
	// Stderr receives a copy of the process's stderr; nil discards it (the
	// tail is kept either way).
	Stderr io.Writer
	// ExtraFiles are passed as fds 3, 4, ...
	ExtraFiles []*os.File
	// Jail, when set, confines the process (lib/vmm/jail): the thread that
	// forks it enters the jail first and is never used again.
	Jail *jail.Spec
}

// Process is a started VMM.
type Process struct {
	Identity
	done  chan struct{}
	state *os.ProcessState
	err   error
	proc  *os.Process
	tail  *tail
}

// Start starts the process. It returns once the process exists (exec
// succeeded or failed); use Done, Wait and WaitReady to follow it.
func Start(o Options) (*Process, error) {
	if len(o.Argv) == 0 {
		return nil, errors.New("supervise: empty argv")
	}
	cmd := exec.Command(o.Argv[0], o.Argv[1:]...)
	cmd.Env, cmd.Dir, cmd.ExtraFiles = o.Env, o.Dir, o.ExtraFiles
	cmd.Stdout = o.Stdout
	tl := &tail{max: 8 << 10}
	if o.Stderr != nil {
		cmd.Stderr = io.MultiWriter(o.Stderr, tl)
	} else {
		cmd.Stderr = tl
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Pdeathsig: syscall.SIGKILL,
		Setpgid:   true,
	}
	if cmd.Err != nil {
		return nil, fmt.Errorf("starting %s: %w", o.Argv[0], cmd.Err)
	}
	p := &Process{done: make(chan struct{}), tail: tl}
	started := make(chan error, 1)
	go func() {
		// Hold this OS thread for the child's whole life: Pdeathsig is tied
		// to the forking thread (see the package comment).
		runtime.LockOSThread()
		after := func() {}
		if o.Jail != nil {
			// The thread's namespace and root become the jail's: it must
			// never run another goroutine, so it is not unlocked and ends
			// with this goroutine.
			j := *o.Jail
			j.Binary = cmd.Path
			var err error
			if after, err = j.Enter(cmd.SysProcAttr); err != nil {
				started <- err
				return
			}
		} else {
			defer runtime.UnlockOSThread()
		}
		err := cmd.Start()
		after()
		if err != nil {
			started <- err
			return
		}
		p.proc = cmd.Process
		started <- nil
		err = cmd.Wait()
		p.state = cmd.ProcessState
		if err != nil && p.state != nil {
			err = nil // an exit status, reported through ExitError
		}
		p.err = err
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("starting %s: %w", o.Argv[0], err)
	}
	p.Pid = p.proc.Pid
	if id, err := Of(p.Pid); err == nil {
		p.Identity = id
	} else {
		// Exited already: keep the pid; Done will report it.
		p.Identity = Identity{Pid: p.Pid, BootID: bootID()}
	}
	return p, nil
}

// Done is closed when the process has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait blocks until the process exits and returns ExitError.
func (p *Process) Wait() error {
	<-p.done
	return p.ExitError()
}

// State is the exit state; nil while running.
func (p *Process) State() *os.ProcessState {
	select {
	case <-p.done:
		return p.state
	default:
		return nil
	}
}

// ExitError is nil for a clean exit (status 0), else an *ExitError with the
// status and the tail of stderr. It must only be called after Done.
func (p *Process) ExitError() error {
	if p.err != nil {
		return p.err
	}
	if p.state == nil || p.state.Success() {
		return nil
	}
	return &ExitError{State: p.state, Stderr: p.tail.String()}
}

// Stderr returns the last few KiB the process wrote to stderr.
func (p *Process) Stderr() string { return p.tail.String() }

// Signal sends sig to the process (not its group). After exit it is a no-op.
func (p *Process) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	// os.Process signals through its pidfd when it has one, so this cannot
	// reach a process that reused the pid.
	if err := p.proc.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signalling %s: %w", p.Identity, err)
	}
	return nil
}

// Kill sends SIGKILL.
func (p *Process) Kill() error { return p.Signal(syscall.SIGKILL) }

// ExitError is a process that exited unsuccessfully.
type ExitError struct {
	State  *os.ProcessState
	Stderr string
}

func (e *ExitError) Error() string {
	msg := "exited with " + e.State.String()
	if s := lastLines(e.Stderr, 5); s != "" {
		msg += ": " + s
	}
	return msg
}

// ErrExited is wrapped by WaitReady when the process exits before it is ready.
var ErrExited = errors.New("process exited before it was ready")

// WaitReady calls probe every interval until it succeeds, the process exits
// (an error wrapping ErrExited, with the exit status and stderr tail), or
// ctx is done (the last probe error is included).
func (p *Process) WaitReady(ctx context.Context, interval time.Duration, probe func(context.Context) error) error {
	if interval <= 0 {
		interval = 5 * time.Millisecond
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	var last error
	for {
		select {
		case <-p.done:
			err := p.ExitError()
			if err == nil {
				err = errors.New("exited with status 0")
			}
			return fmt.Errorf("%w: %w", ErrExited, err)
		default:
		}
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		last = probe(pctx)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready (last probe: %v): %w", last, ctx.Err())
		case <-p.done:
		case <-t.C:
		}
	}
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tail) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(b), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.TrimSpace(strings.Join(lines, " | "))
}
