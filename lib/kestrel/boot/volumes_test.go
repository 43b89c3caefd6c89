package boot

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/bootargs"
	"github.com/volantvm/volant/lib/manifest"
)

func fakeSys(t *testing.T, serials map[string]string) string {
	sys := t.TempDir()
	for dev, serial := range serials {
		os.Mkdir(filepath.Join(sys, dev), 0o755)
		if serial != "" {
			// The kernel pads nothing, but be lenient with a newline.
			os.WriteFile(filepath.Join(sys, dev, "serial"), []byte(serial+"\n"), 0o444)
		}
	}
	return sys
}

func TestVolumesAreFoundBySerial(t *testing.T) {
	// A rootfs plugin with one manifest disk and two volumes, the second
	// volume's disk enumerated before the first's.
	sys := fakeSys(t, map[string]string{"vda": "", "vdb": "", "vdc": "volant-vol1", "vdd": "volant-vol0"})
	vs := []bootargs.Volume{{Serial: "volant-vol0", Path: "/data"}, {Serial: "volant-vol1", Path: "/logs", ReadOnly: true}}
	got, err := findVolumes(context.Background(), sys, vs, time.Second)
	if err != nil || got["volant-vol0"] != "/dev/vdd" || got["volant-vol1"] != "/dev/vdc" {
		t.Fatalf("findVolumes = %v, %v", got, err)
	}
	// The manifest's disks are paired without the volumes.
	devs := withoutVolumes(sys, virtioDisks(sys))
	if strings.Join(devs, " ") != "/dev/vda /dev/vdb" {
		t.Fatalf("disks without volumes: %v", devs)
	}
	pairs, err := DataDisks(devs, "/dev/vda", []manifest.Disk{{Name: "data"}})
	if err != nil || pairs["data"] != "/dev/vdb" {
		t.Fatalf("DataDisks = %v, %v", pairs, err)
	}
	if !isVolume(sys, "/dev/vdc") || isVolume(sys, "/dev/vda") || isVolume(sys, "/dev/vdz") {
		t.Error("isVolume")
	}
}

func TestMissingVolumeIsAnError(t *testing.T) {
	sys := fakeSys(t, map[string]string{"vda": "volant-vol0"})
	_, err := findVolumes(context.Background(), sys, []bootargs.Volume{{Serial: "volant-vol0", Path: "/a"}, {Serial: "volant-vol1", Path: "/b"}}, 50*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "volant-vol1") || strings.Contains(err.Error(), "volant-vol0,") {
		t.Fatalf("err = %v, want one naming volant-vol1 only", err)
	}
}

func TestLateModulesWithVolumes(t *testing.T) {
	if got := strings.Join(LateModules(nil, 0), ","); got != "virtio_console,virtio_blk" {
		t.Errorf("no disks, no volumes: %s", got)
	}
	if got := strings.Join(LateModules(nil, 1), ","); got != "virtio_console" {
		t.Errorf("a volume needs virtio_blk at boot: %s", got)
	}
}

func TestSplitPowerButton(t *testing.T) {
	button, rest := splitPowerButton([]string{"button", "evdev", "virtio_blk", "virtio_console"})
	if strings.Join(button, ",") != "button,evdev" || strings.Join(rest, ",") != "virtio_blk,virtio_console" {
		t.Fatalf("button %v rest %v", button, rest)
	}
	if button, rest := splitPowerButton([]string{"virtio_console"}); button != nil || strings.Join(rest, ",") != "virtio_console" {
		t.Fatalf("button %v rest %v", button, rest)
	}
}
