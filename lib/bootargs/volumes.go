package bootargs

import (
	"fmt"
	"path"
	"strconv"
	"strings"
)

// A volume on the command line: the disk whose virtio-blk serial is Serial
// is mounted at Path (read-only with ReadOnly) before the workload starts.
//
//	volant.volumes=volant-vol0:/data,volant-vol1:/srv/static:ro
//
// The host gives volume i the serial VolumeSerial(i); the guest finds the
// disk by its serial (/sys/block/vdX/serial), not by its position, so a
// data disk is never mistaken for a volume or for the root.
type Volume struct {
	Serial   string
	Path     string
	ReadOnly bool
}

// VolumeSerialPrefix starts the disk serial of every volume.
const VolumeSerialPrefix = "volant-vol"

// MaxVolumes bounds the volumes of one VM (virtio-blk serials hold 20
// bytes; the command line is short).
const MaxVolumes = 16

// VolumeSerial is the disk serial of a VM's i-th volume (from 0).
func VolumeSerial(i int) string { return VolumeSerialPrefix + strconv.Itoa(i) }

// IsVolumeSerial reports whether a disk serial is a volume's.
func IsVolumeSerial(s string) bool {
	n, ok := strings.CutPrefix(s, VolumeSerialPrefix)
	if !ok || n == "" {
		return false
	}
	i, err := strconv.Atoi(n)
	return err == nil && i >= 0 && strconv.Itoa(i) == n
}

// CheckMountPath says why p cannot be where a volume is mounted, or
// returns nil: it must be absolute and clean, at most 200 bytes of
// letters, digits and ._+@- between slashes (so it needs no quoting on
// the kernel command line), and not / or under /proc, /sys, /dev or /run.
func CheckMountPath(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("the mount path is empty")
	case !strings.HasPrefix(p, "/"):
		return fmt.Errorf("mount path %q is not absolute", p)
	case len(p) > 200:
		return fmt.Errorf("mount path %q is longer than 200 bytes", p)
	case path.Clean(p) != p:
		return fmt.Errorf("mount path %q is not clean (want %q)", p, path.Clean(p))
	case p == "/":
		return fmt.Errorf("a volume cannot be mounted on /")
	}
	for _, c := range []byte(p) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("/._+@-", c) >= 0
		if !ok {
			return fmt.Errorf("mount path %q has %q: use letters, digits and ._+@- between slashes", p, c)
		}
	}
	for _, sys := range []string{"/proc", "/sys", "/dev", "/run"} {
		if p == sys || strings.HasPrefix(p, sys+"/") {
			return fmt.Errorf("mount path %q is under %s, which kestrel manages", p, sys)
		}
	}
	return nil
}

func formatVolumes(vs []Volume) string {
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = v.Serial + ":" + v.Path
		if v.ReadOnly {
			parts[i] += ":ro"
		}
	}
	return strings.Join(parts, ",")
}

func parseVolumes(v string) ([]Volume, error) {
	var out []Volume
	seen := map[string]bool{}
	for _, item := range strings.Split(v, ",") {
		f := strings.Split(item, ":")
		if len(f) < 2 || len(f) > 3 || (len(f) == 3 && f[2] != "ro" && f[2] != "rw") {
			return nil, fmt.Errorf("%q: want SERIAL:PATH[:ro]", item)
		}
		vol := Volume{Serial: f[0], Path: f[1], ReadOnly: len(f) == 3 && f[2] == "ro"}
		if !IsVolumeSerial(vol.Serial) {
			return nil, fmt.Errorf("%q: serial %q is not %s<N>", item, vol.Serial, VolumeSerialPrefix)
		}
		if err := CheckMountPath(vol.Path); err != nil {
			return nil, err
		}
		if seen[vol.Serial] || seen["path:"+vol.Path] {
			return nil, fmt.Errorf("%q: serial or path given twice", item)
		}
		seen[vol.Serial], seen["path:"+vol.Path] = true, true
		out = append(out, vol)
	}
	if len(out) > MaxVolumes {
		return nil, fmt.Errorf("%d volumes; at most %d", len(out), MaxVolumes)
	}
	return out, nil
}
