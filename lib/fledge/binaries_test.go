package fledge_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/fledge"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// TestFindKestrelDefault: with no --kestrel and no [agent], fledge takes
// the kestrel lib/layout finds (the test binary has no kestrel beside it,
// so: the one on $PATH), and says NOT_FOUND with a hint when there is none.
func TestFindKestrelDefault(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		netnstest.SkipOrFail(t, "busybox-static not installed: %v", err)
	}
	dir := t.TempDir()
	b, err := os.ReadFile("/bin/busybox") // a static ELF standing in for kestrel
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "kestrel"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	got, err := fledge.FindKestrel(nil, "")
	if err != nil || got != filepath.Join(dir, "kestrel") {
		t.Fatalf("FindKestrel = %q, %v; want the kestrel on $PATH", got, err)
	}
	t.Setenv("PATH", t.TempDir())
	_, err = fledge.FindKestrel(nil, "")
	if !apierr.Is(err, apierr.NotFound) || apierr.From(err).Details["hint"] == nil {
		t.Fatalf("no kestrel anywhere: %v, want NOT_FOUND with a hint", err)
	}
}
