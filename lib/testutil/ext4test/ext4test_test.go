package ext4test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// TestCatWrite: a file written into an image reads back byte for byte
// (no banner mixed in), and a missing path or a refused write is an error
// although debugfs exits 0 for both.
func TestCatWrite(t *testing.T) {
	Require(t)
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		netnstest.SkipOrFail(t, "mkfs.ext4 not installed (e2fsprogs)")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img, "8M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	src := filepath.Join(dir, "src")
	data := []byte("line one\nno newline at the end")
	os.WriteFile(src, data, 0o644)
	Write(t, img, src, "hello")
	if got := Cat(t, img, "/hello"); string(got) != string(data) {
		t.Fatalf("Cat = %q, want %q", got, data)
	}
	if out, err := request(img, false, "cat /no-such-file"); err == nil {
		t.Fatalf("cat of a missing file: no error, stdout %q", out)
	}
	if _, err := request(img, true, "write "+src+" hello"); err == nil {
		t.Fatal("writing over an existing file: no error")
	}
}
