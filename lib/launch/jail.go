package launch

import (
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"

	"github.com/vishvananda/netns"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/hostnet"
	"github.com/volantvm/volant/lib/vmm"
	"github.com/volantvm/volant/lib/vmm/jail"
)

// JailOptions say how VMMs are confined (lib/vmm/jail). The zero value is
// a jail with the defaults.
type JailOptions struct {
	// Insecure runs each VMM as root without a jail (--insecure-vmm,
	// VOLANT_INSECURE_VMM): logged, and shown in the VM's status.
	Insecure bool
	// UIDs are the uids VMMs get, one per running VM (default
	// jail.DefaultRange; --vmm-uids, VOLANT_VMM_UIDS).
	UIDs jail.Range
	// UIDDir holds the uid locks (default jail.DefaultUIDDir).
	UIDDir string
	// Cgroup is the cgroup under which each VMM gets its own (default
	// "volant"); CgroupUnit keeps the VMM in its supervisor's cgroup,
	// whose limits the runner set (the systemd unit's).
	Cgroup string
	// OverheadMB is what a VMM may use beyond its guest's memory (default
	// DefaultOverheadMB for its backend and acceleration).
	OverheadMB int
}

// CgroupUnit as JailOptions.Cgroup: the VMM stays in the cgroup its
// supervisor runs in (volant-vm@.service sets it; lib/runner sets the
// unit's limits).
const CgroupUnit = "unit"

// Overheads of a VMM beyond guest memory, measured with the guest's memory
// all touched (bench/jail): QEMU under TCG keeps a translation cache and
// its own heap (the TCG figure was measured with a 16 MiB cache and grew
// by the 48 MiB the cache grew to qemu.TCGCacheMiB); under KVM and for
// Cloud Hypervisor the process is smaller.
// The page cache of the kernel and initrd it reads is charged to its
// cgroup too, but is reclaimed before the limit kills anything.
const (
	DefaultOverheadMBTCG = 208
	DefaultOverheadMB    = 96
)

// DefaultPids bounds a VMM's threads: QEMU's vCPU, I/O and worker threads
// (its thread pool has at most 64) with room to spare.
const DefaultPids = 256

// Limits are the cgroup limits of a plan's VMM: memory = guest memory +
// overhead; pids; CPU weight 100 per vCPU; CPU quota one core per vCPU
// plus half a core for the VMM's own threads.
func Limits(p *Plan, o JailOptions) jail.Limits {
	over := o.OverheadMB
	if over <= 0 {
		over = DefaultOverheadMB
		if p.Accel == vmm.AccelTCG {
			over = DefaultOverheadMBTCG
		}
	}
	cpus := max(p.Config.CPUs, 1)
	return jail.Limits{
		MemoryBytes:     int64(p.Config.MemoryMB+over) << 20,
		Pids:            DefaultPids + int64(cpus),
		CPUWeight:       uint64(min(100*cpus, 10000)),
		CPUQuotaPercent: 100*cpus + 50,
	}
}

// jailRun is one run's jail and what Run must undo after it.
type jailRun struct {
	spec   *jail.Spec
	cg     *jail.Cgroup
	info   jail.Info
	limits jail.Limits
	lease  *jail.Lease
	undo   []func() error
	log    *slog.Logger
}

// onTeardown adds an undo step for teardown.
func (j *jailRun) onTeardown(what string, undo func() error) {
	j.undo = append(j.undo, func() error {
		if err := undo(); err != nil {
			j.log.Warn(what, "err", err)
			return err
		}
		return nil
	})
}

