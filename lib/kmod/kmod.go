// Package kmod resolves Linux kernel modules and their dependencies from a
// modules directory (/lib/modules/<release>) as depmod leaves it:
// modules.dep, modules.softdep, modules.alias and modules.builtin.
//
// It serves both sides of the boot: on the host, lib/bootimage uses Resolve
// to pick exactly the modules a guest needs, decompresses them (a guest
// archive carries plain .ko files) and writes their index with SubsetFiles;
// in the guest, kestrel resolves the same names against that index and
// loads them in order (Load, Linux only). It depends on the standard
// library only, so kestrel links no xz or zstd decoder: Load refuses a
// module compressed other than with gzip, naming it.
//
// Names: module names compare with '-' and '_' equal (as the kernel does);
// alias names do not (crypto-crc32c is an alias, not a module).
package kmod

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// Index is a parsed modules directory.
type Index struct {
	Dir string
	// deps maps a module path (relative to Dir) to its dependencies' paths,
	// as modules.dep lists them (the deepest last).
	deps map[string][]string
	// byName maps a normalized module name to its path.
	byName map[string]string
	// softPre maps a normalized module name to names/aliases to load first.
	softPre map[string][]string
	// aliases maps an alias to the module names that provide it.
	aliases map[string][]string
	// builtin holds normalized names of modules built into the kernel.
	builtin map[string]bool
}

// ErrUnknownModule is wrapped by Resolve for a name nothing provides.
var ErrUnknownModule = errors.New("unknown module")

// compressions are the suffixes of compressed modules and their names as
// Open reports them.
var compressions = [...][2]string{{".gz", "gz"}, {".xz", "xz"}, {".zst", "zst"}}

// Name returns the normalized module name of a path or name:
// "kernel/fs/ext4/ext4.ko.xz" -> "ext4", "crc32c-intel" -> "crc32c_intel".
func Name(p string) string {
	b := strings.TrimSuffix(PlainPath(path.Base(p)), ".ko")
	return strings.ReplaceAll(b, "-", "_")
}

// Compression returns how the module file p is compressed, by its suffix:
// "", "gz", "xz" or "zst".
func Compression(p string) string {
	for _, c := range compressions {
		if strings.HasSuffix(p, c[0]) {
			return c[1]
		}
	}
	return ""
}

// PlainPath returns the path of module file p once decompressed:
// "kernel/fs/ext4/ext4.ko.xz" -> "kernel/fs/ext4/ext4.ko".
func PlainPath(p string) string {
	for _, c := range compressions {
		if s, ok := strings.CutSuffix(p, c[0]); ok {
			return s
		}
	}
	return p
}

// LoadIndex reads a modules directory. modules.dep is required; the other
// index files are optional.
func LoadIndex(dir string) (*Index, error) {
	ix := &Index{
		Dir:     dir,
		deps:    map[string][]string{},
		byName:  map[string]string{},
		softPre: map[string][]string{},
		aliases: map[string][]string{},
		builtin: map[string]bool{},
	}
	if err := eachLine(filepath.Join(dir, "modules.dep"), true, func(line string) {
		mod, rest, ok := strings.Cut(line, ":")
		if !ok {
			return
		}
		mod = strings.TrimSpace(mod)
		ix.deps[mod] = strings.Fields(rest)
		ix.byName[Name(mod)] = mod
	}); err != nil {
		return nil, err
	}
	if err := eachLine(filepath.Join(dir, "modules.softdep"), false, func(line string) {
		// softdep <module> pre: a b post: c
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "softdep" {
			return
		}
		name, pre := Name(f[1]), false
		for _, w := range f[2:] {
			switch w {
			case "pre:":
				pre = true
			case "post:":
				pre = false
			default:
				if pre {
					ix.softPre[name] = append(ix.softPre[name], w)
				}
			}
		}
	}); err != nil {
		return nil, err
	}
	if err := eachLine(filepath.Join(dir, "modules.alias"), false, func(line string) {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "alias" {
			ix.aliases[f[1]] = append(ix.aliases[f[1]], Name(f[2]))
		}
	}); err != nil {
		return nil, err
	}
	if err := eachLine(filepath.Join(dir, "modules.builtin"), false, func(line string) {
		ix.builtin[Name(strings.TrimSpace(line))] = true
	}); err != nil {
		return nil, err
	}
	return ix, nil
}

func eachLine(p string, required bool, fn func(string)) error {
	f, err := os.Open(p)
	if err != nil {
		if !required && errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("reading module index: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		fn(line)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading %s: %w", p, err)
	}
	return nil
}

// Builtin reports whether the named module is built into the kernel.
func (ix *Index) Builtin(name string) bool { return ix.builtin[Name(name)] }

