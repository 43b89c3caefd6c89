// Package jail confines a hypervisor process, the way Firecracker's jailer
// does, for every backend and every runner:
//
//   - its own unprivileged uid and gid, one per VM, from a range no user
//     of the host has (AllocateUID: a lock file per uid, held by the VM's
//     supervisor for the run's life, so a crash frees it; what the run
//     changes for that uid is recorded beside the lock before each change,
//     and undone by the next holder of the uid after a crash: ledger.go);
//   - no_new_privs, so nothing it executes gains privileges;
//   - its own mount namespace whose root is a read-only tmpfs holding only
//     the VMM's executable and the host's read-only system directories it
//     links against (/usr, /lib…), a /dev of its own (null, zero, full,
//     random, urandom, and /dev/kvm and /dev/net/tun created for its uid
//     alone), and the VM's own files at their host paths: kernel, initrd and
//     read-only disks read-only, its writable disks, serial log and socket
//     directory writable. No /proc, no /sys, no other VM's files, no state
//     database: they do not exist in there;
//   - its own cgroup (Cgroup) with a memory limit (guest memory plus the
//     VMM's measured overhead), a pids limit and a CPU weight and quota,
//     under a parent whose weight is the sum of its children's, up to
//     the host's CPUs + 1 default processes.
//
// The cgroup file systems are found at /sys/fs/cgroup, or, for a
// supervisor whose mount namespace hides them (`ip netns exec` mounts a
// sysfs of its own over /sys), mounted again in a namespace of a thread of
// its own (cgroupfs.go).
//
// The backend adds its own system-call filter on top: QEMU's
// `-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny`,
// Cloud Hypervisor's `--seccomp true` and `--landlock`.
//
// # How
//
// Enter runs on the OS thread that forks the VMM (lib/vmm/supervise locks
// one for the VMM's life and never returns it to the Go scheduler): it
// unshares that thread's mount namespace and filesystem context, builds the
// jail's root, pivots into it, sets no_new_privs and fills the fork's
// credentials, so the forked VMM starts in the jail, unprivileged, and the
// rest of the supervisor is untouched. QEMU's own -chroot/-runas are not
// used: -runas calls setgid/setuid after -sandbox's filter is in place,
// which elevateprivileges=deny forbids (QEMU 7.2 dies with SIGSYS), and a
// chroot leaves the host's mounts in the process's namespace.
//
// The VMM opens everything itself, as its uid: the caller makes the VM's
// writable files the uid's for the run (and gives them back after), and
// read-only ones must be readable by anyone (kernel, plugin artifacts).
// The tap is made persistent and the uid's (hostnet.SetTapOwner), so the
// VMM attaches to it through its own /dev/net/tun without CAP_NET_ADMIN.
package jail

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/apierr"
)

// Path is a host path the jail exposes at the same place.
type Path struct {
	Path  string `json:"path"`
	Write bool   `json:"write,omitempty"`
}

// Spec is one VMM's jail.
type Spec struct {
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups,omitempty"`
	// Root is an empty directory, writable by root only, that the jail's
	// root is mounted on (in the VMM's mount namespace only: the host sees
	// an empty directory).
	Root string `json:"root"`
	// Binary is the VMM's executable (exposed read-only where it is).
	Binary string `json:"binary"`
	// Paths are the VM's files.
	Paths []Path `json:"paths"`
	// Devices are device nodes of the host recreated in the jail's /dev,
	// owned by UID with mode 0600 (/dev/kvm, /dev/net/tun); one the host
	// lacks is left out, one that is not a device node (a test's
	// stand-in) is bound as it is.
	Devices []string `json:"devices,omitempty"`
	// Cgroup, when set, is the cgroup the VMM starts in.
	Cgroup *Cgroup `json:"-"`
}

// SystemDirs are the host's directories a dynamically linked VMM needs
// (its libraries and data files, e.g. QEMU's firmware in /usr/share/qemu),
// exposed read-only, nosuid and nodev. A merged-/usr host's /lib, /bin, …
// are symbolic links into /usr and are recreated as such.
var SystemDirs = []string{"/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin"}

