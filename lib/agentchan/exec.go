package agentchan

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/volantvm/volant/lib/apierr"
)

// ExecIO are an exec's ends on the host. Stdout must be set; Stderr is
// ignored with a TTY; Stdin is read only when the request has Stdin.
type ExecIO struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Control carries resizes and signals to the guest while the
	// process runs (nil: none).
	Control <-chan Control
	// Started, when set, is called with the guest's pid once it runs.
	Started func(pid int)
}

// Exec runs req in the guest and returns how the process ended. req.ID is
// set when empty; req.Op is set. Output is copied until the guest closes
// the streams, which it does before it reports the exit. When ctx ends the
// exec's streams are closed (the guest hangs the process up and kills it)
// and Exec returns CANCELED or TIMEOUT.
//
// Errors are apierr errors: NOT_FOUND for a missing command (Details
// "reason": "not_found"), PERMISSION_DENIED for one that cannot be
// executed, UNAVAILABLE when the channel ends before the exit.
func (s *Session) Exec(ctx context.Context, req ExecRequest, eio ExecIO) (*ExitStatus, error) {
	if len(req.Argv) == 0 {
		return nil, apierr.New(apierr.InvalidInput, "exec: no command given")
	}
	if eio.Stdout == nil {
		eio.Stdout = io.Discard
	}
	if eio.Stderr == nil {
		eio.Stderr = io.Discard
	}
	req.Op = OpExec
	if req.ID == "" {
		req.ID = NewID()
	}
	if req.Stdin && eio.Stdin == nil {
		req.Stdin = false
	}
	// Open everything before reading anything: one round trip.
	ctl, err := s.Open(req)
	if err != nil {
		return nil, err
	}
	streams := []*Stream{ctl}
	closeAll := func() {
		for _, st := range streams {
			st.Conn.Close()
		}
	}
	attach := func(fd int) (*Stream, error) {
		st, err := s.Open(AttachRequest{Op: OpAttach, ID: req.ID, FD: fd})
		if err == nil {
			streams = append(streams, st)
		}
		return st, err
	}
	out, err := attach(1)
	if err != nil {
		closeAll()
		return nil, err
	}
	var errStream, in *Stream
	if !req.TTY {
		if errStream, err = attach(2); err != nil {
			closeAll()
			return nil, err
		}
	}
	if req.Stdin {
		if in, err = attach(0); err != nil {
			closeAll()
			return nil, err
		}
	}
	// A yamux Close is a half close that leaves reads waiting for the
	// guest: cancellation also ends them at once.
	stop := context.AfterFunc(ctx, func() {
		for _, st := range streams {
			st.Abort()
		}
	})
	defer stop()
	canceled := func() error {
		if ctx.Err() != nil {
			return apierr.From(context.Cause(ctx))
		}
		return nil
	}

	var rep ExecReply
	if err := ctl.ReadLine(&rep); err != nil {
		closeAll()
		if c := canceled(); c != nil {
			return nil, c
		}
		return nil, lost("before the command started", err)
	}
	if err := rep.Err(); err != nil {
		closeAll()
		return nil, err
	}
	if eio.Started != nil {
		eio.Started(rep.PID)
	}

	var wg sync.WaitGroup
	var copyErr error
	var mu sync.Mutex
	setErr := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if copyErr == nil {
			copyErr = err
		}
	}
	drain := func(st *Stream, w io.Writer) {
		defer wg.Done()
		var r Reply
		if err := st.ReadLine(&r); err != nil {
			setErr(lost("while attaching output", err))
			return
		}
		if err := r.Err(); err != nil {
			setErr(err)
			return
		}
		if _, err := io.Copy(w, st); err != nil && !isClosed(err) {
			setErr(fmt.Errorf("copying the command's output: %w", err))
		}
	}
	wg.Add(1)
	go drain(out, eio.Stdout)
	if errStream != nil {
		wg.Add(1)
		go drain(errStream, eio.Stderr)
	}
	if in != nil {
		// Not waited for: a read of the host's stdin cannot be
		// interrupted, and the exit does not wait for stdin.
		go func() {
			var r Reply
			go func() {
				if in.ReadLine(&r) == nil {
					io.Copy(io.Discard, in)
				}
			}()
			io.Copy(in, eio.Stdin)
			in.CloseWrite()
		}()
	}
	ctlDone := make(chan struct{})
	defer close(ctlDone)
	if eio.Control != nil {
		go func() {
			for {
				select {
				case c, ok := <-eio.Control:
					if !ok {
						return
					}
					c.Exit = nil
					if ctl.WriteLine(c) != nil {
						return
					}
				case <-ctlDone:
					return
				}
			}
		}()
	}

	var exit *ExitStatus
	var readErr error
	for {
		var c Control
		if err := ctl.ReadLine(&c); err != nil {
			readErr = err
			break
		}
		if c.Exit != nil {
			exit = c.Exit
			break
		}
	}
	wg.Wait()
	closeAll()
	if c := canceled(); c != nil {
		return nil, c
	}
	if exit == nil {
		return nil, lost("before the command's exit status arrived", readErr)
	}
	if copyErr != nil && !errors.Is(copyErr, io.EOF) {
		return exit, copyErr
	}
	return exit, nil
}

