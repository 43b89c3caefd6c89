package boot

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/volantvm/volant/lib/manifest"
)

// DiskWait bounds how long kestrel waits for the disks a manifest names.
const DiskWait = 10 * time.Second

// virtioDisks lists the virtio block devices (/dev/vda, /dev/vdb, ...) in
// the order the kernel named them (vdz sorts before vdaa).
func virtioDisks(sysBlock string) []string {
	ents, _ := os.ReadDir(sysBlock)
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "vd") {
			names = append(names, e.Name())
		}
	}
	sort.Slice(names, func(i, j int) bool {
		if len(names[i]) != len(names[j]) {
			return len(names[i]) < len(names[j])
		}
		return names[i] < names[j]
	})
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = "/dev/" + n
	}
	return out
}

// DataDisks pairs a manifest's disks with devices: the launcher attaches
// the root disk (rootfs plugins) first and then the manifest's disks in
// order, so they are the virtio disks in name order without the root.
func DataDisks(devices []string, root string, disks []manifest.Disk) (map[string]string, error) {
	var avail []string
	for _, d := range devices {
		if d != root {
			avail = append(avail, d)
		}
	}
	if len(avail) < len(disks) {
		return nil, fmt.Errorf("the manifest names %d data disks but the guest has %d besides the root (%s)", len(disks), len(avail), strings.Join(avail, ", "))
	}
	out := map[string]string{}
	for i, d := range disks {
		out[d.Name] = avail[i]
	}
	return out, nil
}

// waitDisks waits until at least n virtio disks exist.
func waitDisks(ctx context.Context, n int) []string {
	deadline := time.Now().Add(DiskWait)
	for {
		devs := virtioDisks("/sys/block")
		if len(devs) >= n || time.Now().After(deadline) || ctx.Err() != nil {
			return devs
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// diskTarget cleans a manifest's target path.
func diskTarget(t string) string { return filepath.Clean("/" + t) }
