package controller_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/controller/controllertest"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/testutil/wait"
)

func (f *fixture) eventsOf(resource, prefix string) string {
	f.t.Helper()
	evs, err := f.st.EventsSince(f.ctx, 0, 0)
	if err != nil {
		f.t.Fatal(err)
	}
	var out []string
	for _, e := range evs {
		if e.ResourceID == resource && strings.HasPrefix(e.Type, prefix) {
			out = append(out, e.Type)
		}
	}
	return strings.Join(out, " ")
}

// TestSnapshotLifecycle drives snapshots through the controller with the
// in-memory runtime: a snapshot is made, a VM starts from it (its staged
// spec restores the saved state until the VM reported healthy, then
// boots), the snapshot cannot be deleted while that VM or a deployment
// uses it, and a create that contradicts the snapshot is refused.
func TestSnapshotLifecycle(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controller()
	f.plugin(c, "web")
	f.plugin(c, "other")
	if _, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "src", Plugin: "web", MemoryMB: 192}); err != nil {
		t.Fatal(err)
	}
	snap, err := c.SnapshotVM(f.ctx, "src", api.CreateSnapshotRequest{Name: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	if snap.VM != "src" || snap.Plugin != "web" || snap.MemoryMB != 192 || snap.StateBytes != 4096 || len(snap.UsedBy) != 0 {
		t.Fatalf("snapshot %+v", snap)
	}
	if _, err := os.Stat(filepath.Join(f.dir, "snapshots", "s1", launch.SnapshotInfoName)); err != nil {
		t.Fatal(err)
	}
	if got := f.eventsOf("s1", "snapshot."); got != api.EventSnapshotCreated {
		t.Errorf("events of s1: %q", got)
	}
	if _, err := c.SnapshotVM(f.ctx, "src", api.CreateSnapshotRequest{Name: "s1"}); !apierr.Is(err, apierr.Conflict) {
		t.Errorf("a second s1: %v, want CONFLICT", err)
	}
	if _, err := c.SnapshotVM(f.ctx, "nosuch", api.CreateSnapshotRequest{}); !apierr.Is(err, apierr.NotFound) {
		t.Errorf("snapshot of a missing VM: %v, want NOT_FOUND", err)
	}
	if _, err := c.StopVM(f.ctx, "src"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SnapshotVM(f.ctx, "src", api.CreateSnapshotRequest{Name: "s2"}); !apierr.Is(err, apierr.Conflict) {
		t.Errorf("snapshot of a stopped VM: %v, want CONFLICT", err)
	}
	if _, err := os.Stat(filepath.Join(f.dir, "snapshots", "s2")); !os.IsNotExist(err) {
		t.Errorf("a refused snapshot left %v", err)
	}

	for _, bad := range []api.CreateVMRequest{
		{Name: "c0", FromSnapshot: "s1", Plugin: "other"},
		{Name: "c0", FromSnapshot: "s1", MemoryMB: 128},
		{Name: "c0", FromSnapshot: "s1", Volumes: []api.VolumeMount{{Volume: "v", Path: "/data"}}},
	} {
		if _, err := c.CreateVM(f.ctx, bad); !apierr.Is(err, apierr.InvalidInput) {
			t.Errorf("%+v: %v, want INVALID_INPUT", bad, err)
		}
	}
	if _, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "c0", FromSnapshot: "nosuch"}); !apierr.Is(err, apierr.NotFound) {
		t.Errorf("a missing snapshot: %v, want NOT_FOUND", err)
	}

	vm, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "c1", FromSnapshot: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	if vm.Plugin != "web" || vm.Resources.MemoryMB != 192 {
		t.Errorf("c1 is %+v, want the snapshot's plugin and memory", vm)
	}
	spec := stagedSpec(t, c, "c1")
	if spec.Restore == nil || spec.Restore.State != filepath.Join(f.dir, "snapshots", "s1", launch.SnapshotStateName) || spec.MemoryMB != 192 {
		t.Fatalf("c1's spec restores %+v with %d MiB", spec.Restore, spec.MemoryMB)
	}
	if s, _ := c.Snapshot(f.ctx, "s1"); s == nil || strings.Join(s.UsedBy, ",") != "vm/c1" {
		t.Errorf("s1 used by %v", s)
	}
	if _, err := c.DeleteSnapshot(f.ctx, "s1"); !apierr.Is(err, apierr.Conflict) {
		t.Errorf("deleting s1 while c1 uses it: %v, want CONFLICT", err)
	}

	// Healthy once: the restore is done; a restart boots its own disks.
	if err := c.Report(f.ctx, "c1", controllertest.Healthy("c1"), netip.Addr{}); err != nil {
		t.Fatal(err)
	}
	if err := wait.For(20*time.Second, func() bool { return stagedSpec(t, c, "c1").Restore == nil }); err != nil {
		t.Fatalf("waiting for %s: %v", "c1's restore to settle", err)
	}
	if got := f.eventsOf("c1", "vm.restored"); got != api.EventVMRestored {
		t.Errorf("events of c1: %q", got)
	}

	// Rolling back restores again; a snapshot of another plugin is refused.
	if _, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "o1", Plugin: "other"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RestoreVM(f.ctx, "o1", api.RestoreVMRequest{Snapshot: "s1"}); !apierr.Is(err, apierr.InvalidInput) {
		t.Errorf("restoring a VM of another plugin: %v, want INVALID_INPUT", err)
	}
	if _, err := c.RestoreVM(f.ctx, "c1", api.RestoreVMRequest{Snapshot: "s1"}); err != nil {
		t.Fatal(err)
	}
	if stagedSpec(t, c, "c1").Restore == nil {
		t.Error("a restored VM's spec does not restore")
	}

	// A deployment from the snapshot: its replicas restore.
	if _, err := c.CreateDeployment(f.ctx, api.CreateDeploymentRequest{Name: "svc", Replicas: 1, FromSnapshot: "s1"}); err != nil {
		t.Fatal(err)
	}
	if err := wait.For(20*time.Second, func() bool { _, err := c.VM(f.ctx, "svc-1"); return err == nil }); err != nil {
		t.Fatalf("waiting for %s: %v", "svc-1", err)
	}
	if d, _ := c.Deployment(f.ctx, "svc"); d == nil || d.Plugin != "web" || d.FromSnapshot != "s1" || d.Resources.MemoryMB != 192 {
		t.Errorf("deployment %+v", d)
	}
	if err := wait.For(20*time.Second, func() bool { _, err := os.Stat(c.SpecPath("svc-1")); return err == nil }); err != nil {
		t.Fatalf("waiting for %s: %v", "svc-1's spec", err)
	}
	if stagedSpec(t, c, "svc-1").Restore == nil {
		t.Error("the replica does not restore")
	}

	for _, vm := range []string{"c1", "o1", "src"} {
		if _, err := c.DeleteVM(f.ctx, vm); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.DeleteSnapshot(f.ctx, "s1"); !apierr.Is(err, apierr.Conflict) {
		t.Errorf("deleting s1 while deployment svc uses it: %v, want CONFLICT", err)
	}
	if _, err := c.DeleteDeployment(f.ctx, "svc"); err != nil {
		t.Fatal(err)
	}
	if err := wait.For(20*time.Second, func() bool { s, _ := c.Snapshot(f.ctx, "s1"); return s != nil && len(s.UsedBy) == 0 }); err != nil {
		t.Fatalf("waiting for %s: %v", "s1 to be free", err)
	}
	if _, err := c.DeleteSnapshot(f.ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if ss, err := c.ListSnapshots(f.ctx); err != nil || len(ss) != 0 {
		t.Errorf("snapshots after the delete: %v %v", ss, err)
	}
	if got := f.eventsOf("s1", "snapshot."); got != api.EventSnapshotCreated+" "+api.EventSnapshotDeleted {
		t.Errorf("events of s1: %q", got)
	}
}

// TestUnnamedSnapshotsDoNotCollide: a name is made from the VM and the
// time to the second, so two unnamed snapshots of one VM within a second
// each get a name of their own instead of the second one's CONFLICT.
func TestUnnamedSnapshotsDoNotCollide(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controller()
	f.plugin(c, "web")
	if _, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "src", Plugin: "web"}); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for i := 0; i < 3; i++ {
		s, err := c.SnapshotVM(f.ctx, "src", api.CreateSnapshotRequest{})
		if err != nil {
			t.Fatalf("unnamed snapshot %d: %v", i+1, err)
		}
		if seen[s.Name] || !strings.HasPrefix(s.Name, "src-") {
			t.Fatalf("unnamed snapshot %d is named %q (had %v)", i+1, s.Name, seen)
		}
		seen[s.Name] = true
	}
}