// setupJail prepares p's jail: a uid of its own, the VM's writable files
// and its socket directory made the uid's for the run, the tap owned by
// it, a cgroup with the plan's limits.
func setupJail(p *Plan, o Options, log *slog.Logger) (j *jailRun, err error) {
	jo := o.Jail
	j = &jailRun{limits: Limits(p, jo), log: log}
	defer func() {
		if err != nil {
			j.teardown(log)
		}
	}()
	// The uid's record of what this run changes, written before each
	// change, lets the next holder of the uid (or volantd) undo them if
	// this process is killed before its teardown (lib/vmm/jail.Lease).
	lease, err := jailUIDs(jo, log).Lease(p.Name)
	if err != nil {
		return j, err
	}
	j.lease = lease
	uid := lease.UID
	gid := uid
	j.info = jail.Info{UID: uid, GID: gid, MemoryLimitMB: j.limits.MemoryBytes >> 20}
	spec := &jail.Spec{UID: uid, GID: gid, Root: filepath.Join(p.RunDir, JailRootName)}
	if err := os.Mkdir(spec.Root, 0o700); err != nil {
		return j, jailFailed(err, "the jail's root directory")
	}

	// Its sockets' directory, its serial log and its writable disks are
	// its own for the run; what it reads must be readable by anyone. The
	// first pass checks and collects, then the uid's record names every
	// change in one write (Lease.Plan), then the second pass makes them.
	vmmDir := VMMDir(p.RunDir)
	var plan jail.Changes
	var writable, grants []string // paths, in the order they are made the uid's
	own := func(path string) error {
		if _, err := os.Stat(path); err != nil {
			return missing(err, path)
		}
		writable = append(writable, path)
		return nil
	}
	if err := own(vmmDir); err != nil {
		return j, err
	}
	spec.Paths = append(spec.Paths, jail.Path{Path: vmmDir, Write: true})
	if p.Config.Serial.LogFile != "" {
		f, err := os.OpenFile(p.Config.Serial.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
		if err != nil {
			return j, jailFailed(err, "creating the serial log")
		}
		f.Close()
		if err := own(p.Config.Serial.LogFile); err != nil {
			return j, err
		}
		spec.Paths = append(spec.Paths, jail.Path{Path: p.Config.Serial.LogFile, Write: true})
	}
	readable := func(path string) error {
		var st syscall.Stat_t
		if err := syscall.Stat(path, &st); err != nil {
			return missing(err, path)
		}
		if st.Mode&0o004 == 0 {
			return apierr.New(jail.Failed, "jail: %s is not readable by the VMM's uid (mode %o): make it readable by others (chmod o+r), or give the VM its own copy", path, st.Mode&0o777).
				With("path", path)
		}
		spec.Paths = append(spec.Paths, jail.Path{Path: path})
		return nil
	}
	// A read-only disk others may not read (a volume attached read-only,
	// which several VMs may read at once): its uid reads it through an
	// ACL entry for this run. Kernels and initrds stay readable by all.
	readOnlyDisk := func(path string) error {
		var st syscall.Stat_t
		if err := syscall.Stat(path, &st); err != nil {
			return missing(err, path)
		}
		if st.Mode&0o004 != 0 {
			return readable(path)
		}
		grants = append(grants, path)
		spec.Paths = append(spec.Paths, jail.Path{Path: path})
		return nil
	}
	if err := readable(p.Config.Kernel); err != nil {
		return j, err
	}
	if in := p.Config.Initramfs; in != "" {
		if filepath.Dir(in) == p.RunDir {
			// Staged for this run: its own.
			if err := own(in); err != nil {
				return j, err
			}
			spec.Paths = append(spec.Paths, jail.Path{Path: in})
		} else if err := readable(in); err != nil {
			return j, err
		}
	}
	for _, d := range p.Config.Disks {
		if d.ReadOnly {
			if err := readOnlyDisk(d.Path); err != nil {
				return j, err
			}
		} else {
			if err := own(d.Path); err != nil {
				return j, err
			}
			spec.Paths = append(spec.Paths, jail.Path{Path: d.Path, Write: true})
		}
		// A qcow2 overlay (a VM started from a snapshot) reads its
		// backing files too, read-only: a snapshot's copy of a disk or
		// a volume, which others may not read, is granted as a
		// read-only disk is.
		backing, err := qcow2Backing(d.Path)
		if err != nil {
			return j, jailFailed(err, "reading the backing files of "+d.Path)
		}
		for _, b := range backing {
			if err := readOnlyDisk(b); err != nil {
				return j, err
			}
		}
	}
	if len(p.Config.Nets) > 0 {
		ns, err := netnsID("/proc/thread-self/ns/net")
		if err != nil {
			return j, jailFailed(err, "reading the network namespace")
		}
		for _, n := range p.Config.Nets {
			owner, _, err := hostnet.TapOwner(n.Tap)
			if err != nil {
				return j, jailFailed(err, "reading the owner of tap "+n.Tap)
			}
			plan.Taps = append(plan.Taps, jail.Tap{Name: n.Tap, Owner: owner, NetNS: ns})
		}
		spec.Devices = append(spec.Devices, "/dev/net/tun")
	}
	if p.Accel == vmm.AccelKVM {
		spec.Devices = append(spec.Devices, "/dev/kvm")
	}
	cgParent, cgName := jo.Cgroup, p.Name+"."+strconv.FormatUint(uint64(uid), 10)
	if cgParent == "" {
		cgParent = jail.DefaultCgroupParent
	}
	if jo.Cgroup != CgroupUnit {
		plan.Cgroup = jail.CgroupPath(cgParent, cgName)
	}
	plan.Chowns, plan.ACLs = writable, grants
	if err := lease.Plan(plan); err != nil {
		return j, jailFailed(err, "recording the VMM's changes")
	}

	for _, path := range writable {
		undo, err := lease.Chown(path)
		if err != nil {
			return j, jailFailed(err, "giving "+path+" to the VMM")
		}
		j.onTeardown("giving back "+path, undo)
	}
	for _, path := range grants {
		undo, err := lease.GrantRead(path)
		if err != nil {
			var st syscall.Stat_t
			syscall.Stat(path, &st)
			return j, apierr.New(jail.Failed, "jail: %s is not readable by the VMM's uid (mode %o) and it cannot be granted to it (%v): make it readable by others (chmod o+r), or give the VM its own copy", path, st.Mode&0o777, err).
				With("path", path)
		}
		j.onTeardown("taking back the VMM's read access to "+path, undo)
	}
	for _, t := range plan.Taps {
		if err := lease.NoteTap(t); err != nil {
			return j, err
		}
		restore, err := hostnet.SetTapOwner(t.Name, uid)
		if err != nil {
			return j, jailFailed(err, "giving tap "+t.Name+" to the VMM")
		}
		j.onTeardown("giving back tap "+t.Name, restore)
	}
	if plan.Cgroup != "" {
		cg, err := lease.NewCgroup(cgParent, cgName, j.limits)
		if err != nil {
			return j, err
		}
		j.cg, spec.Cgroup, j.info.Cgroup = cg, cg, cg.Path
	}
	j.spec = spec
	log.Info("VMM jail", "vm", p.Name, "uid", uid, "cgroup", j.info.Cgroup, "memory_limit_mb", j.info.MemoryLimitMB)
	return j, nil
}

// oomKilled reports whether the kernel ended the VMM for its memory limit.
func (j *jailRun) oomKilled() bool { return j != nil && j.cg != nil && j.cg.OOMKills() > 0 }

// teardown gives back what setupJail took, last first, once the VMM has
// exited.
func (j *jailRun) teardown(log *slog.Logger) {
	if j == nil {
		return
	}
	ok := true
	if j.cg != nil {
		if err := j.cg.Delete(); err != nil {
			log.Warn("removing the VMM's cgroup", "cgroup", j.cg.Path, "err", err)
			ok = false
		}
	}
	for i := len(j.undo) - 1; i >= 0; i-- {
		if j.undo[i]() != nil {
			ok = false
		}
	}
	j.undo = nil
	if j.lease != nil {
		// A step that failed stays in the uid's record, for Reclaim.
		if ok {
			j.lease.Done()
		}
		j.lease.Release()
		j.lease = nil
	}
}

// jailUIDs is where o's VMM uids come from.
func jailUIDs(o JailOptions, log *slog.Logger) jail.UIDs {
	return jail.UIDs{Dir: o.UIDDir, Range: o.UIDs, RestoreTap: restoreTap, Logger: log}
}

// ReclaimJails undoes what killed runs left for their VMMs' uids (their
// disks' and taps' owners, ACL entries, cgroups: lib/vmm/jail.Reclaim).
// Runs that live are left alone; volantd calls it when it starts, and
// every jailed run's start does the same.
func ReclaimJails(o Options) ([]uint32, error) {
	return jailUIDs(o.Jail, o.Logger).Reclaim()
}

// restoreTap gives a dead run's tap back to its owner, in the network
// namespace it is in: this process's, or one named under /run/netns or
// held by a process. A namespace found nowhere is gone, and its tap with it.
func restoreTap(uid uint32, t jail.Tap) error {
	restore := func() error { return hostnet.RestoreTapOwner(t.Name, uid, t.Owner) }
	if here, err := netnsID("/proc/thread-self/ns/net"); err == nil && here == t.NetNS {
		return restore()
	}
	named, _ := filepath.Glob("/run/netns/*")
	procs, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	for _, p := range append(named, procs...) {
		if id, err := netnsID(p); err == nil && id == t.NetNS {
			return inNetNS(p, restore)
		}
	}
	return nil
}

// netnsID is the inode of a network namespace's nsfs file.
func netnsID(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// inNetNS runs fn on a thread of its own moved into the namespace at
// path; a thread that cannot move back is not returned to the scheduler.
func inNetNS(path string, fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ch <- err
			return
		}
		defer orig.Close()
		target, err := netns.GetFromPath(path)
		if err != nil {
			ch <- err
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			ch <- err
			return
		}
		ch <- fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return <-ch
}

// missing is the error of a file the VM needs that went away since
// Prepare: the VMM could not start either.
func missing(err error, path string) error {
	return apierr.Wrap(apierr.Unavailable, err, "a file the VM boots from, "+path).With("path", path)
}

func jailFailed(err error, what string) error {
	return apierr.Wrap(jail.Failed, err, "jail: "+what).
		With("hint", "fix the host, or run without a jail with --insecure-vmm (the hypervisor then runs as root)")
}

// errOOM is the error of a VMM the kernel ended at its memory limit.
func errOOM(p *Plan, j *jailRun) error {
	return apierr.New(apierr.Unavailable, "the VMM of %s was killed at its memory limit (%d MiB: %d MiB of guest memory + the VMM's overhead)",
		p.Name, j.info.MemoryLimitMB, p.Config.MemoryMB).
		With("reason", "oom").With("memory_limit_mb", j.info.MemoryLimitMB).With("cgroup", j.info.Cgroup)
}

// qcow2Backing is the chain of backing files of a qcow2 image (none for
// another format): the header's backing_file_offset and _size (big
// endian, at bytes 8 and 16), a path relative to the image's directory
// unless absolute.
func qcow2Backing(path string) ([]string, error) {
	var chain []string
	for range 16 {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		var h [20]byte
		_, err = io.ReadFull(f, h[:])
		if err != nil || string(h[:4]) != "QFI\xfb" {
			f.Close()
			return chain, nil
		}
		off, size := binary.BigEndian.Uint64(h[8:16]), binary.BigEndian.Uint32(h[16:20])
		if off == 0 || size == 0 {
			f.Close()
			return chain, nil
		}
		if size > 4096 {
			f.Close()
			return nil, fmt.Errorf("%s: a backing file name of %d bytes", path, size)
		}
		name := make([]byte, size)
		_, err = f.ReadAt(name, int64(off))
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		next := string(name)
		if !filepath.IsAbs(next) {
			next = filepath.Join(filepath.Dir(path), next)
		}
		chain = append(chain, filepath.Clean(next))
		path = next
	}
	return nil, fmt.Errorf("%s: more than 16 backing files", path)
}
