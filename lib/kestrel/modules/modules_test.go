package modules

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/kmod"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// A fake modules directory with the shape of the boot image's subset index.
func fakeIndex(t *testing.T) string {
	dir := t.TempDir()
	files := map[string]string{
		"modules.dep": `kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko kernel/lib/crc16.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/crypto/crc32c_generic.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/input/evdev.ko:
`,
		"modules.softdep": "softdep ext4 pre: crc32c\n",
		"modules.alias": `alias crc32c crc32c_generic
alias crc32c crc32c_intel
alias fs-ext4 ext4
alias fs-ext3 ext4
alias virtio:d00000002v* virtio_blk
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias input:b*v*p*e*-e*k*r*a*m*l*s*f*w* evdev
`,
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func stepNames(steps []kmod.Step) string {
	var n []string
	for _, s := range steps {
		n = append(n, s.Name)
	}
	return strings.Join(n, ",")
}

func TestPlanDefersFilesystemsAndSkipsAbsentBuses(t *testing.T) {
	dir := fakeIndex(t)
	p, err := Plan(dir, true, []string{"crc16", "not_here"}, Host{PCI: false}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := stepNames(p.Steps); got != "virtio_ring,virtio,virtio_blk,evdev,crc16" {
		t.Fatalf("steps %s", got)
	}
	if strings.Join(p.Deferred, ",") != "ext4" || strings.Join(p.Skipped, ",") != "virtio_pci" || strings.Join(p.Unknown, ",") != "not_here" {
		t.Fatalf("deferred %v skipped %v unknown %v", p.Deferred, p.Skipped, p.Unknown)
	}
	p, err = Plan(dir, true, nil, Host{PCI: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := stepNames(p.Steps); got != "virtio_ring,virtio,virtio_blk,virtio_pci_modern_dev,virtio_pci,evdev" {
		t.Fatalf("with PCI: %s", got)
	}
	// Only the extras, with their dependencies.
	p, err = Plan(dir, false, []string{"virtio_blk"}, Host{}, nil)
	if err != nil || stepNames(p.Steps) != "virtio_ring,virtio,virtio_blk" {
		t.Fatalf("extras only: %v %v", p, err)
	}
	// Held back for later: not loaded at boot, named in Later. Only the
	// image's roots are held: a dependency of another module (virtio_ring
	// of virtio_blk) is still loaded with it.
	p, err = Plan(dir, true, nil, Host{PCI: false}, []string{"evdev", "virtio_ring"})
	if err != nil {
		t.Fatal(err)
	}
	if got := stepNames(p.Steps); got != "virtio_ring,virtio,virtio_blk" {
		t.Fatalf("with evdev held back: %s", got)
	}
	if strings.Join(p.Later, ",") != "evdev" {
		t.Fatalf("later %v", p.Later)
	}
}

func TestFilesystemClosure(t *testing.T) {
	// What EnsureFS("ext4") loads: dependencies first, the CPU-specific
	// crc32c alternative optional.
	ix, err := kmod.LoadIndex(fakeIndex(t))
	if err != nil {
		t.Fatal(err)
	}
	steps, err := ix.Resolve("fs-ext4")
	if err != nil {
		t.Fatal(err)
	}
	if got := stepNames(steps); got != "crc32c_generic,crc32c_intel,crc16,mbcache,jbd2,ext4" {
		t.Fatalf("closure %s", got)
	}
	for _, s := range steps {
		if strings.HasPrefix(s.Name, "crc32c") != s.Optional {
			t.Errorf("%+v", s)
		}
	}
}

func TestListed(t *testing.T) {
	listed, err := Listed(fakeIndex(t))
	if err != nil || len(listed) != 12 || listed[0] != "crc32c_intel" {
		t.Fatalf("%v %v", listed, err)
	}
}

func TestHasAliasPrefix(t *testing.T) {
	for _, tc := range []struct {
		aliases []string
		prefix  string
		every   bool
		want    bool
	}{
		{[]string{"pci:v1"}, "pci:", true, true},
		{[]string{"pci:v1", "acpi*:X:*"}, "pci:", true, false},
		{nil, "pci:", true, false},
		{[]string{"fs-ext3", "fs-ext4"}, "fs-", false, true},
		{[]string{"virtio:d1", "fs-x"}, "fs-", false, true},
		{[]string{"virtio:d1"}, "fs-", false, false},
	} {
		if got := hasAliasPrefix(tc.aliases, tc.prefix, tc.every); got != tc.want {
			t.Errorf("%+v: %v", tc, got)
		}
	}
}

func TestPlanOnDebianKernel(t *testing.T) {
	dir := os.Getenv("VOLANT_KERNEL_DIR")
	if dir == "" {
		dir = "/var/lib/volant/kernel"
	}
	rel, err := os.ReadFile(filepath.Join(dir, "release"))
	if err != nil {
		netnstest.SkipOrFail(t, "no guest kernel (make kernel)")
	}
	full := filepath.Join(dir, "modules", strings.TrimSpace(string(rel)))
	ix, err := kmod.LoadIndex(full)
	if err != nil {
		t.Fatal(err)
	}
	// The subset a boot image carries (bootimage.DefaultModules).
	steps, err := ix.Resolve("virtio_mmio", "virtio_pci", "virtio_net", "virtio_blk", "virtio_console", "ext4", "button", "evdev")
	if err != nil {
		t.Fatal(err)
	}
	sub := t.TempDir()
	if err := ix.WriteSubset(sub, steps); err != nil {
		t.Fatal(err)
	}
	for _, host := range []Host{{PCI: false}, {PCI: true}} {
		p, err := Plan(sub, true, nil, host, nil)
		if err != nil || len(p.Unknown) != 0 {
			t.Fatal(err, p)
		}
		pos := map[string]int{}
		for i, s := range p.Steps {
			pos[s.Name] = i + 1
		}
		for _, want := range []string{"virtio_mmio", "virtio_net", "virtio_blk", "virtio_console", "button", "evdev"} {
			if pos[want] == 0 {
				t.Errorf("PCI=%v: %s not loaded at boot: %s", host.PCI, want, stepNames(p.Steps))
			}
		}
		for _, pair := range [][2]string{{"virtio_ring", "virtio_net"}, {"virtio", "virtio_mmio"}, {"net_failover", "virtio_net"}} {
			if pos[pair[0]] > pos[pair[1]] {
				t.Errorf("%s after %s", pair[0], pair[1])
			}
		}
		if pos["ext4"] != 0 || pos["jbd2"] != 0 || strings.Join(p.Deferred, ",") != "ext4" {
			t.Errorf("ext4 must wait for the first mount: %s (deferred %v)", stepNames(p.Steps), p.Deferred)
		}
		if (pos["virtio_pci"] != 0) != host.PCI {
			t.Errorf("PCI=%v: virtio_pci loaded=%v", host.PCI, pos["virtio_pci"] != 0)
		}
	}
	// The subset index resolves the filesystem alias EnsureFS uses, with
	// crc32c_intel optional (qemu64 has no SSE4.2).
	six, _ := kmod.LoadIndex(sub)
	fs, err := six.Resolve("fs-ext4")
	if err != nil {
		t.Fatal(err)
	}
	var sawExt4 bool
	for _, s := range fs {
		sawExt4 = sawExt4 || s.Name == "ext4"
		if s.Name == "crc32c_intel" && !s.Optional {
			t.Error("crc32c_intel must be optional")
		}
	}
	if !sawExt4 {
		t.Fatalf("fs-ext4 resolves to %s", stepNames(fs))
	}
}

// A later virtio driver is loaded only when its device is on the virtio
// bus: a VM without a block device never loads virtio_blk. Modules that are
// not virtio drivers (evdev) always load.
func TestLaterVirtioDriversNeedTheirDevice(t *testing.T) {
	dir := fakeIndex(t)
	sys := t.TempDir()
	devs := filepath.Join(sys, "bus/virtio/devices")
	addDevice := func(name, id string) {
		os.MkdirAll(filepath.Join(devs, name), 0o755)
		if err := os.WriteFile(filepath.Join(devs, name, "device"), []byte(id+"\n"), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	later := []string{"virtio_blk", "evdev"}
	addDevice("virtio0", "0x0001") // a NIC
	load, absent := WithDevices(dir, sys, later)
	if strings.Join(load, ",") != "evdev" || strings.Join(absent, ",") != "virtio_blk" {
		t.Fatalf("without a block device: load %v, absent %v", load, absent)
	}
	addDevice("virtio1", "0x0002")
	load, absent = WithDevices(dir, sys, later)
	if strings.Join(load, ",") != "virtio_blk,evdev" || len(absent) != 0 {
		t.Fatalf("with a block device: load %v, absent %v", load, absent)
	}
}
