package qemu

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/kernel"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/vmm"
	"github.com/volantvm/volant/lib/vmm/vmmtest"
)

// TestVMConformance runs the shared backend suite against real QEMU booting
// Debian's kernel with the test init, which honours the ACPI power button.
func TestVMConformance(t *testing.T) {
	k, vmlinux := guesttest.Kernel(t)
	bin := guesttest.QEMU(t)
	initrd := vmmtest.GuestInitramfs(t, k, vmmtest.TestInit(t), t.TempDir())
	khz, err := kernel.HostTSCkHz()
	if err != nil {
		t.Fatal(err)
	}
	accel, why, err := vmm.ResolveAccel(vmm.AccelAuto, os.DirFS("/"), true)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("accel %s %s", accel, why)
	vmmtest.Run(t, vmmtest.Harness{
		Backend: &Backend{Binary: bin},
		Config: func(t testing.TB, dir string) vmm.Config {
			return vmm.Config{
				Name: "conformance", CPUs: 1, MemoryMB: 128, Accel: accel,
				Kernel: vmlinux, Initramfs: initrd,
				Cmdline: "console=ttyS0 quiet panic=-1 tsc_early_khz=" + strconv.Itoa(khz) +
					" tsc=reliable no_timer_check 8250.nr_uarts=1 mitigations=off random.trust_cpu=on cryptomgr.notests volant.vm=conformance",
				APISocket: filepath.Join(dir, "qmp.sock"),
				Serial:    vmm.Serial{LogFile: filepath.Join(dir, "serial.log"), Socket: filepath.Join(dir, "console.sock")},
			}
		},
		GuestReady: func(ctx context.Context, cfg vmm.Config) error {
			return vmmtest.WaitForLine(ctx, cfg.Serial.LogFile, vmmtest.ReadyLine)
		},
		PowerButtonStops: true,
		Timeout:          90 * time.Second,
	})
}
