package kestrel_test

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/volantvm/volant/lib/testutil/guesttest"
)

// TestMain builds kestrel once for the PID-1 and VM tests (unless the
// Makefile passes VOLANT_KESTREL) into a directory it removes afterwards.
func TestMain(m *testing.M) {
	flag.Parse()
	if os.Getenv("VOLANT_KESTREL") != "" || testing.Short() {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "kestrel-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		root, err := guesttest.ModuleRoot()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		bin := filepath.Join(dir, "kestrel")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "./cmd/kestrel")
		cmd.Dir, cmd.Env = root, append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building kestrel: %v\n%s", err, out)
			return 1
		}
		os.Setenv("VOLANT_KESTREL", bin)
		return m.Run()
	}()
	os.Exit(code)
}
