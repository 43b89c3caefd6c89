// Package guesttest gives real-VM tests what they need to boot a guest: the
// guest kernel (scripts/fetch-kernel.sh), QEMU, and kestrel and the other
// commands built from this checkout. Missing pieces skip the test, or fail it when
// privileged tests are demanded (CI=true or VOLANT_TEST_PRIVILEGED=1).
package guesttest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/volantvm/volant/lib/kernel"
	"github.com/volantvm/volant/lib/kestrel/kestrelbuild"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// Kernel returns the guest kernel with its vmlinux extracted.
func Kernel(t testing.TB) (*kernel.Kernel, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("real-VM test skipped under -short")
	}
	dir := os.Getenv("VOLANT_KERNEL_DIR")
	k, err := kernel.Open(dir)
	if err != nil {
		netnstest.SkipOrFail(t, "guest kernel: %v", err)
	}
	vmlinux, err := k.Vmlinux(context.Background())
	if err != nil {
		netnstest.SkipOrFail(t, "extracting vmlinux: %v", err)
	}
	return k, vmlinux
}

// QEMU returns the path of qemu-system-x86_64.
func QEMU(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		netnstest.SkipOrFail(t, "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
	}
	return p
}

// builds holds one build per binary per test process.
var builds sync.Map // package path, or "kestrel" -> *buildResult

type buildResult struct {
	once sync.Once
	path string
	err  error
}

// Kestrel returns a static kestrel binary, built as package kestrelbuild
// states: $VOLANT_KESTREL when set (the Makefile passes bin/kestrel), which
// fails the test if it was built otherwise, else one built from this
// checkout once per test process.
func Kestrel(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("VOLANT_KESTREL"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("VOLANT_KESTREL=%s: %v", p, err)
		}
		if err := kestrelbuild.Check(p); err != nil {
			t.Fatalf("VOLANT_KESTREL: %v", err)
		}
		return p
	}
	return buildOnce(t, "kestrel", func(root, out string) (*exec.Cmd, error) {
		return kestrelbuild.Command(context.Background(), kestrelbuild.Options{Dir: root, Out: out, Version: "test"})
	})
}

// StaticInit returns a static build (no cgo, stripped) of a test's init
// program, the package at pkg relative to the module root (for example
// "lib/vmm/vmmtest/testdata/testinit"), built once per test process like
// the commands.
func StaticInit(t testing.TB, pkg string) string {
	t.Helper()
	return buildOnce(t, pkg, goBuild(pkg, false, "-trimpath", "-ldflags", "-s -w"))
}

// Command returns the binary of cmd/<name>: $VOLANT_BIN/<name> when the
// Makefile provides it, else one built from this checkout (with the
// system SQLite, as the Makefile builds) once per test process. kestrel
// is Kestrel.
func Command(t testing.TB, name string) string {
	t.Helper()
	if name == "kestrel" {
		return Kestrel(t)
	}
	if d := os.Getenv("VOLANT_BIN"); d != "" {
		if p := filepath.Join(d, name); fileExists(p) {
			return p
		}
	}
	pkg := "cmd/" + name
	return buildOnce(t, pkg, goBuild(pkg, true, "-tags", "libsqlite3 containers_image_openpgp"))
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// A builder returns the command that, run in the module root root,
// writes a binary to out.
type builder func(root, out string) (*exec.Cmd, error)

// goBuild is a builder of go build with flags on the package at pkg
// (relative to the module root), with cgo or without.
func goBuild(pkg string, cgo bool, flags ...string) builder {
	return func(root, out string) (*exec.Cmd, error) {
		args := append(append([]string{"build"}, flags...), "-o", out, "./"+pkg)
		cmd := exec.Command("go", args...)
		cmd.Dir = root
		if !cgo {
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		}
		return cmd, nil
	}
}

// buildOnce builds the binary named by key's last element with build, once
// per test process. Builds share one directory and are named by their
// content, replaced atomically by each test process, so test runs leave
// no trail of temporary directories.
func buildOnce(t testing.TB, key string, build builder) string {
	t.Helper()
	name := filepath.Base(key)
	v, _ := builds.LoadOrStore(key, &buildResult{})
	b := v.(*buildResult)
	b.once.Do(func() {
		root, err := ModuleRoot()
		if err != nil {
			b.err = err
			return
		}
		dir := filepath.Join(os.TempDir(), "volant-test-bin")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.err = err
			return
		}
		tmp := filepath.Join(dir, fmt.Sprintf(".%s-%d", name, os.Getpid()))
		cmd, err := build(root, tmp)
		if err != nil {
			b.err = err
			return
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			os.Remove(tmp)
			b.err = &buildError{err: err, out: string(out)}
			return
		}
		b.path = filepath.Join(dir, name+"-"+contentTag(tmp))
		if err := os.Rename(tmp, b.path); err != nil {
			b.err = err
		}
	})
	if b.err != nil {
		t.Fatalf("building %s: %v", key, b.err)
	}
	return b.path
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + ": " + e.out }

// ModuleRoot is the directory holding this module's go.mod.
func ModuleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

// contentTag is a short tag of p's content (the first 12 hex digits of
// its sha256), naming a build so a changed source gets a new file.
func contentTag(p string) string {
	f, err := os.Open(p)
	if err != nil {
		return ""
	}
	defer f.Close()
	d, err := digest.SHA256.FromReader(f)
	if err != nil {
		return ""
	}
	return d.Encoded()[:12]
}
