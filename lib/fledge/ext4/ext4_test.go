package ext4

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/testutil/ext4test"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

func TestJournalBlocksTable(t *testing.T) {
	for _, tc := range []struct{ n, want int64 }{
		{1000, 0}, {2048, 1024}, {32767, 1024}, {32768, 4096}, {262143, 4096},
		{262144, 8192}, {524288, 16384}, {40 << 20, 262144},
	} {
		if got := journalBlocks(tc.n); got != tc.want {
			t.Errorf("journalBlocks(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
}

func TestSuperBackupGroups(t *testing.T) {
	var got []int64
	for g := int64(0); g < 50; g++ {
		if hasSuperBackup(g) {
			got = append(got, g)
		}
	}
	want := []int64{0, 1, 3, 5, 7, 9, 25, 27, 49}
	if len(got) != len(want) {
		t.Fatalf("backups %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("backups %v, want %v", got, want)
		}
	}
}

func TestUUIDFromIsStableAndDistinct(t *testing.T) {
	a, b := uuidFrom("x", "uuid"), uuidFrom("x", "uuid")
	if a != b || a == uuidFrom("y", "uuid") || a == uuidFrom("x", "hash_seed") {
		t.Fatalf("uuids %s %s", a, b)
	}
	if len(a) != 36 || a[14] != '4' {
		t.Fatalf("not a v4-shaped uuid: %s", a)
	}
}

func TestPlanCoversContentAndFree(t *testing.T) {
	u := Usage{Inodes: 3000, blocks1k: 40000, blocks4k: 10000}
	for _, bs := range []int{1024, 4096} {
		p := PlanFor(u, 8<<20, bs)
		if p.BlockSize != bs || p.Bytes() < u.Bytes(bs)+8<<20+4<<20 {
			t.Fatalf("plan %+v too small for %+v", p, u)
		}
		if p.Inodes < 3000 {
			t.Fatalf("plan inodes %d", p.Inodes)
		}
		if p.Bytes()%(1<<20) != 0 {
			t.Fatalf("plan not MiB-aligned: %d", p.Bytes())
		}
	}
}

func TestPlanPicksBlockSizeLikeMke2fs(t *testing.T) {
	small := Usage{Inodes: 3000, blocks1k: 40000, blocks4k: 10000}
	if p := PlanFor(small, 8<<20, 0); p.BlockSize != 1024 {
		t.Fatalf("small image got %d-byte blocks", p.BlockSize)
	}
	big := Usage{Inodes: 30000, blocks1k: 600 << 10, blocks4k: 150 << 10}
	if p := PlanFor(big, 8<<20, 0); p.BlockSize != 4096 || p.Bytes() < SmallLimit {
		t.Fatalf("big image plan %+v", p)
	}
}

func needTools(t *testing.T) {
	t.Helper()
	ext4test.Require(t)
	if _, err := findMkfs(); err != nil {
		netnstest.SkipOrFail(t, "%v", err)
	}
}

// tree writes a small tree with the kinds of entries images carry.
func tree(t *testing.T, root bool) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tree")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "usr/bin"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "etc/many"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "usr/bin/tool"), []byte("#!/bin/sh\necho hi\n"), 0o755))
	big := make([]byte, 3<<20+17)
	for i := range big {
		big[i] = byte(i*7 + i>>12)
	}
	must(os.WriteFile(filepath.Join(dir, "etc/big"), big, 0o644))
	for i := 0; i < 300; i++ {
		must(os.WriteFile(filepath.Join(dir, "etc/many", "file-with-a-longish-name-"+itoa(i)), []byte(itoa(i)), 0o644))
	}
	must(os.Symlink("usr/bin", filepath.Join(dir, "bin")))
	must(os.Symlink(strings.Repeat("long/", 20)+"target", filepath.Join(dir, "longlink")))
	must(os.Link(filepath.Join(dir, "usr/bin/tool"), filepath.Join(dir, "usr/bin/tool-link")))
	if root {
		must(os.MkdirAll(filepath.Join(dir, "dev"), 0o755))
		must(unix.Mknod(filepath.Join(dir, "dev/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
		must(os.Lchown(filepath.Join(dir, "etc/big"), 1000, 1001))
		must(unix.Lsetxattr(filepath.Join(dir, "usr/bin/tool"), "security.capability", []byte{1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0))
	}
	// Fixed mtimes, as an unpacked image has.
	mt := time.Unix(1700000000, 0)
	must(filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return unix.Lutimes(p, []unix.Timeval{unix.NsecToTimeval(mt.UnixNano()), unix.NsecToTimeval(mt.UnixNano())})
	}))
	return dir
}

func itoa(i int) string { return strconv.Itoa(i) }

func sum(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func TestMakeIsCleanTightAndReproducible(t *testing.T) {
	for _, bs := range []int{0, 4096} {
		t.Run(strconv.Itoa(bs), func(t *testing.T) { testMake(t, bs) })
	}
}

func testMake(t *testing.T, bs int) {
	needTools(t)
	root := os.Geteuid() == 0
	o := Options{Seed: "test", Epoch: 1700000000, Label: "fledge-test", BlockSize: bs}
	one := filepath.Join(t.TempDir(), "one.img")
	dir1 := tree(t, root)
	r1, err := Make(context.Background(), dir1, one, o)
	if err != nil {
		t.Fatal(err)
	}
	ext4test.Fsck(t, one)
	t.Logf("result %+v", r1)
	if r1.FreeBytes < MinAutoBuffer*9/10 {
		t.Fatalf("free %d below the automatic buffer", r1.FreeBytes)
	}
	// Tight: no more than content + free + a bounded overhead.
	if over := r1.SizeBytes - r1.ContentBytes - r1.FreeBytes; over > 12<<20 {
		t.Fatalf("overhead %d bytes is more than expected for a %d-byte image", over, r1.SizeBytes)
	}
	if r1.NormalizedInodes == 0 {
		t.Fatal("no inode was normalized")
	}
	if want := map[int]int{0: 1024, 4096: 4096}[bs]; r1.BlockSize != want {
		t.Fatalf("block size %d, want %d", r1.BlockSize, want)
	}

	ls := ext4test.Debugfs(t, one, "ls -l /usr/bin")
	for _, want := range []string{"tool", "tool-link"} {
		if !strings.Contains(ls, want) {
			t.Fatalf("%s missing from /usr/bin:\n%s", want, ls)
		}
	}
	if st := ext4test.Debugfs(t, one, "stat /usr/bin/tool"); !strings.Contains(st, "Links: 2") {
		t.Fatalf("hard link lost:\n%s", st)
	}
	if st := ext4test.Debugfs(t, one, "stat /bin"); !strings.Contains(st, "Fast link dest: \"usr/bin\"") {
		t.Fatalf("symlink lost:\n%s", st)
	}
	if root {
		if st := ext4test.Debugfs(t, one, "stat /dev/null"); !strings.Contains(st, "character special") || !strings.Contains(st, "Device major/minor number: 01:03") {
			t.Fatalf("device node lost:\n%s", st)
		}
		if st := ext4test.Debugfs(t, one, "stat /etc/big"); !strings.Contains(st, "User:  1000   Group:  1001") {
			t.Fatalf("owner lost:\n%s", st)
		}
		if x := ext4test.Debugfs(t, one, "ea_list /usr/bin/tool"); !strings.Contains(x, "security.capability") {
			t.Fatalf("xattr lost:\n%s", x)
		}
	}

	// The same content written again later (different ctimes and atimes
	// on the host) gives the same bytes.
	time.Sleep(1100 * time.Millisecond)
	dir2 := tree(t, root)
	two := filepath.Join(t.TempDir(), "two.img")
	if _, err := Make(context.Background(), dir2, two, o); err != nil {
		t.Fatal(err)
	}
	if a, b := sum(t, one), sum(t, two); a != b {
		t.Fatalf("not reproducible: %s vs %s", a, b)
	}
	// A different seed gives a different UUID.
	three := filepath.Join(t.TempDir(), "three.img")
	o.Seed = "other"
	if _, err := Make(context.Background(), dir2, three, o); err != nil {
		t.Fatal(err)
	}
	if sum(t, one) == sum(t, three) {
		t.Fatal("seed did not change the image")
	}
}

func TestMakeHonoursFreeBytes(t *testing.T) {
	needTools(t)
	dir := tree(t, false)
	img := filepath.Join(t.TempDir(), "x.img")
	r, err := Make(context.Background(), dir, img, Options{FreeBytes: 40 << 20, Seed: "x"})
	if err != nil {
		t.Fatal(err)
	}
	ext4test.Fsck(t, img)
	if r.FreeBytes < 36<<20 || r.FreeBytes > 60<<20 {
		t.Fatalf("free %d, asked for %d", r.FreeBytes, 40<<20)
	}
}

func TestMakeManySmallFilesNeedsNoRetryForInodes(t *testing.T) {
	needTools(t)
	dir := t.TempDir()
	for i := 0; i < 5000; i++ {
		if err := os.WriteFile(filepath.Join(dir, "f"+strings.Repeat("x", i%7)+itoa(i%1000)+"-"+itoa(i/1000)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(t.TempDir(), "x.img")
	r, err := Make(context.Background(), dir, img, Options{Seed: "x"})
	if err != nil {
		t.Fatal(err)
	}
	ext4test.Fsck(t, img)
	if r.FreeInodes < 100 {
		t.Fatalf("only %d free inodes", r.FreeInodes)
	}
}

// TestMakeWritesInPlace: an existing, larger image is truncated and
// written in place, so a caller holding it open (fledge's renameio
// pending file, which it syncs and renames) holds the filesystem.
func TestMakeWritesInPlace(t *testing.T) {
	needTools(t)
	dir := tree(t, false)
	img := filepath.Join(t.TempDir(), "x.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(1 << 30); err != nil {
		t.Fatal(err)
	}
	r, err := Make(context.Background(), dir, img, Options{Seed: "x"})
	if err != nil {
		t.Fatal(err)
	}
	held, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	named, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(held, named) {
		t.Fatal("Make replaced the image instead of writing the file it was given")
	}
	if held.Size() != r.SizeBytes {
		t.Fatalf("image is %d bytes, its filesystem %d: the old size was kept", held.Size(), r.SizeBytes)
	}
	ext4test.Fsck(t, img)
}
