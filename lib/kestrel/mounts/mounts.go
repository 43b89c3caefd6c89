// Package mounts is kestrel's filesystem work as init: the declarative table
// of pseudo filesystems, the root switch of the rootfs path, data disks, and
// the unmount/read-only remount at shutdown. Every function that changes the
// mount table takes a *guest.Machine (see lib/kestrel/guest).
package mounts

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/kestrel/guest"
)

// Mount is one row of the table.
type Mount struct {
	Source, Target, FSType string
	Flags                  uintptr
	Data                   string
	// Optional rows that fail are logged and skipped (the kernel may lack
	// the filesystem).
	Optional bool
}

const common = unix.MS_NOSUID | unix.MS_NODEV

// Early are the mounts of stage 1: what module loading, device discovery
// and the root switch need. They are moved, not remounted, into a new root.
func Early() []Mount {
	return []Mount{
		{Source: "proc", Target: "/proc", FSType: "proc", Flags: common | unix.MS_NOEXEC},
		{Source: "sysfs", Target: "/sys", FSType: "sysfs", Flags: common | unix.MS_NOEXEC},
		{Source: "devtmpfs", Target: "/dev", FSType: "devtmpfs", Flags: unix.MS_NOSUID, Data: "mode=0755"},
		{Source: "tmpfs", Target: "/run", FSType: "tmpfs", Flags: common, Data: "mode=0755"},
	}
}

// Late are the mounts of stage 2, in the final root.
func Late() []Mount {
	return []Mount{
		{Source: "devpts", Target: "/dev/pts", FSType: "devpts", Flags: unix.MS_NOSUID | unix.MS_NOEXEC, Data: "gid=5,mode=0620,ptmxmode=0666"},
		{Source: "tmpfs", Target: "/dev/shm", FSType: "tmpfs", Flags: common, Data: "mode=1777"},
		{Source: "tmpfs", Target: "/tmp", FSType: "tmpfs", Flags: common, Data: "mode=1777"},
		{Source: "cgroup2", Target: "/sys/fs/cgroup", FSType: "cgroup2", Flags: common | unix.MS_NOEXEC, Optional: true},
	}
}

// movedIntoNewRoot are the Early mounts that a root switch carries over.
var movedIntoNewRoot = [...]string{"/dev", "/proc", "/sys", "/run"}

// IsMountPoint reports whether p is a mount point: "/" always is, and any
// other directory is when it lives on another device than its parent. It
// needs no /proc, so it works before /proc is mounted.
func IsMountPoint(p string) (bool, error) {
	p = filepath.Clean(p)
	if p == "/" {
		return true, nil
	}
	var st, parent unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return false, err
	}
	if err := unix.Lstat(filepath.Dir(p), &parent); err != nil {
		return false, err
	}
	return st.Dev != parent.Dev || st.Ino == parent.Ino, nil
}

// Apply mounts every row whose target is not a mount point yet, creating
// targets as needed. It stops at the first failure of a required row.
func Apply(m *guest.Machine, table []Mount, log *slog.Logger) error {
	m.Check()
	for _, r := range table {
		if err := mountRow(r); err != nil {
			if r.Optional {
				log.Debug("optional mount skipped", "target", r.Target, "err", err)
				continue
			}
			return err
		}
	}
	return nil
}

func mountRow(r Mount) error {
	// The mounted filesystem's root decides the final mode (mode= options).
	if err := os.MkdirAll(r.Target, 0o755); err != nil {
		return fmt.Errorf("creating mount point %s: %w", r.Target, err)
	}
	if mp, err := IsMountPoint(r.Target); err == nil && mp {
		return nil
	}
	if err := unix.Mount(r.Source, r.Target, r.FSType, r.Flags, r.Data); err != nil {
		return fmt.Errorf("mounting %s (%s) on %s: %w", r.Source, r.FSType, r.Target, err)
	}
	return nil
}

