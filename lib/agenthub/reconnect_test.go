package agenthub_test

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/agenthub"
)

// fakeChannel is a VMM's end of the agent channel: its socket is missing
// for the first `missing` dials (the VMM is starting), the next `mute`
// connections reach a guest that never answers (a restored guest still
// holding the saved session, as an older kestrel does), the rest a guest
// that answers.
type fakeChannel struct {
	missing, mute int

	mu    sync.Mutex
	dials []time.Time
}

func (f *fakeChannel) dial(ctx context.Context) (io.ReadWriteCloser, error) {
	f.mu.Lock()
	f.dials = append(f.dials, time.Now())
	n := len(f.dials)
	f.mu.Unlock()
	if n <= f.missing {
		return nil, &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.ENOENT)}
	}
	host, guest := net.Pipe()
	if n <= f.missing+f.mute {
		go io.Copy(io.Discard, guest)
		return host, nil
	}
	go func() {
		g, err := agentchan.Accept(guest, agentchan.Hello{Agent: "fake", VM: "vm"})
		if err != nil {
			return
		}
		agentchan.Serve(g.Session, func(*agentchan.Stream) {})
	}()
	return host, nil
}

// waitDials waits until the channel was dialed n times and returns when
// the n-th dial was.
func (f *fakeChannel) waitDials(t *testing.T, n int) time.Time {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		f.mu.Lock()
		if len(f.dials) >= n {
			at := f.dials[n-1]
			f.mu.Unlock()
			return at
		}
		f.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("the channel was not dialed %d times", n)
	return time.Time{}
}

func startHub(t *testing.T, f *fakeChannel) *agenthub.Hub {
	t.Helper()
	h, err := agenthub.Start(context.Background(), agenthub.Options{VM: "vm", Dial: f.dial,
		Socket: filepath.Join(t.TempDir(), "agent.sock"), GuestWait: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// Six dials find no socket, so the hub's pause before the seventh has
// grown to 1.6 s. Wake (the VMM answers: its socket is there) starts the
// seventh at once, and the session is up.
func TestWakeDialsWithoutThePause(t *testing.T) {
	f := &fakeChannel{missing: 6}
	h := startHub(t, f)
	f.waitDials(t, 6)
	time.Sleep(50 * time.Millisecond) // the sixth failed and its pause began
	woke := time.Now()
	h.Wake()
	at := f.waitDials(t, 7)
	if d := at.Sub(woke); d > 800*time.Millisecond {
		t.Errorf("the dial after Wake came %v later; the pause it skips is 1.6 s", d.Round(time.Millisecond))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := h.Session(ctx); err != nil {
		t.Fatal(err)
	}
}

// A connection whose guest does not answer is dropped by Redial and the
// next dial starts once the channel was closed for RedialGap, whatever
// pause the failed dials before it had reached; the guest answers that
// one.
func TestRedialDialsAgainAfterTheGap(t *testing.T) {
	f := &fakeChannel{missing: 6, mute: 1}
	h := startHub(t, f)
	f.waitDials(t, 7) // the mute guest, after pauses of 50 ms to 1.6 s
	time.Sleep(50 * time.Millisecond)
	redialed := time.Now()
	h.Redial()
	at := f.waitDials(t, 8)
	if d := at.Sub(redialed); d < agenthub.RedialGap || d > agenthub.RedialGap+time.Second {
		t.Errorf("the dial after Redial came %v later; want the gap of %v and not the hub's pause of 2 s", d.Round(time.Millisecond), agenthub.RedialGap)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := h.Session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if sess.Hello.Agent != "fake" {
		t.Errorf("hello %+v", sess.Hello)
	}
}
