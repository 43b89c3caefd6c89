package volume

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/testutil/mntnstest"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// sparseImage writes a 64 MiB file with data at 0 and at 40 MiB only.
func sparseImage(t *testing.T, p string) []byte {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Truncate(64 * MiB)
	f.WriteAt(bytes.Repeat([]byte("a"), 8192), 0)
	f.WriteAt(bytes.Repeat([]byte("b"), 4096), 40*MiB)
	b, _ := os.ReadFile(p)
	return b
}

func allocated(t *testing.T, p string) int64 {
	t.Helper()
	info, err := Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return info.Allocated
}

func TestCopyDataKeepsHoles(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src.img"), filepath.Join(dir, "dst.img")
	want := sparseImage(t, src)
	if err := CopyData(context.Background(), src, dst); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(dst)
	if !bytes.Equal(got, want) {
		t.Fatal("the copy differs from the source")
	}
	if a := allocated(t, dst); a > 1*MiB {
		t.Errorf("the copy of 12 KiB of data takes %d bytes: holes were filled", a)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("left behind: %d entries", len(ents))
	}
}

func TestReflinkOrNot(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src.img"), filepath.Join(dir, "dst.img")
	want := sparseImage(t, src)
	err := Reflink(src, dst)
	switch {
	case errors.Is(err, ErrNoReflink):
		t.Logf("%s cannot reflink: %v", dir, err)
		if _, err := os.Stat(dst); !os.IsNotExist(err) {
			t.Error("a failed reflink left the destination")
		}
	case err != nil:
		t.Fatal(err)
	default:
		got, _ := os.ReadFile(dst)
		if !bytes.Equal(got, want) {
			t.Fatal("the reflink differs from the source")
		}
	}
	// PointInTime works either way, and later writes to the source do
	// not reach the copy.
	pit := filepath.Join(dir, "pit.img")
	m, err := PointInTime(context.Background(), src, FormatRaw, pit)
	if err != nil || (m != MethodReflink && m != MethodData) {
		t.Fatalf("PointInTime = %s, %v", m, err)
	}
	f, _ := os.OpenFile(src, os.O_WRONLY, 0)
	f.WriteAt([]byte("changed"), 0)
	f.Close()
	got, _ := os.ReadFile(pit)
	if !bytes.Equal(got, want) {
		t.Error("a write to the source changed the point-in-time copy")
	}
}

// On a filesystem that shares blocks (xfs with reflink, on a loop device
// in a mount namespace of the test's own), a copy is a reflink: it takes
// no space, and writes to either file leave the other alone.
func TestReflinkOnXFS(t *testing.T) {
	netnstest.Require(t, "mkfs.xfs", "losetup")
	dir := t.TempDir()
	img := filepath.Join(dir, "xfs.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Truncate(img, 512*MiB)
	if out, err := exec.Command("mkfs.xfs", "-q", "-m", "reflink=1", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.xfs: %v %s", err, out)
	}
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o700)
	err := mntnstest.Do(t, func() error {
		if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
			netnstest.SkipOrFail(t, "cannot mount an xfs image on a loop device: %v %s", err, out)
		}
		defer exec.Command("umount", mnt).Run()
		src, dst := filepath.Join(mnt, "src.img"), filepath.Join(mnt, "dst.img")
		f, _ := os.Create(src)
		f.Write(bytes.Repeat([]byte("x"), 16*int(MiB)))
		f.Sync()
		f.Close()
		before := freeBytes(t, mnt)
		m, err := PointInTime(context.Background(), src, FormatRaw, dst)
		if err != nil || m != MethodReflink {
			t.Fatalf("PointInTime on xfs = %s, %v; want a reflink", m, err)
		}
		if used := before - freeBytes(t, mnt); used > 2*MiB {
			t.Errorf("the reflink of 16 MiB used %d bytes", used)
		}
		f, _ = os.OpenFile(src, os.O_WRONLY, 0)
		f.WriteAt([]byte("changed"), 0)
		f.Close()
		if b, _ := os.ReadFile(dst); string(b[:7]) != "xxxxxxx" {
			t.Error("a write to the source reached its reflink")
		}
		format, m, err := Derive(context.Background(), dst, filepath.Join(mnt, "derived.img"))
		if err != nil || format != FormatRaw || m != MethodReflink {
			t.Errorf("Derive on xfs = %s %s %v; want a raw reflink", format, m, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func freeBytes(t *testing.T, dir string) int64 {
	out, err := exec.Command("df", "-B1", "--output=avail", dir).Output()
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, l := range strings.Split(string(out), "\n")[1:] {
		if l = strings.TrimSpace(l); l != "" {
			for _, c := range l {
				n = n*10 + int64(c-'0')
			}
		}
	}
	return n
}

// Where blocks cannot be shared, Derive makes a qcow2 overlay on the base:
// the guest reads the base's data, its writes go to the overlay, the base
// is never written; PointInTime flattens such an overlay to raw.
func TestDeriveOverlay(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatal("qemu-img is not installed (Debian package qemu-utils, a dependency of Volant)")
	}
	dir := t.TempDir()
	base := filepath.Join(dir, "base.img")
	want := sparseImage(t, base)
	if err := Reflink(base, filepath.Join(dir, "probe.img")); err == nil {
		t.Skip("this filesystem reflinks; TestReflinkOnXFS covers it")
	}
	ov := filepath.Join(dir, "vm.qcow2")
	format, m, err := Derive(context.Background(), base, ov)
	if err != nil || format != FormatQcow2 || m != MethodOverlay {
		t.Fatalf("Derive = %s %s %v", format, m, err)
	}
	out, err := exec.Command("qemu-img", "info", "--output=json", ov).Output()
	if err != nil || !strings.Contains(string(out), `"backing-filename": "`+base+`"`) || !strings.Contains(string(out), `"virtual-size": 67108864`) {
		t.Fatalf("qemu-img info: %v %s", err, out)
	}
	if a := allocated(t, ov); a > MiB {
		t.Errorf("the overlay takes %d bytes", a)
	}
	// The guest's view: the base's bytes; a write lands in the overlay.
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x7a 0 4k", ov).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v %s", err, out)
	}
	if b, _ := os.ReadFile(base); !bytes.Equal(b, want) {
		t.Fatal("writing to the overlay changed its base")
	}
	flat := filepath.Join(dir, "flat.img")
	if m, err := PointInTime(context.Background(), ov, FormatQcow2, flat); err != nil || m != MethodFlatten {
		t.Fatalf("PointInTime of the overlay = %s %v", m, err)
	}
	got, _ := os.ReadFile(flat)
	exp := append([]byte{}, want...)
	copy(exp, bytes.Repeat([]byte{0x7a}, 4096))
	if !bytes.Equal(got, exp) {
		t.Error("the flattened overlay is not the base plus the overlay's write")
	}
}
