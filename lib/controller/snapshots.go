package controller

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/layout"
	"github.com/volantvm/volant/lib/store"
)

// Snapshots live in <data dir>/snapshots/<name>/, each a directory as
// launch.Snapshot writes it plus volantd.json (snapshotMeta). The
// directory is the record: it is made as .new-<name> and renamed into
// place once whole, and deleted by renaming it to .del-<name> first, so a
// crash leaves either a whole snapshot or a dot-directory that
// cleanSnapshots removes. A VM started from a snapshot names it in
// <vm dir>/from-snapshot.json (snapshotRef); its disks are derived from
// the snapshot's copies (qcow2 overlays on them where the filesystem
// cannot reflink), so a snapshot is not deleted while such a VM, or a
// deployment whose replicas start from it, exists.
const (
	snapshotMetaName = "volantd.json"
	snapshotRefName  = "from-snapshot.json"
)

// snapshotMeta is what volantd adds to a snapshot: the plugin and size of
// the VM it was taken of, which VMs started from it must have.
type snapshotMeta struct {
	VM     string `json:"vm"`
	Plugin string `json:"plugin"`
	// PluginVersion is the version the VM ran (empty in snapshots taken
	// before versions: the plugin's default one).
	PluginVersion string `json:"plugin_version,omitempty"`
	CPUCores      int    `json:"cpu_cores"`
	MemoryMB      int    `json:"memory_mb"`
}

// snapshotRef ties a VM to the snapshot it was started from. Restore is
// set until the VM ran from the snapshot's state once (it became healthy);
// from then on it boots from its own disks like any VM.
type snapshotRef struct {
	Snapshot string `json:"snapshot"`
	Restore  bool   `json:"restore"`
}

func (c *Controller) snapshotsDir() string { return filepath.Join(c.cfg.DataDir, "snapshots") }

func (c *Controller) snapshotDir(name string) string { return filepath.Join(c.snapshotsDir(), name) }

func snapshotLock(name string) string { return "snapshot/" + name }

func snapshotNotFound(name string) error {
	return apierr.New(apierr.NotFound, "no snapshot named %s", name).With("snapshot", name)
}

// readSnapshot reads a snapshot's two records.
func (c *Controller) readSnapshot(name string) (*launch.SnapshotInfo, snapshotMeta, error) {
	var meta snapshotMeta
	if err := checkName("snapshot name", name); err != nil {
		return nil, meta, err
	}
	dir := c.snapshotDir(name)
	info, err := launch.ReadSnapshotInfo(dir)
	if apierr.Is(err, apierr.NotFound) {
		return nil, meta, snapshotNotFound(name)
	}
	if err != nil {
		return nil, meta, err
	}
	b, err := os.ReadFile(filepath.Join(dir, snapshotMetaName))
	if err != nil {
		return nil, meta, fmt.Errorf("snapshot %s: %w", name, err)
	}
	if err := json.Unmarshal(b, &meta); err != nil {
		return nil, meta, fmt.Errorf("snapshot %s: %s: %w", name, snapshotMetaName, err)
	}
	return info, meta, nil
}

func (c *Controller) snapshotAPI(ctx context.Context, name string, info *launch.SnapshotInfo, meta snapshotMeta) api.Snapshot {
	s := api.Snapshot{Name: name, VM: meta.VM, Plugin: meta.Plugin, VMM: info.VMM, CPUCores: meta.CPUCores, MemoryMB: meta.MemoryMB,
		StateBytes: info.StateBytes, DiskBytes: info.DiskBytes, PausedMS: info.PausedMS, Disks: []api.SnapshotDisk{},
		UsedBy: c.snapshotUsers(ctx, name), Path: c.snapshotDir(name), CreatedAt: info.CreatedAt}
	for _, d := range info.Disks {
		s.Disks = append(s.Disks, api.SnapshotDisk{Role: d.Role, Method: d.Method, AllocatedBytes: d.Bytes, MountPath: d.MountPath})
	}
	return s
}

