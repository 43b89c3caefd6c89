package boot

import (
	"runtime/debug"
	"testing"
)

func TestPauseGCRestores(t *testing.T) {
	before := debug.SetGCPercent(100)
	defer debug.SetGCPercent(before)
	limit := debug.SetMemoryLimit(-1)
	restore := pauseGC(32 << 20)
	if p := debug.SetGCPercent(-1); p != -1 {
		t.Fatalf("GC percent while paused = %d, want -1 (off)", p)
	}
	if l := debug.SetMemoryLimit(-1); l != 32<<20 {
		t.Fatalf("memory limit while paused = %d, want %d", l, 32<<20)
	}
	restore()
	restore() // a second call changes nothing
	if p := debug.SetGCPercent(-1); p != 100 {
		t.Fatalf("GC percent after restore = %d, want 100", p)
	}
	debug.SetGCPercent(100)
	if l := debug.SetMemoryLimit(-1); l != limit {
		t.Fatalf("memory limit after restore = %d, want %d", l, limit)
	}
}
