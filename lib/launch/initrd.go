package launch

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/google/renameio/v2"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/bootimage"
	"github.com/volantvm/volant/lib/initramfs"
	"github.com/volantvm/volant/lib/kmod"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/vmm"
	"github.com/volantvm/volant/lib/vmm/supervise"
)

// InitrdPlan is the initrd the VMM gets: one file, or several archives the
// launcher concatenates into <run dir>/initrd (the kernel unpacks
// concatenated newc archives, compressed or not, in order; later entries
// win).
type InitrdPlan struct {
	Path   string  `json:"path"`
	Layers []Layer `json:"layers"`
}

// Layer is one archive of the initrd.
type Layer struct {
	// What is "boot-image" (kestrel + modules), "plugin" (the plugin's
	// initramfs), "modules" (kernel modules the plugin's lack, with an
	// index of both) or "manifest" (/etc/volant/manifest.json, generated).
	What string `json:"what"`
	Path string `json:"path,omitempty"`
}

// Boot-layer choices of Spec.BootLayer.
const (
	BootLayerAuto   = "auto"
	BootLayerAlways = "always"
	BootLayerNever  = "never"
)

func planInitrd(ctx context.Context, s Spec, m *manifest.Manifest, arts []Artifact, k kernelInfo, p *Plan, o Options, note func(string, ...any)) (*InitrdPlan, error) {
	mode := s.BootLayer
	if mode == "" {
		mode = BootLayerAuto
	}
	switch mode {
	case BootLayerAuto, BootLayerAlways, BootLayerNever:
	default:
		return nil, badInput("boot_layer %q: want auto, always or never", mode).With("field", "boot_layer")
	}
	var plugin *Artifact
	for i := range arts {
		if arts[i].Role == "initramfs" {
			plugin = &arts[i]
		}
	}
	need := neededModules(s, m, p)
	// The plugin's modules for the kernel booted, when it has any: the
	// guest then sees the plugin's index, which a modules layer over it
	// completes with what this VM needs.
	var pluginModules []string
	hasModules := false
	if plugin != nil && mode != BootLayerNever {
		scan, err := cachedScan(plugin, o.CacheDir)
		switch {
		case err != nil && mode == BootLayerAuto:
			note("could not read the plugin initramfs to look for kernel modules (%v): layering the boot image under it", err)
		case err != nil:
		case k.release == "":
			hasModules = len(scan) > 0
		default:
			pluginModules, hasModules = scan[k.release]
		}
	}
	needBoot := false
	switch {
	case m.Rootfs != nil:
		if mode == BootLayerNever {
			return nil, badInput("a rootfs plugin boots through the boot initramfs (kestrel stage 1); boot_layer never cannot apply").With("field", "boot_layer")
		}
		needBoot = true
	case mode == BootLayerAlways:
		needBoot = true
	case mode == BootLayerAuto && !hasModules:
		needBoot = true
		if k.release != "" && plugin != nil {
			note("the plugin initramfs has no modules for kernel %s: layering the boot image (kestrel + modules) under it", k.release)
		}
	}
	ip := &InitrdPlan{}
	if needBoot {
		boot := s.BootInitramfs
		if boot == "" {
			var err error
			if boot, err = bootImage(ctx, s, k, o, slices.Concat(bootimage.BaseModules, need), note); err != nil {
				return nil, err
			}
		} else if _, err := os.Stat(boot); err != nil {
			return nil, fmt.Errorf("boot initramfs: %w", err)
		}
		ip.Layers = append(ip.Layers, Layer{What: "boot-image", Path: boot})
	}
	if plugin != nil {
		ip.Layers = append(ip.Layers, Layer{What: "plugin", Path: plugin.Path})
	}
	if hasModules && k.modulesDir != "" {
		layer, err := modulesLayer(k, o, pluginModules, need, note)
		if err != nil {
			return nil, err
		}
		if layer != "" {
			ip.Layers = append(ip.Layers, Layer{What: "modules", Path: layer})
		}
	}
	if p.Manifest.InInitrd {
		ip.Layers = append(ip.Layers, Layer{What: "manifest"})
	}
	switch {
	case len(ip.Layers) == 0:
		return nil, nil
	case len(ip.Layers) == 1 && ip.Layers[0].Path != "":
		ip.Path = ip.Layers[0].Path
	default:
		ip.Path = filepath.Join(p.RunDir, InitrdName)
	}
	return ip, nil
}