// CappedBuffer keeps the first Max bytes written to it and counts the
// rest, for callers that must bound what an exec returns (MCP, REST).
type CappedBuffer struct {
	Max       int
	buf       []byte
	Truncated int64
}

func (b *CappedBuffer) Write(p []byte) (int, error) {
	room := b.Max - len(b.buf)
	if room > 0 {
		n := min(room, len(p))
		b.buf = append(b.buf, p[:n]...)
		b.Truncated += int64(len(p) - n)
	} else {
		b.Truncated += int64(len(p))
	}
	return len(p), nil
}

// Bytes returns what was kept.
func (b *CappedBuffer) Bytes() []byte { return b.buf }

// String returns what was kept.
func (b *CappedBuffer) String() string { return string(b.buf) }

// RunResult is a command run to completion with its output captured: what
// `volant-launch exec` prints, volantd's non-interactive exec answers and
// the MCP exec_vm tool returns.
type RunResult struct {
	ExitCode int    `json:"exit_code"`
	Signal   string `json:"signal,omitempty"`
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	// StdoutTruncated and StderrTruncated count bytes left out past the
	// output cap.
	StdoutTruncated int64 `json:"stdout_truncated,omitempty"`
	StderrTruncated int64 `json:"stderr_truncated,omitempty"`
	DurationMS      int64 `json:"duration_ms"`
}

// DefaultOutputCap bounds each stream Run keeps.
const DefaultOutputCap = 1 << 20

// Run runs req (without a TTY) with stdin as its input, keeping at most
// maxOutput bytes of each stream (DefaultOutputCap if 0). When ctx ends
// first, the result so far is returned with the error (TIMEOUT or
// CANCELED).
func (s *Session) Run(ctx context.Context, req ExecRequest, stdin []byte, maxOutput int) (*RunResult, error) {
	return s.RunWith(ctx, req, stdin, maxOutput, ExecIO{})
}

// RunWith is Run with hooks' Control and Started (its streams are Run's
// own): signals forwarded to the command, for one.
func (s *Session) RunWith(ctx context.Context, req ExecRequest, stdin []byte, maxOutput int, hooks ExecIO) (*RunResult, error) {
	if maxOutput <= 0 {
		maxOutput = DefaultOutputCap
	}
	req.TTY = false
	req.Stdin = stdin != nil
	out, errb := &lockedCap{c: CappedBuffer{Max: maxOutput}}, &lockedCap{c: CappedBuffer{Max: maxOutput}}
	eio := ExecIO{Stdout: out, Stderr: errb, Control: hooks.Control, Started: hooks.Started}
	if stdin != nil {
		eio.Stdin = bytes.NewReader(stdin)
	}
	t0 := time.Now()
	exit, err := s.Exec(ctx, req, eio)
	res := &RunResult{DurationMS: time.Since(t0).Milliseconds()}
	res.Stdout, res.StdoutTruncated = out.get()
	res.Stderr, res.StderrTruncated = errb.get()
	if exit != nil {
		res.ExitCode, res.Signal = exit.Code, exit.Signal
	}
	if err != nil && exit == nil {
		res.ExitCode = -1
	}
	return res, err
}

type lockedCap struct {
	mu sync.Mutex
	c  CappedBuffer
}

func (l *lockedCap) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.c.Write(p)
}

func (l *lockedCap) get() (string, int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.c.String(), l.c.Truncated
}
