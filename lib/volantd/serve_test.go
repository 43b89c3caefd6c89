package volantd

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// serveForTest runs Serve on a unix listener of its own, without a network
// or agent endpoint, and returns once it serves.
func serveForTest(t *testing.T, ctx context.Context) (net.Listener, <-chan error) {
	t.Helper()
	dir := t.TempDir()
	l, err := net.Listen("unix", filepath.Join(dir, "api.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan Addrs, 1)
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, Config{
			Listeners: []net.Listener{l}, DataDir: filepath.Join(dir, "data"), RunRoot: filepath.Join(dir, "run"),
			AgentListen: "off", Launcher: "/bin/true", VMRunner: "detached",
			Ready: func(a Addrs) { ready <- a },
		})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Serve ended before serving: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not become ready")
	}
	return l, done
}

// A listener that fails ends Serve with that error, after the others shut
// down; the end of the context ends it without one.
func TestServeEnds(t *testing.T) {
	l, done := serveForTest(t, context.Background())
	l.Close()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "serving on") {
			t.Fatalf("Serve after its listener failed: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Serve kept going after its listener failed")
	}

	ctx, cancel := context.WithCancel(context.Background())
	_, done = serveForTest(t, ctx)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve after its context ended: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Serve kept going after its context ended")
	}
}