// snapshotUsers are the VMs whose disks derive from the snapshot and the
// deployments that start replicas from it.
func (c *Controller) snapshotUsers(ctx context.Context, name string) []string {
	users := []string{}
	ents, _ := os.ReadDir(filepath.Join(c.cfg.DataDir, "vms"))
	for _, e := range ents {
		if ref, ok := c.readSnapshotRef(e.Name()); ok && ref.Snapshot == name {
			users = append(users, "vm/"+e.Name())
		}
	}
	var deps []deploymentRow
	if err := c.st.Read(ctx, func(tx *sql.Tx) error {
		var err error
		deps, err = listDeployments(ctx, tx)
		return err
	}); err == nil {
		for _, d := range deps {
			if d.FromSnapshot == name {
				users = append(users, "deployment/"+d.Name)
			}
		}
	}
	return users
}

func (c *Controller) readSnapshotRef(vm string) (snapshotRef, bool) {
	var ref snapshotRef
	b, err := os.ReadFile(filepath.Join(c.vmDir(vm), snapshotRefName))
	if err != nil || json.Unmarshal(b, &ref) != nil || ref.Snapshot == "" {
		return ref, false
	}
	return ref, true
}

func (c *Controller) writeSnapshotRef(vm string, ref snapshotRef) error {
	if err := os.MkdirAll(c.vmDir(vm), 0o755); err != nil {
		return err
	}
	b, _ := json.Marshal(ref)
	return writeFileAtomic(filepath.Join(c.vmDir(vm), snapshotRefName), append(b, '\n'), 0o600)
}

// SnapshotVM saves a running VM as a snapshot (launch.Snapshot: paused,
// disks copied point-in-time, state saved, resumed); the VM runs on.
func (c *Controller) SnapshotVM(ctx context.Context, vm string, req api.CreateSnapshotRequest) (*api.Snapshot, error) {
	if err := checkName("VM name", vm); err != nil {
		return nil, err
	}
	if req.Name != "" {
		if err := checkName("snapshot name", req.Name); err != nil {
			return nil, err
		}
	}
	unlock, err := c.locks.lock(ctx, vm)
	if err != nil {
		return nil, err
	}
	defer unlock()
	name := req.Name
	if name == "" {
		name = c.unusedSnapshotName(vm)
		if err := checkName("snapshot name", name); err != nil {
			return nil, apierr.New(apierr.InvalidInput, "VM %s's name is too long to name its snapshot after it; give the snapshot a name", vm).With("vm", vm)
		}
	}
	unlockSnap, err := c.locks.lock(ctx, snapshotLock(name))
	if err != nil {
		return nil, err
	}
	defer unlockSnap()
	v, err := c.readVM(ctx, vm)
	if err != nil {
		return nil, err
	}
	if v.State != api.VMRunning && v.State != api.VMStarting {
		return nil, apierr.New(apierr.Conflict, "VM %s is %s; only a running VM can be snapshotted", vm, v.State).
			With("vm", vm).With("state", string(v.State))
	}
	final := c.snapshotDir(name)
	if _, err := os.Stat(final); err == nil {
		return nil, apierr.New(apierr.Conflict, "a snapshot named %s exists already", name).With("snapshot", name)
	}
	if err := os.MkdirAll(c.snapshotsDir(), 0o700); err != nil {
		return nil, err
	}
	tmp := filepath.Join(c.snapshotsDir(), ".new-"+name)
	os.RemoveAll(tmp) // a crashed attempt's
	info, err := c.cfg.Runtime.Snapshot(context.WithoutCancel(ctx), vm, tmp)
	if err != nil {
		return nil, fmt.Errorf("snapshotting VM %s: %w", vm, err)
	}
	meta := snapshotMeta{VM: vm, Plugin: v.Plugin, PluginVersion: v.PluginVersion, CPUCores: v.CPUCores, MemoryMB: v.MemoryMB}
	b, _ := json.MarshalIndent(meta, "", "  ")
	if err := writeFileAtomic(filepath.Join(tmp, snapshotMetaName), append(b, '\n'), 0o600); err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	if err := os.Rename(tmp, final); err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("snapshot %s: %w", name, err)
	}
	err = c.st.Tx(ctx, func(tx *sql.Tx) error {
		_, err := store.AppendEvent(ctx, tx, api.EventSnapshotCreated, name, map[string]any{"name": name, "vm": vm,
			"state_bytes": info.StateBytes, "disk_bytes": info.DiskBytes, "paused_ms": info.PausedMS})
		return err
	})
	if err != nil {
		c.log.Warn("recording a snapshot's event", "snapshot", name, "err", err)
	}
	c.notify()
	c.log.Info("VM snapshotted", "vm", vm, "snapshot", name, "state_bytes", info.StateBytes, "disk_bytes", info.DiskBytes,
		"paused_ms", info.PausedMS)
	s := c.snapshotAPI(ctx, name, info, meta)
	return &s, nil
}