// Step is one module to load, in order.
type Step struct {
	Name string `json:"name"`
	Path string `json:"path"` // relative to the index's Dir
	// Optional marks soft dependencies: one of several alternatives (like
	// crc32c_intel and crc32c_generic) may fail to load on a given CPU.
	Optional bool `json:"optional,omitempty"`
}

// Resolve returns the modules to load for names, dependencies first, each
// once. A name may be a module or an alias. Built-in modules are skipped.
// Soft pre-dependencies are included (and marked Optional), every module
// that provides one of their aliases, so the guest can use whichever works.
func (ix *Index) Resolve(names ...string) ([]Step, error) {
	var out []Step
	seen := map[string]bool{}
	var visit func(name string, optional bool, stack []string) error
	visit = func(name string, optional bool, stack []string) error {
		n := Name(name)
		if ix.builtin[n] {
			return nil
		}
		p, ok := ix.byName[n]
		if !ok {
			// An alias: load every module that provides it, in name order
			// so the result does not depend on the index's line order.
			provs := append([]string(nil), ix.aliases[name]...)
			sort.Strings(provs)
			if len(provs) == 0 {
				if optional {
					return nil
				}
				return fmt.Errorf("%w %q in %s", ErrUnknownModule, name, ix.Dir)
			}
			// With several providers any one may be the one that works here.
			for _, prov := range provs {
				if err := visit(prov, optional || len(provs) > 1, stack); err != nil {
					return err
				}
			}
			return nil
		}
		if seen[p] {
			return nil
		}
		for _, s := range stack {
			if s == p {
				return fmt.Errorf("module dependency cycle: %s -> %s", strings.Join(stack, " -> "), p)
			}
		}
		stack = append(stack, p)
		for _, pre := range ix.softPre[n] {
			if err := visit(pre, true, stack); err != nil {
				return err
			}
		}
		// modules.dep lists the deepest dependency last; load it first.
		deps := ix.deps[p]
		for i := len(deps) - 1; i >= 0; i-- {
			if err := visit(deps[i], optional, stack); err != nil {
				return err
			}
		}
		seen[p] = true
		out = append(out, Step{Name: n, Path: p, Optional: optional})
		return nil
	}
	for _, name := range names {
		if err := visit(name, false, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// SubsetFiles returns modules.dep, modules.softdep, modules.alias and
// modules.builtin for just the given steps, in a stable order, so an
// initramfs carrying those modules resolves them the same way in the guest.
// Its paths are the modules' PlainPath: the archive carries them
// decompressed.
func (ix *Index) SubsetFiles(steps []Step) (map[string][]byte, error) {
	in := map[string]bool{}
	names := map[string]bool{}
	for _, s := range steps {
		in[s.Path] = true
		names[s.Name] = true
	}
	var dep, soft, alias []string
	for _, s := range steps {
		var kept []string
		for _, d := range ix.deps[s.Path] {
			if in[d] {
				kept = append(kept, PlainPath(d))
			}
		}
		dep = append(dep, PlainPath(s.Path)+": "+strings.Join(kept, " "))
		if pre := ix.softPre[s.Name]; len(pre) > 0 {
			soft = append(soft, "softdep "+s.Name+" pre: "+strings.Join(pre, " "))
		}
	}
	for a, provs := range ix.aliases {
		for _, p := range provs {
			if names[p] {
				alias = append(alias, "alias "+a+" "+p)
			}
		}
	}
	var builtin []string
	for b := range ix.builtin {
		builtin = append(builtin, b)
	}
	out := map[string][]byte{}
	for name, lines := range map[string][]string{
		"modules.dep":     dep,
		"modules.softdep": soft,
		"modules.alias":   alias,
		"modules.builtin": builtin,
	} {
		sort.Strings(lines)
		body := strings.Join(lines, "\n")
		if body != "" {
			body += "\n"
		}
		out[name] = []byte(body)
	}
	return out, nil
}

// WriteSubset writes SubsetFiles into dir.
func (ix *Index) WriteSubset(dir string, steps []Step) error {
	files, err := ix.SubsetFiles(steps)
	if err != nil {
		return err
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), body, 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", name, err)
		}
	}
	return nil
}

// Open opens a module file for loading and reports how it is compressed
// ("", "gz", "xz" or "zst").
func (ix *Index) Open(s Step) (io.ReadCloser, string, error) {
	f, err := os.Open(filepath.Join(ix.Dir, s.Path))
	if err != nil {
		return nil, "", fmt.Errorf("opening module %s: %w", s.Name, err)
	}
	return f, Compression(s.Path), nil
}
