package mounts

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/testutil/netnstest"
)

func TestTablesAreSane(t *testing.T) {
	seen := map[string]bool{}
	for _, m := range append(Early(), Late()...) {
		if seen[m.Target] || !filepath.IsAbs(m.Target) || m.FSType == "" {
			t.Errorf("bad row %+v", m)
		}
		seen[m.Target] = true
	}
	// Every moved mount is an Early one, so stage 2 finds it in place.
	for _, d := range movedIntoNewRoot {
		found := false
		for _, m := range Early() {
			found = found || m.Target == d
		}
		if !found {
			t.Errorf("%s is moved but not mounted early", d)
		}
	}
	// Callers may edit the result without changing the next call's.
	e := Early()
	e[0].Target = "/elsewhere"
	if Early()[0].Target != "/proc" {
		t.Fatal("Early shares state between calls")
	}
}

func TestIsMountPoint(t *testing.T) {
	for p, want := range map[string]bool{"/": true, "/proc": true} {
		got, err := IsMountPoint(p)
		if err != nil || got != want {
			t.Errorf("IsMountPoint(%s) = %v, %v", p, got, err)
		}
	}
	dir := t.TempDir()
	if mp, err := IsMountPoint(dir); err != nil || mp {
		t.Errorf("temp dir reported as mount point: %v %v", mp, err)
	}
}

func TestParseMountinfoAndShutdownPlan(t *testing.T) {
	const mi = `22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
23 22 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw,size=50000k
24 22 0:20 / /proc rw - proc proc rw
30 22 254:16 / /srv/data rw - ext4 /dev/vdb rw
31 30 254:32 / /srv/data/deep\040dir rw - xfs /dev/vdc rw
32 22 0:30 / /tmp rw - tmpfs tmpfs rw
`
	table, err := parseMountinfo(strings.NewReader(mi))
	if err != nil || len(table) != 6 {
		t.Fatalf("%v %v", table, err)
	}
	if table[4].Target != "/srv/data/deep dir" || table[4].FSType != "xfs" || table[4].Source != "/dev/vdc" {
		t.Fatalf("entry %+v", table[4])
	}
	un, root := ShutdownPlan(table)
	if !root || strings.Join(un, ",") != "/srv/data/deep dir,/srv/data" {
		t.Fatalf("plan %v %v", un, root)
	}
	_, root = ShutdownPlan(table[1:])
	if root {
		t.Fatal("initramfs root remounted")
	}
}

func TestProbeFSType(t *testing.T) {
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		netnstest.SkipOrFail(t, "needs mkfs.ext4")
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 8<<20); err != nil {
		t.Fatal(err)
	}
	if typ, err := ProbeFSType(img); err != nil || typ != "" {
		t.Fatalf("blank image: %q %v", typ, err)
	}
	if out, err := exec.Command(mkfs, "-q", "-F", img).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if typ, err := ProbeFSType(img); err != nil || typ != "ext4" {
		t.Fatalf("ext4 image: %q %v", typ, err)
	}
	for magic, want := range map[string]string{"hsqs": "squashfs", "XFSB": "xfs"} {
		b := make([]byte, 4096)
		copy(b, magic)
		if got := fsTypeOf(b); got != want {
			t.Errorf("%s: %q", magic, got)
		}
	}
	b := make([]byte, 0x10048)
	copy(b[0x10040:], "_BHRfS_M")
	if fsTypeOf(b) != "btrfs" {
		t.Error("btrfs not recognized")
	}
}
