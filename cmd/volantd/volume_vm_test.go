package main

import (
	"context"
	"os"
	"path/filepath"
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

// TestVolumeOutlivesVM boots real guests (QEMU TCG, kestrel) through
// volantd: a VM writes to its volume; the VM is deleted; a new VM given
// the same volume finds the data and adds to it; a VM that would write to
// the volume while the second runs is refused; the data is on the image on
// the host.
func TestVolumeOutlivesVM(t *testing.T) {
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

	boot := func(name string) *api.VM {
		t.Helper()
		if _, err := d.c.CreateVM(ctx, api.CreateVMRequest{Name: name, Plugin: "diary", Volumes: mount}); err != nil {
			t.Fatal(err)
		}
		vm, err := d.c.WaitVM(ctx, name, api.VMRunning, 150*time.Second)
		if err != nil {
			rc, _ := d.c.VMLogs(ctx, name, api.LogOptions{Tail: 60})
			t.Fatalf("%s never ran: %v\n%s", name, err, readAll(rc))
		}
		return vm
	}
	first := boot("writer1")
	if body, err := fetch(h.fakeHost, "http://"+first.IP+"/first"); err != nil || body != "writer1\n" {
		t.Fatalf("writer1's volume: /first = %q %v", body, err)
	}
	if _, err := d.c.DeleteVM(ctx, "writer1"); err != nil {
		t.Fatal(err)
	}

	second := boot("writer2")
	body, err := fetch(h.fakeHost, "http://"+second.IP+"/first")
	if err != nil || body != "writer1\n" {
		t.Fatalf("writer2 does not see what writer1 wrote: /first = %q %v", body, err)
	}
	if body, err := fetch(h.fakeHost, "http://"+second.IP+"/diary"); err != nil || body != "writer1\nwriter2\n" {
		t.Fatalf("the diary is %q (%v), want both VMs' lines", body, err)
	}
	t.Logf("writer2 (%s) read what writer1 wrote before it was deleted", second.IP)

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
	if _, err := d.c.DeleteVolume(ctx, "notes"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(v.Path); !os.IsNotExist(err) {
		t.Errorf("the deleted volume's image is still there: %v", err)
	}
}
