package boot

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/manifest"
)

func TestVirtioDisksOrder(t *testing.T) {
	sys := t.TempDir()
	for _, n := range []string{"vdb", "vdaa", "vda", "loop0", "vdz", "sda"} {
		os.Mkdir(filepath.Join(sys, n), 0o755)
	}
	if got := strings.Join(virtioDisks(sys), " "); got != "/dev/vda /dev/vdb /dev/vdz /dev/vdaa" {
		t.Fatal(got)
	}
}

func TestDataDisks(t *testing.T) {
	disks := []manifest.Disk{{Name: "data"}, {Name: "ref"}}
	got, err := DataDisks([]string{"/dev/vda", "/dev/vdb", "/dev/vdc"}, "/dev/vda", disks)
	if err != nil || got["data"] != "/dev/vdb" || got["ref"] != "/dev/vdc" {
		t.Fatal(got, err)
	}
	// Initramfs plugin: no root disk, data disks start at vda.
	got, err = DataDisks([]string{"/dev/vda", "/dev/vdb"}, "", disks)
	if err != nil || got["data"] != "/dev/vda" || got["ref"] != "/dev/vdb" {
		t.Fatal(got, err)
	}
	if _, err := DataDisks([]string{"/dev/vda", "/dev/vdb"}, "/dev/vda", disks); err == nil || !strings.Contains(err.Error(), "names 2 data disks but the guest has 1") {
		t.Fatal(err)
	}
}
