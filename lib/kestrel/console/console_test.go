package console

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestHandlerFormat(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(NewHandler(&buf, slog.LevelDebug)).With("stage", 1)
	log.Info("workload started", "pid", 42, "argv", "/bin/httpd -f")
	log.Warn("probe failed", "err", errors.New(`dial "x": refused`), "took", 1500*time.Millisecond)
	log.WithGroup("net").Debug("address", "ip", "192.168.127.100/24")
	want := `kestrel: workload started stage=1 pid=42 argv="/bin/httpd -f"
kestrel: WARN probe failed stage=1 err="dial \"x\": refused" took=1.5s
kestrel: DEBUG address stage=1 net.ip=192.168.127.100/24
`
	if buf.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", buf.String(), want)
	}
	buf.Reset()
	slog.New(NewHandler(&buf, nil).WithClock(func() time.Duration { return 2595503 * time.Microsecond })).Info("x")
	if buf.String() != "[    2.595503] kestrel: x\n" {
		t.Fatalf("%q", buf.String())
	}
	buf.Reset()
	slog.New(NewHandler(&buf, nil)).Debug("hidden")
	if buf.Len() != 0 {
		t.Fatal("debug shown at info level")
	}
}

type slowWriter struct {
	mu   sync.Mutex
	b    bytes.Buffer
	gate chan struct{}
}

func (s *slowWriter) Write(p []byte) (int, error) {
	<-s.gate
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func TestAsyncNeverBlocksAndReportsDrops(t *testing.T) {
	sw := &slowWriter{gate: make(chan struct{})}
	a := NewAsync(sw, 10)
	done := make(chan struct{})
	go func() {
		a.Write([]byte("0123456789"))     // taken by the copier, which blocks
		time.Sleep(50 * time.Millisecond) // let it take the first chunk
		a.Write([]byte("abcdefghij"))     // fills the buffer
		a.Write([]byte("XYZ"))            // dropped
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Write blocked on a slow console")
	}
	close(sw.gate) // console catches up
	a.Close()
	got := sw.b.String()
	if !strings.HasPrefix(got, "0123456789abcdefghij") || !strings.Contains(got, "3 bytes of workload output not shown") {
		t.Fatalf("got %q", got)
	}
}

func TestStampIsTheKernels(t *testing.T) {
	for _, d := range []time.Duration{0, time.Microsecond, 2143651 * time.Microsecond, 99999*time.Second + 999999*time.Microsecond, 123456 * time.Second, 1500 * time.Nanosecond} {
		want := fmt.Sprintf("[%5d.%06d] ", d/time.Second, (d%time.Second)/time.Microsecond)
		if got := Stamp(d); got != want {
			t.Errorf("Stamp(%v) = %q, want %q", d, got, want)
		}
	}
	if got := Stamp(-time.Second); got != "[    0.000000] " {
		t.Errorf("Stamp(-1s) = %q", got)
	}
}
