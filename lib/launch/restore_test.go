package launch

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/volume"
)

// snapshotDir writes a snapshot's directory as Snapshot would: its info,
// an empty state directory, a rootfs copy and a volume copy.
func snapshotDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, SnapshotStateName), 0o700)
	os.MkdirAll(filepath.Join(dir, SnapshotDisksName), 0o700)
	for _, f := range []string{"0.img", "1.img"} {
		if err := os.WriteFile(filepath.Join(dir, SnapshotDisksName, f), []byte("saved "+f), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	info := &SnapshotInfo{Version: 1, VM: "src", VMM: "qemu", Accel: "tcg", Machine: "microvm", CPUs: 1, MemoryMB: 128,
		Kernel: "/k/vmlinux", CreatedAt: time.Now(), Disks: []SnapshotDisk{
			{Role: "rootfs", File: "disks/0.img", Source: "/x/rootfs.img"},
			{Role: "volume:0", File: "disks/1.img", Source: "/x/data.img", Serial: "volant-vol0", MountPath: "/data"},
			{Role: "disk:ref", ReadOnly: true, Artifact: "/cache/ref.img", Source: "/cache/ref.img"},
		}}
	if err := WriteSnapshotInfo(dir, info); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestFromSnapshot(t *testing.T) {
	snap := snapshotDir(t)
	disks := filepath.Join(t.TempDir(), "disks")
	s := Spec{Name: "clone", Kernel: "/my/kernel"}
	if err := FromSnapshot(context.Background(), &s, snap, disks); err != nil {
		t.Fatal(err)
	}
	if s.VMM != "qemu" || s.Accel != "tcg" || s.Machine != "microvm" || s.CPUs != 1 || s.MemoryMB != 128 || s.Kernel != "/my/kernel" {
		t.Errorf("the machine was not taken from the snapshot: %+v", s)
	}
	if s.Restore == nil || s.Restore.State != filepath.Join(snap, SnapshotStateName) {
		t.Errorf("restore %+v", s.Restore)
	}
	root, ok := s.OwnDisks["rootfs"]
	if !ok || len(s.OwnDisks) != 1 || filepath.Dir(root.Path) != disks {
		t.Fatalf("own disks %+v", s.OwnDisks)
	}
	if len(s.Volumes) != 1 || s.Volumes[0].Path != "/data" || filepath.Dir(s.Volumes[0].File) != disks {
		t.Fatalf("volumes %+v", s.Volumes)
	}
	// The image is the VM's own: writing it leaves the snapshot as it was.
	if root.Format == volume.FormatRaw {
		if err := os.WriteFile(root.Path, []byte("the clone's"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(snap, "disks/0.img")); string(b) != "saved 0.img" {
		t.Errorf("the snapshot's copy changed: %q", b)
	}
	// A second start keeps the images the VM already has.
	s2 := Spec{Name: "clone"}
	if err := FromSnapshot(context.Background(), &s2, snap, disks); err != nil {
		t.Fatal(err)
	}
	if s2.OwnDisks["rootfs"] != root || s2.Kernel != "/k/vmlinux" {
		t.Errorf("second start: %+v, want %+v and the snapshot's kernel", s2.OwnDisks["rootfs"], root)
	}
}

func TestFromSnapshotRefusesAnotherMachine(t *testing.T) {
	snap := snapshotDir(t)
	for _, s := range []Spec{
		{Name: "c", MemoryMB: 256},
		{Name: "c", CPUs: 2},
		{Name: "c", VMM: "cloud-hypervisor"},
		{Name: "c", Machine: "pc"},
		{Name: "c", Volumes: []Volume{{File: "/x", Path: "/data"}}},
	} {
		err := FromSnapshot(context.Background(), &s, snap, t.TempDir())
		if e := apierr.From(err); e == nil || e.Code != apierr.InvalidInput {
			t.Errorf("%+v: %v, want INVALID_INPUT", s, err)
		}
	}
	s := Spec{Name: "c"}
	if e := apierr.From(FromSnapshot(context.Background(), &s, t.TempDir(), t.TempDir())); e == nil || e.Code != apierr.NotFound {
		t.Errorf("no snapshot: %v, want NOT_FOUND", e)
	}
}

// TestRollBackVolumes: a VM rolled back to a snapshot of itself keeps its
// volume, which then holds the snapshot's copy again (and the snapshot
// stays as it was); volumes that are not the snapshot's, or were resized
// since, are refused before anything is written.
func TestRollBackVolumes(t *testing.T) {
	ctx := context.Background()
	snap := snapshotDir(t)
	vol := filepath.Join(t.TempDir(), "data.img")
	// The copy in the snapshot is "saved 1.img" (11 bytes); the volume
	// was written since, at the same size.
	if err := os.WriteFile(vol, []byte("written 1.i"), 0o600); err != nil {
		t.Fatal(err)
	}
	mine := []Volume{{File: vol, Format: volume.FormatRaw, Path: "/data"}}
	for _, c := range []struct {
		vols []Volume
		code apierr.Code
	}{
		{nil, apierr.InvalidInput},
		{[]Volume{{File: vol, Path: "/other"}}, apierr.InvalidInput},
		{[]Volume{{File: vol, Path: "/data", ReadOnly: true}}, apierr.InvalidInput},
		{append(mine, Volume{File: vol, Path: "/more"}), apierr.InvalidInput},
	} {
		if err := RollBackVolumes(ctx, snap, c.vols); apierr.CodeOf(err) != c.code {
			t.Errorf("rolling back %+v: %v, want %s", c.vols, err, c.code)
		}
	}
	if b, _ := os.ReadFile(vol); string(b) != "written 1.i" {
		t.Fatalf("a refused roll-back wrote the volume: %q", b)
	}

	if err := RollBackVolumes(ctx, snap, mine); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(vol); string(b) != "saved 1.img" {
		t.Errorf("the volume holds %q after its roll-back, want the snapshot's copy", b)
	}
	if err := os.WriteFile(vol, []byte("written again"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(snap, "disks/1.img")); string(b) != "saved 1.img" {
		t.Errorf("writing the rolled-back volume changed the snapshot's copy: %q", b)
	}
	// "written again" is 13 bytes: the volume was resized.
	if err := RollBackVolumes(ctx, snap, mine); !apierr.Is(err, apierr.Conflict) {
		t.Errorf("a resized volume: %v, want CONFLICT", err)
	}

	// The spec keeps the VM's volume, and makes its own disks.
	s := Spec{Name: "src", Volumes: mine}
	disks := filepath.Join(t.TempDir(), "disks")
	if err := FromSnapshotKeepingVolumes(ctx, &s, snap, disks); err != nil {
		t.Fatal(err)
	}
	if len(s.Volumes) != 1 || s.Volumes[0] != mine[0] || len(s.OwnDisks) != 1 || s.Restore == nil {
		t.Errorf("spec %+v", s)
	}
	if ents, _ := os.ReadDir(disks); len(ents) != 1 {
		t.Errorf("the VM's disks directory holds %d images, want the rootfs's alone", len(ents))
	}
	if err := FromSnapshotKeepingVolumes(ctx, &Spec{Name: "src"}, snap, disks); !apierr.Is(err, apierr.InvalidInput) {
		t.Errorf("keeping no volumes of a snapshot that has one: %v, want INVALID_INPUT", err)
	}
}
