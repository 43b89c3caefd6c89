package launch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/bootargs"
	"github.com/volantvm/volant/lib/vmm"
	"github.com/volantvm/volant/lib/vmm/supervise"
	"github.com/volantvm/volant/lib/volume"
)

// A snapshot's directory, as Snapshot writes it:
//
//	snapshot.json   SnapshotInfo: the machine, its disks, sizes, timings
//	state/          the VMM's saved memory and device state (vmm.Control.SaveState)
//	disks/<i>.img   a point-in-time copy of the VM's i-th disk (raw)
//
// Read-only disks that are the plugin's own artifacts are not copied: the
// snapshot names them (and volantd keeps the plugin while the snapshot
// exists).
const (
	SnapshotInfoName  = "snapshot.json"
	SnapshotStateName = "state"
	SnapshotDisksName = "disks"
)

// SnapshotInfo describes a snapshot.
type SnapshotInfo struct {
	Version  int       `json:"version"` // 1
	VM       string    `json:"vm"`
	VMM      string    `json:"vmm"`
	Accel    vmm.Accel `json:"accel"`
	Machine  string    `json:"machine,omitempty"`
	CPUs     int       `json:"cpus"`
	MemoryMB int       `json:"memory_mb"`
	// Kernel is the kernel the VM booted; a restore must use the same.
	Kernel string         `json:"kernel"`
	Disks  []SnapshotDisk `json:"disks"`
	// StateBytes is the size of the saved state on disk, DiskBytes what
	// the disk copies take (allocated, not apparent).
	StateBytes int64     `json:"state_bytes"`
	DiskBytes  int64     `json:"disk_bytes"`
	PausedMS   int64     `json:"paused_ms"`
	CreatedAt  time.Time `json:"created_at"`
}

// SnapshotDisk is one disk of a snapshot.
type SnapshotDisk struct {
	// Role is the disk's role in the plan (Plan.DiskRoles): rootfs,
	// disk:<name>, extra:<i>, volume:<i>.
	Role     string `json:"role"`
	Serial   string `json:"serial,omitempty"`
	ReadOnly bool   `json:"readonly,omitempty"`
	// File is the copy, relative to the snapshot's directory; "" for a
	// read-only plugin artifact, which is not copied (Artifact names it).
	File     string `json:"file,omitempty"`
	Artifact string `json:"artifact,omitempty"`
	// Method is how the copy was made (lib/volume: reflink, data-copy,
	// qcow2-flatten).
	Method string `json:"method,omitempty"`
	// Source is the file the copy was made from.
	Source string `json:"source"`
	// MountPath is where the guest mounted a volume.
	MountPath string `json:"mount_path,omitempty"`
	Bytes     int64  `json:"allocated_bytes,omitempty"`
}

// ReadPlan reads the plan of the VM running in runDir.
func ReadPlan(runDir string) (*Plan, error) {
	b, err := os.ReadFile(filepath.Join(runDir, PlanFileName))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, apierr.New(apierr.Conflict, "no VM runs in %s", runDir).With("run_dir", runDir)
		}
		return nil, err
	}
	var p Plan
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("the plan in %s: %w", runDir, err)
	}
	return &p, nil
}

