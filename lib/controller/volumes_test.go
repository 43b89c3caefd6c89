package controller_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/controller/controllertest"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/testutil/mntnstest"
	"github.com/volantvm/volant/lib/testutil/wait"
	"github.com/volantvm/volant/lib/volume"
)

func (f *fixture) eventTypes(resource string) string {
	f.t.Helper()
	evs, err := f.st.EventsSince(f.ctx, 0, 0)
	if err != nil {
		f.t.Fatal(err)
	}
	var out []string
	for _, e := range evs {
		if e.ResourceID == resource && strings.HasPrefix(e.Type, "volume.") {
			out = append(out, e.Type)
		}
	}
	return strings.Join(out, " ")
}

func stagedSpec(t *testing.T, c *controller.Controller, vm string) launch.Spec {
	t.Helper()
	b, err := os.ReadFile(c.SpecPath(vm))
	if err != nil {
		t.Fatal(err)
	}
	var s launch.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

func fsSize(t *testing.T, img string) string {
	t.Helper()
	out, err := exec.Command("dumpe2fs", "-h", img).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs: %v\n%s", err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == "Block count" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func TestVolumeLifecycle(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controller()
	f.plugin(c, "web")

	v, err := c.CreateVolume(f.ctx, api.CreateVolumeRequest{Name: "data", Size: "64MiB"})
	if err != nil {
		t.Fatal(err)
	}
	if v.State != api.VolumeReady || v.SizeBytes != 64<<20 || v.Size != "64MiB" || v.FS != "ext4" || v.Path != filepath.Join(f.dir, "volumes", "data.img") {
		t.Fatalf("created %+v", v)
	}
	if v.AllocatedBytes <= 0 || v.AllocatedBytes >= v.SizeBytes/4 {
		t.Errorf("allocated %d of %d: not a sparse image", v.AllocatedBytes, v.SizeBytes)
	}
	if _, err := c.CreateVolume(f.ctx, api.CreateVolumeRequest{Name: "data", SizeBytes: 32 << 20}); !apierr.Is(err, apierr.Conflict) {
		t.Fatalf("second create: %v", err)
	}
	for _, bad := range []api.CreateVolumeRequest{{Name: "Data", Size: "1G"}, {Name: "x"}, {Name: "x", Size: "1G", SizeBytes: 1},
		{Name: "x", Size: "1M"}, {Name: "x", Size: "1G", FS: "ntfs"}} {
		if _, err := c.CreateVolume(f.ctx, bad); !apierr.Is(err, apierr.InvalidInput) {
			t.Errorf("create %+v: %v, want INVALID_INPUT", bad, err)
		}
	}

	// A VM with the volume: the spec carries it, the VM and the volume
	// show each other.
	vm, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "web1", Plugin: "web", Volumes: []api.VolumeMount{{Volume: "data", Path: "/data"}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(vm.Volumes) != 1 || vm.Volumes[0] != (api.VolumeMount{Volume: "data", Path: "/data"}) {
		t.Errorf("VM volumes %+v", vm.Volumes)
	}
	spec := stagedSpec(t, c, "web1")
	if len(spec.Volumes) != 1 || spec.Volumes[0] != (launch.Volume{File: v.Path, Format: "raw", Path: "/data"}) {
		t.Errorf("staged volumes %+v", spec.Volumes)
	}
	got, _ := c.Volume(f.ctx, "data")
	if len(got.Attachments) != 1 || got.Attachments[0] != (api.VolumeAttachment{VM: "web1", Path: "/data", Holding: true}) {
		t.Errorf("attachments %+v", got.Attachments)
	}

	// In use: no delete, no resize.
	if _, err := c.DeleteVolume(f.ctx, "data"); !apierr.Is(err, apierr.VolumeInUse) || !strings.Contains(err.Error(), "web1") {
		t.Errorf("delete while attached: %v, want VOLUME_IN_USE naming web1", err)
	}
	if _, err := c.ResizeVolume(f.ctx, "data", api.ResizeVolumeRequest{Size: "128MiB"}); !apierr.Is(err, apierr.VolumeInUse) {
		t.Errorf("resize while held: %v, want VOLUME_IN_USE", err)
	}

	// Stopped, the VM holds it no more: it grows, data and all.
	if _, err := c.StopVM(f.ctx, "web1"); err != nil {
		t.Fatal(err)
	}
	got, _ = c.Volume(f.ctx, "data")
	if got.Attachments[0].Holding {
		t.Error("a stopped VM still holds its volume")
	}
	if _, err := c.ResizeVolume(f.ctx, "data", api.ResizeVolumeRequest{Size: "32MiB"}); !apierr.Is(err, apierr.InvalidInput) {
		t.Errorf("shrink: %v", err)
	}
	got, err = c.ResizeVolume(f.ctx, "data", api.ResizeVolumeRequest{Size: "128MiB"})
	if err != nil || got.SizeBytes != 128<<20 || got.State != api.VolumeReady {
		t.Fatalf("resize: %+v %v", got, err)
	}
	if st, _ := volume.Stat(v.Path); st.Size != 128<<20 || fsSize(t, v.Path) != "131072" {
		t.Errorf("image %d bytes, filesystem %s blocks after the resize", st.Size, fsSize(t, v.Path))
	}
	// Still attached: no delete until the VM is gone.
	if _, err := c.DeleteVolume(f.ctx, "data"); !apierr.Is(err, apierr.VolumeInUse) {
		t.Errorf("delete while attached to a stopped VM: %v", err)
	}
	if _, err := c.DeleteVM(f.ctx, "web1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(v.Path); err != nil {
		t.Fatalf("deleting the VM touched its volume: %v", err)
	}
	d, err := c.DeleteVolume(f.ctx, "data")
	if err != nil || d.State != api.VolumeDeleted {
		t.Fatalf("delete: %+v %v", d, err)
	}
	if _, err := os.Stat(v.Path); !os.IsNotExist(err) {
		t.Errorf("the image outlived its volume: %v", err)
	}
	if _, err := c.Volume(f.ctx, "data"); !apierr.Is(err, apierr.NotFound) {
		t.Errorf("deleted volume: %v", err)
	}
	if got := f.eventTypes("data"); got != "volume.created volume.attached volume.resized volume.detached volume.deleted" {
		t.Errorf("events: %s", got)
	}

	// A VM naming a volume that does not exist changes nothing.
	if _, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "web2", Plugin: "web", Volumes: []api.VolumeMount{{Volume: "nope", Path: "/data"}}}); !apierr.Is(err, apierr.NotFound) {
		t.Errorf("VM with a missing volume: %v", err)
	}
	if _, err := c.VM(f.ctx, "web2"); !apierr.Is(err, apierr.NotFound) {
		t.Error("the refused VM exists")
	}
	for _, bad := range [][]api.VolumeMount{
		{{Volume: "a", Path: "data"}}, {{Volume: "a", Path: "/proc"}}, {{Volume: "a", Path: "/x"}, {Volume: "a", Path: "/y"}},
		{{Volume: "a", Path: "/x"}, {Volume: "b", Path: "/x"}}, {{Volume: "A", Path: "/x"}},
	} {
		if _, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "web2", Plugin: "web", Volumes: bad}); !apierr.Is(err, apierr.InvalidInput) {
			t.Errorf("volumes %+v: %v, want INVALID_INPUT", bad, err)
		}
	}
}

