package initramfs

import (
	"bytes"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/testutil/netnstest"
)

func sample(t *testing.T, src string) *Builder {
	t.Helper()
	b := New()
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(b.CopyFile("/bin/kestrel", src, 0o755))
	must(b.File("etc/volant/manifest.json", 0o644, []byte(`{"name":"x"}`)))
	must(b.Symlink("/init", "/bin/kestrel"))
	must(b.Dir("/tmp", 0o1777))
	must(b.CharDev("/dev/console", 0o600, 5, 1))
	must(b.File("/a-b", 0o644, nil))
	must(b.File("/a/z", 0o644, []byte("z")))
	return b
}

func TestReproducibleAndOrdered(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "kestrel")
	os.WriteFile(src, []byte("#!/bin/true\n"), 0o700)

	var one, two bytes.Buffer
	if err := sample(t, src).WriteTo(&one, Gzip); err != nil {
		t.Fatal(err)
	}
	// Same content, different source mtime and insertion order: same bytes.
	os.Chtimes(src, time.Unix(946684800, 0), time.Unix(946684800, 0))
	if err := sample(t, src).WriteTo(&two, Gzip); err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(one.Bytes()) != sha256.Sum256(two.Bytes()) {
		t.Fatal("archives differ")
	}

	if _, err := exec.LookPath("cpio"); err != nil {
		netnstest.SkipOrFail(t, "cpio not installed")
	}
	var raw bytes.Buffer
	if err := sample(t, src).WriteTo(&raw, None); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cpio", "-itv", "--quiet")
	cmd.Stdin = &raw
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		l, _, _ = strings.Cut(l, " -> ")
		f := strings.Fields(l)
		names = append(names, f[len(f)-1])
		if strings.HasSuffix(l, " dev/console") && !strings.HasPrefix(l, "crw-------") {
			t.Errorf("console node: %s", l)
		}
		if strings.HasSuffix(l, " tmp") && !strings.HasPrefix(l, "drwxrwxrwt") {
			t.Errorf("sticky tmp: %s", l)
		}
		if !strings.Contains(l, " root ") {
			t.Errorf("not owned by root: %s", l)
		}
	}
	want := []string{".", "a", "a/z", "a-b", "bin", "bin/kestrel", "dev", "dev/console", "etc", "etc/volant", "etc/volant/manifest.json", "init", "tmp"}
	got := strings.Join(names, " ")
	if got != strings.Join(want, " ") {
		t.Fatalf("listing order:\n got %s\nwant %s", got, strings.Join(want, " "))
	}
}

func TestWriteFileIsAtomic(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "plugin.cpio.gz")
	b := New()
	b.CopyFile("/x", filepath.Join(dir, "missing"), 0o644) // error ignored: the file is absent
	b.entries["x"] = entry{kind: kindFile, mode: 0o644, src: filepath.Join(dir, "missing")}
	if err := b.WriteFile(out, Gzip); err == nil {
		t.Fatal("want error for a missing source")
	}
	left, _ := os.ReadDir(dir)
	if len(left) != 0 {
		t.Fatalf("left behind: %v", left)
	}
}