// Info is what a VM's status shows about its jail.
type Info struct {
	// Insecure is set when the VMM runs without a jail, as root
	// (--insecure-vmm).
	Insecure bool   `json:"insecure,omitempty"`
	UID      uint32 `json:"uid,omitempty"`
	GID      uint32 `json:"gid,omitempty"`
	// Cgroup is the VMM's cgroup ("" when the runner's own, e.g. the
	// systemd unit's, holds the limits).
	Cgroup string `json:"cgroup,omitempty"`
	// MemoryLimitMB is the VMM's memory limit.
	MemoryLimitMB int64 `json:"memory_limit_mb,omitempty"`
}

// Failed is the code of a jail that cannot be set up; the start fails
// with it unless the operator asked for --insecure-vmm.
const Failed = apierr.IsolationUnavailable

func failed(err error, what string) error {
	return apierr.Wrap(Failed, err, "jail: "+what).With("hint", "fix the host, or run without a jail with --insecure-vmm (the hypervisor then runs as root)")
}

// Check validates s before anything is changed.
func (s *Spec) Check() error {
	var probs []string
	if s.UID == 0 || s.GID == 0 {
		probs = append(probs, "uid and gid must not be 0")
	}
	for _, p := range append([]string{s.Root, s.Binary}, pathsOf(s.Paths)...) {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p {
			probs = append(probs, fmt.Sprintf("%q is not a clean absolute path", p))
		}
	}
	for _, p := range s.Paths {
		if p.Path == "/" || strings.HasPrefix(s.Root+"/", p.Path+"/") {
			probs = append(probs, fmt.Sprintf("%s contains the jail's root %s", p.Path, s.Root))
		}
	}
	if len(probs) > 0 {
		return apierr.New(apierr.InvalidInput, "jail: %s", strings.Join(probs, "; ")).With("problems", probs)
	}
	return nil
}

func pathsOf(ps []Path) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Path
	}
	return out
}

// Enter puts the calling OS thread into a new jail and fills attr so that
// a process it forks starts there as s.UID. The thread must be locked
// (runtime.LockOSThread) and must never run other goroutines again: its
// mount namespace, root and working directory are the jail's. The
// returned function, called after the fork, undoes what the thread
// itself must not keep (its cgroup on a v1 host).
func (s *Spec) Enter(attr *syscall.SysProcAttr) (after func(), err error) {
	if err := s.Check(); err != nil {
		return nil, err
	}
	after = func() {}
	if s.Cgroup != nil {
		// Before the namespace changes: the cgroup file systems are the
		// host's.
		if after, err = s.Cgroup.enter(attr); err != nil {
			return nil, err
		}
	}
	fail := func(err error, what string) (func(), error) {
		after()
		return nil, failed(err, what)
	}
	if err := unix.Unshare(unix.CLONE_NEWNS | unix.CLONE_FS); err != nil {
		return fail(err, "a mount namespace of its own (unshare)")
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fail(err, "making mounts private")
	}
	if err := s.build(); err != nil {
		return fail(err, "building the root")
	}
	if err := pivot(s.Root); err != nil {
		return fail(err, "pivot_root")
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fail(err, "no_new_privs")
	}
	groups := s.Groups
	if groups == nil {
		groups = []uint32{}
	}
	attr.Credential = &syscall.Credential{Uid: s.UID, Gid: s.GID, Groups: groups}
	return after, nil
}

// build mounts the jail's root on s.Root and fills it.
func (s *Spec) build() error {
	r := s.Root
	if err := unix.Mount("volant-jail", r, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0755,size=1m,nr_inodes=4096"); err != nil {
		return fmt.Errorf("tmpfs on %s: %w", r, err)
	}
	for _, d := range SystemDirs {
		st, err := os.Lstat(d)
		switch {
		case err != nil:
			continue
		case st.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(d)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, filepath.Join(r, d)); err != nil {
				return err
			}
		case st.IsDir():
			if err := bind(r, d, false); err != nil {
				return err
			}
		}
	}
	if !underSystemDirs(s.Binary) {
		if err := bind(r, s.Binary, false); err != nil {
			return err
		}
	}
	for _, p := range s.Paths {
		if err := bind(r, p.Path, p.Write); err != nil {
			return err
		}
	}
	if err := s.dev(); err != nil {
		return err
	}
	return nil
}

