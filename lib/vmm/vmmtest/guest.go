package vmmtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/bootimage"
	"github.com/volantvm/volant/lib/initramfs"
	"github.com/volantvm/volant/lib/kernel"
	"github.com/volantvm/volant/lib/testutil/guesttest"
)

// Console lines of the test init (testdata/testinit).
const (
	ReadyLine    = "TESTINIT: ready"
	PowerOffLine = "TESTINIT: power button; powering off"
)

// TestInit returns a static build of testdata/testinit, built once per
// test process (guesttest.StaticInit).
func TestInit(t testing.TB) string {
	t.Helper()
	return guesttest.StaticInit(t, "lib/vmm/vmmtest/testdata/testinit")
}

// GuestInitramfs writes, under dir, an initramfs whose /init is pid1 (a
// static binary: the test init or kestrel) with the boot image's modules
// for kernel k, and returns its path.
func GuestInitramfs(t testing.TB, k *kernel.Kernel, pid1, dir string) string {
	t.Helper()
	b := initramfs.New()
	if _, err := bootimage.Add(b, bootimage.Options{Kestrel: pid1, ModulesDir: k.ModulesDir}); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "guest.cpio.gz")
	if err := b.WriteFile(out, initramfs.Gzip); err != nil {
		t.Fatal(err)
	}
	return out
}

// WaitForLine waits until the file at path contains line, or ctx ends. The
// error quotes the file's tail.
func WaitForLine(ctx context.Context, path, line string) error {
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), line) {
			return nil
		}
		select {
		case <-ctx.Done():
			s := string(b)
			if len(s) > 2000 {
				s = s[len(s)-2000:]
			}
			return fmt.Errorf("%q never appeared in %s (%w); it ends with:\n%s", line, path, ctx.Err(), s)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