// One writer at a time: a volume a live VM writes is refused to any other
// VM; a volume live VMs only read may be read by more, not written.
func TestVolumeOneWriter(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controller()
	f.plugin(c, "web")
	if _, err := c.CreateVolume(f.ctx, api.CreateVolumeRequest{Name: "shared", Size: "16MiB"}); err != nil {
		t.Fatal(err)
	}
	mount := func(ro bool) []api.VolumeMount {
		return []api.VolumeMount{{Volume: "shared", Path: "/s", ReadOnly: ro}}
	}
	create := func(name string, ro bool) error {
		_, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: name, Plugin: "web", Volumes: mount(ro)})
		return err
	}
	if err := create("w1", false); err != nil {
		t.Fatal(err)
	}
	for _, ro := range []bool{false, true} {
		err := create("w2", ro)
		if !apierr.Is(err, apierr.VolumeInUse) || !strings.Contains(err.Error(), "w1") {
			t.Errorf("second VM (readonly %v) while w1 writes: %v, want VOLUME_IN_USE", ro, err)
		}
		if e := apierr.From(err); e != nil {
			if holders, _ := e.Details["held_by"].([]string); len(holders) != 1 || holders[0] != "w1" {
				t.Errorf("details %v", e.Details)
			}
		}
	}
	if _, err := c.VM(f.ctx, "w2"); !apierr.Is(err, apierr.NotFound) {
		t.Fatal("a refused VM was recorded")
	}
	if _, err := c.StopVM(f.ctx, "w1"); err != nil {
		t.Fatal(err)
	}
	// Readers share.
	if err := create("r1", true); err != nil {
		t.Fatal(err)
	}
	if err := create("r2", true); err != nil {
		t.Fatalf("a second reader: %v", err)
	}
	// w1 (a writer) cannot start while they read: its start fails.
	if _, err := c.StartVM(f.ctx, "w1"); !apierr.Is(err, apierr.VolumeInUse) {
		t.Fatalf("starting the writer while readers run: %v", err)
	}
	if v, _ := c.VM(f.ctx, "w1"); v.State != api.VMFailed || !strings.Contains(v.Error, "VOLUME_IN_USE") && !strings.Contains(v.Error, "held by") {
		t.Errorf("w1 after the refused start: %s %q", v.State, v.Error)
	}
	if err := create("w3", false); !apierr.Is(err, apierr.VolumeInUse) {
		t.Errorf("a writer while readers run: %v", err)
	}
	for _, n := range []string{"r1", "r2"} {
		if _, err := c.StopVM(f.ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.StartVM(f.ctx, "w1"); err != nil {
		t.Fatalf("the writer, alone again: %v", err)
	}
	if _, err := c.StartVM(f.ctx, "r1"); !apierr.Is(err, apierr.VolumeInUse) {
		t.Errorf("a reader while the writer runs: %v", err)
	}
}

// A volume operation interrupted by a crash is finished or undone by the
// next controller's reconciliation.
func TestVolumeReconcile(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controller()
	for _, n := range []string{"whole", "grown", "gone"} {
		if _, err := c.CreateVolume(f.ctx, api.CreateVolumeRequest{Name: n, Size: "16MiB"}); err != nil {
			t.Fatal(err)
		}
	}
	// "whole": a create that made its image and crashed before recording it.
	f.exec(`UPDATE volumes SET state = 'creating' WHERE name = 'whole'`)
	// "half": a create that crashed while mkfs ran (a temporary file only).
	f.exec(`INSERT INTO volumes (name, size_bytes, fs, format, state, path, created_at, updated_at)
		VALUES ('half', 16777216, 'ext4', 'raw', 'creating', ?, '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z')`, c.VolumePath("half"))
	tmp := filepath.Join(f.dir, "volumes", ".half.img.volant-tmp-123")
	os.WriteFile(tmp, []byte("partial"), 0o600)
	// "grown": a resize to 32MiB that crashed after the file grew.
	f.exec(`UPDATE volumes SET state = 'resizing', size_bytes = 33554432 WHERE name = 'grown'`)
	os.Truncate(c.VolumePath("grown"), 32<<20)
	// "gone": a delete that crashed after the row was marked.
	f.exec(`UPDATE volumes SET state = 'deleting' WHERE name = 'gone'`)

	c2, rep := f.controller()
	r := rep.Volumes
	if sorted(r.Created) != "whole" || sorted(r.Undone) != "half" || sorted(r.Resized) != "grown" || sorted(r.Deleted) != "gone" {
		t.Fatalf("reconcile: %+v", r)
	}
	vs, _ := c2.ListVolumes(f.ctx)
	var names []string
	for _, v := range vs {
		names = append(names, v.Name+":"+string(v.State)+":"+v.Size)
	}
	if strings.Join(names, " ") != "grown:ready:32MiB whole:ready:16MiB" {
		t.Errorf("volumes after reconcile: %v", names)
	}
	if fsSize(t, c.VolumePath("grown")) != "32768" {
		t.Errorf("the resumed grow left the filesystem at %s blocks", fsSize(t, c.VolumePath("grown")))
	}
	for _, p := range []string{tmp, c.VolumePath("half"), c.VolumePath("gone")} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s is left: %v", p, err)
		}
	}
	_, rep = f.controller()
	if r := rep.Volumes; len(r.Created)+len(r.Undone)+len(r.Resized)+len(r.Deleted) != 0 {
		t.Errorf("second reconcile: %+v", r)
	}
}

