package modules

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/kmod"
)

// A fake modules directory with the shape Debian's subset index has.
func fakeIndex(t *testing.T) string {
	dir := t.TempDir()
	files := map[string]string{
		"modules.dep": `kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko kernel/lib/crc16.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/crypto/crc32c_generic.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/net/extra_thing.ko: kernel/lib/crc16.ko
`,
		"modules.softdep": "softdep ext4 pre: crc32c\n",
		"modules.alias":   "alias crc32c crc32c_generic\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestPlanOrder(t *testing.T) {
	dir := fakeIndex(t)
	_, steps, unknown, err := Plan(dir, true, []string{"extra-thing", "not_here"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	pos := map[string]int{}
	for i, s := range steps {
		names = append(names, s.Name)
		pos[s.Name] = i
	}
	if len(steps) != 9 {
		t.Fatalf("steps %v", names)
	}
	// Every dependency precedes its user; the softdep precedes ext4.
	for user, deps := range map[string][]string{
		"ext4":       {"jbd2", "mbcache", "crc16", "crc32c_generic"},
		"virtio_blk": {"virtio", "virtio_ring"},
		"virtio":     {"virtio_ring"},
	} {
		for _, d := range deps {
			if pos[d] > pos[user] {
				t.Errorf("%s loads after %s: %v", d, user, names)
			}
		}
	}
	if strings.Join(unknown, ",") != "not_here" {
		t.Fatalf("unknown %v", unknown)
	}
	// Only the extras, with their dependencies.
	_, steps, _, err = Plan(dir, false, []string{"virtio_blk"})
	if err != nil || len(steps) != 3 || steps[2].Name != "virtio_blk" {
		t.Fatalf("extras only: %v %v", steps, err)
	}
	// Listed names are normalized; extra-thing was already listed.
	listed, _ := Listed(dir)
	if len(listed) != 9 || listed[8] != "extra_thing" {
		t.Fatalf("listed %v", listed)
	}
}

func TestPlanOnDebianKernel(t *testing.T) {
	dir := os.Getenv("VOLANT_KERNEL_DIR")
	if dir == "" {
		dir = "/var/lib/volant/kernel"
	}
	rel, err := os.ReadFile(filepath.Join(dir, "release"))
	if err != nil {
		t.Skip("no guest kernel (make kernel)")
	}
	full := filepath.Join(dir, "modules", strings.TrimSpace(string(rel)))
	ix, err := kmod.LoadIndex(full)
	if err != nil {
		t.Fatal(err)
	}
	// Write the subset a boot image would carry, then plan from it.
	steps, err := ix.Resolve("virtio_mmio", "virtio_net", "virtio_blk", "ext4", "button", "evdev")
	if err != nil {
		t.Fatal(err)
	}
	sub := t.TempDir()
	if err := ix.WriteSubset(sub, steps); err != nil {
		t.Fatal(err)
	}
	_, planned, unknown, err := Plan(sub, true, nil)
	if err != nil || len(unknown) != 0 {
		t.Fatal(err, unknown)
	}
	if len(planned) != len(steps) {
		t.Fatalf("planned %d modules from the subset, the image has %d", len(planned), len(steps))
	}
	pos := map[string]int{}
	for i, s := range planned {
		pos[s.Name] = i
	}
	for _, pair := range [][2]string{{"virtio_ring", "virtio_net"}, {"virtio", "virtio_mmio"}, {"jbd2", "ext4"}, {"crc32c_generic", "ext4"}, {"net_failover", "virtio_net"}} {
		if pos[pair[0]] > pos[pair[1]] {
			t.Errorf("%s after %s", pair[0], pair[1])
		}
	}
}