// neededModules are the kernel modules this VM needs beyond those every
// guest has (bootimage.BaseModules): the disk modules when it has a disk
// (root, data disk or volume), the vsock transport when its agent channel
// is vsock (Cloud Hypervisor; QEMU's virtio-serial is in the base).
func neededModules(s Spec, m *manifest.Manifest, p *Plan) []string {
	var need []string
	if m.Rootfs != nil || len(m.Disks) > 0 || len(s.Disks) > 0 || len(s.Volumes) > 0 {
		need = append(need, bootimage.DiskModules...)
	}
	if p.Agent != nil && p.Agent.Transport == vmm.AgentVsock {
		need = append(need, bootimage.VsockModules...)
	}
	return need
}

// modulesLayer returns the archive of kernel modules to unpack over a
// plugin whose modules for kernel k (files, paths under
// lib/modules/<release>) lack some of need, or "" when they lack none: the
// missing modules with their dependencies, and an index of the plugin's
// modules and these together, which replaces the plugin's. It is built once
// per plugin module set and need, and cached under Options.CacheDir.
func modulesLayer(k kernelInfo, o Options, files, need []string, note func(string, ...any)) (string, error) {
	present := map[string]bool{}
	have := map[string]bool{}
	var names []string
	for _, f := range files {
		present[f] = true
		if strings.HasSuffix(kmod.PlainPath(f), ".ko") && !have[kmod.Name(f)] {
			have[kmod.Name(f)] = true
			names = append(names, kmod.Name(f))
		}
	}
	// The plugin's index came from resolving its modules, so a module it
	// has comes with its dependencies.
	var missing []string
	for _, n := range need {
		if !have[kmod.Name(n)] {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 {
		return "", nil
	}
	key := fmt.Sprintf("modules-layer v1\x00%s\x00%s\x00%s\x00%s", k.release, k.modulesDir, strings.Join(files, ","), strings.Join(missing, ","))
	out, built, err := cachedArchive(o.CacheDir, "modules", key, func(b *initramfs.Builder) error {
		_, err := bootimage.AddModules(b, bootimage.Options{ModulesDir: k.modulesDir, Release: k.release, Modules: slices.Concat(names, missing), Present: present})
		return err
	})
	if err != nil || !built {
		return out, err
	}
	note("built the modules layer %s: %s from %s over the plugin's modules", out, strings.Join(missing, ","), k.modulesDir)
	return out, nil
}

// bootImage returns the boot initramfs built from kestrel and the kernel's
// modules (with their dependencies), from the cache or freshly built into
// it. The cache key is the kestrel file's identity (path, size, mtime), the
// kernel release and the module list; builds are reproducible, so a stale
// key only costs a rebuild.
func bootImage(ctx context.Context, s Spec, k kernelInfo, o Options, modules []string, note func(string, ...any)) (string, error) {
	kestrel := s.Kestrel
	if kestrel == "" {
		kestrel = o.Kestrel
	}
	if kestrel == "" {
		return "", apierr.New(apierr.Unavailable, "this VM needs a boot initramfs (kestrel + kernel modules) and none was given").
			With("hint", "pass --boot-initramfs FILE (fledge boot-initramfs) or --kestrel PATH (or set VOLANT_KESTREL)")
	}
	if k.modulesDir == "" {
		return "", apierr.New(apierr.Unavailable, "building a boot initramfs needs the kernel's modules, and kernel %s is not in a kernel directory", k.path).
			With("hint", "pass --kernel DIR (the kernel directory), or --boot-initramfs FILE")
	}
	st, err := os.Stat(kestrel)
	if err != nil {
		return "", fmt.Errorf("kestrel: %w", err)
	}
	abs, _ := filepath.Abs(kestrel)
	key := fmt.Sprintf("boot-image v2\x00%s\x00%d\x00%d\x00%s\x00%s\x00%s", abs, st.Size(), st.ModTime().UnixNano(), k.release, k.modulesDir,
		strings.Join(modules, ","))
	out, built, err := cachedArchive(o.CacheDir, "boot", key, func(b *initramfs.Builder) error {
		_, err := bootimage.Add(b, bootimage.Options{Kestrel: kestrel, ModulesDir: k.modulesDir, Release: k.release, Modules: modules})
		return err
	})
	if err != nil || !built {
		return out, err
	}
	note("built the boot initramfs %s from %s and the modules of %s", out, kestrel, k.release)
	return out, nil
}

// cachedArchive returns <cacheDir>/<prefix>-<hash of key>.cpio.gz, built
// by add first when it is not there (built then reports so). Builds are
// reproducible, so a stale key only costs a rebuild.
func cachedArchive(cacheDir, prefix, key string, add func(*initramfs.Builder) error) (path string, built bool, err error) {
	h := sha256.Sum256([]byte(key))
	out := filepath.Join(cacheDir, prefix+"-"+hex.EncodeToString(h[:])[:16]+".cpio.gz")
	if _, err := os.Stat(out); err == nil {
		return out, false, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", false, fmt.Errorf("the initramfs cache: %w", err)
	}
	b := initramfs.New()
	if err := add(b); err != nil {
		return "", false, fmt.Errorf("building the %s initramfs: %w", prefix, err)
	}
	if err := b.WriteFile(out, initramfs.Gzip); err != nil {
		return "", false, fmt.Errorf("building the %s initramfs: %w", prefix, err)
	}
	return out, true, nil
}

// cachedScan lists the kernel modules an initramfs carries (ScanModules),
// caching the answer by the archive's verified sha256 (or its size and
// mtime when the manifest gave no checksum).
func cachedScan(a *Artifact, cacheDir string) (map[string][]string, error) {
	key := a.SHA256
	if !a.Verified {
		st, err := os.Stat(a.Path)
		if err != nil {
			return nil, err
		}
		h := sha256.Sum256([]byte(fmt.Sprintf("%s\x00%d\x00%d", a.Path, st.Size(), st.ModTime().UnixNano())))
		key = "stat-" + hex.EncodeToString(h[:])
	}
	cache := filepath.Join(cacheDir, "scan", "modules-"+key+".json")
	var mods map[string][]string
	if b, err := os.ReadFile(cache); err == nil && json.Unmarshal(b, &mods) == nil {
		return mods, nil
	}
	mods, err := ScanModules(a.Path)
	if err != nil {
		return nil, err
	}
	if b, err := json.Marshal(mods); err == nil && os.MkdirAll(filepath.Dir(cache), 0o755) == nil {
		_ = supervise.WriteFileAtomic(cache, b, 0o644) // a cache: losing it costs a rescan
	}
	return mods, nil
}

// ScanModules reads an initramfs archive (newc cpio, uncompressed or
// gzip/zstd/xz, possibly several concatenated) and returns, for each kernel
// release it has lib/modules/<release>/modules.dep for, its module files
// (paths under lib/modules/<release>/, sorted).
func ScanModules(path string) (map[string][]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 1<<16)
	indexed := map[string]bool{}
	files := map[string][]string{}
	result := func() map[string][]string {
		out := map[string][]string{}
		for rel := range indexed {
			out[rel] = files[rel]
			slices.Sort(out[rel])
			if out[rel] == nil {
				out[rel] = []string{}
			}
		}
		return out
	}
	for {
		// Skip the zero padding between concatenated archives.
		for {
			b, err := br.Peek(1)
			if err != nil {
				if errors.Is(err, io.EOF) {
					return result(), nil
				}
				return nil, err
			}
			if b[0] != 0 {
				break
			}
			br.Discard(1)
		}
		r, closer, err := decompress(br)
		if err != nil {
			return nil, err
		}
		err = walkNewc(r, func(name string) {
			name = strings.TrimPrefix(strings.TrimPrefix(name, "."), "/")
			parts := strings.SplitN(name, "/", 4)
			if len(parts) < 4 || parts[0] != "lib" || parts[1] != "modules" {
				return
			}
			switch rest := parts[3]; {
			case rest == "modules.dep":
				indexed[parts[2]] = true
			case strings.HasSuffix(kmod.PlainPath(rest), ".ko"):
				files[parts[2]] = append(files[parts[2]], rest)
			}
		})
		if closer != nil {
			closer()
		}
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", path, err)
		}
		if r != io.Reader(br) {
			// A compressed stream consumed the rest of the file (gzip reads
			// concatenated members itself); other formats are not followed.
			return result(), nil
		}
	}
}

