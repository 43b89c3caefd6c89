package boot

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/volantvm/volant/lib/bootargs"
)

// Volumes are disks the host names on the command line (volant.volumes=):
// each is found by its virtio-blk serial, not by its place among the disks,
// and mounted at its path before the workload starts. A disk with a volume
// serial is never a data disk of the manifest nor the root.

// diskSerial is the virtio-blk serial of a disk such as /dev/vdb ("" when
// it has none).
func diskSerial(sysBlock, dev string) string {
	b, err := os.ReadFile(filepath.Join(sysBlock, filepath.Base(dev), "serial"))
	if err != nil {
		return ""
	}
	return strings.TrimRight(string(b), "\x00\n ")
}

// isVolume reports whether a disk carries a volume's serial.
func isVolume(sysBlock, dev string) bool { return bootargs.IsVolumeSerial(diskSerial(sysBlock, dev)) }

// withoutVolumes drops the volumes from a list of disks.
func withoutVolumes(sysBlock string, devs []string) []string {
	var out []string
	for _, d := range devs {
		if !isVolume(sysBlock, d) {
			out = append(out, d)
		}
	}
	return out
}

// findVolumes maps each volume's serial to its disk, waiting up to wait
// for them all to appear.
func findVolumes(ctx context.Context, sysBlock string, vs []bootargs.Volume, wait time.Duration) (map[string]string, error) {
	deadline := time.Now().Add(wait)
	for {
		found := map[string]string{}
		for _, d := range virtioDisks(sysBlock) {
			if s := diskSerial(sysBlock, d); s != "" {
				found[s] = d
			}
		}
		var missing []string
		for _, v := range vs {
			if found[v.Serial] == "" {
				missing = append(missing, v.Serial)
			}
		}
		if len(missing) == 0 {
			return found, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("no disk with the serial of volume %s appeared within %s", strings.Join(missing, ", "), wait)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// mountVolumes mounts the command line's volumes, before the workload
// starts. A volume that cannot be mounted is a fatal error: the workload
// must not run without its data.
func (b *booter) mountVolumes(ctx context.Context, vs []bootargs.Volume) error {
	if len(vs) == 0 {
		return nil
	}
	devs, err := findVolumes(ctx, "/sys/block", vs, DiskWait)
	if err != nil {
		return err
	}
	for _, v := range vs {
		fstype, err := b.mountDevice(devs[v.Serial], v.Path, "", v.ReadOnly)
		if err != nil {
			return fmt.Errorf("volume %s: %w", v.Serial, err)
		}
		b.log.Info("volume mounted", "serial", v.Serial, "device", devs[v.Serial], "path", v.Path, "fstype", fstype, "readonly", v.ReadOnly)
	}
	return nil
}
