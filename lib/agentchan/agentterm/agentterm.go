// Package agentterm runs a command in a guest attached to the caller's
// standard streams, as `volar vms exec` and `volant-launch exec` do: with a
// TTY and a terminal on stdin, the terminal is put in raw mode for the
// command's life (every key, Ctrl-C included, goes to the guest), the
// guest's terminal gets the local size, and size changes follow.
//
// It installs no signal handler: the caller passes SIGWINCH notifications
// in (signal.Notify(ch, syscall.SIGWINCH)) and owns SIGINT/SIGTERM through
// ctx.
package agentterm

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/term"

	"github.com/volantvm/volant/lib/agentchan"
)

// Options tune Exec.
type Options struct {
	// Winch receives a value whenever the local terminal's size changes.
	Winch <-chan os.Signal
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
	if req.Stdin {
		eio.Stdin = stdin
	}
	return sess.Exec(ctx, req, eio)
}