// WaitForDevice waits up to timeout for a block device node to appear
// (devtmpfs creates it once its driver has probed the disk).
func WaitForDevice(dev string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		st, err := os.Stat(dev)
		if err == nil {
			if st.Mode()&os.ModeDevice == 0 {
				return fmt.Errorf("%s is not a device", dev)
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("device %s did not appear within %s: %w", dev, timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// BlockDeviceKnown reports whether the kernel has the block device dev
// (/sys/class/block/<name>), waiting up to wait for it to be registered.
func BlockDeviceKnown(dev string, wait time.Duration) bool {
	p := filepath.Join("/sys/class/block", filepath.Base(dev))
	deadline := time.Now().Add(wait)
	for {
		if _, err := os.Stat(p); err == nil {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ProbeFSType reads a block device's superblock and names its filesystem
// (ext4 for the ext2/3/4 family, xfs, btrfs, squashfs), or "" when it
// recognizes none.
func ProbeFSType(dev string) (string, error) {
	f, err := os.Open(dev)
	if err != nil {
		return "", err
	}
	defer f.Close()
	buf := make([]byte, 0x10048)
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return "", fmt.Errorf("reading %s: %w", dev, err)
	}
	return fsTypeOf(buf[:n]), nil
}

func fsTypeOf(b []byte) string {
	switch {
	case len(b) >= 4 && string(b[:4]) == "hsqs":
		return "squashfs"
	case len(b) >= 4 && string(b[:4]) == "XFSB":
		return "xfs"
	case len(b) >= 1082 && b[1080] == 0x53 && b[1081] == 0xEF:
		return "ext4"
	case len(b) >= 0x10048 && string(b[0x10040:0x10048]) == "_BHRfS_M":
		return "btrfs"
	}
	return ""
}

// MountDevice mounts a block device. An empty fstype is probed.
func MountDevice(m *guest.Machine, dev, target, fstype string, readonly bool) (string, error) {
	m.Check()
	if fstype == "" {
		t, err := ProbeFSType(dev)
		if err != nil {
			return "", err
		}
		if t == "" {
			return "", fmt.Errorf("%s holds no filesystem kestrel recognizes (ext4, xfs, btrfs, squashfs)", dev)
		}
		fstype = t
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		return "", fmt.Errorf("creating mount point %s: %w", target, err)
	}
	var flags uintptr
	if readonly || fstype == "squashfs" {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount(dev, target, fstype, flags, ""); err != nil {
		return "", fmt.Errorf("mounting %s (%s) on %s: %w", dev, fstype, target, err)
	}
	return fstype, nil
}

// Remount changes a mount's read-only flag.
func Remount(m *guest.Machine, target string, readonly bool) error {
	m.Check()
	var flags uintptr = unix.MS_REMOUNT
	if readonly {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount("", target, "", flags, ""); err != nil {
		return fmt.Errorf("remounting %s (readonly=%v): %w", target, readonly, err)
	}
	return nil
}

// Unmount unmounts target.
func Unmount(m *guest.Machine, target string) error {
	m.Check()
	return unix.Unmount(target, 0)
}

// SwitchRoot makes newRoot (a mount point) the root: it moves /dev, /proc,
// /sys and /run into it, deletes the initramfs's files to give their memory
// back (without crossing into other filesystems), moves newRoot onto / and
// chroots into it. The caller then execs the new init.
func SwitchRoot(m *guest.Machine, newRoot string, log *slog.Logger) error {
	m.Check()
	if mp, err := IsMountPoint(newRoot); err != nil || !mp {
		return fmt.Errorf("switching root: %s is not a mount point", newRoot)
	}
	for _, d := range movedIntoNewRoot {
		dst := filepath.Join(newRoot, d)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return fmt.Errorf("switching root: creating %s: %w", dst, err)
		}
		if err := unix.Mount(d, dst, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("switching root: moving %s to %s: %w", d, dst, err)
		}
	}
	var rootDev unix.Stat_t
	if err := unix.Lstat("/", &rootDev); err != nil {
		return fmt.Errorf("switching root: %w", err)
	}
	freed := removeTree("/", rootDev.Dev, newRoot)
	log.Debug("initramfs contents deleted", "bytes", freed)
	if err := unix.Chdir(newRoot); err != nil {
		return fmt.Errorf("switching root: chdir %s: %w", newRoot, err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("switching root: moving %s onto /: %w", newRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("switching root: chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("switching root: chdir /: %w", err)
	}
	return nil
}

// removeTree deletes everything under dir that is on device dev, except
// skip and other filesystems, and returns the bytes freed. Errors are
// ignored: this only frees memory.
func removeTree(dir string, dev uint64, skip string) int64 {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var freed int64
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if p == skip {
			continue
		}
		var st unix.Stat_t
		if unix.Lstat(p, &st) != nil || st.Dev != dev {
			continue
		}
		if e.IsDir() {
			freed += removeTree(p, dev, skip)
			_ = unix.Rmdir(p)
			continue
		}
		freed += st.Size
		_ = unix.Unlink(p)
	}
	return freed
}

// Entry is one line of /proc/self/mountinfo.
type Entry struct {
	Target, FSType, Source string
}

// Table reads /proc/self/mountinfo in mount order.
func Table() ([]Entry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseMountinfo(f)
}

func parseMountinfo(r io.Reader) ([]Entry, error) {
	var out []Entry
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 2 {
			continue
		}
		out = append(out, Entry{Target: unescape(f[4]), FSType: g[0], Source: unescape(g[1])})
	}
	return out, sc.Err()
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ShutdownPlan orders what shutdown does with block-device mounts: unmount
// everything below the root deepest first, then remount the root
// read-only. Pseudo filesystems are left alone.
func ShutdownPlan(table []Entry) (unmount []string, remountRoot bool) {
	for _, e := range table {
		if !strings.HasPrefix(e.Source, "/dev/") {
			continue
		}
		if e.Target == "/" {
			remountRoot = true
			continue
		}
		unmount = append(unmount, e.Target)
	}
	sort.SliceStable(unmount, func(i, j int) bool {
		return strings.Count(unmount[i], "/") > strings.Count(unmount[j], "/")
	})
	return unmount, remountRoot
}

// Quiesce makes the disks safe to cut: sync, unmount every block-device
// mount (lazily if busy, after remounting it read-only), remount the root
// read-only, sync again. It reports what failed but always does all it can.
func Quiesce(m *guest.Machine, log *slog.Logger) error {
	m.Check()
	unix.Sync()
	table, err := Table()
	if err != nil {
		return fmt.Errorf("reading the mount table: %w", err)
	}
	var errs []error
	targets, root := ShutdownPlan(table)
	for _, t := range targets {
		if err := unix.Unmount(t, 0); err != nil {
			// Busy: make it read-only so its journal is clean, then detach.
			_ = unix.Mount("", t, "", unix.MS_REMOUNT|unix.MS_RDONLY, "")
			if err2 := unix.Unmount(t, unix.MNT_DETACH); err2 != nil {
				errs = append(errs, fmt.Errorf("unmounting %s: %w", t, err))
			}
			continue
		}
		log.Debug("unmounted", "target", t)
	}
	if root {
		if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			errs = append(errs, fmt.Errorf("remounting / read-only: %w", err))
		} else {
			log.Debug("root remounted read-only")
		}
	}
	unix.Sync()
	return errors.Join(errs...)
}
