package jail

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// The host's cgroup file systems are normally at /sys/fs/cgroup. A
// supervisor started by `ip netns exec` runs in a mount namespace with a
// sysfs of its own over /sys, which hides them: it still belongs to the
// host's hierarchies (/proc/self/cgroup lists them), it only cannot see
// them. hostCgroups then mounts the same hierarchies, once per process, in
// a mount namespace of a thread of its own that it keeps for the process's
// life, and reaches them through a descriptor of that mount
// (/proc/self/fd/N), from any thread. Nothing changes in the caller's or
// the host's mount table.

const sysCgroup = "/sys/fs/cgroup"

// cgroupMode is a host's cgroup layout.
type cgroupMode int

const (
	modeUnavailable cgroupMode = iota
	modeLegacy                 // v1 controllers only
	modeHybrid                 // v1 controllers, and a v2 hierarchy without them
	modeUnified                // v2 alone
)

func (m cgroupMode) String() string {
	switch m {
	case modeUnified:
		return "unified"
	case modeHybrid:
		return "hybrid"
	case modeLegacy:
		return "legacy"
	}
	return "unavailable"
}

var private struct {
	once sync.Once
	root string
	mode cgroupMode
	err  error
}

// hostCgroups finds the host's cgroup file systems and their layout, for
// a root that may not be /sys/fs/cgroup.
func hostCgroups() (root string, mode cgroupMode) {
	if m := modeAt(sysCgroup); m != modeUnavailable {
		return sysCgroup, m
	}
	private.once.Do(func() { private.root, private.mode, private.err = mountPrivately() })
	if private.err != nil {
		return "", modeUnavailable
	}
	return private.root, private.mode
}

// modeAt is the layout of the cgroup file systems mounted at root.
func modeAt(root string) cgroupMode {
	var st unix.Statfs_t
	if unix.Statfs(root, &st) != nil {
		return modeUnavailable
	}
	switch st.Type {
	case unix.CGROUP2_SUPER_MAGIC:
		return modeUnified
	case unix.TMPFS_MAGIC:
		var m unix.Statfs_t
		if unix.Statfs(filepath.Join(root, "memory"), &m) != nil || m.Type != unix.CGROUP_SUPER_MAGIC {
			return modeUnavailable
		}
		if unix.Statfs(filepath.Join(root, "unified"), &m) == nil && m.Type == unix.CGROUP2_SUPER_MAGIC {
			return modeHybrid
		}
		return modeLegacy
	}
	return modeUnavailable
}

// hierarchy is one line of /proc/self/cgroup: a v1 hierarchy's
// controllers (cpu,cpuacct), or none for v2.
type hierarchy struct{ controllers []string }

func ownHierarchies() ([]hierarchy, error) {
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []hierarchy
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 || strings.HasPrefix(parts[1], "name=") {
			continue // a named hierarchy (systemd's) has no controller
		}
		var ctl []string
		if parts[1] != "" {
			ctl = strings.Split(parts[1], ",")
		}
		out = append(out, hierarchy{controllers: ctl})
	}
	return out, sc.Err()
}

// mountPrivately mounts this process's cgroup hierarchies in a new mount
// namespace held by a thread that never returns to the scheduler, with
// the layout the host has: v1 controllers on a tmpfs (and v2 at unified),
// or v2 alone.
func mountPrivately() (string, cgroupMode, error) {
	hs, err := ownHierarchies()
	if err != nil {
		return "", modeUnavailable, err
	}
	type result struct {
		root string
		mode cgroupMode
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread holds the namespace
		root, mode, err := func() (string, cgroupMode, error) {
			if err := unix.Unshare(unix.CLONE_NEWNS | unix.CLONE_FS); err != nil {
				return "", 0, fmt.Errorf("unshare: %w", err)
			}
			if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
				return "", 0, err
			}
			var v1 []hierarchy
			v2 := false
			for _, h := range hs {
				if h.controllers == nil {
					v2 = true
				} else {
					v1 = append(v1, h)
				}
			}
			const flags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
			mode := modeUnified
			switch {
			case len(v1) == 0 && v2:
				if err := unix.Mount("cgroup2", sysCgroup, "cgroup2", flags, ""); err != nil {
					return "", 0, fmt.Errorf("mounting cgroup2: %w", err)
				}
			case len(v1) > 0:
				if err := unix.Mount("tmpfs", sysCgroup, "tmpfs", flags, "mode=0755"); err != nil {
					return "", 0, err
				}
				mode = modeLegacy
				for _, h := range v1 {
					name := strings.Join(h.controllers, ",")
					dir := filepath.Join(sysCgroup, name)
					if err := os.Mkdir(dir, 0o755); err != nil {
						return "", 0, err
					}
					if err := unix.Mount("cgroup", dir, "cgroup", flags, name); err != nil {
						return "", 0, fmt.Errorf("mounting cgroup %s: %w", name, err)
					}
					if len(h.controllers) > 1 {
						for _, c := range h.controllers {
							os.Symlink(name, filepath.Join(sysCgroup, c))
						}
					}
				}
				if v2 {
					dir := filepath.Join(sysCgroup, "unified")
					if err := os.Mkdir(dir, 0o755); err != nil {
						return "", 0, err
					}
					if err := unix.Mount("cgroup2", dir, "cgroup2", flags, ""); err != nil {
						return "", 0, fmt.Errorf("mounting cgroup2: %w", err)
					}
					mode = modeHybrid
				}
			default:
				return "", 0, errors.New("this process belongs to no cgroup hierarchy")
			}
			fd, err := unix.Open(sysCgroup, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				return "", 0, err
			}
			return fmt.Sprintf("/proc/self/fd/%d", fd), mode, nil
		}()
		ch <- result{root, mode, err}
		if err != nil {
			return // the thread ends with the goroutine (it is locked)
		}
		select {} // hold the namespace
	}()
	r := <-ch
	return r.root, r.mode, r.err
}
