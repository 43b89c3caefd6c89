// Package modules loads the kernel modules a guest boots with.
//
// The boot image (lib/bootimage) decides which modules a guest gets: it
// copies them with a subset modules.dep into /lib/modules/<release>. At
// boot kestrel loads the image's modules, dependencies first (the order
// lib/kmod resolves), plus the extra names of volant.modules=, with two
// savings that matter under software emulation, where each module costs
// tens of milliseconds:
//
//   - filesystem modules (those providing an "fs-<type>" alias, like ext4
//     with jbd2, mbcache, crc16 and crc32c) are not loaded at boot but by
//     EnsureFS before the first mount of that type, so a guest without
//     disks never pays for them;
//   - drivers that only match PCI devices (virtio_pci) are skipped on a
//     machine without a PCI bus (QEMU's microvm);
//   - modules the caller names as "later" (on the initramfs path kestrel
//     holds back the virtio console's and, for a plugin without disks,
//     virtio_blk: see boot.LateModules) are left out of the boot and
//     loaded with LoadLater once the workload is up, unless they are
//     virtio drivers whose device the guest lacks (a VM without a block
//     device never loads virtio_blk).
//
// A required module that fails is an error; soft-dependency alternatives
// (crc32c_intel needs SSE4.2) may fail, and are skipped.
package modules

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/volantvm/volant/lib/kestrel/guest"
	"github.com/volantvm/volant/lib/kmod"
)

// Dir is where the running kernel's modules are: /lib/modules/<release>.
func Dir(root string) string {
	return filepath.Join(root, "lib/modules", guest.Release())
}

// index is what Plan reads besides kmod's own index.
type index struct {
	listed  []string            // module names in modules.dep order
	deps    map[string][]string // name -> names it depends on (hard)
	aliases map[string][]string // module name -> its aliases
	byAlias map[string][]string // alias -> module names
	softRef map[string]bool     // names some softdep line reaches
}

func readIndex(dir string) (*index, error) {
	ix := &index{deps: map[string][]string{}, aliases: map[string][]string{}, byAlias: map[string][]string{}, softRef: map[string]bool{}}
	err := eachLine(filepath.Join(dir, "modules.dep"), true, func(line string) {
		mod, rest, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(mod) == "" {
			return
		}
		n := kmod.Name(strings.TrimSpace(mod))
		ix.listed = append(ix.listed, n)
		for _, d := range strings.Fields(rest) {
			ix.deps[n] = append(ix.deps[n], kmod.Name(d))
		}
	})
	if err != nil {
		return nil, err
	}
	if err := eachLine(filepath.Join(dir, "modules.alias"), false, func(line string) {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "alias" {
			n := kmod.Name(f[2])
			ix.aliases[n] = append(ix.aliases[n], f[1])
			ix.byAlias[f[1]] = append(ix.byAlias[f[1]], n)
		}
	}); err != nil {
		return nil, err
	}
	err = eachLine(filepath.Join(dir, "modules.softdep"), false, func(line string) {
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "softdep" {
			return
		}
		for _, w := range f[2:] {
			if w == "pre:" || w == "post:" {
				continue
			}
			if provs, ok := ix.byAlias[w]; ok {
				for _, p := range provs {
					ix.softRef[p] = true
				}
				continue
			}
			ix.softRef[kmod.Name(w)] = true
		}
	})
	return ix, err
}

func eachLine(p string, required bool, fn func(string)) error {
	f, err := os.Open(p)
	if err != nil {
		if !required && errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if l := sc.Text(); l != "" && l[0] != '#' {
			fn(l)
		}
	}
	return sc.Err()
}

// Listed returns the module names modules.dep in dir lists, in file order.
func Listed(dir string) ([]string, error) {
	ix, err := readIndex(dir)
	if err != nil {
		return nil, err
	}
	return ix.listed, nil
}

// Host describes the machine for Plan.
type Host struct {
	// PCI is whether the machine has a PCI bus with devices.
	PCI bool
}

// DetectHost looks at sysfs.
func DetectHost() Host {
	ents, _ := os.ReadDir("/sys/bus/pci/devices")
	return Host{PCI: len(ents) > 0}
}

// Planned is what to load at boot.
type Planned struct {
	Index *kmod.Index
	Steps []kmod.Step
	// Unknown are extra names the index lacks (stage 2's root may have them).
	Unknown []string
	// Deferred are filesystem modules left for EnsureFS.
	Deferred []string
	// Skipped are drivers for a bus the machine lacks.
	Skipped []string
	// Later are the image's modules held back for LoadLater.
	Later []string
}

