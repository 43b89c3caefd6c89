package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/testutil/ext4test"
	"github.com/volantvm/volant/lib/testutil/wait"
)

// counterPlugin builds (into outDir) an initramfs plugin whose workload,
// busybox httpd, counts requests to /cgi-bin/count in a file in the
// guest's memory (/tmp/n) and tells who the guest is at /cgi-bin/id.
func counterPlugin(t testing.TB, outDir, modulesDir, kestrel string) []byte {
	t.Helper()
	cgi := func(body string) string { return "#!/bin/busybox sh\n" + body + "\n" }
	return guestPlugin{Name: "counter", Health: "/index.html", Files: map[string]string{
		"index.html":    "counter\n",
		"cgi-bin/count": cgi(`n=$(/bin/busybox cat /tmp/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /tmp/n; printf "Content-Type: text/plain\r\n\r\n%s\n" $n`),
		"cgi-bin/id":    cgi(`printf "Content-Type: text/plain\r\n\r\n%s\n" "$(/bin/busybox hostname)"`),
	}}.manifest(t, outDir, modulesDir, kestrel)
}

// TestVMSnapshots boots a real guest (QEMU TCG, kestrel) through volantd
// that counts requests in memory, snapshots it after three, starts two VMs
// from the snapshot — each answers at its own address, under its own
// name, with the saved count, and its network interface has the MAC
// volantd leased it, not the source's — as do the replicas of a
// deployment started from it when it scales up, and rolls the source back
// to the snapshot, which takes its count file back to what it was.
func TestVMSnapshots(t *testing.T) {
	h := newQEMUHost(t)
	k, kestrel := h.k, h.kestrel
	d := h.daemon(t, "--stop-timeout", "10s")
	ctx := context.Background()
	if _, err := d.c.InstallPlugin(ctx, counterPlugin(t, filepath.Join(h.dir, "data", "plugins", "counter"), k.ModulesDir, kestrel), client.InstallOptions{}); err != nil {
		t.Fatal(err)
	}
	running := func(name string) *api.VM {
		t.Helper()
		vm, err := d.c.WaitVM(ctx, name, api.VMRunning, 150*time.Second)
		if err != nil {
			rc, _ := d.c.VMLogs(ctx, name, api.LogOptions{Tail: 60})
			launchLog, _ := os.ReadFile(filepath.Join(h.dir, "data", "vms", name, "launch.log"))
			t.Fatalf("%s never ran: %v\nconsole:\n%s\nvolant-launch:\n%s", name, err, readAll(rc), launchLog)
		}
		return vm
	}
	count := func(vm *api.VM, want string) {
		t.Helper()
		if got, err := get(h.fakeHost, vm.IP, "/cgi-bin/count"); err != nil || got != want {
			t.Fatalf("%s (%s) counts %q (%v), want %s", vm.Name, vm.IP, got, err, want)
		}
	}
	// ownMAC checks that the guest's one network interface (besides lo)
	// has the MAC volantd reports for the VM, and that no VM seen before
	// has it.
	macs := map[string]string{}
	ownMAC := func(vm *api.VM) {
		t.Helper()
		res, err := d.c.Exec(ctx, vm.Name, api.ExecRequest{Command: []string{"sh", "-c",
			`for i in /sys/class/net/*; do [ "$i" = /sys/class/net/lo ] || echo "${i##*/} $(cat $i/address)"; done`}})
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("reading %s's MAC: %+v %v", vm.Name, res, err)
		}
		f := strings.Fields(res.Stdout)
		if len(f) != 2 {
			t.Fatalf("%s's network interfaces besides lo: %q, want one", vm.Name, res.Stdout)
		}
		guest, err := net.ParseMAC(f[1])
		if err != nil {
			t.Fatalf("%s's %s has address %q: %v", vm.Name, f[0], f[1], err)
		}
		if leased, err := net.ParseMAC(vm.MAC); err != nil || guest.String() != leased.String() {
			t.Fatalf("%s's %s has MAC %s; volantd reports %q", vm.Name, f[0], guest, vm.MAC)
		}
		if other, ok := macs[guest.String()]; ok && other != vm.Name {
			t.Fatalf("%s has MAC %s, as %s", vm.Name, guest, other)
		}
		macs[guest.String()] = vm.Name
	}

	if _, err := d.c.CreateVM(ctx, api.CreateVMRequest{Name: "src", Plugin: "counter"}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	src := running("src")
	t.Logf("src booted to healthy in %v", time.Since(t0).Round(time.Millisecond))
	for i := 1; i <= 3; i++ {
		count(src, fmt.Sprint(i))
	}
	snap, err := d.c.SnapshotVM(ctx, "src", api.CreateSnapshotRequest{Name: "warm"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("snapshot: state %d bytes (guest memory %d MiB), disks %d bytes, paused %d ms", snap.StateBytes, snap.MemoryMB, snap.DiskBytes, snap.PausedMS)
	if snap.VM != "src" || snap.Plugin != "counter" || snap.StateBytes <= 0 {
		t.Fatalf("snapshot %+v", snap)
	}
	count(src, "4") // the source ran on
	ownMAC(src)

	var clones []*api.VM
	for _, name := range []string{"clone1", "clone2"} {
		t0 := time.Now()
		if _, err := d.c.CreateVM(ctx, api.CreateVMRequest{Name: name, FromSnapshot: "warm"}); err != nil {
			t.Fatal(err)
		}
		vm := running(name)
		t.Logf("%s restored to healthy in %v at %s", name, time.Since(t0).Round(time.Millisecond), vm.IP)
		clones = append(clones, vm)
	}
	ips := map[string]string{src.IP: "src"}
	for _, vm := range clones {
		if other, ok := ips[vm.IP]; ok || vm.IP == "" {
			t.Fatalf("%s has address %q, as %s", vm.Name, vm.IP, other)
		}
		ips[vm.IP] = vm.Name
		count(vm, "4") // the snapshot's 3, plus this request
		if id, err := get(h.fakeHost, vm.IP, "/cgi-bin/id"); err != nil || id != vm.Name {
			t.Errorf("%s says it is %q (%v)", vm.Name, id, err)
		}
		ownMAC(vm)
	}
	count(src, "5") // the source kept its own count
	if id, err := get(h.fakeHost, src.IP, "/cgi-bin/id"); err != nil || id != "src" {
		t.Errorf("src says it is %q (%v)", id, err)
	}
	if _, err := d.c.DeleteSnapshot(ctx, "warm"); !apierr.Is(err, apierr.Conflict) {
		t.Errorf("deleting a snapshot in use: %v, want CONFLICT", err)
	}

	// A deployment from the snapshot: scaling up restores.
	if _, err := d.c.CreateDeployment(ctx, api.CreateDeploymentRequest{Name: "svc", Replicas: 1, FromSnapshot: "warm"}); err != nil {
		t.Fatal(err)
	}
	waitCurrent(t, d.c, "svc", 1, 150*time.Second)
	if _, err := d.c.ScaleDeployment(ctx, "svc", 2); err != nil {
		t.Fatal(err)
	}
	waitCurrent(t, d.c, "svc", 2, 150*time.Second)
	for _, name := range []string{"svc-1", "svc-2"} {
		vm, err := d.c.VM(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if other, ok := ips[vm.IP]; ok || vm.IP == "" {
			t.Fatalf("%s has address %q, as %s", vm.Name, vm.IP, other)
		}
		ips[vm.IP] = vm.Name
		count(vm, "4")
		ownMAC(vm)
	}
	if _, err := d.c.DeleteDeployment(ctx, "svc"); err != nil {
		t.Fatal(err)
	}

	// Rolling src back: its count file is the snapshot's again.
	if _, err := d.c.RestoreVM(ctx, "src", api.RestoreVMRequest{Snapshot: "warm"}); err != nil {
		t.Fatal(err)
	}
	src = running("src")
	count(src, "4")
	ownMAC(src) // its own MAC still
	if id, err := get(h.fakeHost, src.IP, "/cgi-bin/id"); err != nil || id != "src" {
		t.Errorf("src after its restore says it is %q (%v)", id, err)
	}
	// vm.restored follows the health report that made src running.
	restored := 0
	for deadline := time.Now().Add(20 * time.Second); restored != 5 && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		restored = 0
		for _, e := range collectEvents(t, d.c, api.EventVMRestored) {
			if strings.Contains(string(e.Data), `"snapshot":"warm"`) {
				restored++
			}
		}
	}
	if restored != 5 {
		t.Errorf("%d vm.restored events, want 5 (clone1, clone2, svc-1, svc-2, src)", restored)
	}
	for _, name := range []string{"clone1", "clone2", "src"} {
		if _, err := d.c.DeleteVM(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.c.DeleteSnapshot(ctx, "warm"); err != nil {
		t.Fatal(err)
	}
}

// TestVMRestoreRollsVolumeBack boots a real guest through volantd whose
// workload adds a line to a diary on its volume each time it starts,
// snapshots it, starts it again (two lines), and rolls it back to the
// snapshot: the volume's image holds the snapshot's one line again, and
// the VM, which kept its volume, adds to that when it next boots.
func TestVMRestoreRollsVolumeBack(t *testing.T) {
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
	running := func(what string) *api.VM {
		t.Helper()
		vm, err := d.c.WaitVM(ctx, "keeper", api.VMRunning, 150*time.Second)
		if err != nil {
			rc, _ := d.c.VMLogs(ctx, "keeper", api.LogOptions{Tail: 60})
			t.Fatalf("keeper never ran %s: %v\n%s", what, err, readAll(rc))
		}
		return vm
	}
	diary := func(vm *api.VM, want string) {
		t.Helper()
		if got, err := fetch(h.fakeHost, "http://"+vm.IP+"/diary"); err != nil || got != want {
			t.Fatalf("the diary reads %q (%v), want %q", got, err, want)
		}
	}
	stop := func() {
		t.Helper()
		if _, err := d.c.StopVM(ctx, "keeper"); err != nil {
			t.Fatal(err)
		}
		if _, err := d.c.WaitVM(ctx, "keeper", api.VMStopped, 60*time.Second); err != nil {
			t.Fatal(err)
		}
	}

	if _, err := d.c.CreateVM(ctx, api.CreateVMRequest{Name: "keeper", Plugin: "diary",
		Volumes: []api.VolumeMount{{Volume: "notes", Path: "/data"}}}); err != nil {
		t.Fatal(err)
	}
	diary(running("at first"), "keeper\n")
	if _, err := d.c.SnapshotVM(ctx, "keeper", api.CreateSnapshotRequest{Name: "one-line"}); err != nil {
		t.Fatal(err)
	}
	stop()
	if _, err := d.c.StartVM(ctx, "keeper"); err != nil {
		t.Fatal(err)
	}
	diary(running("again"), "keeper\nkeeper\n")

	t0 := time.Now()
	if _, err := d.c.RestoreVM(ctx, "keeper", api.RestoreVMRequest{Snapshot: "one-line"}); err != nil {
		t.Fatal(err)
	}
	running("from its snapshot")
	t.Logf("keeper rolled back to healthy in %v", time.Since(t0).Round(time.Millisecond))
	v, err := d.c.Volume(ctx, "notes")
	if err != nil {
		t.Fatal(err)
	}
	// Read while the guest runs: it wrote nothing since the snapshot, so
	// the image is what the roll-back put there.
	if out := string(ext4test.Cat(t, v.Path, "/diary")); out != "keeper\n" {
		t.Fatalf("the rolled-back VM runs on a volume whose diary is %q, want the snapshot's one line", out)
	}
	// The restore settles (vm.restored) before the stop, or the next
	// start would restore again.
	if err := wait.For(30*time.Second, func() bool { return len(collectEvents(t, d.c, api.EventVMRestored)) == 1 }); err != nil {
		t.Fatalf("waiting for vm.restored: %v", err)
	}
	stop()
	if v, err = d.c.Volume(ctx, "notes"); err != nil {
		t.Fatal(err)
	}
	if out := string(ext4test.Cat(t, v.Path, "/diary")); out != "keeper\n" {
		t.Fatalf("after the roll-back the volume's image holds the diary %q, want the snapshot's one line", out)
	}
	if len(v.Attachments) != 1 || v.Attachments[0].VM != "keeper" {
		t.Errorf("notes is attached to %+v, want keeper alone", v.Attachments)
	}
	if _, err := d.c.StartVM(ctx, "keeper"); err != nil {
		t.Fatal(err)
	}
	diary(running("after its roll-back"), "keeper\nkeeper\n")
	if _, err := d.c.DeleteVM(ctx, "keeper"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.c.DeleteSnapshot(ctx, "one-line"); err != nil {
		t.Fatal(err)
	}
}

// ledgerPlugin builds (into outDir) an initramfs plugin whose workload,
// busybox httpd, keeps a ledger on the volume at /data: /cgi-bin/add
// appends the guest's hostname to it (synced) and prints it, and
// /cgi-bin/read prints it.
func ledgerPlugin(t testing.TB, outDir, modulesDir, kestrel string) []byte {
	t.Helper()
	cgi := func(body string) string {
		return "#!/bin/busybox sh\n" + body + "\nprintf \"Content-Type: text/plain\\r\\n\\r\\n\"; /bin/busybox cat /data/ledger\n"
	}
	return guestPlugin{Name: "ledger", Health: "/index.html", Files: map[string]string{
		"index.html":   "ledger\n",
		"cgi-bin/add":  cgi(`/bin/busybox hostname >> /data/ledger; /bin/busybox sync`),
		"cgi-bin/read": cgi(``),
	}}.manifest(t, outDir, modulesDir, kestrel)
}

// TestVMSnapshotCloneHasItsOwnVolume boots a real guest through volantd
// that writes to its named volume, snapshots it, writes again, and starts
// a new VM from the snapshot: the new VM (its hypervisor jailed, as
// volantd runs them) finds the volume as it was when the snapshot was
// taken, on an image of its own made from the snapshot's copy without
// copying it (a reflink, else a qcow2 overlay), and what each writes
// afterwards stays its own: not in the other, not in the snapshot's copy,
// and the named volume stays attached to the source alone.
func TestVMSnapshotCloneHasItsOwnVolume(t *testing.T) {
	h := newQEMUHost(t)
	k, kestrel := h.k, h.kestrel
	d := h.daemon(t, "--stop-timeout", "10s")
	ctx := context.Background()
	if _, err := d.c.InstallPlugin(ctx, ledgerPlugin(t, filepath.Join(h.dir, "data", "plugins", "ledger"), k.ModulesDir, kestrel), client.InstallOptions{}); err != nil {
		t.Fatal(err)
	}
	const volSize = 64 << 20
	if _, err := d.c.CreateVolume(ctx, api.CreateVolumeRequest{Name: "books", Size: "64MiB"}); err != nil {
		t.Fatal(err)
	}
	running := func(name string) *api.VM {
		t.Helper()
		vm, err := d.c.WaitVM(ctx, name, api.VMRunning, 150*time.Second)
		if err != nil {
			rc, _ := d.c.VMLogs(ctx, name, api.LogOptions{Tail: 60})
			launchLog, _ := os.ReadFile(filepath.Join(h.dir, "data", "vms", name, "launch.log"))
			t.Fatalf("%s never ran: %v\nconsole:\n%s\nvolant-launch:\n%s", name, err, readAll(rc), launchLog)
		}
		return vm
	}
	ledger := func(vm *api.VM, path, want string) {
		t.Helper()
		if got, err := get(h.fakeHost, vm.IP, path); err != nil || got != want {
			t.Fatalf("%s %s: the ledger reads %q (%v), want %q", vm.Name, path, got, err, want)
		}
	}

	if _, err := d.c.CreateVM(ctx, api.CreateVMRequest{Name: "src", Plugin: "ledger",
		Volumes: []api.VolumeMount{{Volume: "books", Path: "/data"}}}); err != nil {
		t.Fatal(err)
	}
	src := running("src")
	ledger(src, "/cgi-bin/add", "src")
	snap, err := d.c.SnapshotVM(ctx, "src", api.CreateSnapshotRequest{Name: "signed"})
	if err != nil {
		t.Fatal(err)
	}
	var vol *api.SnapshotDisk
	for i, dk := range snap.Disks {
		if dk.Role == "volume:0" {
			vol = &snap.Disks[i]
		}
	}
	if vol == nil || vol.MountPath != "/data" || vol.Method == "" {
		t.Fatalf("the snapshot's disks %+v: want volume:0, mounted at /data, copied", snap.Disks)
	}
	t.Logf("snapshot: the volume copied by %s, %d bytes allocated of %d", vol.Method, vol.AllocatedBytes, volSize)
	ledger(src, "/cgi-bin/add", "src\nsrc") // after the snapshot

	if _, err := d.c.CreateVM(ctx, api.CreateVMRequest{Name: "clone", FromSnapshot: "signed"}); err != nil {
		t.Fatal(err)
	}
	clone := running("clone")
	ledger(clone, "/cgi-bin/read", "src") // the volume as the snapshot saw it
	ledger(clone, "/cgi-bin/add", "src\nclone")
	ledger(src, "/cgi-bin/read", "src\nsrc") // the clone wrote to its own image

	// The clone's image of the volume: derived from the snapshot's copy,
	// not a copy of it.
	disks := filepath.Join(h.dir, "data", "vms", "clone", "disks")
	imgs, _ := filepath.Glob(filepath.Join(disks, "volume-0.from-snapshot.*"))
	if len(imgs) != 1 {
		ents, _ := os.ReadDir(disks)
		t.Fatalf("the clone's volume image: %v (in %s: %v)", imgs, disks, ents)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(imgs[0], &st); err != nil {
		t.Fatal(err)
	}
	t.Logf("the clone's volume: %s, %d bytes allocated", filepath.Base(imgs[0]), st.Blocks*512)
	if strings.HasSuffix(imgs[0], ".qcow2") && st.Blocks*512 >= volSize/4 {
		t.Errorf("the clone's qcow2 overlay takes %d bytes: a copy, not an overlay", st.Blocks*512)
	}
	info, err := launch.ReadSnapshotInfo(snap.Path)
	if err != nil {
		t.Fatal(err)
	}
	for _, dk := range info.Disks {
		if dk.Role == "volume:0" {
			if out := string(ext4test.Cat(t, filepath.Join(snap.Path, dk.File), "/ledger")); out != "src\n" {
				t.Errorf("the snapshot's copy of the volume now holds %q, want what it saved", out)
			}
		}
	}
	v, err := d.c.Volume(ctx, "books")
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Attachments) != 1 || v.Attachments[0].VM != "src" {
		t.Errorf("books is attached to %+v, want src alone", v.Attachments)
	}

	for _, name := range []string{"clone", "src"} {
		if _, err := d.c.DeleteVM(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.c.DeleteSnapshot(ctx, "signed"); err != nil {
		t.Fatal(err)
	}
	if out := string(ext4test.Cat(t, v.Path, "/ledger")); out != "src\nsrc\n" {
		t.Errorf("after both VMs went, books holds %q, want the source's two lines", out)
	}
}
