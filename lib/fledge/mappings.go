package fledge

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

type entryKind int

const (
	kindFile entryKind = iota
	kindDir
	kindSymlink
)

// entry is one thing a mapping puts into the guest tree.
type entry struct {
	Dest   string // clean absolute guest path
	Kind   entryKind
	Src    string // host file, for kindFile
	Target string // for kindSymlink
	Mode   fs.FileMode
	From   string // the mapping's source key, for errors
}

// execDirs are path segments under which mapped files are executables.
var execDirs = map[string]bool{"bin": true, "sbin": true, "libexec": true}

// FileMode is the mode a mapped file gets: 0755 under a bin, sbin or
// libexec directory (/usr/bin, /usr/local/sbin, /opt/app/bin, …) or when the
// source is executable, 0644 otherwise. Directories get 0755.
func FileMode(dest string, src fs.FileMode) fs.FileMode {
	if src&0o111 != 0 {
		return 0o755
	}
	for _, seg := range strings.Split(path.Dir(path.Clean(dest)), "/") {
		if execDirs[seg] {
			return 0o755
		}
	}
	return 0o644
}

// within reports whether p is inside dir (both clean, absolute).
func within(dir, p string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../") && !filepath.IsAbs(rel)
}

// contextDir is the build context with its symlinks resolved.
func (c *Config) contextDir() (string, error) {
	d, err := filepath.EvalSymlinks(c.Dir)
	if err != nil {
		return "", fmt.Errorf("resolving build context %s: %w", c.Dir, err)
	}
	return d, nil
}

// contextFile resolves a path given in fledge.toml that must stay inside
// the build context (mapping sources, a custom init): relative to the
// toml's folder, symlinks resolved, and refused if it lands outside.
func (c *Config) contextFile(field, p string) (string, error) {
	ctxDir, err := c.contextDir()
	if err != nil {
		return "", err
	}
	full := p
	if !filepath.IsAbs(full) {
		full = filepath.Join(c.Dir, p)
	}
	real, err := filepath.EvalSymlinks(full)
	if err != nil {
		if os.IsNotExist(err) {
			return "", invalid(c.File, []Problem{{Field: field, Message: fmt.Sprintf("%s does not exist (paths are relative to %s)", p, c.Dir)}})
		}
		return "", fmt.Errorf("%s: %w", field, err)
	}
	if !within(ctxDir, real) {
		msg := fmt.Sprintf("%s is outside the build context %s", p, ctxDir)
		if real != filepath.Clean(full) {
			msg = fmt.Sprintf("%s resolves (through a symlink) to %s, outside the build context %s", p, real, ctxDir)
		}
		return "", invalid(c.File, []Problem{{Field: field, Message: msg}})
	}
	return real, nil
}

// resolveMappings expands [mappings] into entries sorted by destination.
// Sources resolve against the toml's folder and must stay inside it,
// symlinks included; a mapped directory is copied recursively, and
// symlinks inside it are copied as symlinks (their targets are not read).
func (c *Config) resolveMappings() ([]entry, error) {
	srcs := make([]string, 0, len(c.Mappings))
	for s := range c.Mappings {
		srcs = append(srcs, s)
	}
	sort.Strings(srcs)
	var out []entry
	seen := map[string]string{}
	for _, src := range srcs {
		dest := path.Clean(c.Mappings[src])
		field := fmt.Sprintf("mappings.%q", src)
		real, err := c.contextFile(field, src)
		if err != nil {
			return nil, err
		}
		st, err := os.Stat(real)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		add := func(e entry) error {
			e.From = src
			if other, ok := seen[e.Dest]; ok && other != src {
				return invalid(c.File, []Problem{{Field: field, Message: fmt.Sprintf("%s is also written by the mapping of %q", e.Dest, other)}})
			}
			seen[e.Dest] = src
			out = append(out, e)
			return nil
		}
		switch {
		case st.Mode().IsRegular():
			if err := add(entry{Dest: dest, Kind: kindFile, Src: real, Mode: FileMode(dest, st.Mode())}); err != nil {
				return nil, err
			}
		case st.IsDir():
			err := filepath.WalkDir(real, func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				rel, _ := filepath.Rel(real, p)
				g := path.Join(dest, filepath.ToSlash(rel))
				info, err := d.Info()
				if err != nil {
					return err
				}
				switch {
				case d.IsDir():
					return add(entry{Dest: g, Kind: kindDir, Mode: 0o755})
				case info.Mode().IsRegular():
					return add(entry{Dest: g, Kind: kindFile, Src: p, Mode: FileMode(g, info.Mode())})
				case info.Mode()&fs.ModeSymlink != 0:
					t, err := os.Readlink(p)
					if err != nil {
						return err
					}
					return add(entry{Dest: g, Kind: kindSymlink, Target: t, Mode: 0o777})
				}
				return invalid(c.File, []Problem{{Field: field, Message: fmt.Sprintf("%s is a %s; only files, directories and symlinks can be mapped", p, typeName(info.Mode()))}})
			})
			if err != nil {
				return nil, err
			}
		default:
			return nil, invalid(c.File, []Problem{{Field: field, Message: fmt.Sprintf("%s is a %s; only files and directories can be mapped", src, typeName(st.Mode()))}})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Dest < out[j].Dest })
	return out, nil
}

func typeName(m fs.FileMode) string {
	switch {
	case m&fs.ModeDevice != 0:
		return "device"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	}
	return "special file"
}

// reserved reports whether a destination would replace what the build
// itself puts in the guest.
func reserved(dest string, kestrel bool) bool {
	if !kestrel {
		return false
	}
	return dest == "/init" || dest == "/bin/kestrel"
}

// errReserved is the error for a mapping over kestrel.
func (c *Config) errReserved(e entry) error {
	return invalid(c.File, []Problem{{Field: fmt.Sprintf("mappings.%q", e.From), Message: fmt.Sprintf("%s is kestrel's; to bring your own init use [init] path or none = true", e.Dest)}})
}
