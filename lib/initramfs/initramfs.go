// Package initramfs writes Linux initramfs archives (newc cpio, optionally
// gzip) reproducibly: the same entries give the same bytes.
//
// Entries are written sorted by path, every parent directory is written
// explicitly before its children (mode 0755 unless given), modification
// times are zero, owners are root, inode numbers follow the sorted order, and
// the gzip header carries no name or time. Files from disk are read while
// writing, so large trees do not have to fit in memory.
//
// The kernel accepts several archives concatenated (compressed or not) and
// unpacks them in order over each other; launchers use that to layer a small
// archive (a manifest, or kestrel and modules) onto a plugin's own.
package initramfs

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/google/renameio/v2"
	"github.com/u-root/u-root/pkg/cpio"
)

// Builder collects entries for one archive.
type Builder struct {
	entries map[string]entry
}

type kind int

const (
	kindDir kind = iota
	kindFile
	kindSymlink
	kindCharDev
)

type entry struct {
	kind   kind
	mode   fs.FileMode // permission bits
	data   []byte      // in-memory file content
	src    string      // file content read from here when data is nil
	target string      // symlink target
	major  uint64
	minor  uint64
}

// New returns an empty builder.
func New() *Builder { return &Builder{entries: map[string]entry{}} }

// clean turns a guest path into the archive's relative form ("usr/bin/x").
func clean(p string) (string, error) {
	c := strings.TrimPrefix(path.Clean("/"+p), "/")
	if c == "" || c == "." {
		return "", fmt.Errorf("initramfs: empty path %q", p)
	}
	return c, nil
}

func (b *Builder) put(p string, e entry) error {
	c, err := clean(p)
	if err != nil {
		return err
	}
	if old, ok := b.entries[c]; ok && old.kind == kindDir && e.kind == kindDir {
		return nil // an explicit directory keeps its first mode
	}
	b.entries[c] = e
	return nil
}

// Dir adds a directory. Modes here and below are Unix permission bits
// (0o1777 for a sticky /tmp); Go's fs.ModeSticky/Setuid/Setgid work too.
func (b *Builder) Dir(p string, mode fs.FileMode) error {
	return b.put(p, entry{kind: kindDir, mode: mode})
}

// File adds a file with the given content.
func (b *Builder) File(p string, mode fs.FileMode, data []byte) error {
	if data == nil {
		data = []byte{}
	}
	return b.put(p, entry{kind: kindFile, mode: mode, data: data})
}

// CopyFile adds a file whose content is read from src when the archive is
// written.
func (b *Builder) CopyFile(p, src string, mode fs.FileMode) error {
	st, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("initramfs: %s is not a regular file", src)
	}
	return b.put(p, entry{kind: kindFile, mode: mode, src: src})
}

// Symlink adds a symbolic link.
func (b *Builder) Symlink(p, target string) error {
	return b.put(p, entry{kind: kindSymlink, mode: 0o777, target: target})
}

// CharDev adds a character device node (e.g. /dev/console 5:1, which the
// kernel opens for init's stdio before anything is mounted).
func (b *Builder) CharDev(p string, mode fs.FileMode, major, minor uint64) error {
	return b.put(p, entry{kind: kindCharDev, mode: mode, major: major, minor: minor})
}

// Has reports whether an entry exists at p.
func (b *Builder) Has(p string) bool {
	c, err := clean(p)
	if err != nil {
		return false
	}
	_, ok := b.entries[c]
	return ok
}

// Len is the number of entries, parents included.
func (b *Builder) Len() int { return len(b.paths()) }

// paths returns every entry path plus implied parents, sorted so that a
// directory precedes its contents.
func (b *Builder) paths() []string {
	all := map[string]bool{}
	for p := range b.entries {
		all[p] = true
		for d := path.Dir(p); d != "." && d != "/"; d = path.Dir(d) {
			all[d] = true
		}
	}
	out := make([]string, 0, len(all))
	for p := range all {
		out = append(out, p)
	}
	// Sort by path components so "a/b" follows "a" and precedes "a-c".
	sort.Slice(out, func(i, j int) bool {
		return strings.ReplaceAll(out[i], "/", "\x00") < strings.ReplaceAll(out[j], "/", "\x00")
	})
	return out
}

