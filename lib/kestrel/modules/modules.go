// Package modules loads the kernel modules a guest boots with.
//
// The boot image (lib/bootimage) decides which modules a guest gets: it
// copies them with a subset modules.dep into /lib/modules/<release>.
// Kestrel loads every module that index lists, dependencies first (the
// order lib/kmod resolves), plus the extra names of volant.modules=. A
// missing or failing required module is an error; soft dependencies that
// fail (like a CPU-specific crc32c) are skipped, as lib/kmod marks them.
package modules

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/volantvm/volant/lib/kestrel/guest"
	"github.com/volantvm/volant/lib/kmod"
)

// Dir is where the running kernel's modules are: /lib/modules/<release>.
func Dir(root string) string {
	return filepath.Join(root, "lib/modules", guest.Release())
}

// Listed returns the module names modules.dep in dir lists, in file order.
func Listed(dir string) ([]string, error) {
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var names []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		mod, _, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(mod) != "" {
			names = append(names, kmod.Name(strings.TrimSpace(mod)))
		}
	}
	return names, sc.Err()
}

// Plan resolves what to load from dir: every listed module when all is
// set, then extra. Unknown extra names are returned separately, not as an
// error, so the caller can retry them elsewhere (stage 2's root may carry
// them).
func Plan(dir string, all bool, extra []string) (ix *kmod.Index, steps []kmod.Step, unknown []string, err error) {
	ix, err = kmod.LoadIndex(dir)
	if err != nil {
		return nil, nil, nil, err
	}
	if all {
		names, err := Listed(dir)
		if err != nil {
			return nil, nil, nil, err
		}
		if steps, err = ix.Resolve(names...); err != nil {
			return nil, nil, nil, err
		}
	}
	have := map[string]bool{}
	for _, s := range steps {
		have[s.Path] = true
	}
	for _, e := range extra {
		more, err := ix.Resolve(e)
		if errors.Is(err, kmod.ErrUnknownModule) {
			unknown = append(unknown, e)
			continue
		}
		if err != nil {
			return nil, nil, nil, err
		}
		for _, s := range more {
			if !have[s.Path] {
				have[s.Path] = true
				steps = append(steps, s)
			}
		}
	}
	return ix, steps, unknown, nil
}

// Load loads the plan for dir (every listed module when all is set, and
// extra). A dir without modules.dep loads nothing (a kernel with everything
// built in needs no modules); extra names are then all unknown.
func Load(m *guest.Machine, dir string, all bool, extra []string, log *slog.Logger) (unknown []string, err error) {
	m.Check()
	if _, err := os.Stat(filepath.Join(dir, "modules.dep")); errors.Is(err, os.ErrNotExist) {
		log.Debug("no module index; loading nothing", "dir", dir)
		return extra, nil
	}
	ix, steps, unknown, err := Plan(dir, all, extra)
	if err != nil {
		return nil, fmt.Errorf("resolving kernel modules in %s: %w", dir, err)
	}
	t0 := time.Now()
	res, err := kmod.Load(ix, steps)
	loaded, present := 0, 0
	for _, r := range res {
		switch {
		case r.Loaded:
			loaded++
		case r.Present:
			present++
		case r.Error != "":
			log.Debug("optional module not loaded", "module", r.Name, "err", r.Error)
		}
	}
	if err != nil {
		return unknown, fmt.Errorf("loading kernel modules from %s: %w", dir, err)
	}
	log.Info("kernel modules loaded", "loaded", loaded, "present", present, "took", time.Since(t0).Round(time.Millisecond))
	return unknown, nil
}
