package bootimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/initramfs"
	"github.com/volantvm/volant/lib/kernel"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/testutil/netnstest"
	"github.com/volantvm/volant/lib/vmm"
	"github.com/volantvm/volant/lib/vmm/qemu"
)

func build(t *testing.T, o Options) ([]byte, Info) {
	t.Helper()
	b := initramfs.New()
	info, err := Add(b, o)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := b.WriteTo(&buf, initramfs.Gzip); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), info
}

func TestLayoutWithoutModules(t *testing.T) {
	exe := filepath.Join(t.TempDir(), "kestrel")
	os.WriteFile(exe, []byte("binary"), 0o755)
	one, info := build(t, Options{Kestrel: exe})
	two, _ := build(t, Options{Kestrel: exe})
	if sha256.Sum256(one) != sha256.Sum256(two) {
		t.Fatal("not reproducible")
	}
	if info.Release != "" || len(info.Modules) != 0 {
		t.Fatalf("info %+v", info)
	}
}

// TestVMModulesLoadInGuest boots Debian's kernel (QEMU argv from lib/vmm/qemu)
// with a boot image whose /init is a small program that loads DefaultModules
// with lib/kmod, and checks the virtio NIC on a tap appears.
func TestVMModulesLoadInGuest(t *testing.T) {
	k, vmlinux := guesttest.Kernel(t)
	qemuBin := guesttest.QEMU(t)
	ns := netnstest.New(t)
	initBin := guesttest.StaticInit(t, "lib/bootimage/testdata/modinit")
	img, info := build(t, Options{Kestrel: initBin, ModulesDir: k.ModulesDir})
	if len(info.Modules) < 10 {
		t.Fatalf("too few modules resolved: %+v", info.Modules)
	}
	initrd := filepath.Join(t.TempDir(), "boot.cpio.gz")
	os.WriteFile(initrd, img, 0o644)
	khz, err := kernel.HostTSCkHz()
	if err != nil {
		t.Fatal(err)
	}
	ns.Run("ip", "tuntap", "add", "vt0", "mode", "tap")
	ns.Run("ip", "link", "set", "vt0", "up")
	run := t.TempDir()
	argv, err := qemu.Argv(qemuBin, vmm.Config{
		Name: "modinit", CPUs: 1, MemoryMB: 128, Accel: vmm.AccelTCG,
		Kernel: vmlinux, Initramfs: initrd, APISocket: filepath.Join(run, "qmp.sock"),
		Serial: vmm.Serial{LogFile: filepath.Join(run, "serial.log")},
		Nets:   []vmm.Net{{Tap: "vt0", MAC: "02:00:00:00:00:01"}},
		Cmdline: "console=ttyS0 quiet panic=-1 tsc_early_khz=" + strconv.Itoa(khz) +
			" tsc=reliable no_timer_check 8250.nr_uarts=1 mitigations=off random.trust_cpu=on cryptomgr.notests",
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	q := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name}, argv...)...)
	if out, err := q.CombinedOutput(); err != nil {
		t.Fatalf("qemu: %v\n%s", err, out)
	}
	out, err := os.ReadFile(filepath.Join(run, "serial.log"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	t.Logf("guest console:\n%s", s)
	if !strings.Contains(s, "MODINIT-OK") {
		t.Fatalf("guest did not load its modules:\n%s", s)
	}
	if !strings.Contains(s, "net=eth0,lo") && !strings.Contains(s, "net=lo,eth0") {
		t.Fatalf("virtio-net device not found after loading modules:\n%s", s)
	}
}
