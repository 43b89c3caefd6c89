// Package bootimage lays out the boot part of a Volant initramfs: kestrel as
// /init, the FHS skeleton, /dev/console, and the kernel modules a
// distribution kernel needs to reach its virtio devices and root disk, with
// their dependency index (lib/kmod) so kestrel can load them in order.
//
// A distribution kernel (Debian's linux-image-amd64) builds virtio, ext4 and
// friends as modules, so every guest needs them in its initramfs. Modules
// are stored decompressed (a kernel that ships .ko.xz or .ko.zst gets plain
// .ko files in the guest), so kestrel needs no decoder. The same layout
// serves four uses:
//
//   - fledge's initramfs strategy adds it, with BaseModules, under the
//     plugin's own files;
//   - `fledge boot-initramfs` writes it alone, with DefaultModules: the
//     initrd of rootfs plugins, whose kestrel then mounts the disk and
//     switches root;
//   - volant-launch layers it before an initramfs plugin that carries no
//     modules for the running kernel (the kernel unpacks concatenated
//     archives in order, later files winning), with the modules that VM
//     needs;
//   - volant-launch layers the modules alone (AddModules) over a plugin
//     whose modules lack what the VM needs: DiskModules for a VM with disks
//     or volumes, VsockModules for a hypervisor whose agent channel is
//     vsock.
package bootimage

import (
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/volantvm/volant/lib/initramfs"
	"github.com/volantvm/volant/lib/kmod"
)

// KestrelPath is where kestrel lives in the guest; /init links to it.
const KestrelPath = "/bin/kestrel"

// BaseModules are the modules every Volant guest of a distribution kernel
// needs: virtio transports (microvm's virtio-mmio and pc's virtio-pci),
// network, the virtio console (QEMU's agent channel, virtio-serial), and the
// ACPI power button with evdev so a power-button press reaches kestrel.
// Dependencies and soft dependencies are added by resolution.
var BaseModules = []string{"virtio_mmio", "virtio_pci", "virtio_net", "virtio_console", "button", "evdev"}

// DiskModules are what a guest with a disk (root, data disk or volume)
// needs besides BaseModules: the block driver and ext4 (with jbd2, mbcache
// and the crc modules, 2.5 MB of Debian's kernel).
var DiskModules = []string{"virtio_blk", "ext4"}

// VsockModules are the vsock transport, Cloud Hypervisor's agent channel.
var VsockModules = []string{"vmw_vsock_virtio_transport"}

// DefaultModules are BaseModules, DiskModules and VsockModules: what a
// guest may need whatever its disks and hypervisor.
var DefaultModules = slices.Concat(BaseModules, DiskModules, VsockModules)

// Options say what goes in.
type Options struct {
	// Kestrel is the path of a static kestrel binary on the host; "" leaves
	// kestrel and /init out (an init=none plugin brings its own /init).
	Kestrel string
	// ModulesDir is /lib/modules/<release> of the guest kernel (with
	// modules.dep); "" adds no modules.
	ModulesDir string
	// Release is the kernel release the modules are installed under in the
	// guest (/lib/modules/<Release>); defaults to ModulesDir's base name.
	Release string
	// Modules to include; nil means DefaultModules.
	Modules []string
	// Present lists the module files (paths under /lib/modules/<release>,
	// as that archive holds them) of the archive this one is unpacked over:
	// AddModules indexes them with Modules but does not add them again.
	Present map[string]bool
}

// Info reports what was added.
type Info struct {
	Release string      `json:"release,omitempty"`
	Modules []kmod.Step `json:"modules,omitempty"`
}

// Skeleton is the directory layout every guest gets.
var Skeleton = []struct {
	Path string
	Mode uint32
}{
	{"/bin", 0o755}, {"/sbin", 0o755}, {"/etc", 0o755}, {"/dev", 0o755},
	{"/proc", 0o555}, {"/sys", 0o555}, {"/run", 0o755}, {"/tmp", 0o1777},
	{"/var", 0o755}, {"/var/log", 0o755}, {"/root", 0o700}, {"/usr", 0o755},
	{"/usr/bin", 0o755}, {"/usr/sbin", 0o755}, {"/lib", 0o755}, {"/mnt", 0o755},
}

// Add puts the boot layout into b.
func Add(b *initramfs.Builder, o Options) (Info, error) {
	var info Info
	for _, d := range Skeleton {
		if err := b.Dir(d.Path, fs.FileMode(d.Mode)); err != nil {
			return info, err
		}
	}
	// The kernel opens /dev/console for init's stdio before devtmpfs is
	// mounted; without the node init runs with no output at all.
	if err := b.CharDev("/dev/console", 0o600, 5, 1); err != nil {
		return info, err
	}
	if o.Kestrel != "" {
		if err := b.CopyFile(KestrelPath, o.Kestrel, 0o755); err != nil {
			return info, fmt.Errorf("adding kestrel: %w", err)
		}
		if err := b.Symlink("/init", KestrelPath); err != nil {
			return info, err
		}
	}
	if o.ModulesDir == "" {
		return info, nil
	}
	return AddModules(b, o)
}

// AddModules puts only the modules part into b: Options.Modules with their
// dependencies, decompressed, under /lib/modules/<release>, with their
// index. Modules whose file Options.Present lists are indexed and not added.
// Alone it is a layer over an archive that holds some of them.
func AddModules(b *initramfs.Builder, o Options) (Info, error) {
	var info Info
	release := o.Release
	if release == "" {
		release = path.Base(o.ModulesDir)
	}
	info.Release = release
	ix, err := kmod.LoadIndex(o.ModulesDir)
	if err != nil {
		return info, err
	}
	names := o.Modules
	if names == nil {
		names = DefaultModules
	}
	steps, err := ix.Resolve(names...)
	if err != nil {
		return info, fmt.Errorf("resolving guest kernel modules: %w", err)
	}
	info.Modules = steps
	dst := "/lib/modules/" + release
	for _, s := range steps {
		if o.Present[kmod.PlainPath(s.Path)] {
			continue
		}
		if err := addModule(b, path.Join(dst, kmod.PlainPath(s.Path)), ix, s); err != nil {
			return info, fmt.Errorf("adding module %s: %w", s.Name, err)
		}
	}
	idx, err := ix.SubsetFiles(steps)
	if err != nil {
		return info, err
	}
	for name, body := range idx {
		if err := b.File(path.Join(dst, name), 0o644, body); err != nil {
			return info, err
		}
	}
	return info, nil
}

// addModule puts module s into b at p decompressed: kestrel loads plain
// .ko files with finit_module(2) and links no xz or zstd decoder.
func addModule(b *initramfs.Builder, p string, ix *kmod.Index, s kmod.Step) error {
	rc, comp, err := ix.Open(s)
	if comp == "" || err != nil {
		if err == nil {
			rc.Close()
			err = b.CopyFile(p, path.Join(ix.Dir, s.Path), 0o644)
		}
		return err
	}
	defer rc.Close()
	var r io.Reader
	switch comp {
	case "gz":
		zr, err := gzip.NewReader(rc)
		if err != nil {
			return err
		}
		r = zr
	case "xz":
		xr, err := xz.NewReader(rc)
		if err != nil {
			return err
		}
		r = xr
	case "zst":
		zr, err := zstd.NewReader(rc)
		if err != nil {
			return err
		}
		defer zr.Close()
		r = zr
	}
	body, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("decompressing %s: %w", s.Path, err)
	}
	return b.File(p, 0o644, body)
}
