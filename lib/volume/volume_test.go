package volume

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/testutil/ext4test"
	"github.com/volantvm/volant/lib/testutil/mntnstest"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"1GiB", GiB}, {"1G", GiB}, {"1Gi", GiB}, {"512MiB", 512 * MiB}, {"512M", 512 * MiB},
		{"1.5GiB", 1536 * MiB}, {"100MB", RoundSize(100e6)}, {"1TiB", 1 << 40},
		{"16777216", 16 * MiB}, {"1000", MiB}, {" 2 GiB ", 2 * GiB},
	} {
		got, err := ParseSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "GiB", "-1G", "1XB", "0", "1 G B", "17TiB", "1e3G"} {
		if n, err := ParseSize(in); !apierr.Is(err, apierr.InvalidInput) {
			t.Errorf("ParseSize(%q) = %d, %v; want INVALID_INPUT", in, n, err)
		}
	}
	if FormatSize(GiB) != "1GiB" || FormatSize(1536*MiB) != "1536MiB" || FormatSize(100) != "100B" {
		t.Errorf("FormatSize: %s %s %s", FormatSize(GiB), FormatSize(1536*MiB), FormatSize(100))
	}
	if err := CheckSize(MiB); !apierr.Is(err, apierr.InvalidInput) {
		t.Errorf("1MiB volume: %v", err)
	}
}

func needTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"mkfs.ext4", "resize2fs", "e2fsck", "dumpe2fs", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (Debian package e2fsprogs, a dependency of Volant)", tool)
		}
	}
}

// superblock reads fields of the image's ext4 superblock with dumpe2fs.
func superblock(t *testing.T, path string) map[string]string {
	t.Helper()
	out, err := exec.Command("dumpe2fs", "-h", path).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs %s: %v\n%s", path, err, out)
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return m
}

func fsBytes(t *testing.T, path string) int64 {
	sb := superblock(t, path)
	n, _ := strconv.ParseInt(sb["Block count"], 10, 64)
	bs, _ := strconv.ParseInt(sb["Block size"], 10, 64)
	return n * bs
}

func TestCreateGrowRemove(t *testing.T) {
	needTools(t)
	ctx := context.Background()
	dir := t.TempDir()
	p := filepath.Join(dir, "data.img")
	if err := Create(ctx, CreateOptions{Path: p, Size: 256 * MiB, Label: "data"}); err != nil {
		t.Fatal(err)
	}
	info, err := Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if info.Size != 256*MiB {
		t.Errorf("size %d, want %d", info.Size, 256*MiB)
	}
	// Sparse: the filesystem's metadata, not the whole image.
	if info.Allocated > info.Size/8 {
		t.Errorf("the image takes %d bytes of %d: not sparse", info.Allocated, info.Size)
	}
	sb := superblock(t, p)
	if sb["Filesystem volume name"] != "data" || !strings.Contains(sb["Filesystem features"], "extent") {
		t.Errorf("superblock: name %q features %q", sb["Filesystem volume name"], sb["Filesystem features"])
	}
	if got := fsBytes(t, p); got != 256*MiB {
		t.Errorf("filesystem spans %d bytes, want %d", got, 256*MiB)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("the directory holds %d entries, want only the image", len(ents))
	}

	// A second create of the same path changes nothing.
	if err := Create(ctx, CreateOptions{Path: p, Size: 64 * MiB}); !apierr.Is(err, apierr.Conflict) {
		t.Fatalf("create over an existing image: %v, want CONFLICT", err)
	}
	if info2, _ := Stat(p); info2.Size != info.Size {
		t.Fatalf("a refused create changed the image: %d", info2.Size)
	}

	// Data survives a grow.
	src := filepath.Join(t.TempDir(), "hello")
	os.WriteFile(src, []byte("kept across the grow\n"), 0o644)
	ext4test.Write(t, p, src, "hello")
	if err := Grow(ctx, p, GiB); err != nil {
		t.Fatal(err)
	}
	if got := fsBytes(t, p); got != GiB {
		t.Errorf("after Grow the filesystem spans %d bytes, want %d", got, GiB)
	}
	if got := ext4test.Cat(t, p, "/hello"); string(got) != "kept across the grow\n" {
		t.Errorf("after the grow the file holds %q", got)
	}
	// Growing again to the same size finishes nothing more and fails not.
	if err := Grow(ctx, p, GiB); err != nil {
		t.Fatalf("repeating a grow: %v", err)
	}
	if err := Grow(ctx, p, 512*MiB); !apierr.Is(err, apierr.InvalidInput) {
		t.Errorf("shrinking: %v, want INVALID_INPUT", err)
	}

	if err := Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := Remove(p); err != nil {
		t.Fatalf("removing again: %v", err)
	}
	if _, err := Stat(p); !apierr.Is(err, apierr.NotFound) {
		t.Errorf("Stat of a removed image: %v", err)
	}
}

