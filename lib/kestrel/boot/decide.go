package boot

import (
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/volantvm/volant/lib/bootargs"
	"github.com/volantvm/volant/lib/manifest"
)

// DefaultRootDevice is the root disk when volant.rootfs_device is not given:
// launchers attach the root disk first.
const DefaultRootDevice = "/dev/vda"

// Mode is where the workload runs from.
type Mode string

const (
	ModeInitramfs Mode = "initramfs"
	ModeRootfs    Mode = "rootfs"
	// ModeProbe: volant.boot=auto and no manifest in the initramfs or on
	// the command line, so only the disk itself can tell (see Decide).
	ModeProbe Mode = "probe"
)

// Plan is stage 1's decision.
type Plan struct {
	Mode   Mode
	Device string // the root candidate (rootfs and probe)
	FSType string // "" means probe the superblock
	Why    string // for the console
}

// Decide is stage 1's rule for where the root is:
//
//   - volant.boot=initramfs: the initramfs; disks are never taken for the root.
//   - volant.boot=rootfs: the disk volant.rootfs_device (default /dev/vda).
//   - volant.boot=auto (or unset) with a manifest available in stage 1
//     (volant.manifest= or volant.manifest_file=): the manifest decides,
//     rootfs exactly when it has a "rootfs" section. An initramfs plugin
//     with data disks attached therefore never mounts one as its root.
//   - auto without a manifest (it will be fetched from the control plane
//     later): probe the candidate disk; it is the root only when it carries
//     kestrel (/bin/kestrel or /usr/local/bin/kestrel, which fledge installs
//     in every rootfs image). A data disk does not, so it is left alone.
//
// Whatever the reason, a disk mounted as the root must then look like one
// (LooksLikeRoot), or stage 1 stops with an error rather than run the
// workload on a data disk.
func Decide(a bootargs.Args, m *manifest.Manifest) Plan {
	dev := a.RootfsDevice
	if dev == "" {
		dev = DefaultRootDevice
	}
	fstype := a.RootfsFSType
	if fstype == "" && m != nil && m.Rootfs != nil {
		fstype = m.Rootfs.FSType
	}
	switch a.Boot {
	case bootargs.BootInitramfs:
		return Plan{Mode: ModeInitramfs, Why: "volant.boot=initramfs"}
	case bootargs.BootRootfs:
		return Plan{Mode: ModeRootfs, Device: dev, FSType: fstype, Why: "volant.boot=rootfs"}
	}
	if m != nil {
		if m.Rootfs != nil {
			return Plan{Mode: ModeRootfs, Device: dev, FSType: fstype, Why: "the manifest of " + m.Name + " has a rootfs"}
		}
		return Plan{Mode: ModeInitramfs, Why: "the manifest of " + m.Name + " has no rootfs"}
	}
	return Plan{Mode: ModeProbe, Device: dev, FSType: fstype, Why: "no manifest in stage 1: the disk must carry kestrel to be the root"}
}

// KestrelPaths are where a root filesystem carries kestrel, in order of
// preference.
var kestrelPaths = [...]string{"/bin/kestrel", "/usr/local/bin/kestrel"}

// KestrelOn returns the path (inside root) of an executable kestrel on the
// filesystem mounted at root, or "".
func KestrelOn(root string) string {
	for _, p := range kestrelPaths {
		st, err := os.Stat(filepath.Join(root, p))
		if err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// LooksLikeRoot reports whether the filesystem at root can be the guest's
// root: it carries kestrel, or (when the manifest is known) the workload's
// entrypoint. why explains a refusal.
func LooksLikeRoot(root string, m *manifest.Manifest) (ok bool, why string) {
	if KestrelOn(root) != "" {
		return true, ""
	}
	if m == nil {
		return false, "it carries no kestrel (" + strings.Join(kestrelPaths[:], " or ") + ")"
	}
	if len(m.Workload.Entrypoint) > 0 {
		if p := findEntrypoint(root, m.Workload.Entrypoint[0], m.Workload.Env["PATH"]); p != "" {
			return true, ""
		}
	}
	return false, "it carries neither kestrel nor the workload's entrypoint " + firstOr(m.Workload.Entrypoint, "(none)")
}

func firstOr(s []string, def string) string {
	if len(s) == 0 {
		return def
	}
	return s[0]
}

// findEntrypoint resolves name inside root like exec would (absolute, or on
// PATH); symlinks are resolved inside root so absolute links do not escape.
func findEntrypoint(root, name, pathEnv string) string {
	var cands []string
	if strings.Contains(name, "/") {
		if !path.IsAbs(name) {
			name = "/" + name
		}
		cands = []string{name}
	} else {
		if pathEnv == "" {
			pathEnv = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
		}
		for _, d := range strings.Split(pathEnv, ":") {
			cands = append(cands, path.Join(d, name))
		}
	}
	for _, c := range cands {
		if resolveIn(root, c, 0) {
			return c
		}
	}
	return ""
}

// resolveIn reports whether p (absolute, inside root) is an executable file
// after following symlinks within root.
func resolveIn(root, p string, depth int) bool {
	if depth > 16 {
		return false
	}
	full := filepath.Join(root, p)
	st, err := os.Lstat(full)
	if err != nil {
		// A parent may be a symlink (/bin -> usr/bin on merged-/usr roots).
		dir, base := path.Split(p)
		dir = path.Clean(dir)
		if dir == "/" || dir == "." {
			return false
		}
		if t, err := os.Readlink(filepath.Join(root, dir)); err == nil {
			if !path.IsAbs(t) {
				t = path.Join(path.Dir(dir), t)
			}
			return resolveIn(root, path.Join(t, base), depth+1)
		}
		return false
	}
	if st.Mode()&os.ModeSymlink != 0 {
		t, err := os.Readlink(full)
		if err != nil {
			return false
		}
		if !path.IsAbs(t) {
			t = path.Join(path.Dir(p), t)
		}
		return resolveIn(root, t, depth+1)
	}
	return st.Mode().IsRegular() && st.Mode()&0o111 != 0
}
