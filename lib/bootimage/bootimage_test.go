package bootimage

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/u-root/u-root/pkg/cpio"
	"github.com/ulikunitz/xz"

	"github.com/volantvm/volant/lib/initramfs"
	"github.com/volantvm/volant/lib/kernel"
	"github.com/volantvm/volant/lib/kmod"
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

// archiveFiles reads an uncompressed newc archive: path -> content of each
// regular file.
func archiveFiles(t *testing.T, img []byte) map[string]string {
	t.Helper()
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(img)))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, r := range recs {
		if r.Mode&cpio.S_IFMT != cpio.S_IFREG {
			continue
		}
		body, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
		if err != nil {
			t.Fatal(err)
		}
		out[r.Name] = string(body)
	}
	return out
}

// A kernel that ships compressed modules (.ko.xz, .ko.zst, .ko.gz) gets
// plain .ko files in the guest, with an index naming them: kestrel loads
// them with finit_module and links no xz or zstd decoder.
func TestModulesArePackedDecompressed(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "6.9.0-test")
	plain := map[string]string{
		"kernel/fs/ext4/ext4.ko":           "ext4 module bytes",
		"kernel/fs/jbd2/jbd2.ko":           "jbd2 module bytes",
		"kernel/drivers/net/virtio_net.ko": "virtio_net module bytes",
		"kernel/drivers/virtio/virtio.ko":  "virtio module bytes",
	}
	compress := map[string]func(io.Writer) io.WriteCloser{
		"kernel/fs/ext4/ext4.ko": func(w io.Writer) io.WriteCloser {
			zw, err := xz.NewWriter(w)
			if err != nil {
				t.Fatal(err)
			}
			return zw
		},
		"kernel/fs/jbd2/jbd2.ko": func(w io.Writer) io.WriteCloser {
			zw, err := zstd.NewWriter(w)
			if err != nil {
				t.Fatal(err)
			}
			return zw
		},
		"kernel/drivers/net/virtio_net.ko": func(w io.Writer) io.WriteCloser { return gzip.NewWriter(w) },
	}
	suffix := map[string]string{"kernel/fs/ext4/ext4.ko": ".xz", "kernel/fs/jbd2/jbd2.ko": ".zst", "kernel/drivers/net/virtio_net.ko": ".gz"}
	for p, body := range plain {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755)
		var buf bytes.Buffer
		if c := compress[p]; c != nil {
			zw := c(&buf)
			zw.Write([]byte(body))
			if err := zw.Close(); err != nil {
				t.Fatal(err)
			}
		} else {
			buf.WriteString(body)
		}
		if err := os.WriteFile(filepath.Join(dir, p+suffix[p]), buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(
		"kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.zst\n"+
			"kernel/fs/jbd2/jbd2.ko.zst:\n"+
			"kernel/drivers/net/virtio_net.ko.gz: kernel/drivers/virtio/virtio.ko\n"+
			"kernel/drivers/virtio/virtio.ko:\n"), 0o644)
	b := initramfs.New()
	if _, err := Add(b, Options{ModulesDir: dir, Modules: []string{"ext4", "virtio_net"}}); err != nil {
		t.Fatal(err)
	}
	var img bytes.Buffer
	if err := b.WriteTo(&img, initramfs.None); err != nil {
		t.Fatal(err)
	}
	files := archiveFiles(t, img.Bytes())
	for p, body := range plain {
		if got, ok := files["lib/modules/6.9.0-test/"+p]; !ok || got != body {
			t.Errorf("%s: in archive %v with %q, want the decompressed %q", p, ok, got, body)
		}
	}
	for p := range files {
		if kmod.Compression(p) != "" {
			t.Errorf("the archive carries a compressed module %s", p)
		}
	}
	wantDep := "kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio.ko\n" +
		"kernel/drivers/virtio/virtio.ko: \n" +
		"kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko\n" +
		"kernel/fs/jbd2/jbd2.ko: \n"
	if got := files["lib/modules/6.9.0-test/modules.dep"]; got != wantDep {
		t.Errorf("modules.dep:\n%s\nwant:\n%s", got, wantDep)
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