// A create that fills the host's disk fails with NO_SPACE and leaves no
// row and no file: the volumes directory is a 2 MiB tmpfs in a mount
// namespace of the test's own.
func TestVolumeCreateOnAFullDisk(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controller()
	dir := filepath.Join(f.dir, "volumes")
	os.MkdirAll(dir, 0o700)
	err := mntnstest.Do(t, func() error {
		if err := mntnstest.TmpFS(dir, 2<<20); err != nil {
			return err
		}
		_, err := c.CreateVolume(f.ctx, api.CreateVolumeRequest{Name: "big", Size: "64GiB"})
		if !apierr.Is(err, apierr.NoSpace) {
			t.Errorf("create on a full disk: %v, want NO_SPACE", err)
		}
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			t.Errorf("left on the full disk: %s", e.Name())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Volume(f.ctx, "big"); !apierr.Is(err, apierr.NotFound) {
		t.Errorf("the failed volume is recorded: %v", err)
	}
	if got := f.eventTypes("big"); got != "volume.failed" {
		t.Errorf("events %q, want volume.failed", got)
	}
}

func eventuallyStep(t *testing.T, c *controller.Controller, name, step string) {
	t.Helper()
	var v *api.VM
	var err error
	if werr := wait.For(5*time.Second, func() bool {
		v, err = c.VM(context.Background(), name)
		return err == nil && v.Step == step
	}); werr != nil {
		t.Fatalf("%s: %+v %v, want step %q (%v)", name, v, err, step, werr)
	}
}

func waitVMs(t *testing.T, c *controller.Controller, deployment, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		d, err := c.Deployment(context.Background(), deployment)
		if err == nil && strings.Join(d.VMs, ",") == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("deployment %s: %+v %v, want VMs %s", deployment, d, err, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A deployment's volume template gives each replica its own volume, kept
// on scale-down and reused on scale-up and after the deployment is gone.
func TestDeploymentVolumeTemplates(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controllerWith(controller.Config{Prober: controllertest.NewProber(), MaxBooting: -1, ReconcileInterval: 50 * time.Millisecond})
	f.plugin(c, "web")
	tmpl := []api.VolumeTemplate{{Name: "data", Size: "16MiB", Path: "/data"}}
	for _, bad := range [][]api.VolumeTemplate{
		{{Name: "data", Path: "/data"}}, {{Name: "data", Size: "16MiB", Path: "data"}},
		{{Name: strings.Repeat("d", 60), Size: "16MiB", Path: "/d"}},
		{{Name: "a", Size: "16MiB", Path: "/d"}, {Name: "b", Size: "16MiB", Path: "/d"}},
	} {
		if _, err := c.CreateDeployment(f.ctx, api.CreateDeploymentRequest{Name: "bad", Plugin: "web", Replicas: 1, VolumeTemplates: bad}); !apierr.Is(err, apierr.InvalidInput) {
			t.Errorf("templates %+v: %v, want INVALID_INPUT", bad, err)
		}
	}
	d, err := c.CreateDeployment(f.ctx, api.CreateDeploymentRequest{Name: "svc", Plugin: "web", Replicas: 2, VolumeTemplates: tmpl})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.VolumeTemplates) != 1 || d.VolumeTemplates[0].SizeBytes != 16<<20 || d.VolumeTemplates[0].Size != "16MiB" {
		t.Errorf("templates as recorded: %+v", d.VolumeTemplates)
	}
	waitVMs(t, c, "svc", "svc-1,svc-2")
	eventuallyState(t, c, "svc-1", api.VMStarting)
	eventuallyStep(t, c, "svc-2", "")
	for i, name := range []string{"data-1", "data-2"} {
		v, err := c.Volume(f.ctx, name)
		if err != nil || v.Deployment != "svc" || len(v.Attachments) != 1 || v.Attachments[0].VM != fmt.Sprintf("svc-%d", i+1) {
			t.Fatalf("%s: %+v %v", name, v, err)
		}
	}
	if spec := stagedSpec(t, c, "svc-2"); len(spec.Volumes) != 1 || spec.Volumes[0].File != c.VolumePath("data-2") || spec.Volumes[0].Path != "/data" {
		t.Errorf("svc-2's spec: %+v", spec.Volumes)
	}
	img2, _ := os.Stat(c.VolumePath("data-2"))

	// Scale down: svc-2 goes, data-2 stays, detached.
	if _, err := c.ScaleDeployment(f.ctx, "svc", 1); err != nil {
		t.Fatal(err)
	}
	waitVMs(t, c, "svc", "svc-1")
	if v, err := c.Volume(f.ctx, "data-2"); err != nil || len(v.Attachments) != 0 {
		t.Fatalf("data-2 after the scale-down: %+v %v", v, err)
	}
	// Scale up: svc-2 comes back with the same volume, not a new one.
	if _, err := c.ScaleDeployment(f.ctx, "svc", 2); err != nil {
		t.Fatal(err)
	}
	waitVMs(t, c, "svc", "svc-1,svc-2")
	if v, _ := c.Volume(f.ctx, "data-2"); len(v.Attachments) != 1 || v.Attachments[0].VM != "svc-2" {
		t.Errorf("data-2 after the scale-up: %+v", v.Attachments)
	}
	if img, _ := os.Stat(c.VolumePath("data-2")); !os.SameFile(img, img2) {
		t.Error("the scale-up made a new image for data-2")
	}
	if got := f.eventTypes("data-2"); got != "volume.created volume.attached volume.detached volume.attached" {
		t.Errorf("data-2 events: %s", got)
	}

	// The deployment goes; its volumes stay.
	if _, err := c.DeleteDeployment(f.ctx, "svc"); err != nil {
		t.Fatal(err)
	}
	if vs, _ := c.ListVolumes(f.ctx); len(vs) != 2 || len(vs[0].Attachments)+len(vs[1].Attachments) != 0 {
		t.Errorf("volumes after the deployment's deletion: %+v", vs)
	}

	// A volume of the template's name that is not the deployment's is not
	// taken: the replica is not created, and the deployment says why.
	if _, err := c.CreateVolume(f.ctx, api.CreateVolumeRequest{Name: "logs-1", Size: "16MiB"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateDeployment(f.ctx, api.CreateDeploymentRequest{Name: "other", Plugin: "web", Replicas: 1,
		VolumeTemplates: []api.VolumeTemplate{{Name: "logs", Size: "16MiB", Path: "/logs"}}}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		d, _ := c.Deployment(f.ctx, "other")
		if strings.Contains(d.Error, "logs-1 exists and is not deployment other's") {
			if len(d.VMs) != 0 {
				t.Errorf("a replica was created: %v", d.VMs)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("deployment other: %+v", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
