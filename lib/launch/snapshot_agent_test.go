package launch

import (
	"context"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/agenthub"
)

// Snapshot's wait for the guest's agent returns once the agent answers
// through the supervisor's socket — not before its channel is up — and
// gives up after its bound when no agent ever answers.
func TestWaitGuestAgent(t *testing.T) {
	start := func(t *testing.T, upAfter time.Duration) string {
		runDir := t.TempDir()
		t0 := time.Now()
		var answered atomic.Bool
		dial := func(ctx context.Context) (io.ReadWriteCloser, error) {
			if upAfter < 0 || time.Since(t0) < upAfter {
				return nil, errors.New("no channel yet")
			}
			host, guest := net.Pipe()
			go func() {
				g, err := agentchan.Accept(guest, agentchan.Hello{Agent: "fake"})
				if err != nil {
					return
				}
				agentchan.Serve(g.Session, func(st *agentchan.Stream) {
					var req agentchan.Request
					st.ReadLine(&req)
					answered.Store(true)
					st.WriteLine(agentchan.Reply{OK: true})
					io.Copy(io.Discard, st)
				})
			}()
			return host, nil
		}
		h, err := agenthub.Start(context.Background(), agenthub.Options{VM: "vm", Dial: dial, Socket: GuestSocket(runDir)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			h.Close()
			if upAfter >= 0 && !answered.Load() {
				t.Error("the guest's agent was never asked")
			}
		})
		return runDir
	}
	ctx := context.Background()
	t.Run("up later", func(t *testing.T) {
		runDir := start(t, 400*time.Millisecond)
		t0 := time.Now()
		if err := waitGuestAgent(ctx, runDir, 20*time.Second); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(t0); d < 300*time.Millisecond {
			t.Errorf("returned after %v, before the agent's channel was up", d)
		}
	})
	t.Run("never", func(t *testing.T) {
		runDir := start(t, -1)
		t0 := time.Now()
		if err := waitGuestAgent(ctx, runDir, 500*time.Millisecond); err == nil {
			t.Fatal("no error, though no agent answered")
		}
		if d := time.Since(t0); d > 10*time.Second {
			t.Errorf("gave up after %v; the bound was 500 ms", d)
		}
	})
}

// Snapshot's quiesce reaches the supervisor's hub through its socket: the
// channel is reported quiet, and once released the guest answers again.
func TestQuiesceGuest(t *testing.T) {
	runDir := t.TempDir()
	dial := func(ctx context.Context) (io.ReadWriteCloser, error) {
		host, guest := net.Pipe()
		go func() {
			g, err := agentchan.Accept(guest, agentchan.Hello{Agent: "fake"})
			if err != nil {
				return
			}
			agentchan.Serve(g.Session, func(st *agentchan.Stream) {
				var req agentchan.Request
				st.ReadLine(&req)
				st.WriteLine(agentchan.Reply{OK: true})
			})
		}()
		return host, nil
	}
	h, err := agenthub.Start(context.Background(), agenthub.Options{VM: "vm", Dial: dial, Socket: GuestSocket(runDir)})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := waitGuestAgent(ctx, runDir, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	release, err := quiesceGuest(ctx, runDir)
	if err != nil {
		t.Fatalf("quiesce: %v", err)
	}
	release()
	if err := waitGuestAgent(ctx, runDir, 20*time.Second); err != nil {
		t.Fatalf("after the release: %v", err)
	}
}