func underSystemDirs(p string) bool {
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		real = p
	}
	return slices.ContainsFunc(SystemDirs, func(d string) bool {
		if rd, err := filepath.EvalSymlinks(d); err == nil {
			d = rd
		}
		return strings.HasPrefix(real, d+"/")
	})
}

// bind exposes host path p at the same place under root: read-only,
// nosuid, nodev and (unless it is the VMM's or a system directory)
// noexec, or writable.
func bind(root, p string, write bool) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	dst := filepath.Join(root, p)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if st.IsDir() {
		if err := os.Mkdir(dst, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	} else {
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		f.Close()
	}
	if err := unix.Mount(p, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s: %w", p, err)
	}
	flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_NOSUID | unix.MS_NODEV)
	if !write {
		flags |= unix.MS_RDONLY
	}
	if write || !st.IsDir() && !isExecutable(st) {
		flags |= unix.MS_NOEXEC
	}
	// A remount must keep the locked flags of the source mount (e.g. a
	// nodev /run): add them.
	var sfs unix.Statfs_t
	if unix.Statfs(p, &sfs) == nil {
		flags |= uintptr(sfs.Flags) & (unix.MS_NOEXEC | unix.MS_NOATIME | unix.MS_NODIRATIME | unix.MS_RELATIME)
	}
	if err := unix.Mount("", dst, "", flags, ""); err != nil {
		return fmt.Errorf("remount %s: %w", p, err)
	}
	return nil
}

func isExecutable(st os.FileInfo) bool { return st.Mode().IsRegular() && st.Mode()&0o111 != 0 }

// dev makes the jail's /dev: the harmless character devices for anyone,
// s.Devices for s.UID alone.
func (s *Spec) dev() error {
	dev := filepath.Join(s.Root, "dev")
	if err := os.Mkdir(dev, 0o755); err != nil {
		return err
	}
	for _, n := range []string{"null", "zero", "full", "random", "urandom"} {
		if err := mknodLike("/dev/"+n, filepath.Join(dev, n), 0o666, 0, 0); err != nil {
			return err
		}
	}
	for _, d := range s.Devices {
		if !strings.HasPrefix(d, "/dev/") || filepath.Clean(d) != d {
			return fmt.Errorf("device %q is not under /dev", d)
		}
		st, err := os.Stat(d)
		switch {
		case errors.Is(err, os.ErrNotExist):
			continue // the VMM fails to open it, as it would outside
		case err != nil:
			return err
		case st.Mode()&os.ModeCharDevice == 0:
			// A stand-in (a test's KVM served over FUSE): exposed as it is.
			if err := bind(s.Root, d, true); err != nil {
				return err
			}
			continue
		}
		dst := filepath.Join(s.Root, d)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := mknodLike(d, dst, 0o600, int(s.UID), int(s.GID)); err != nil {
			return err
		}
	}
	return nil
}

func mknodLike(src, dst string, mode uint32, uid, gid int) error {
	var st unix.Stat_t
	if err := unix.Stat(src, &st); err != nil {
		return fmt.Errorf("device %s: %w", src, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR {
		return fmt.Errorf("%s is not a character device", src)
	}
	if err := unix.Mknod(dst, unix.S_IFCHR|mode, int(st.Rdev)); err != nil {
		return fmt.Errorf("mknod %s: %w", dst, err)
	}
	if err := unix.Chmod(dst, mode); err != nil { // past the umask
		return err
	}
	return unix.Chown(dst, uid, gid)
}

// pivot makes root the calling thread's root, drops the old one from its
// namespace and makes the new root read-only.
func pivot(root string) error {
	old := filepath.Join(root, ".old")
	if err := os.Mkdir(old, 0o700); err != nil {
		return err
	}
	if err := unix.PivotRoot(root, old); err != nil {
		return err
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	if err := unix.Unmount("/.old", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detaching the old root: %w", err)
	}
	if err := os.Remove("/.old"); err != nil {
		return err
	}
	return unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NOEXEC, "")
}