// Compression of the written archive.
type Compression string

const (
	None Compression = "none"
	Gzip Compression = "gzip"
)

// WriteTo writes the archive to w.
func (b *Builder) WriteTo(w io.Writer, c Compression) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	var out io.Writer = bw
	var zw *gzip.Writer
	switch c {
	case None, "":
	case Gzip:
		var err error
		if zw, err = gzip.NewWriterLevel(bw, gzip.DefaultCompression); err != nil {
			return err
		}
		out = zw // a zero gzip.Header: no name, no mtime
	default:
		return fmt.Errorf("initramfs: unknown compression %q", c)
	}
	rw := cpio.Newc.Writer(out)
	// The root of the archive, so "." has a defined mode.
	if err := rw.WriteRecord(cpio.MakeReproducible(withIno(cpio.Directory(".", 0o755), 1))); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	for i, p := range b.paths() {
		rec, closer, err := b.record(p)
		if err != nil {
			return err
		}
		err = rw.WriteRecord(cpio.MakeReproducible(withIno(rec, uint64(i+2))))
		if closer != nil {
			closer.Close()
		}
		if err != nil {
			return fmt.Errorf("initramfs: writing %s: %w", p, err)
		}
	}
	if err := cpio.WriteTrailer(rw); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
	}
	return bw.Flush()
}

func withIno(r cpio.Record, ino uint64) cpio.Record {
	r.Ino = ino
	return r
}

func (b *Builder) record(p string) (cpio.Record, io.Closer, error) {
	e, ok := b.entries[p]
	if !ok {
		return cpio.Directory(p, 0o755), nil, nil
	}
	// Modes are accepted both as Unix bits (0o1777) and as Go's flags
	// (fs.ModeSticky|0o777).
	perm := uint64(e.mode & 0o7777)
	if e.mode&fs.ModeSetuid != 0 {
		perm |= 0o4000
	}
	if e.mode&fs.ModeSetgid != 0 {
		perm |= 0o2000
	}
	if e.mode&fs.ModeSticky != 0 {
		perm |= 0o1000
	}
	switch e.kind {
	case kindDir:
		return cpio.Directory(p, perm), nil, nil
	case kindSymlink:
		return cpio.Symlink(p, e.target), nil, nil
	case kindCharDev:
		return cpio.CharDev(p, perm, e.major, e.minor), nil, nil
	}
	if e.data != nil {
		return cpio.StaticRecord(e.data, cpio.Info{Name: p, Mode: cpio.S_IFREG | perm, FileSize: uint64(len(e.data)), NLink: 1}), nil, nil
	}
	f, err := os.Open(e.src)
	if err != nil {
		return cpio.Record{}, nil, fmt.Errorf("initramfs: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return cpio.Record{}, nil, fmt.Errorf("initramfs: %w", err)
	}
	return cpio.Record{ReaderAt: f, Info: cpio.Info{Name: p, Mode: cpio.S_IFREG | perm, FileSize: uint64(st.Size()), NLink: 1}}, f, nil
}

// WriteFile writes the archive to a file atomically (temporary file, fsync,
// rename: google/renameio), so a crash never leaves a half-written artifact
// under the name. The file is mode 0644.
func (b *Builder) WriteFile(name string, c Compression) error {
	f, err := renameio.NewPendingFile(name, renameio.WithTempDir(path.Dir(name)), renameio.WithStaticPermissions(0o644))
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	defer f.Cleanup()
	if err := b.WriteTo(f, c); err != nil {
		return err
	}
	if err := f.CloseAtomicallyReplace(); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	return nil
}
