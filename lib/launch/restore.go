package launch

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/agenthub"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/vmm"
	"github.com/volantvm/volant/lib/volume"
)

// RestoreSpec runs a VM from a saved state (a snapshot's) instead of
// booting it: the VMM loads the memory and device state SaveState wrote,
// and the guest, which holds the saved VM's memory, is given this VM's
// identity over the agent channel before any of its packets leave (see
// Run). The spec must describe the machine that was saved — the same
// plugin, CPUs, memory and disks in the same order — with this VM's own
// files (OwnDisks, Volumes), tap, MAC and address.
type RestoreSpec struct {
	// State is the directory vmm.Control.SaveState wrote.
	State string `json:"state"`
}

// RestorePlan is a restore decided by Prepare.
type RestorePlan struct {
	State string `json:"state"`
}

// IdentityWait bounds the wait for a restored guest's agent to take its
// identity.
const IdentityWait = 90 * time.Second

// identityAttempt bounds one try to reach the restored guest's agent
// before the channel is dialed again.
const identityAttempt = 15 * time.Second

// checkOwnDisks is Prepare's cheap check of Spec.OwnDisks: each names a
// writable disk of the manifest (rootfs, or disk:<name> not readonly)
// whose file exists, in format raw or qcow2.
func checkOwnDisks(own map[string]vmm.Disk, m *manifest.Manifest) error {
	for role, d := range own {
		field := "own_disks." + role
		ok := role == "rootfs" && m.Rootfs != nil
		if name, isDisk := strings.CutPrefix(role, "disk:"); isDisk {
			ok = slices.ContainsFunc(m.Disks, func(md manifest.Disk) bool { return md.Name == name && !md.ReadOnly })
		}
		if !ok {
			return badInput("%s: the manifest has no writable disk %q", field, role).With("field", field)
		}
		switch d.Format {
		case "", "raw", "qcow2":
		default:
			return badInput("%s.format must be raw or qcow2, got %q", field, d.Format).With("field", field+".format")
		}
		if st, err := os.Stat(d.Path); err != nil || !st.Mode().IsRegular() {
			return apierr.New(apierr.NotFound, "%s: disk image %q is not a file", field, d.Path).With("field", field+".path")
		}
	}
	return nil
}

// checkRestore is Prepare's check of Spec.Restore, once the backend is
// known: the state exists, the backend can restore, and the guest can be
// given its identity (an agent channel).
func checkRestore(s Spec, caps vmm.Capabilities, backend string) error {
	if s.Restore == nil {
		return nil
	}
	if st, err := os.Stat(s.Restore.State); err != nil || !st.IsDir() {
		return apierr.New(apierr.NotFound, "restore: no saved state in %s", s.Restore.State).With("field", "restore.state")
	}
	if !caps.Snapshot {
		return vmm.NotSupported(backend, "restoring a saved state")
	}
	if !caps.AgentChannel {
		return vmm.NotSupported(backend, "restoring a saved state without an agent channel to give the guest its identity")
	}
	return nil
}

// setTaps brings the plan's taps down or up. A restored guest sends with
// the saved VM's MAC and address until it took its own: its taps are down
// until then, so none of that reaches the bridge.
func setTaps(p *Plan, up bool) error {
	for _, n := range p.Config.Nets {
		l, err := netlink.LinkByName(n.Tap)
		if err != nil {
			return fmt.Errorf("tap %s: %w", n.Tap, err)
		}
		if up {
			err = netlink.LinkSetUp(l)
		} else {
			err = netlink.LinkSetDown(l)
		}
		if err != nil {
			return fmt.Errorf("setting tap %s %s: %w", n.Tap, map[bool]string{true: "up", false: "down"}[up], err)
		}
	}
	return nil
}

