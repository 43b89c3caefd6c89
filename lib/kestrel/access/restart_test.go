package access

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/kestrel/outlog"
)

// hostEnd is the host's end of a channel whose host can be replaced, as
// when a guest's memory is saved and restored under a new VMM: the guest
// keeps its session, the old host neither reads nor writes again, and the
// new host dials the same byte stream.
type hostEnd struct {
	c   net.Conn
	mu  sync.Mutex
	cur *hostView
}

type hostView struct {
	e  *hostEnd
	pr *io.PipeReader
	pw *io.PipeWriter
}

func newHostEnd(c net.Conn) *hostEnd {
	e := &hostEnd{c: c}
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				e.mu.Lock()
				v := e.cur
				e.mu.Unlock()
				v.pw.Write(buf[:n])
			}
			if err != nil {
				return
			}
		}
	}()
	return e
}

// next replaces the host: the old view reads an error and its writes are
// dropped; the stream's bytes from now on go to the new view.
func (e *hostEnd) next() *hostView {
	v := &hostView{e: e}
	v.pr, v.pw = io.Pipe()
	e.mu.Lock()
	old := e.cur
	e.cur = v
	e.mu.Unlock()
	if old != nil {
		old.pw.CloseWithError(io.ErrClosedPipe)
	}
	return v
}

func (v *hostView) Read(p []byte) (int, error) { return v.pr.Read(p) }
func (v *hostView) Write(p []byte) (int, error) {
	v.e.mu.Lock()
	defer v.e.mu.Unlock()
	if v.e.cur != v {
		return len(p), nil // a replaced host writes nothing more
	}
	return v.e.c.Write(p)
}
func (v *hostView) Close() error { return v.pr.Close() }

// A guest whose host was replaced while it held a session (a guest
// restored from a snapshot: the saved VM's session lives on in its memory)
// answers the new host's handshake, which arrives into that session, at
// once — and the new session works, though the old one's log stream sent
// bytes to the new host before the guest's hello.
func TestServeConnAnswersAHostThatStartsOver(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := outlog.New(1 << 20)
	srv := New(Config{VM: "saved", Version: "test", Output: out})
	host, guest := socketpair(t)
	defer host.Close()
	served := make(chan error, 1)
	go func() { served <- srv.ServeConn(ctx, guest) }()
	end := newHostEnd(host)

	old, err := agentchan.Connect(ctx, end.next())
	if err != nil {
		t.Fatal(err)
	}
	logs, err := old.Call(ctx, agentchan.LogsRequest{Op: agentchan.OpLogs, From: -1}, &agentchan.Reply{})
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(out.Writer("stdout"), "before the snapshot\n")
	var rec agentchan.LogRecord
	if err := logs.ReadLine(&rec); err != nil {
		t.Fatal(err)
	}

	// The old host is gone; the guest's session and its log stream are
	// not. The workload writes: the old session sends it to whoever holds
	// the stream now.
	next := end.next()
	io.WriteString(out.Writer("stdout"), "after")
	t0 := time.Now()
	hctx, hcancel := context.WithTimeout(ctx, 10*time.Second)
	sess, err := agentchan.Connect(hctx, next)
	hcancel()
	if err != nil {
		t.Fatalf("the new host's handshake was not answered: %v", err)
	}
	defer sess.Close()
	t.Logf("the new session was up %v after the new host dialed", time.Since(t0).Round(time.Millisecond))
	if sess.Hello.VM != "saved" || sess.Hello.Agent != "kestrel" {
		t.Errorf("hello %+v", sess.Hello)
	}
	// The new session serves: its own log stream from the start.
	st, err := sess.Call(ctx, agentchan.LogsRequest{Op: agentchan.OpLogs, From: 0}, &agentchan.Reply{})
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	for got.Len() < len("before the snapshot\nafter") {
		if err := st.ReadLine(&rec); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, rec.N)
		if _, err := io.ReadFull(st, b); err != nil {
			t.Fatal(err)
		}
		got.Write(b)
	}
	if got.String() != "before the snapshot\nafter" {
		t.Errorf("the new session's logs: %q", got.String())
	}
	select {
	case err := <-served:
		t.Errorf("ServeConn returned (%v) while the new host's session is up", err)
	default:
	}
}
