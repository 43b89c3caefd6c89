package kmod

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const dep = `kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/lib/crc16.ko:
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/crypto/crc32c_generic.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
`

func index(t *testing.T) *Index {
	dir := writeTree(t, map[string]string{
		"modules.dep":     dep,
		"modules.softdep": "# comment\nsoftdep ext4 pre: crypto-crc32c\nsoftdep jbd2 pre: crypto-crc32c\n",
		"modules.alias":   "alias crypto-crc32c crc32c_intel\nalias crypto-crc32c crc32c_generic\nalias fs-ext4 ext4\n",
		"modules.builtin": "kernel/drivers/block/virtio_blk.ko\n",
	})
	ix, err := LoadIndex(dir)
	if err != nil {
		t.Fatal(err)
	}
	return ix
}

func names(steps []Step) []string {
	var out []string
	for _, s := range steps {
		n := s.Name
		if s.Optional {
			n += "?"
		}
		out = append(out, n)
	}
	return out
}

func TestResolveOrder(t *testing.T) {
	ix := index(t)
	for _, tc := range []struct {
		in   []string
		want []string
	}{
		{[]string{"virtio_net"}, []string{"virtio_ring", "virtio", "failover", "net_failover", "virtio_net"}},
		{[]string{"virtio-mmio", "virtio_net"}, []string{"virtio_ring", "virtio", "virtio_mmio", "failover", "net_failover", "virtio_net"}},
		// Soft pre-dependencies come first, every provider of the alias, optional.
		{[]string{"ext4"}, []string{"crc32c_generic?", "crc32c_intel?", "jbd2", "mbcache", "crc16", "ext4"}},
		// Aliases resolve; built-ins are skipped.
		{[]string{"fs-ext4", "virtio_blk"}, []string{"crc32c_generic?", "crc32c_intel?", "jbd2", "mbcache", "crc16", "ext4"}},
	} {
		got, err := ix.Resolve(tc.in...)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(names(got), tc.want) {
			t.Errorf("Resolve(%v) = %v, want %v", tc.in, names(got), tc.want)
		}
	}
	if _, err := ix.Resolve("nosuch"); !errors.Is(err, ErrUnknownModule) {
		t.Fatalf("unknown module: %v", err)
	}
	if !ix.Builtin("virtio-blk") {
		t.Fatal("builtin lookup must normalize dashes")
	}
}

func TestCycleDetected(t *testing.T) {
	dir := writeTree(t, map[string]string{"modules.dep": "a.ko: b.ko\nb.ko: a.ko\n"})
	ix, _ := LoadIndex(dir)
	if _, err := ix.Resolve("a"); err == nil {
		t.Fatal("cycle not detected")
	}
}

func TestWriteSubsetResolvesTheSame(t *testing.T) {
	ix := index(t)
	steps, err := ix.Resolve("ext4", "virtio_net")
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if err := ix.WriteSubset(out, steps); err != nil {
		t.Fatal(err)
	}
	sub, err := LoadIndex(out)
	if err != nil {
		t.Fatal(err)
	}
	again, err := sub.Resolve("ext4", "virtio_net")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(again, steps) {
		t.Fatalf("subset resolves differently:\n%v\n%v", names(again), names(steps))
	}
	if _, err := sub.Resolve("virtio_mmio"); err == nil {
		t.Fatal("subset must not know modules it does not carry")
	}
}

// The real Debian kernel, when make kernel has put it in place.
func TestDistroKernelModules(t *testing.T) {
	dir := os.Getenv("VOLANT_KERNEL_DIR")
	if dir == "" {
		dir = "/var/lib/volant/kernel"
	}
	rel, err := os.ReadFile(filepath.Join(dir, "release"))
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI must have the guest kernel: %v", err)
		}
		t.Skip("no guest kernel")
	}
	ix, err := LoadIndex(filepath.Join(dir, "modules", string(rel[:len(rel)-1])))
	if err != nil {
		t.Fatal(err)
	}
	steps, err := ix.Resolve("virtio_mmio", "virtio_pci", "virtio_net", "virtio_blk", "ext4", "button", "evdev", "virtio_console")
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, s := range steps {
		pos[s.Name] = i
		if _, err := os.Stat(filepath.Join(ix.Dir, s.Path)); err != nil {
			t.Errorf("%s: %v", s.Name, err)
		}
	}
	for _, before := range [][2]string{{"virtio", "virtio_net"}, {"jbd2", "ext4"}, {"crc32c_generic", "ext4"}, {"failover", "net_failover"}} {
		a, okA := pos[before[0]]
		b, okB := pos[before[1]]
		if !okA || !okB || a > b {
			t.Errorf("%s must load before %s: %v", before[0], before[1], names(steps))
		}
	}
}