func decompress(br *bufio.Reader) (io.Reader, func(), error) {
	magic, _ := br.Peek(6)
	switch {
	case bytes.HasPrefix(magic, []byte("0707")):
		return br, nil, nil
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, err
		}
		return zr, func() { zr.Close() }, nil
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return nil, nil, err
		}
		return zr, zr.Close, nil
	case bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		zr, err := xz.NewReader(br)
		if err != nil {
			return nil, nil, err
		}
		return zr, nil, nil
	}
	return nil, nil, fmt.Errorf("unknown initramfs format (magic % x)", magic)
}

// walkNewc calls fn with each entry name of one newc archive, up to its
// TRAILER!!! entry, reading past file contents.
func walkNewc(r io.Reader, fn func(string)) error {
	hdr := make([]byte, 110)
	var off int64
	skip := func(n int64) error {
		_, err := io.CopyN(io.Discard, r, n)
		off += n
		return err
	}
	for {
		if _, err := io.ReadFull(r, hdr); err != nil {
			return fmt.Errorf("cpio header: %w", err)
		}
		off += 110
		if string(hdr[:6]) != "070701" && string(hdr[:6]) != "070702" {
			return fmt.Errorf("not a newc cpio header at offset %d", off-110)
		}
		field := func(i int) (int64, error) { return strconv.ParseInt(string(hdr[6+8*i:14+8*i]), 16, 64) }
		size, err1 := field(6)
		nameSize, err2 := field(11)
		if err1 != nil || err2 != nil || nameSize < 1 || nameSize > 4096 {
			return fmt.Errorf("corrupt cpio header at offset %d", off-110)
		}
		name := make([]byte, nameSize)
		if _, err := io.ReadFull(r, name); err != nil {
			return fmt.Errorf("cpio name: %w", err)
		}
		off += nameSize
		if err := skip((4 - off%4) % 4); err != nil {
			return err
		}
		n := string(bytes.TrimRight(name, "\x00"))
		if n == "TRAILER!!!" {
			return nil
		}
		fn(n)
		if err := skip(size); err != nil {
			return fmt.Errorf("cpio data of %s: %w", n, err)
		}
		if err := skip((4 - off%4) % 4); err != nil {
			return err
		}
	}
}