// Plan resolves what to load from dir: the image's modules when all is set
// (see the package comment for what is deferred, skipped or held back for
// later), then extra.
func Plan(dir string, all bool, extra []string, host Host, later []string) (*Planned, error) {
	kix, err := kmod.LoadIndex(dir)
	if err != nil {
		return nil, err
	}
	p := &Planned{Index: kix}
	have := map[string]bool{}
	add := func(steps []kmod.Step, optional bool) {
		for _, s := range steps {
			if !have[s.Path] {
				have[s.Path] = true
				s.Optional = s.Optional || optional
				p.Steps = append(p.Steps, s)
			}
		}
	}
	if all {
		ix, err := readIndex(dir)
		if err != nil {
			return nil, err
		}
		// Roots: listed modules nothing else in the image depends on.
		isDep := map[string]bool{}
		for _, ds := range ix.deps {
			for _, d := range ds {
				isDep[d] = true
			}
		}
		hold := map[string]bool{}
		for _, n := range later {
			hold[kmod.Name(n)] = true
		}
		var roots []string
		for _, n := range ix.listed {
			if isDep[n] || ix.softRef[n] {
				continue
			}
			switch {
			case hold[n]:
				p.Later = append(p.Later, n)
			case hasAliasPrefix(ix.aliases[n], "fs-", false):
				p.Deferred = append(p.Deferred, n)
			case !host.PCI && hasAliasPrefix(ix.aliases[n], "pci:", true):
				p.Skipped = append(p.Skipped, n)
			default:
				roots = append(roots, n)
			}
		}
		steps, err := kix.Resolve(roots...)
		if err != nil {
			return nil, err
		}
		add(steps, false)
	}
	for _, e := range extra {
		more, err := kix.Resolve(e)
		if errors.Is(err, kmod.ErrUnknownModule) {
			p.Unknown = append(p.Unknown, e)
			continue
		}
		if err != nil {
			return nil, err
		}
		add(more, false)
	}
	return p, nil
}

// hasAliasPrefix: with every set, all aliases (at least one) start with
// prefix; otherwise any does.
func hasAliasPrefix(aliases []string, prefix string, every bool) bool {
	if len(aliases) == 0 {
		return false
	}
	for _, a := range aliases {
		if strings.HasPrefix(a, prefix) != every {
			return !every
		}
	}
	return every
}

// Load loads the plan for dir (see Plan) and returns the extra names dir
// lacks and the image's modules it held back for LoadLater. A dir without
// modules.dep loads nothing (a kernel with everything built in needs no
// modules); extra names are then all unknown.
func Load(m *guest.Machine, dir string, all bool, extra, later []string, log *slog.Logger) (unknown, held []string, err error) {
	m.Check()
	if _, err := os.Stat(filepath.Join(dir, "modules.dep")); errors.Is(err, os.ErrNotExist) {
		log.Debug("no module index; loading nothing", "dir", dir)
		return extra, nil, nil
	}
	p, err := Plan(dir, all, extra, DetectHost(), later)
	if err != nil {
		return nil, nil, fmt.Errorf("resolving kernel modules in %s: %w", dir, err)
	}
	t0 := time.Now()
	loaded, present, err := loadSteps(p.Index, p.Steps, log)
	if err != nil {
		return p.Unknown, nil, fmt.Errorf("loading kernel modules from %s: %w", dir, err)
	}
	log.Info("kernel modules loaded", "loaded", loaded, "present", present, "took", time.Since(t0).Round(time.Millisecond),
		"deferred", strings.Join(p.Deferred, ","), "skipped", strings.Join(p.Skipped, ","), "later", strings.Join(p.Later, ","))
	return p.Unknown, p.Later, nil
}

// LoadLater loads the modules Load held back (names, with their
// dependencies) from dir, except virtio drivers whose device the guest
// lacks (see WithDevices).
func LoadLater(m *guest.Machine, dir string, names []string, log *slog.Logger) error {
	m.Check()
	names, absent := WithDevices(dir, "/sys", names)
	if len(absent) > 0 {
		log.Info("later kernel modules without a device: not loaded", "modules", strings.Join(absent, ","))
	}
	if len(names) == 0 {
		return nil
	}
	p, err := Plan(dir, false, names, DetectHost(), nil)
	if err != nil {
		return fmt.Errorf("resolving kernel modules in %s: %w", dir, err)
	}
	t0 := time.Now()
	loaded, _, err := loadSteps(p.Index, p.Steps, log)
	if err != nil {
		return fmt.Errorf("loading kernel modules from %s: %w", dir, err)
	}
	log.Info("later kernel modules loaded", "modules", strings.Join(names, ","), "loaded", loaded, "took", time.Since(t0).Round(time.Millisecond))
	return nil
}

