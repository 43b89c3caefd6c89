package qemu

import (
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/cli/clitest"
	"github.com/volantvm/volant/lib/vmm"
)

func base() vmm.Config {
	return vmm.Config{
		Name: "web-1", CPUs: 2, MemoryMB: 256,
		Kernel:    "/var/lib/volant/kernel/vmlinux",
		Initramfs: "/run/volant/vms/web-1/initrd.cpio",
		Cmdline:   "console=ttyS0 volant.vm=web-1",
		APISocket: "/run/volant/vms/web-1/qmp.sock",
		Serial:    vmm.Serial{LogFile: "/var/lib/volant/vms/web-1/serial.log", Socket: "/run/volant/vms/web-1/console.sock"},
		Disks:     []vmm.Disk{{Path: "/var/lib/volant/plugins/nginx/rootfs.img"}, {Path: "/data/ref,1.qcow2", Format: "qcow2", ReadOnly: true}},
		Nets:      []vmm.Net{{Tap: "vt-web-1", MAC: "02:a1:b2:c3:d4:e5"}},
		Accel:     vmm.AccelTCG,
	}
}

func TestArgvGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*vmm.Config)
	}{
		{"microvm-tcg", func(*vmm.Config) {}},
		{"pc-kvm-agent", func(c *vmm.Config) {
			c.Machine, c.Accel, c.AgentSocket = MachinePC, vmm.AccelKVM, "/run/volant/vms/web-1/agent.sock"
		}},
		{"volume-serial", func(c *vmm.Config) {
			c.Disks = append(c.Disks, vmm.Disk{Path: "/var/lib/volant/volumes/data.img", Serial: "volant-vol0"})
		}},
		{"log-only-no-disks", func(c *vmm.Config) {
			c.Serial.Socket, c.Disks, c.Nets, c.Initramfs = "", nil, nil, ""
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base()
			tc.mod(&cfg)
			argv, err := Argv(DefaultBinary, cfg)
			if err != nil {
				t.Fatal(err)
			}
			clitest.Golden(t, "argv-"+tc.name, strings.Join(argv, "\n")+"\n")
			again, _ := Argv(DefaultBinary, cfg)
			if strings.Join(again, " ") != strings.Join(argv, " ") {
				t.Fatal("argv is not deterministic")
			}
		})
	}
}

func TestArgvEscapesCommas(t *testing.T) {
	argv, err := Argv(DefaultBinary, base())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(argv, " "), "file=/data/ref,,1.qcow2") {
		t.Fatalf("comma in a path not escaped: %v", argv)
	}
}

func TestArgvRejectsBadConfig(t *testing.T) {
	cfg := base()
	cfg.Accel = vmm.AccelAuto
	cfg.CPUs = 0
	cfg.Nets[0].MAC = "nope"
	cfg.Machine = "q35"
	cfg.Disks[0].Serial = "two words"
	_, err := Argv(DefaultBinary, cfg)
	if !apierr.Is(err, apierr.InvalidInput) {
		t.Fatalf("err = %v", err)
	}
	for _, want := range []string{"accel must be resolved", "cpus must be", "mac \"nope\"", "machine must be", "serial \"two words\""} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}
