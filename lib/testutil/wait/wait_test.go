package wait

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestFor(t *testing.T) {
	var n atomic.Int32
	go func() {
		time.Sleep(50 * time.Millisecond)
		n.Store(1)
	}()
	start := time.Now()
	if err := For(5*time.Second, func() bool { return n.Load() == 1 }); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 50*time.Millisecond || d > 2*time.Second {
		t.Fatalf("returned after %s", d)
	}
	calls := 0
	start = time.Now()
	err := For(60*time.Millisecond, func() bool { calls++; return false })
	if err == nil || time.Since(start) < 60*time.Millisecond || calls < 3 {
		t.Fatalf("a condition that never holds: err %v after %s, %d calls", err, time.Since(start), calls)
	}
}