// WithDevices splits names into those to load and the virtio drivers among
// them whose device is not on the guest's virtio bus (sys is /sys): a
// driver whose aliases in dir's index are all virtio device aliases
// ("virtio:d00000002v*", virtio_blk) while no device in
// sys/bus/virtio/devices has one of their ids. Only once the virtio
// transports are loaded does the bus list every device; before that it
// would find none.
func WithDevices(dir, sys string, names []string) (load, absent []string) {
	ix, err := readIndex(dir)
	if err != nil {
		return names, nil
	}
	var have map[uint64]bool
	for _, n := range names {
		ids := virtioIDs(ix.aliases[kmod.Name(n)])
		if len(ids) == 0 {
			load = append(load, n)
			continue
		}
		if have == nil {
			have = virtioDevices(sys)
		}
		if slices.ContainsFunc(ids, func(id uint64) bool { return have[id] }) {
			load = append(load, n)
		} else {
			absent = append(absent, n)
		}
	}
	return load, absent
}

// virtioIDs returns the device ids of aliases when every one of them is a
// virtio device alias (virtio:d<8 hex digits>v<vendor>), else nil.
func virtioIDs(aliases []string) []uint64 {
	var ids []uint64
	for _, a := range aliases {
		rest, ok := strings.CutPrefix(a, "virtio:d")
		if !ok || len(rest) < 8 {
			return nil
		}
		id, err := strconv.ParseUint(rest[:8], 16, 32)
		if err != nil {
			return nil
		}
		ids = append(ids, id)
	}
	return ids
}

// virtioDevices reads the device ids on the virtio bus ("0x0002").
func virtioDevices(sys string) map[uint64]bool {
	out := map[uint64]bool{}
	devs := filepath.Join(sys, "bus/virtio/devices")
	ents, _ := os.ReadDir(devs)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(devs, e.Name(), "device"))
		if err != nil {
			continue
		}
		if id, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(string(b)), "0x"), 16, 32); err == nil {
			out[id] = true
		}
	}
	return out
}

// loadSteps loads steps in order, skipping modules the kernel already has
// (/sys/module/<name>): asking again would cost a signature check.
func loadSteps(ix *kmod.Index, steps []kmod.Step, log *slog.Logger) (loaded, present int, err error) {
	for _, st := range steps {
		if _, err := os.Stat("/sys/module/" + st.Name); err == nil {
			present++
			continue
		}
		t1 := time.Now()
		res, lerr := kmod.Load(ix, []kmod.Step{st})
		for _, r := range res {
			switch {
			case r.Loaded:
				loaded++
				log.Debug("module loaded", "module", r.Name, "took", time.Since(t1).Round(time.Millisecond))
			case r.Present:
				present++
			case r.Error != "":
				log.Debug("optional module not loaded", "module", r.Name, "err", r.Error)
			}
		}
		if lerr != nil {
			return loaded, present, lerr
		}
	}
	return loaded, present, nil
}

// Filesystems reads /proc/filesystems: the types the kernel can mount now.
func Filesystems() map[string]bool {
	out := map[string]bool{}
	_ = eachLine("/proc/filesystems", false, func(line string) {
		f := strings.Fields(line)
		if len(f) > 0 {
			out[f[len(f)-1]] = true
		}
	})
	return out
}

// EnsureFS makes the kernel able to mount fstype, loading its module (the
// "fs-<type>" alias, or a module of that name) from dir when needed.
func EnsureFS(m *guest.Machine, dir, fstype string, log *slog.Logger) error {
	m.Check()
	if Filesystems()[fstype] {
		return nil
	}
	kix, err := kmod.LoadIndex(dir)
	if err != nil {
		return fmt.Errorf("the kernel cannot mount %s and no module index is in %s: %w", fstype, dir, err)
	}
	steps, err := kix.Resolve("fs-" + fstype)
	if errors.Is(err, kmod.ErrUnknownModule) {
		steps, err = kix.Resolve(fstype)
	}
	if err != nil {
		return fmt.Errorf("the kernel cannot mount %s: %w", fstype, err)
	}
	t0 := time.Now()
	loaded, _, err := loadSteps(kix, steps, log)
	if err != nil {
		return fmt.Errorf("loading the %s module: %w", fstype, err)
	}
	log.Info("filesystem modules loaded", "fstype", fstype, "loaded", loaded, "took", time.Since(t0).Round(time.Millisecond))
	return nil
}