// unusedSnapshotName names an unnamed snapshot after its VM and the time
// to the second, with a counter when that second already has one. The
// caller holds the VM's lock, so no other unnamed snapshot of it races.
func (c *Controller) unusedSnapshotName(vm string) string {
	base := vm + "-" + strings.ToLower(time.Now().UTC().Format("20060102t150405"))
	name := base
	for i := 2; ; i++ {
		if _, err := os.Lstat(c.snapshotDir(name)); errors.Is(err, os.ErrNotExist) {
			return name
		}
		name = fmt.Sprintf("%s-%d", base, i)
	}
}

// ListSnapshots returns the snapshots, by name.
func (c *Controller) ListSnapshots(ctx context.Context) ([]api.Snapshot, error) {
	ents, err := os.ReadDir(c.snapshotsDir())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	out := []api.Snapshot{}
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		info, meta, err := c.readSnapshot(e.Name())
		if err != nil {
			c.log.Warn("an unreadable snapshot", "snapshot", e.Name(), "err", err)
			continue
		}
		out = append(out, c.snapshotAPI(ctx, e.Name(), info, meta))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Snapshot returns one snapshot; NOT_FOUND when there is none of that name.
func (c *Controller) Snapshot(ctx context.Context, name string) (*api.Snapshot, error) {
	info, meta, err := c.readSnapshot(name)
	if err != nil {
		return nil, err
	}
	s := c.snapshotAPI(ctx, name, info, meta)
	return &s, nil
}

// DeleteSnapshot deletes a snapshot's files; CONFLICT while a VM started
// from it (whose disks derive from its copies) or a deployment starting
// replicas from it exists.
func (c *Controller) DeleteSnapshot(ctx context.Context, name string) (*api.Snapshot, error) {
	unlock, err := c.locks.lock(ctx, snapshotLock(name))
	if err != nil {
		return nil, err
	}
	defer unlock()
	s, err := c.Snapshot(ctx, name)
	if err != nil {
		return nil, err
	}
	if len(s.UsedBy) > 0 {
		return nil, apierr.New(apierr.Conflict, "snapshot %s is used by %s", name, strings.Join(s.UsedBy, ", ")).
			With("snapshot", name).With("used_by", s.UsedBy).With("hint", "delete those first")
	}
	gone := filepath.Join(c.snapshotsDir(), ".del-"+name)
	if err := os.Rename(c.snapshotDir(name), gone); err != nil {
		return nil, fmt.Errorf("deleting snapshot %s: %w", name, err)
	}
	if err := os.RemoveAll(gone); err != nil {
		c.log.Warn("removing a deleted snapshot's files", "snapshot", name, "err", err)
	}
	err = c.st.Tx(ctx, func(tx *sql.Tx) error {
		_, err := store.AppendEvent(ctx, tx, api.EventSnapshotDeleted, name, map[string]any{"name": name})
		return err
	})
	if err != nil {
		c.log.Warn("recording a snapshot's event", "snapshot", name, "err", err)
	}
	c.notify()
	return s, nil
}

// cleanSnapshots removes what a crash left of snapshots being made or
// deleted.
func (c *Controller) cleanSnapshots() {
	ents, _ := os.ReadDir(c.snapshotsDir())
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".new-") || strings.HasPrefix(e.Name(), ".del-") {
			os.RemoveAll(filepath.Join(c.snapshotsDir(), e.Name()))
		}
	}
}

// fromSnapshot checks a create from a snapshot and fills the request's
// plugin and size from it.
func (c *Controller) fromSnapshot(req *api.CreateVMRequest) error {
	_, meta, err := c.readSnapshot(req.FromSnapshot)
	if err != nil {
		return err
	}
	same := func(field string, given, want any, set bool) error {
		if set && given != want {
			return apierr.New(apierr.InvalidInput, "%s: snapshot %s is of a VM with %v; a VM started from it has the same", field,
				req.FromSnapshot, want).With("field", field).With("snapshot", req.FromSnapshot)
		}
		return nil
	}
	plugin, version := SplitPluginRef(req.Plugin)
	for _, err := range []error{
		same("plugin", plugin, meta.Plugin, plugin != ""),
		same("plugin", version, meta.PluginVersion, version != "" && meta.PluginVersion != ""),
		same("cpu_cores", req.CPUCores, meta.CPUCores, req.CPUCores != 0),
		same("memory_mb", req.MemoryMB, meta.MemoryMB, req.MemoryMB != 0),
	} {
		if err != nil {
			return err
		}
	}
	if len(req.Volumes) > 0 {
		return apierr.New(apierr.InvalidInput, "a VM started from a snapshot gets its own copies of the snapshot's volumes; give none").
			With("field", "volumes")
	}
	req.Plugin, req.CPUCores, req.MemoryMB = pluginRef(meta.Plugin, meta.PluginVersion), meta.CPUCores, meta.MemoryMB
	return nil
}