// Snapshot saves the VM running in runDir into dir (made; it must not
// exist or be empty): it has the VM's supervisor quiesce the agent
// channel (no host→guest frame in flight; held until the VM runs again),
// pauses the VM, copies each of its disks as they are
// (lib/volume.PointInTime: a reflink where the filesystem can, else the
// disk's data), saves its memory and device state, and resumes it (a VM
// that was paused stays paused, and is saved without a quiesce). The VM
// runs on; the snapshot depends on nothing but the plugin artifacts it
// names.
func Snapshot(ctx context.Context, runDir, dir string, o Options) (info *SnapshotInfo, err error) {
	o = o.withDefaults()
	st, err := Inspect(ctx, runDir, o)
	if err != nil {
		return nil, err
	}
	if !st.Answering() || (st.State != vmm.StateRunning && st.State != vmm.StatePaused) {
		return nil, apierr.New(apierr.Conflict, "VM %s is %s; only a running or paused VM can be snapshotted", st.Name, st.State).
			With("state", string(st.State))
	}
	p, err := ReadPlan(runDir)
	if err != nil {
		return nil, err
	}
	b, err := backendNamed(p.VMM, o)
	if err != nil {
		return nil, err
	}
	if !b.Capabilities().Snapshot {
		return nil, vmm.NotSupported(p.VMM, "snapshots")
	}
	if len(p.DiskRoles) != len(p.Config.Disks) {
		return nil, apierr.New(apierr.NotSupported, "VM %s was started by an older volant-launch; restart it to snapshot it", p.Name)
	}
	if err := os.MkdirAll(filepath.Join(dir, SnapshotDisksName), 0o700); err != nil {
		return nil, fmt.Errorf("snapshot directory: %w", err)
	}
	if err := os.Mkdir(filepath.Join(dir, SnapshotStateName), 0o700); err != nil {
		return nil, fmt.Errorf("snapshot directory (it must be new): %w", err)
	}
	info = &SnapshotInfo{Version: 1, VM: p.Name, VMM: p.VMM, Accel: p.Accel, Machine: p.Config.Machine,
		CPUs: p.Config.CPUs, MemoryMB: p.Config.MemoryMB, Kernel: p.Config.Kernel}
	mounts := map[string]string{}
	if a, err := bootargs.Parse(p.Cmdline); err == nil {
		for _, v := range a.Volumes {
			mounts[v.Serial] = v.Path
		}
	}
	artifacts := map[string]bool{}
	for _, a := range p.Artifacts {
		artifacts[a.Path] = true
	}

	if p.Agent != nil && st.State == vmm.StateRunning {
		// A guest whose agent is not up yet is still booting (kestrel
		// loads the agent channel's driver after the workload is up):
		// saved now, every VM restored from it would finish that boot
		// before it can take its identity.
		if err := waitGuestAgent(ctx, runDir, SnapshotAgentWait); err != nil {
			o.Logger.Warn("snapshot: the guest's agent does not answer; saving the VM as it is", "vm", p.Name, "err", err)
		}
		// Paused while the host sends it a frame, the guest would be
		// saved with the frame half read, and a VM restored from it
		// would read its host's handshake as the rest of the frame.
		// Released after the resume below (defers run last first).
		release, err := quiesceGuest(ctx, runDir)
		if err != nil {
			o.Logger.Warn("snapshot: the agent channel is not quiet; a VM restored from this snapshot may answer its host only after a redial", "vm", p.Name, "err", err)
		}
		defer release()
	}
	ctl, err := b.Dial(ctx, p.Config.APISocket)
	if err != nil {
		return nil, apierr.Wrap(apierr.Unavailable, err, "connecting to "+p.VMM)
	}
	defer ctl.Close()
	t0 := time.Now()
	if st.State == vmm.StateRunning {
		if err := ctl.Pause(ctx); err != nil {
			return nil, fmt.Errorf("pausing the VM: %w", err)
		}
		defer func() {
			// Whatever happened, the VM runs on.
			if rerr := ctl.Resume(context.WithoutCancel(ctx)); rerr != nil && err == nil {
				err = fmt.Errorf("resuming the VM after its snapshot: %w", rerr)
			}
			info.PausedMS = time.Since(t0).Milliseconds()
		}()
	}
	for i, d := range p.Config.Disks {
		sd := SnapshotDisk{Role: p.DiskRoles[i], Serial: d.Serial, ReadOnly: d.ReadOnly, Source: d.Path, MountPath: mounts[d.Serial]}
		if d.ReadOnly && artifacts[d.Path] {
			sd.Artifact = d.Path
			info.Disks = append(info.Disks, sd)
			continue
		}
		sd.File = filepath.Join(SnapshotDisksName, fmt.Sprintf("%d.img", i))
		sd.Method, err = volume.PointInTime(ctx, d.Path, d.Format, filepath.Join(dir, sd.File))
		if err != nil {
			return nil, fmt.Errorf("copying disk %d (%s): %w", i, sd.Role, err)
		}
		if vi, err := volume.Stat(filepath.Join(dir, sd.File)); err == nil {
			sd.Bytes = vi.Allocated
			info.DiskBytes += vi.Allocated
		}
		info.Disks = append(info.Disks, sd)
	}
	if err = ctl.SaveState(ctx, filepath.Join(dir, SnapshotStateName)); err != nil {
		return nil, fmt.Errorf("saving the VM's state: %w", err)
	}
	info.StateBytes = dirBytes(filepath.Join(dir, SnapshotStateName))
	info.CreatedAt = time.Now().UTC()
	return info, nil // the deferred resume may still turn this into an error
}

