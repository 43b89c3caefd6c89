package launch

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

func TestStageDiskCopies(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "rootfs.img")
	os.WriteFile(base, []byte("pristine image"), 0o644)
	c := DiskCopy{Role: "rootfs", From: base, To: filepath.Join(dir, "vms", "web1", "disks", "rootfs.img")}

	if err := stageDiskCopies(context.Background(), []DiskCopy{c}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(c.To); string(b) != "pristine image" {
		t.Fatalf("copy holds %q", b)
	}
	// The guest writes to its copy; a restart keeps the writes and the
	// plugin's image stays as it was.
	os.WriteFile(c.To, []byte("written by the guest"), 0o644)
	if err := stageDiskCopies(context.Background(), []DiskCopy{c}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(c.To); string(b) != "written by the guest" {
		t.Fatalf("restart replaced the VM's copy: %q", b)
	}
	if b, _ := os.ReadFile(base); string(b) != "pristine image" {
		t.Fatalf("the artifact changed: %q", b)
	}
	if _, err := os.Stat(c.To + ".tmp"); !os.IsNotExist(err) {
		t.Fatal("temporary copy left behind")
	}

	// A failing copy leaves nothing under the name a later start would reuse.
	bad := DiskCopy{Role: "disk:data", From: filepath.Join(dir, "missing.img"), To: filepath.Join(dir, "vms", "web1", "disks", "disk-data.img")}
	if err := stageDiskCopies(context.Background(), []DiskCopy{bad}); err == nil {
		t.Fatal("want an error for a missing artifact")
	}
	for _, p := range []string{bad.To, bad.To + ".tmp"} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("%s left behind", p)
		}
	}
}
