package launch

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ulikunitz/xz"

	"github.com/volantvm/volant/lib/bootimage"
	"github.com/volantvm/volant/lib/initramfs"
	"github.com/volantvm/volant/lib/vmm"
	"github.com/volantvm/volant/lib/vmm/qemu"
)

// kernelDirTest is a kernel directory whose modules stand for a
// distribution kernel's: a base set, the disk modules and the vsock
// transport.
func kernelDirTest(t *testing.T, f *fixture) string {
	t.Helper()
	dir := filepath.Join(f.dir, "kernel")
	mods := filepath.Join(dir, "modules", releaseTest)
	for p, body := range map[string]string{
		"release": releaseTest + "\n",
		"vmlinuz": "bzImage",
		"vmlinux": "",
		"modules/" + releaseTest + "/modules.dep": "kernel/virtio.ko:\n" +
			"kernel/virtio_net.ko: kernel/virtio.ko\n" +
			"kernel/virtio_console.ko: kernel/virtio.ko\n" +
			"kernel/virtio_blk.ko: kernel/virtio.ko\n" +
			"kernel/ext4.ko.xz: kernel/jbd2.ko\n" +
			"kernel/jbd2.ko:\n" +
			"kernel/vsock.ko:\n" +
			"kernel/vmw_vsock_virtio_transport.ko: kernel/vsock.ko kernel/virtio.ko\n" +
			"kernel/virtio_mmio.ko: kernel/virtio.ko\n" +
			"kernel/virtio_pci.ko: kernel/virtio.ko\n" +
			"kernel/button.ko:\n" +
			"kernel/evdev.ko:\n",
	} {
		os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, p), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, f.kernel, filepath.Join(dir, "vmlinux"))
	os.MkdirAll(filepath.Join(mods, "kernel"), 0o755)
	for _, m := range []string{"virtio", "virtio_net", "virtio_console", "virtio_blk", "jbd2", "vsock", "vmw_vsock_virtio_transport", "virtio_mmio", "virtio_pci", "button", "evdev"} {
		os.WriteFile(filepath.Join(mods, "kernel", m+".ko"), []byte(m+" module"), 0o644)
	}
	// ext4 compressed, as some kernels ship their modules.
	copyFile(t, xzOf(t, "ext4 module"), filepath.Join(mods, "kernel", "ext4.ko.xz"))
	return dir
}

// TestInitrdCarriesOnlyTheModulesTheVMNeeds: an initramfs plugin carries
// the base modules only; the launcher layers the disk modules over it for a
// VM with a volume, and the vsock transport for a hypervisor whose agent
// channel is vsock, each with an index of the plugin's modules and its own.
// A VM that needs neither boots the plugin alone; a plugin without modules
// gets a boot image with just what the VM needs.
func TestInitrdCarriesOnlyTheModulesTheVMNeeds(t *testing.T) {
	f := newFixture(t)
	kdir := kernelDirTest(t, f)
	plugin := filepath.Join(f.dir, "base.cpio.gz")
	b := initramfs.New()
	b.File("/bin/app", 0o755, []byte("#!/bin/sh\n"))
	if _, err := bootimage.AddModules(b, bootimage.Options{ModulesDir: filepath.Join(kdir, "modules", releaseTest), Modules: []string{"virtio_net", "virtio_console"}}); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteFile(plugin, initramfs.Gzip); err != nil {
		t.Fatal(err)
	}
	bare := filepath.Join(f.dir, "bare.cpio.gz")
	b = initramfs.New()
	b.File("/bin/app", 0o755, []byte("#!/bin/sh\n"))
	if err := b.WriteFile(bare, initramfs.Gzip); err != nil {
		t.Fatal(err)
	}
	vol := filepath.Join(f.dir, "vol.img")
	os.WriteFile(vol, make([]byte, 4096), 0o644)
	onQEMU := f.opts
	onQEMU.Backends = []vmm.Backend{&qemu.Backend{Binary: filepath.Join(f.dir, "no", "qemu-system-x86_64")}}
	mod := "lib/modules/" + releaseTest + "/kernel/"
	for _, tc := range []struct {
		name    string
		archive string
		qemu    bool
		volume  bool
		layers  string
		files   []string // module files the layered initrd holds
		absent  []string // module files it must not hold
	}{
		{"qemu without disks", plugin, true, false, "plugin",
			[]string{"virtio_net.ko", "virtio_console.ko"}, []string{"virtio_blk.ko", "ext4.ko", "vsock.ko"}},
		{"qemu with a volume", plugin, true, true, "plugin,modules",
			[]string{"virtio_net.ko", "virtio_blk.ko", "ext4.ko", "jbd2.ko"}, []string{"vsock.ko", "ext4.ko.xz"}},
		{"cloud hypervisor without disks", plugin, false, false, "plugin,modules",
			[]string{"virtio_net.ko", "vsock.ko", "vmw_vsock_virtio_transport.ko"}, []string{"virtio_blk.ko", "ext4.ko"}},
		{"a plugin without modules on qemu", bare, true, false, "boot-image,plugin",
			[]string{"virtio_net.ko", "virtio_console.ko"}, []string{"virtio_blk.ko", "ext4.ko", "vsock.ko"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := f.opts
			s := f.spec()
			s.Kernel = kdir
			s.Manifest = manifestJSON(t, tc.archive, "")
			if tc.qemu {
				o = onQEMU
				s.VMM, s.Accel = qemu.Name, vmm.AccelTCG
			}
			if tc.volume {
				s.Volumes = []Volume{{File: vol, Path: "/data"}}
			}
			s.Kestrel = f.kernel // any file: the boot image is not booted here
			p, err := DryRun(context.Background(), s, o)
			if err != nil {
				t.Fatal(err)
			}
			var layers []string
			for _, l := range p.Initrd.Layers {
				layers = append(layers, l.What)
			}
			if strings.Join(layers, ",") != tc.layers {
				t.Fatalf("layers %v, want %s", layers, tc.layers)
			}
			path := p.Initrd.Path
			if len(layers) > 1 {
				os.MkdirAll(p.RunDir, 0o700)
				if err := stageInitrd(p); err != nil {
					t.Fatal(err)
				}
			} else if path != tc.archive {
				t.Fatalf("initrd %s, want the plugin %s itself", path, tc.archive)
			}
			files := readInitrd(t, path)
			for _, m := range tc.files {
				if _, ok := files[mod+m]; !ok {
					t.Errorf("%s missing from the initrd: %v", m, keys(files))
				}
			}
			for _, m := range tc.absent {
				if _, ok := files[mod+m]; ok {
					t.Errorf("%s in the initrd", m)
				}
			}
			// The index the guest reads (the last one unpacked) names every
			// module the initrd holds.
			dep := string(files["lib/modules/"+releaseTest+"/modules.dep"])
			for _, m := range tc.files {
				if !strings.Contains(dep, "kernel/"+m+":") {
					t.Errorf("modules.dep does not list %s:\n%s", m, dep)
				}
			}
			if _, ok := files["bin/app"]; !ok {
				t.Error("the plugin's own files are lost")
			}
		})
	}
}

// xzOf writes body xz-compressed into a file and returns its path.
func xzOf(t *testing.T, body string) string {
	t.Helper()
	var buf bytes.Buffer
	zw, err := xz.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	zw.Write([]byte(body))
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "m.xz")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
