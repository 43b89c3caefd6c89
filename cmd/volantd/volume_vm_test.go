package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/testutil/ext4test"
)

// diaryPlugin builds (into outDir, where volantd takes artifacts from) an
// initramfs plugin whose workload signs a diary on
// the volume at /data the first time it starts there, appends a line to it
// on every start, and serves /data over HTTP (health check: the diary).
func diaryPlugin(t testing.TB, outDir, modulesDir, kestrel string) []byte {
	t.Helper()
	script := `test -f /data/first || /bin/busybox hostname > /data/first; ` +
		`/bin/busybox hostname >> /data/diary; /bin/busybox sync; ` +
		`exec /bin/busybox httpd -f -p 80 -h /data`
	return guestPlugin{Name: "diary", Entrypoint: `["/bin/busybox", "sh", "-c", ` + tomlString(script) + `]`,
		Health: "/diary"}.manifest(t, outDir, modulesDir, kestrel)
}

// TestVMVolumeOutlivesItsVM boots real guests (QEMU TCG, kestrel) through
// volantd: a VM writes to its volume; the VM is deleted; a new VM given
// the same volume finds the data and adds to it; a VM that would write to
// the volume while the second runs is refused; the data is on the image on
// the host. The second VM also has a volume filled on the host attached
// read-only: it reads the file there, while a write, to a file or to the
// block device, fails in the guest and leaves the image's bytes as they
// were.
func TestVMVolumeOutlivesItsVM(t *testing.T) {
	h := newQEMUHost(t)
	k, kestrel := h.k, h.kestrel
	d := h.daemon(t, "--stop-timeout", "10s")
	ctx := context.Background()
	if _, err := d.c.InstallPlugin(ctx, diaryPlugin(t, filepath.Join(h.dir, "data", "plugins", "diary"), k.ModulesDir, kestrel), client.InstallOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.c.CreateVolume(ctx, api.CreateVolumeRequest{Name: "notes", Size: "64MiB"}); err != nil {
		t.Fatal(err)
	}
	mount := []api.VolumeMount{{Volume: "notes", Path: "/data"}}
	if _, err := d.c.CreateVolume(ctx, api.CreateVolumeRequest{Name: "ref", Size: "16MiB"}); err != nil {
		t.Fatal(err)
	}
	ref, err := d.c.Volume(ctx, "ref")
	if err != nil {
		t.Fatal(err)
	}
	const refText = "written on the host\n"
	refFile := filepath.Join(t.TempDir(), "ref.txt")
	if err := os.WriteFile(refFile, []byte(refText), 0o644); err != nil {
		t.Fatal(err)
	}
	ext4test.Write(t, ref.Path, refFile, "/ref.txt")
	refImage, err := os.ReadFile(ref.Path)
	if err != nil {
		t.Fatal(err)
	}

	boot := func(name string, mounts []api.VolumeMount) *api.VM {
		t.Helper()
		if _, err := d.c.CreateVM(ctx, api.CreateVMRequest{Name: name, Plugin: "diary", Volumes: mounts}); err != nil {
			t.Fatal(err)
		}
		vm, err := d.c.WaitVM(ctx, name, api.VMRunning, 150*time.Second)
		if err != nil {
			rc, _ := d.c.VMLogs(ctx, name, api.LogOptions{Tail: 60})
			t.Fatalf("%s never ran: %v\n%s", name, err, readAll(rc))
		}
		return vm
	}
	first := boot("writer1", mount)
	if body, err := fetch(h.fakeHost, "http://"+first.IP+"/first"); err != nil || body != "writer1\n" {
		t.Fatalf("writer1's volume: /first = %q %v", body, err)
	}
	if _, err := d.c.DeleteVM(ctx, "writer1"); err != nil {
		t.Fatal(err)
	}

	second := boot("writer2", []api.VolumeMount{mount[0], {Volume: "ref", Path: "/ref", ReadOnly: true}})
	body, err := fetch(h.fakeHost, "http://"+second.IP+"/first")
	if err != nil || body != "writer1\n" {
		t.Fatalf("writer2 does not see what writer1 wrote: /first = %q %v", body, err)
	}
	if body, err := fetch(h.fakeHost, "http://"+second.IP+"/diary"); err != nil || body != "writer1\nwriter2\n" {
		t.Fatalf("the diary is %q (%v), want both VMs' lines", body, err)
	}
	t.Logf("writer2 (%s) read what writer1 wrote before it was deleted", second.IP)

	// The read-only volume: read, not written.
	guest := func(command ...string) *api.ExecResult {
		t.Helper()
		res, err := d.c.Exec(ctx, "writer2", api.ExecRequest{Command: command})
		if err != nil {
			t.Fatalf("exec %q in writer2: %v", command, err)
		}
		return res
	}
	if res := guest("cat", "/ref/ref.txt"); res.ExitCode != 0 || res.Stdout != refText {
		t.Fatalf("reading the read-only volume: %+v", res)
	}
	if res := guest("sh", "-c", "echo x > /ref/new"); res.ExitCode == 0 || !strings.Contains(res.Stderr, "Read-only file system") {
		t.Fatalf("writing a file on the read-only volume: %+v, want EROFS", res)
	}
	dev := ""
	for _, l := range strings.Split(guest("cat", "/proc/mounts").Stdout, "\n") {
		if f := strings.Fields(l); len(f) >= 4 && f[1] == "/ref" {
			if !slices.Contains(strings.Split(f[3], ","), "ro") {
				t.Errorf("/ref is mounted %s, want ro", f[3])
			}
			dev = f[0]
		}
	}
	if dev == "" {
		t.Fatal("/ref is not in the guest's mount table")
	}
	// Below the filesystem: the disk itself is read-only (its first
	// sector, which ext4 leaves unused, is what a failure would hit).
	if res := guest("dd", "if=/dev/zero", "of="+dev, "bs=512", "count=1", "conv=fsync"); res.ExitCode == 0 {
		t.Fatalf("writing to %s, the read-only volume's disk, succeeded: %+v", dev, res)
	}

	// One writer at a time.
	if _, err := d.c.CreateVM(ctx, api.CreateVMRequest{Name: "writer3", Plugin: "diary", Volumes: mount}); err == nil || !strings.Contains(err.Error(), "held by writer2") {
		t.Fatalf("a second writer: %v, want VOLUME_IN_USE", err)
	}
	// The data is on the host's image, the filesystem clean after the stop.
	if _, err := d.c.DeleteVM(ctx, "writer2"); err != nil {
		t.Fatal(err)
	}
	v, err := d.c.Volume(ctx, "notes")
	if err != nil || len(v.Attachments) != 0 {
		t.Fatalf("notes after both VMs: %+v %v", v, err)
	}
	if out := string(ext4test.Cat(t, v.Path, "/diary")); out != "writer1\nwriter2\n" {
		t.Errorf("the image holds the diary %q", out)
	}
	if ref, err = d.c.Volume(ctx, "ref"); err != nil || len(ref.Attachments) != 0 {
		t.Fatalf("ref after writer2: %+v %v", ref, err)
	}
	if after, err := os.ReadFile(ref.Path); err != nil || !bytes.Equal(after, refImage) {
		t.Errorf("the read-only volume's image changed while writer2 had it (%v)", err)
	}
	if _, err := d.c.DeleteVolume(ctx, "ref"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.c.DeleteVolume(ctx, "notes"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(v.Path); !os.IsNotExist(err) {
		t.Errorf("the deleted volume's image is still there: %v", err)
	}
}
