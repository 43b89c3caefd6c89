package kernel

import (
	"context"
	"debug/elf"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
)

func TestOpenMissingSaysHowToFix(t *testing.T) {
	_, err := Open(t.TempDir())
	if !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("err = %v", err)
	}
	if !strings.Contains(apierr.From(err).Details["hint"].(string), "make kernel") {
		t.Fatalf("hint missing: %v", apierr.From(err).Details)
	}
}

func TestParseCPUInfo(t *testing.T) {
	got, err := parseCPUInfoMHz(strings.NewReader("processor\t: 0\ncpu MHz\t\t: 2445.424\nflags : x\n"))
	if err != nil || got != 2445424 {
		t.Fatalf("got %d, %v", got, err)
	}
	if _, err := parseCPUInfoMHz(strings.NewReader("processor: 0\n")); err == nil {
		t.Fatal("want error without cpu MHz")
	}
	if khz, err := HostTSCkHz(); err != nil || khz < 100000 {
		t.Fatalf("host TSC: %d %v", khz, err)
	}
}

// Extracts the real distribution kernel when it is installed (make kernel).
func TestExtractVmlinuxFromDistroKernel(t *testing.T) {
	dir := os.Getenv("VOLANT_KERNEL_DIR")
	if dir == "" {
		dir = DefaultDir
	}
	k, err := Open(dir)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI must have the guest kernel: %v", err)
		}
		t.Skipf("no guest kernel: %v", err)
	}
	out := filepath.Join(t.TempDir(), "vmlinux")
	if err := ExtractVmlinux(context.Background(), k.Vmlinuz, out); err != nil {
		t.Fatal(err)
	}
	f, err := elf.Open(out)
	if err != nil {
		t.Fatalf("not ELF: %v", err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		t.Fatalf("machine %v", f.Machine)
	}
	// PVH boot needs the Xen ELF note the kernel carries with CONFIG_PVH.
	var pvh bool
	for _, p := range f.Progs {
		if p.Type == elf.PT_NOTE {
			pvh = true
		}
	}
	if !pvh {
		t.Fatal("no ELF notes: kernel cannot be booted through PVH")
	}
}

func TestExtractRejectsNonKernel(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bz")
	os.WriteFile(bad, []byte("not a kernel at all"), 0o644)
	err := ExtractVmlinux(context.Background(), bad, bad+".out")
	if !apierr.Is(err, apierr.Unavailable) {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(bad + ".out"); !os.IsNotExist(err) {
		t.Fatal("partial output left behind")
	}
}