// stageInitrd writes <run dir>/initrd when the plan layers archives:
// each layer padded to 4 bytes, then concatenated, the generated manifest
// archive last. It streams (plugin archives can be large) into a temporary
// file renamed into place (google/renameio).
func stageInitrd(p *Plan) error {
	if p.Initrd == nil || p.Initrd.Path != filepath.Join(p.RunDir, InitrdName) {
		return nil
	}
	f, err := renameio.NewPendingFile(p.Initrd.Path, renameio.WithTempDir(p.RunDir))
	if err != nil {
		return fmt.Errorf("staging the initrd: %w", err)
	}
	defer f.Cleanup()
	w := &countWriter{w: bufio.NewWriterSize(f, 1<<20)}
	for _, l := range p.Initrd.Layers {
		if l.Path == "" {
			b := initramfs.New()
			b.Dir("/etc", 0o755)
			b.Dir("/etc/volant", 0o755)
			if err := b.File(ManifestInVM, 0o644, p.manifestJSON); err != nil {
				return err
			}
			if err := b.WriteTo(w, initramfs.None); err != nil {
				return fmt.Errorf("writing the manifest archive: %w", err)
			}
		} else {
			src, err := os.Open(l.Path)
			if err != nil {
				return fmt.Errorf("initrd layer %s: %w", l.What, err)
			}
			_, err = io.Copy(w, src)
			src.Close()
			if err != nil {
				return fmt.Errorf("initrd layer %s: %w", l.What, err)
			}
		}
		if pad := (4 - w.n%4) % 4; pad > 0 {
			w.Write(make([]byte, pad))
		}
	}
	if err := w.w.(*bufio.Writer).Flush(); err != nil {
		return fmt.Errorf("staging the initrd: %w", err)
	}
	if err := f.CloseAtomicallyReplace(); err != nil {
		return fmt.Errorf("staging the initrd: %w", err)
	}
	return nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}
