package console

import (
	"fmt"
	"io"
	"sync"
)

// Async copies to a slow writer (a serial console runs at about 11 KB/s)
// without ever blocking the writer: it buffers up to max bytes, drops what
// does not fit, and notes the loss in the output. The workload's output goes
// through it, so a chatty workload is never throttled by the console; the
// complete recent output is in the log ring anyway.
type Async struct {
	w   io.Writer
	max int

	mu      sync.Mutex
	buf     []byte
	dropped int64
	closed  bool
	wake    chan struct{}
	done    chan struct{}
}

// NewAsync starts a copier to w buffering at most max bytes.
func NewAsync(w io.Writer, max int) *Async {
	a := &Async{w: w, max: max, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go a.run()
	return a
}

// Write queues p; it never blocks on the console and never fails.
func (a *Async) Write(p []byte) (int, error) {
	a.mu.Lock()
	room := a.max - len(a.buf)
	switch {
	case a.closed:
	case len(p) <= room:
		a.buf = append(a.buf, p...)
	default:
		if room > 0 {
			a.buf = append(a.buf, p[:room]...)
		}
		a.dropped += int64(len(p) - max(room, 0))
	}
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (a *Async) run() {
	defer close(a.done)
	for {
		a.mu.Lock()
		buf, dropped, closed := a.buf, a.dropped, a.closed
		a.buf, a.dropped = nil, 0
		a.mu.Unlock()
		if len(buf) > 0 {
			_, _ = a.w.Write(buf)
		}
		if dropped > 0 {
			fmt.Fprintf(a.w, "\nkestrel: console too slow: %d bytes of workload output not shown here (GET /v1/logs has them)\n", dropped)
		}
		if len(buf) > 0 || dropped > 0 {
			continue
		}
		if closed {
			return
		}
		<-a.wake
	}
}

// Close writes out what is buffered and stops the copier.
func (a *Async) Close() {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
	<-a.done
}
