package volar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"

	"github.com/volantvm/volant/lib/apierr"
)

// DefaultEscape is the console's detach key: Ctrl-], as in telnet.
const DefaultEscape byte = 0x1d

// ParseEscape reads a --escape value: "^]" or "ctrl-]" style (a caret or
// ctrl- and one character of @, A-Z, [, \, ], ^, _), or "none" for no
// detach key.
func ParseEscape(s string) (key byte, ok bool, err error) {
	switch strings.ToLower(s) {
	case "":
		return DefaultEscape, true, nil
	case "none":
		return 0, false, nil
	}
	rest, found := strings.CutPrefix(s, "^")
	if !found {
		rest, found = strings.CutPrefix(strings.ToLower(s), "ctrl-")
	}
	if found && len(rest) == 1 {
		c := rest[0]
		if c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		if c >= '@' && c <= '_' {
			return c - '@', true, nil
		}
	}
	return 0, false, apierr.New(apierr.Usage, "escape key %q: use ^X (a control character such as ^] or ^A) or none", s)
}

// EscapeName renders a detach key as "^]".
func EscapeName(key byte) string { return "^" + string(rune(key+'@')) }

// ConsoleOptions tune Console.
type ConsoleOptions struct {
	// Name is the VM, for the messages.
	Name string
	// Escape is the detach key; NoEscape disables it.
	Escape   byte
	NoEscape bool
	// Quiet leaves out the connect and detach messages.
	Quiet bool
	// Linger is how long the console keeps printing the guest's output
	// after stdin ended when stdin is not a terminal (default 1 s of
	// silence from the guest; at most 10 times that).
	Linger time.Duration
}

// Console connects the terminal to a VM's console stream conn until the
// detach key is typed, the stream ends (the VM stopped, the daemon went
// away), ctx ends, or, when stdin is not a terminal, stdin ends and the
// guest falls silent. It closes conn.
//
// When stdin is a terminal it is put in raw mode, so every key (Ctrl-C
// included) goes to the guest; the terminal is restored on every way out:
// detach, end of stream, error, ctx (the caller's signals), and panic. Messages
// go to stderr, with "\r\n" while the terminal is raw.
func Console(ctx context.Context, conn io.ReadWriteCloser, stdin io.Reader, stdout, stderr io.Writer, o ConsoleOptions) (err error) {
	if o.Escape == 0 && !o.NoEscape {
		o.Escape = DefaultEscape
	}
	if o.Linger <= 0 {
		o.Linger = time.Second
	}
	var restore func()
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		state, err := term.MakeRaw(int(f.Fd()))
		if err != nil {
			conn.Close()
			return fmt.Errorf("putting the terminal in raw mode: %w", err)
		}
		var once sync.Once
		restore = func() { once.Do(func() { _ = term.Restore(int(f.Fd()), state) }) }
		defer restore()
	}
	nl := "\n"
	if restore != nil {
		nl = "\r\n"
	}
	say := func(format string, args ...any) {
		if !o.Quiet {
			fmt.Fprintf(stderr, format+nl, args...)
		}
	}
	if o.NoEscape {
		say("Connected to the console of VM %s.", o.Name)
	} else {
		say("Connected to the console of VM %s. Type %s to detach.", o.Name, EscapeName(o.Escape))
	}

	// Signals (SIGTERM, SIGHUP) are the caller's: they end ctx.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	type ending struct {
		why string
		err error
	}
	end := make(chan ending, 3)
	lastOut := make(chan struct{}, 1) // a tick per chunk of guest output

	// Guest → terminal.
	outDone := make(chan struct{})
	go func() {
		defer close(outDone)
		buf := make([]byte, 32<<10)
		for {
			n, rerr := conn.Read(buf)
			if n > 0 {
				if _, werr := stdout.Write(buf[:n]); werr != nil {
					end <- ending{"stdout", werr}
					return
				}
				if fl, ok := stdout.(interface{ Flush() error }); ok {
					_ = fl.Flush()
				}
				select {
				case lastOut <- struct{}{}:
				default:
				}
			}
			if rerr != nil {
				end <- ending{"closed", nil}
				return
			}
		}
	}()

	// Terminal → guest, watching for the detach key.
	go func() {
		buf := make([]byte, 4096)
		for {
			n, rerr := stdin.Read(buf)
			if n > 0 {
				chunk := buf[:n]
				detach := false
				if !o.NoEscape {
					if i := indexByte(chunk, o.Escape); i >= 0 {
						chunk, detach = chunk[:i], true
					}
				}
				if len(chunk) > 0 {
					if _, werr := conn.Write(chunk); werr != nil {
						end <- ending{"closed", nil}
						return
					}
				}
				if detach {
					end <- ending{"detached", nil}
					return
				}
			}
			if rerr != nil {
				if errors.Is(rerr, io.EOF) {
					end <- ending{"eof", nil}
				} else {
					end <- ending{"stdin", rerr}
				}
				return
			}
		}
	}()

	var e ending
	select {
	case e = <-end:
	case <-ctx.Done():
		e = ending{"canceled", nil}
	}
	if e.why == "eof" {
		// Scripted input: let the guest answer what was sent, until it
		// has been quiet for Linger (or 10 × Linger in all).
		deadline := time.After(10 * o.Linger)
	linger:
		for {
			select {
			case <-lastOut:
			case <-time.After(o.Linger):
				break linger
			case <-deadline:
				break linger
			case e2 := <-end:
				if e2.why == "closed" {
					break linger
				}
			case <-ctx.Done():
				break linger
			}
		}
	}
	conn.Close()
	// Nothing of the guest's may be printed after the session ended.
	select {
	case <-outDone:
	case <-time.After(time.Second):
	}
	if restore != nil {
		restore()
		nl = "\n"
	}
	switch e.why {
	case "detached":
		say("\nDetached from the console of VM %s.", o.Name)
	case "closed":
		say("\nThe console of VM %s closed (the VM stopped, or volantd ended the session).", o.Name)
	case "stdout", "stdin":
		return fmt.Errorf("console of VM %s: %s: %w", o.Name, e.why, e.err)
	}
	return nil
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}