// A grow interrupted after the file grew but before the filesystem did is
// finished by growing again to the same size.
func TestGrowResumes(t *testing.T) {
	needTools(t)
	ctx := context.Background()
	p := filepath.Join(t.TempDir(), "v.img")
	if err := Create(ctx, CreateOptions{Path: p, Size: 64 * MiB}); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, 128*MiB); err != nil { // the first half of a grow
		t.Fatal(err)
	}
	if got := fsBytes(t, p); got != 64*MiB {
		t.Fatalf("setup: filesystem %d", got)
	}
	if err := Grow(ctx, p, 128*MiB); err != nil {
		t.Fatal(err)
	}
	if got := fsBytes(t, p); got != 128*MiB {
		t.Errorf("the resumed grow left the filesystem at %d bytes, want %d", got, 128*MiB)
	}
}

func TestCreateRefusesBadInput(t *testing.T) {
	p := filepath.Join(t.TempDir(), "v.img")
	for _, o := range []CreateOptions{{Path: p, Size: MiB}, {Path: p, Size: GiB, FS: "vfat"}} {
		if err := Create(context.Background(), o); !apierr.Is(err, apierr.InvalidInput) {
			t.Errorf("Create(%+v) = %v, want INVALID_INPUT", o, err)
		}
	}
	if _, err := os.Stat(p); err == nil {
		t.Error("a refused create left a file")
	}
}

// On a full filesystem, Create fails with NO_SPACE and leaves nothing: the
// test fills a 2 MiB tmpfs of its own, in a mount namespace of its own.
func TestCreateOnAFullDisk(t *testing.T) {
	needTools(t)
	dir := t.TempDir()
	err := mntnstest.Do(t, func() error {
		if err := mntnstest.TmpFS(dir, 2*MiB); err != nil {
			return err
		}
		p := filepath.Join(dir, "big.img")
		err := Create(context.Background(), CreateOptions{Path: p, Size: 64 * GiB})
		if !apierr.Is(err, apierr.NoSpace) {
			t.Errorf("Create on a full disk: %v, want NO_SPACE", err)
		}
		ents, rerr := os.ReadDir(dir)
		if rerr != nil {
			return rerr
		}
		for _, e := range ents {
			t.Errorf("left behind on the full disk: %s", e.Name())
		}
		// The disk is usable again: a volume that fits is made.
		return Create(context.Background(), CreateOptions{Path: filepath.Join(dir, "small.img"), Size: 16 * MiB})
	})
	if err != nil {
		t.Fatal(err)
	}
	// The tmpfs lived only in the namespace.
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("the test's tmpfs leaked out of its namespace: %d entries", len(ents))
	}
}

func TestCleanTemp(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "v.img")
	for _, n := range []string{".v.img" + tempMarker + "123", ".v.img" + tempMarker + "abc", "v.img", ".w.img" + tempMarker + "1"} {
		os.WriteFile(filepath.Join(dir, n), nil, 0o600)
	}
	n, err := CleanTemp(p)
	if err != nil || n != 2 {
		t.Fatalf("CleanTemp = %d, %v; want 2", n, err)
	}
	ents, _ := os.ReadDir(dir)
	var left []string
	for _, e := range ents {
		left = append(left, e.Name())
	}
	if strings.Join(left, " ") != ".w.img"+tempMarker+"1 v.img" {
		t.Errorf("left %v", left)
	}
}