// restoreGuest runs the saved state in the VMM Run started for it: taps
// down, the state loaded, the guest given this VM's identity (name,
// MAC, address, clock, fresh randomness), taps up.
func restoreGuest(ctx context.Context, p *Plan, b vmm.Backend, hub *agenthub.Hub, log *slog.Logger) error {
	t0 := time.Now()
	if err := setTaps(p, false); err != nil {
		return err
	}
	if hub == nil {
		return errors.New("restore: no agent channel to give the guest its identity")
	}
	ctl, err := b.Dial(ctx, p.Config.APISocket)
	if err != nil {
		return apierr.Wrap(apierr.Unavailable, err, "restore: connecting to "+p.VMM)
	}
	// The VMM answers, so its end of the agent channel is there: the hub
	// connects now, before the state is loaded, and its handshake waits
	// in the channel. The restored kestrel finds it where the saved
	// session's next frame would be, and answers it at once
	// (agentchan.Accept); the hub does not wait out a reconnect pause.
	hub.Wake()
	err = ctl.Restore(ctx, p.Config)
	ctl.Close()
	if err != nil {
		return fmt.Errorf("restore: loading the saved state: %w", err)
	}
	loaded := time.Since(t0)
	log.Info("restore: state loaded; giving the guest its identity", "vm", p.Name, "after", loaded.Round(time.Millisecond))
	ictx, cancel := context.WithTimeout(ctx, IdentityWait)
	defer cancel()
	req := agentchan.IdentityRequest{VM: p.Name, Seed: make([]byte, 64)}
	if _, err := rand.Read(req.Seed); err != nil {
		return err
	}
	if nw := p.Network; nw != nil {
		req.MAC = nw.MAC
		if nw.IP.IsValid() {
			req.IP = nw.IP.String()
		}
		if nw.Gateway.IsValid() {
			req.Gateway = nw.Gateway.String()
		}
		for _, d := range nw.DNS {
			req.DNS = append(req.DNS, d.String())
		}
	}
	// A guest that does not answer within identityAttempt (its kestrel
	// predates the restart of agentchan.Accept, or the saved session was
	// cut mid-frame and swallowed the handshake) is freed by a
	// reconnection that leaves the channel closed long enough for the
	// guest to see it (Hub.Redial).
	var rep *agentchan.IdentityReply
	var st *agentchan.Stream
	for attempt := 1; ; attempt++ {
		tried := time.Now()
		actx, cancel := context.WithTimeout(ictx, identityAttempt)
		sess, err := hub.Session(actx)
		if err == nil {
			req.Time = time.Now().UnixNano()
			rep, st, err = sess.BeginIdentity(actx, req)
		}
		cancel()
		if err == nil {
			break
		}
		if ictx.Err() == nil && time.Since(tried) >= identityAttempt {
			log.Warn("restore: the guest's agent did not answer; reconnecting", "vm", p.Name, "attempt", attempt, "err", err)
			hub.Redial()
		}
		log.Debug("restore: identity not taken yet", "err", err)
		// The session the hub had may have been the saved one's, cut by
		// the restore: wait for the next.
		if ictx.Err() != nil {
			return apierr.Wrap(apierr.Timeout, err, "restore: the guest's agent did not take its identity")
		}
		if e := apierr.From(err); e != nil && (e.Code == apierr.InvalidInput || e.Code == apierr.NotSupported) {
			return fmt.Errorf("restore: the guest refused its identity: %w", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	err = setTaps(p, true)
	// Ending the identity stream tells the guest its network is out: it
	// reports as this VM now, and the control plane sees it healthy
	// without waiting for its next poll.
	st.Conn.Close()
	if err != nil {
		return err
	}
	log.Info("VM restored", "vm", p.Name, "was", rep.PreviousVM, "state_loaded", loaded.Round(time.Millisecond),
		"identity", time.Since(t0).Round(time.Millisecond), "clock_step", time.Duration(rep.ClockStepMS)*time.Millisecond)
	return nil
}

// stateDir is the state directory of a restore, as an absolute path.
func stateDir(s *RestoreSpec) (string, error) { return filepath.Abs(s.State) }

// ownFormat is the format of a writable disk: its OwnDisks entry's, else
// the manifest's.
func ownFormat(s Spec, role, manifestFormat string) string {
	if d, ok := s.OwnDisks[role]; ok {
		return d.Format
	}
	return manifestFormat
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// DeriveDisks gives a VM restored from the snapshot in snapDir its own
// images of the snapshot's disk copies, made in dir (lib/volume.Derive: a
// reflink where the filesystem can, else a qcow2 overlay on the
// snapshot's copy, so nothing is copied and the snapshot is never
// written), and returns them as the spec's OwnDisks (rootfs, disk:<name>)
// and Volumes (volume:<i>, at the paths they were mounted at). Images
// already in dir are kept: they may hold the VM's writes since an earlier
// start. A disk that is neither (extra:<i>) is NOT_SUPPORTED.
func DeriveDisks(ctx context.Context, snapDir, dir string) (map[string]vmm.Disk, []Volume, error) {
	info, err := ReadSnapshotInfo(snapDir)
	if err != nil {
		return nil, nil, err
	}
	return deriveDisks(ctx, info, snapDir, dir, true)
}

// deriveDisks is DeriveDisks for info; with withVolumes false the
// snapshot's volumes are left out (the VM brings its own).
func deriveDisks(ctx context.Context, info *SnapshotInfo, snapDir, dir string, withVolumes bool) (map[string]vmm.Disk, []Volume, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, err
	}
	own := map[string]vmm.Disk{}
	var vols []Volume
	for _, d := range info.Disks {
		if d.File == "" {
			continue // a plugin artifact: the plan has it
		}
		if !withVolumes && VolumeIndex(d.Role) >= 0 {
			continue
		}
		name := strings.NewReplacer(":", "-", "/", "-").Replace(d.Role) + ".from-snapshot"
		base := filepath.Join(snapDir, d.File)
		var disk vmm.Disk
		if p, format, ok := existingImage(dir, name); ok {
			disk = vmm.Disk{Path: p, Format: format}
		} else {
			// Derive the image under a neutral name, then give it the
			// name that says its format (raw or qcow2).
			tmp := filepath.Join(dir, name+".new")
			format, _, err := volume.Derive(ctx, base, tmp)
			if err != nil {
				return nil, nil, fmt.Errorf("the image of %s: %w", d.Role, err)
			}
			p := filepath.Join(dir, name+"."+format)
			if err := os.Rename(tmp, p); err != nil {
				return nil, nil, err
			}
			disk = vmm.Disk{Path: p, Format: format}
		}
		switch {
		case d.Role == "rootfs" || strings.HasPrefix(d.Role, "disk:"):
			own[d.Role] = disk
		case VolumeIndex(d.Role) >= 0:
			path := d.MountPath
			if path == "" {
				path = fmt.Sprintf("/mnt/volume%d", VolumeIndex(d.Role))
			}
			vols = append(vols, Volume{File: disk.Path, Format: disk.Format, Path: path, ReadOnly: d.ReadOnly})
		default:
			return nil, nil, apierr.New(apierr.NotSupported, "restoring a snapshot with a disk given outside the manifest and the volumes (%s)", d.Role)
		}
	}
	return own, vols, nil
}

// FromSnapshot makes s start from the snapshot in snapDir instead of
// booting: the VM's own images of the snapshot's disks are made in
// disksDir (DeriveDisks), and the machine the snapshot saved (hypervisor,
// accelerator, machine type, CPUs, memory, kernel) fills the fields s
// leaves empty; a field s sets to something else is INVALID_INPUT, as a
// saved state only runs on the machine it was saved from. s must bring no
// volumes or own disks of its own: the snapshot's are the VM's.
func FromSnapshot(ctx context.Context, s *Spec, snapDir, disksDir string) error {
	if len(s.Volumes) > 0 || len(s.OwnDisks) > 0 {
		return badInput("a VM started from a snapshot has the snapshot's disks and volumes; give none").With("field", "volumes")
	}
	return fromSnapshot(ctx, s, snapDir, disksDir, false)
}

// FromSnapshotKeepingVolumes is FromSnapshot for a VM rolled back to a
// snapshot of itself, which keeps its volumes: s brings the snapshot's
// volumes (the same number, mounted at the same paths, read-only alike;
// else INVALID_INPUT), attached as they are, so the caller first makes
// them hold the snapshot's data (RollBackVolumes). Its own disks are made
// as FromSnapshot makes them.
func FromSnapshotKeepingVolumes(ctx context.Context, s *Spec, snapDir, disksDir string) error {
	if len(s.OwnDisks) > 0 {
		return badInput("a VM started from a snapshot has the snapshot's disks; give none").With("field", "own_disks")
	}
	return fromSnapshot(ctx, s, snapDir, disksDir, true)
}

// fromSnapshot is FromSnapshot, or with keepVolumes its variant that
// keeps the volumes s brings.
func fromSnapshot(ctx context.Context, s *Spec, snapDir, disksDir string, keepVolumes bool) error {
	info, err := ReadSnapshotInfo(snapDir)
	if err != nil {
		return err
	}
	if keepVolumes {
		if err := checkSnapshotVolumes(info, snapDir, s.Volumes, false); err != nil {
			return err
		}
	}
	same := func(field string, set bool, equal bool, want any) error {
		if set && !equal {
			return badInput("%s: the snapshot was saved from a VM with %v; a saved state only runs on the same machine", field, want).
				With("field", field)
		}
		return nil
	}
	for _, c := range []error{
		same("vmm", s.VMM != "" && s.VMM != "auto", s.VMM == info.VMM, info.VMM),
		same("accel", s.Accel != "" && s.Accel != vmm.AccelAuto, s.Accel == info.Accel, info.Accel),
		same("machine", s.Machine != "", s.Machine == info.Machine, info.Machine),
		same("cpus", s.CPUs != 0, s.CPUs == info.CPUs, info.CPUs),
		same("memory_mb", s.MemoryMB != 0, s.MemoryMB == info.MemoryMB, info.MemoryMB),
	} {
		if c != nil {
			return c
		}
	}
	s.VMM, s.Accel, s.Machine, s.CPUs, s.MemoryMB = info.VMM, info.Accel, info.Machine, info.CPUs, info.MemoryMB
	if s.Kernel == "" {
		s.Kernel = info.Kernel
	}
	own, vols, err := deriveDisks(ctx, info, snapDir, disksDir, !keepVolumes)
	if err != nil {
		return err
	}
	s.OwnDisks = own
	if !keepVolumes {
		s.Volumes = vols
	}
	s.Restore = &RestoreSpec{State: filepath.Join(snapDir, SnapshotStateName)}
	return nil
}

// existingImage finds name.raw or name.qcow2 in dir.
func existingImage(dir, name string) (string, string, bool) {
	for _, f := range []string{volume.FormatRaw, volume.FormatQcow2} {
		p := filepath.Join(dir, name+"."+f)
		if _, err := os.Stat(p); err == nil {
			return p, f, true
		}
	}
	return "", "", false
}

// snapshotVolume is a volume's copy in a snapshot.
type snapshotVolume struct {
	File     string // the copy, absolute
	Path     string // where the guest mounted it
	ReadOnly bool
}

// snapshotVolumes are the snapshot's volume copies, in the order the VM
// had them attached.
func snapshotVolumes(info *SnapshotInfo, snapDir string) []snapshotVolume {
	var ds []SnapshotDisk
	for _, d := range info.Disks {
		if VolumeIndex(d.Role) >= 0 && d.File != "" {
			ds = append(ds, d)
		}
	}
	slices.SortFunc(ds, func(a, b SnapshotDisk) int { return VolumeIndex(a.Role) - VolumeIndex(b.Role) })
	out := make([]snapshotVolume, len(ds))
	for i, d := range ds {
		path := d.MountPath
		if path == "" {
			path = fmt.Sprintf("/mnt/volume%d", VolumeIndex(d.Role))
		}
		out[i] = snapshotVolume{File: filepath.Join(snapDir, d.File), Path: path, ReadOnly: d.ReadOnly}
	}
	return out
}

// CheckSnapshotVolumes tells whether vols can stand for the volumes of the
// snapshot in snapDir: as many, in the same order, mounted at the same
// paths, read-only alike (else INVALID_INPUT), each raw and of the size of
// its copy (else CONFLICT: it was resized since).
func CheckSnapshotVolumes(snapDir string, vols []Volume) error {
	info, err := ReadSnapshotInfo(snapDir)
	if err != nil {
		return err
	}
	return checkSnapshotVolumes(info, snapDir, vols, true)
}

// checkSnapshotVolumes is CheckSnapshotVolumes; with sizes false only
// the mounts are compared (a volume may grow once the VM ran from it).
func checkSnapshotVolumes(info *SnapshotInfo, snapDir string, vols []Volume, sizes bool) error {
	saved := snapshotVolumes(info, snapDir)
	describe := func(n int, at func(int) string) string {
		var ps []string
		for i := range n {
			ps = append(ps, at(i))
		}
		return "[" + strings.Join(ps, " ") + "]"
	}
	savedDesc := describe(len(saved), func(i int) string { return mountDesc(saved[i].Path, saved[i].ReadOnly) })
	givenDesc := describe(len(vols), func(i int) string { return mountDesc(vols[i].Path, vols[i].ReadOnly) })
	if savedDesc != givenDesc {
		return badInput("the snapshot saved volumes mounted at %s; the VM has %s", savedDesc, givenDesc).
			With("field", "volumes").With("saved", savedDesc).With("given", givenDesc)
	}
	if !sizes {
		return nil
	}
	for i, v := range vols {
		if v.Format != "" && v.Format != volume.FormatRaw {
			return apierr.New(apierr.NotSupported, "the volume at %s is %s; only a raw volume is rolled back to a snapshot", v.Path, v.Format).
				With("path", v.Path)
		}
		want, err := os.Stat(saved[i].File)
		if err != nil {
			return fmt.Errorf("the snapshot's copy of the volume at %s: %w", v.Path, err)
		}
		got, err := os.Stat(v.File)
		if err != nil {
			return fmt.Errorf("the volume at %s: %w", v.Path, err)
		}
		if got.Size() != want.Size() {
			return apierr.New(apierr.Conflict, "the volume at %s is %s; it was %s when the snapshot was taken (resized since)",
				v.Path, volume.FormatSize(got.Size()), volume.FormatSize(want.Size())).With("path", v.Path)
		}
	}
	return nil
}

func mountDesc(path string, ro bool) string {
	if ro {
		return path + ":ro"
	}
	return path
}

// RollBackVolumes makes each read-write volume of vols, the volumes of a
// VM that is not running, hold again what the snapshot in snapDir saved
// of it (CheckSnapshotVolumes first): the snapshot's copy replaces the
// volume's image, a reflink where the filesystem can, else a copy of its
// data, moved into place by a rename, so a crash leaves each volume
// whole, rolled back or not; the snapshot is never written. Running it
// again does the same. A read-only volume is left as it is: the VM never
// wrote it, and others may share it.
func RollBackVolumes(ctx context.Context, snapDir string, vols []Volume) error {
	info, err := ReadSnapshotInfo(snapDir)
	if err != nil {
		return err
	}
	if err := checkSnapshotVolumes(info, snapDir, vols, true); err != nil {
		return err
	}
	for i, sv := range snapshotVolumes(info, snapDir) {
		if sv.ReadOnly {
			continue
		}
		if _, err := volume.PointInTime(ctx, sv.File, volume.FormatRaw, vols[i].File); err != nil {
			return fmt.Errorf("rolling back the volume at %s: %w", sv.Path, err)
		}
	}
	return nil
}