// stageFromSnapshot makes the spec of a VM started from a snapshot: its
// own images of the snapshot's disks, and while the restore is pending
// the saved state to run from. A pending restore starts from fresh
// images: whatever a run before it wrote to them is dropped, since the
// memory the VM resumes with does not know of it.
func (c *Controller) stageFromSnapshot(ctx context.Context, name string, spec *launch.Spec) error {
	ref, ok := c.readSnapshotRef(name)
	if !ok {
		return nil
	}
	disks := filepath.Join(c.vmDir(name), layout.DisksName)
	if ref.Restore {
		if st, err := c.cfg.Runtime.Inspect(ctx, name); err != nil || !st.Live() {
			if err := os.RemoveAll(disks); err != nil {
				return err
			}
			// A VM rolled back to a snapshot of itself keeps its
			// volumes (its start claimed them), rolled back too.
			if len(spec.Volumes) > 0 {
				if err := launch.RollBackVolumes(ctx, c.snapshotDir(ref.Snapshot), spec.Volumes); err != nil {
					return fmt.Errorf("the volumes of %s from snapshot %s: %w", name, ref.Snapshot, err)
				}
			}
		}
	}
	from := launch.FromSnapshot
	if len(spec.Volumes) > 0 {
		from = launch.FromSnapshotKeepingVolumes // its own, rolled back above
	}
	if err := from(ctx, spec, c.snapshotDir(ref.Snapshot), disks); err != nil {
		return fmt.Errorf("the disks of %s from snapshot %s: %w", name, ref.Snapshot, err)
	}
	if !ref.Restore {
		spec.Restore = nil
	}
	return nil
}

// settleRestore records that a VM ran from its snapshot's state and is
// healthy: from now on it boots from its own disks, and its staged spec
// says so (a restart of its run by systemd boots, too).
func (c *Controller) settleRestore(ctx context.Context, name string) {
	ref, ok := c.readSnapshotRef(name)
	if !ok || !ref.Restore {
		return
	}
	ref.Restore = false
	if err := c.writeSnapshotRef(name, ref); err != nil {
		c.log.Warn("recording a finished restore", "vm", name, "err", err)
		return
	}
	if err := c.stepStage(ctx, name); err != nil {
		c.log.Warn("staging the spec of a restored VM", "vm", name, "err", err)
	}
	_, err := c.updateVM(ctx, name, func(tx *sql.Tx, v *vmRow) error {
		_, err := store.AppendEvent(ctx, tx, api.EventVMRestored, name, map[string]any{"name": name, "snapshot": ref.Snapshot, "ip": v.IP})
		return err
	})
	if err != nil {
		c.log.Warn("recording a restore", "vm", name, "err", err)
	}
	c.log.Info("VM restored from its snapshot", "vm", name, "snapshot", ref.Snapshot)
}

