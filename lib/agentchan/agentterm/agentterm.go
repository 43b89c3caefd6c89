// Package agentterm runs a command in a guest attached to the caller's
// standard streams, as `volar vms exec` and `volant-launch exec` do: with a
// TTY and a terminal on stdin, the terminal is put in raw mode for the
// command's life (every key, Ctrl-C included, goes to the guest), the
// guest's terminal gets the local size, and size changes follow.
//
// Without a TTY, the signals the caller receives (ForwardedSignals: Ctrl-C
// outside a terminal, a kill) go to the command in the guest as signals,
// and the command's own exit status comes back: 130 after SIGINT, or
// whatever it does when it traps the signal (Forward). The third SIGINT or
// SIGTERM gives up on a command that ignores them: the exec ends as a
// canceled one does (the guest hangs the command up, then kills it).
//
// It installs no signal handler: the caller passes SIGWINCH notifications
// in (signal.Notify(ch, syscall.SIGWINCH)), and the signals to forward
// (signal.Notify(ch, ForwardedSignals...)); ctx is the context those
// signals cancel (signal.NotifyContext), which ends the exec only until the
// command runs.
package agentterm

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/apierr"
)

// ForwardedSignals are the signals a command without a TTY receives when
// its client does.
var ForwardedSignals = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2}

// GiveUpAfter is the number of SIGINTs and SIGTERMs (together) after which
// a client stops forwarding them and ends the exec.
const GiveUpAfter = 3

// Options tune Exec.
type Options struct {
	// Winch receives a value whenever the local terminal's size changes.
	Winch <-chan os.Signal
	// Signals, without a TTY, receives the signals to forward to the
	// command (see Forward). Ignored with a TTY, where Ctrl-C is a key.
	Signals <-chan os.Signal
}

// Forward hands the signals arriving on sigs to a command run without a
// TTY. It returns the context to run the exec with, hooks to set as its
// ExecIO's Control and Started, and a function that releases it.
//
// Until the command runs, ctx's end (the signal that canceled it) ends the
// exec. From then on each signal on sigs is sent to the command's process
// group in the guest, and ctx's end is ignored except for its deadline;
// the GiveUpAfter-th SIGINT or SIGTERM ends the exec with CANCELED.
func Forward(ctx context.Context, sigs <-chan os.Signal) (context.Context, agentchan.ExecIO, func()) {
	ectx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	stopDeadline := context.CancelFunc(func() {})
	if d, ok := ctx.Deadline(); ok {
		ectx, stopDeadline = context.WithDeadline(ectx, d)
	}
	var started atomic.Bool
	unwatch := context.AfterFunc(ctx, func() {
		if !started.Load() {
			cancel(context.Cause(ctx))
		}
	})
	ctl := make(chan agentchan.Control, 1)
	done := make(chan struct{})
	go func() {
		n := 0
		for {
			var sig os.Signal
			select {
			case sig = <-sigs:
			case <-done:
				return
			}
			s, ok := sig.(syscall.Signal)
			if !ok || !started.Load() {
				continue // before the start, ctx ends the exec
			}
			if s == syscall.SIGINT || s == syscall.SIGTERM {
				if n++; n >= GiveUpAfter {
					cancel(apierr.New(apierr.Canceled, "gave up after %d signals: the command is hung up", n))
					continue
				}
			}
			select {
			case ctl <- agentchan.Control{Signal: unix.SignalName(s)}:
			case <-done:
				return
			}
		}
	}()
	hooks := agentchan.ExecIO{Control: ctl, Started: func(int) { started.Store(true) }}
	var once sync.Once
	return ectx, hooks, func() {
		once.Do(func() {
			close(done)
			unwatch()
			stopDeadline()
			cancel(nil)
		})
	}
}

// Exec runs req with stdin, stdout and stderr. req.Size is filled in from
// the local terminal when req.TTY and it is unset.
func Exec(ctx context.Context, sess *agentchan.Session, req agentchan.ExecRequest, stdin io.Reader, stdout, stderr io.Writer, o Options) (*agentchan.ExitStatus, error) {
	var restore func()
	fd := -1
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fd = int(f.Fd())
	}
	size := func() *agentchan.Size {
		for _, s := range []any{stdin, stdout} {
			if f, ok := s.(*os.File); ok {
				if w, h, err := term.GetSize(int(f.Fd())); err == nil && w > 0 && h > 0 {
					return &agentchan.Size{Rows: uint16(h), Cols: uint16(w)}
				}
			}
		}
		return nil
	}
	ctl := make(chan agentchan.Control, 1)
	if req.TTY {
		if req.Size == nil {
			req.Size = size()
		}
		if fd >= 0 && req.Stdin {
			state, err := term.MakeRaw(fd)
			if err != nil {
				return nil, fmt.Errorf("putting the terminal in raw mode: %w", err)
			}
			var once sync.Once
			restore = func() { once.Do(func() { _ = term.Restore(fd, state) }) }
			defer restore()
		}
		if o.Winch != nil {
			done := make(chan struct{})
			defer close(done)
			go func() {
				for {
					select {
					case <-o.Winch:
						if sz := size(); sz != nil {
							select {
							case ctl <- agentchan.Control{Resize: sz}:
							default:
							}
						}
					case <-done:
						return
					}
				}
			}()
		}
	}
	eio := agentchan.ExecIO{Stdout: stdout, Stderr: stderr, Control: ctl}
	if !req.TTY && o.Signals != nil {
		var hooks agentchan.ExecIO
		var stop func()
		ctx, hooks, stop = Forward(ctx, o.Signals)
		defer stop()
		eio.Control, eio.Started = hooks.Control, hooks.Started
	}
	if req.Stdin {
		eio.Stdin = stdin
	}
	return sess.Exec(ctx, req, eio)
}