// WriteSnapshotInfo writes info as dir's snapshot.json (atomically).
func WriteSnapshotInfo(dir string, info *SnapshotInfo) error {
	b, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return err
	}
	return supervise.WriteFileAtomic(filepath.Join(dir, SnapshotInfoName), append(b, '\n'), 0o600)
}

// ReadSnapshotInfo reads dir's snapshot.json.
func ReadSnapshotInfo(dir string) (*SnapshotInfo, error) {
	b, err := os.ReadFile(filepath.Join(dir, SnapshotInfoName))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, apierr.New(apierr.NotFound, "no snapshot in %s", dir).With("dir", dir)
		}
		return nil, err
	}
	var info SnapshotInfo
	if err := json.Unmarshal(b, &info); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, SnapshotInfoName), err)
	}
	return &info, nil
}

// dirBytes is what the regular files under dir take on disk (symlinks and
// directories not counted).
func dirBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if vi, err := volume.Stat(p); err == nil {
				n += vi.Allocated
			}
		}
		return nil
	})
	return n
}

// VolumeIndex is i of a disk role volume:<i>, or -1.
func VolumeIndex(role string) int {
	var i int
	if n, err := fmt.Sscanf(role, "volume:%d", &i); err == nil && n == 1 && strings.HasPrefix(role, "volume:") {
		return i
	}
	return -1
}

// quiesceGuest asks the supervisor of the VM running in runDir to hold
// the agent channel still (agentchan.OpQuiesce) until release is called.
// An error says it is not quiet (the supervisor gave up waiting, or it
// predates the op); release is to be called all the same.
func quiesceGuest(ctx context.Context, runDir string) (release func(), err error) {
	// The supervisor bounds its own wait (agenthub.QuiesceWait); this
	// bounds a supervisor that does not answer at all.
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	sess, err := DialGuest(cctx, runDir)
	if err != nil {
		return func() {}, err
	}
	var rep agentchan.QuiesceReply
	st, err := sess.Call(cctx, agentchan.Request{Op: agentchan.OpQuiesce}, &rep)
	if err != nil {
		sess.Close()
		return func() {}, err
	}
	release = func() {
		st.Conn.Close()
		sess.Close()
	}
	if !rep.Quiet {
		return release, fmt.Errorf("waited %d ms: %s", rep.WaitedMS, rep.Detail)
	}
	return release, nil
}

// SnapshotAgentWait bounds Snapshot's wait for a running guest's agent to
// answer before the VM is paused.
const SnapshotAgentWait = 30 * time.Second

// waitGuestAgent waits, up to d, until the agent of the VM running in
// runDir answers over the agent channel: a logs request (which any kestrel
// answers at once, and which is closed as soon as it is answered).
func waitGuestAgent(ctx context.Context, runDir string, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	sess, err := DialGuest(ctx, runDir)
	if err != nil {
		return err
	}
	defer sess.Close()
	st, err := sess.Call(ctx, agentchan.LogsRequest{Op: agentchan.OpLogs, From: -1}, &agentchan.Reply{})
	if err != nil {
		if e := apierr.From(err); e != nil && e.Code != apierr.Unavailable && e.Code != apierr.Timeout {
			return nil // the agent answered, with an error of its own
		}
		return err
	}
	st.Conn.Close()
	return nil
}