// RestoreVM rolls a VM back to a snapshot of a VM of the same plugin and
// size: it stops the VM, drops its disks, and starts it from the
// snapshot's state with its own images of the snapshot's disks, under its
// own name, address and MAC. A VM with volumes keeps them, rolled back to
// the snapshot's copies as it starts: the snapshot must have saved the
// same volumes (mounted at the same paths, read-only alike, not resized
// since; a snapshot of this VM does), and no other VM may hold one it
// writes (VOLUME_IN_USE). Its read-only volumes are left as they are.
func (c *Controller) RestoreVM(ctx context.Context, name string, req api.RestoreVMRequest) (*api.VM, error) {
	if req.Snapshot == "" {
		return nil, apierr.New(apierr.InvalidInput, "snapshot is required").With("field", "snapshot")
	}
	v, unlock, err := c.lockedVM(ctx, name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if v.Desired == desireDeleted {
		return nil, apierr.New(apierr.Conflict, "VM %s is being deleted", name).With("vm", name)
	}
	cr := api.CreateVMRequest{Name: name, Plugin: v.Plugin, CPUCores: v.CPUCores, MemoryMB: v.MemoryMB, FromSnapshot: req.Snapshot}
	if err := c.fromSnapshot(&cr); err != nil {
		return nil, err
	}
	atts, err := c.vmVolumes(ctx, name)
	if err != nil {
		return nil, err
	}
	if err := c.checkRollBack(ctx, name, req.Snapshot, atts); err != nil {
		return nil, err
	}
	sctx := context.WithoutCancel(ctx)
	if err := c.stop(sctx, name, desireStopped); err != nil {
		return nil, err
	}
	unlockSnap, err := c.locks.lock(ctx, snapshotLock(req.Snapshot))
	if err != nil {
		return nil, err
	}
	if _, _, err := c.readSnapshot(req.Snapshot); err != nil {
		unlockSnap()
		return nil, err
	}
	err = c.writeSnapshotRef(name, snapshotRef{Snapshot: req.Snapshot, Restore: true})
	unlockSnap()
	if err != nil {
		return nil, err
	}
	// The VM's own disk copies of its boot are dropped too: it runs on
	// the snapshot's from now on.
	if err := os.RemoveAll(filepath.Join(c.vmDir(name), layout.DisksName)); err != nil {
		return nil, err
	}
	if err := c.start(sctx, name); err != nil {
		return nil, err
	}
	return c.VM(ctx, name)
}

// checkRollBack tells whether the volumes of VM name (atts) can be rolled
// back to the snapshot's copies: the snapshot saved the same ones, and no
// other VM holds one that will be written.
func (c *Controller) checkRollBack(ctx context.Context, name, snapshot string, atts []attachmentRow) error {
	if len(atts) == 0 {
		return nil
	}
	if err := launch.CheckSnapshotVolumes(c.snapshotDir(snapshot), launchVolumes(atts)); err != nil {
		return fmt.Errorf("rolling %s back to snapshot %s: %w", name, snapshot, err)
	}
	return c.st.Read(ctx, func(tx *sql.Tx) error {
		for _, a := range atts {
			if a.ReadOnly {
				continue
			}
			holders, err := conflictingHolders(ctx, tx, name, a.Volume, false)
			if err != nil {
				return err
			}
			if len(holders) > 0 {
				return volumeInUse(name, a.Volume, false, holders)
			}
		}
		return nil
	})
}

// refSnapshot records that the new VM name starts from snapshot, under
// the snapshot's lock so a delete of the snapshot sees it.
func (c *Controller) refSnapshot(ctx context.Context, name, snapshot string) error {
	unlock, err := c.locks.lock(ctx, snapshotLock(snapshot))
	if err != nil {
		return err
	}
	defer unlock()
	if _, _, err := c.readSnapshot(snapshot); err != nil {
		return err
	}
	return c.writeSnapshotRef(name, snapshotRef{Snapshot: snapshot, Restore: true})
}

// deploymentSnapshot checks a deployment's snapshot and fills its plugin
// and resources from it; the returned function unlocks the snapshot,
// which the caller holds until the deployment is recorded.
func (c *Controller) deploymentSnapshot(ctx context.Context, req *api.CreateDeploymentRequest) (func(), error) {
	if req.FromSnapshot == "" {
		return func() {}, nil
	}
	unlock, err := c.locks.lock(ctx, snapshotLock(req.FromSnapshot))
	if err != nil {
		return nil, err
	}
	cr := api.CreateVMRequest{Plugin: req.Plugin, FromSnapshot: req.FromSnapshot}
	if r := req.Resources; r != nil {
		cr.CPUCores, cr.MemoryMB = r.CPUCores, r.MemoryMB
	}
	if err := c.fromSnapshot(&cr); err != nil {
		unlock()
		return nil, err
	}
	if len(req.VolumeTemplates) > 0 {
		unlock()
		return nil, apierr.New(apierr.InvalidInput, "replicas started from a snapshot get their own copies of its volumes; give no volume templates").
			With("field", "volume_templates")
	}
	req.Plugin, req.Resources = cr.Plugin, &api.Resources{CPUCores: cr.CPUCores, MemoryMB: cr.MemoryMB}
	return unlock, nil
}
