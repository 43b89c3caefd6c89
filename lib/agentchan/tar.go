package agentchan

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/volantvm/volant/lib/apierr"
)

// WriteTar writes src (a file, or a directory and everything under it) as a
// tar stream to w, entries named from src's last element. A symlink named
// by src itself is followed; symlinks inside a directory are archived as
// links. Directories, regular files, symlinks and hard links are copied;
// device nodes, FIFOs and sockets are skipped and counted. A file that
// cannot be read midway is padded with zeros so the archive stays whole,
// and the first such error is returned with the result.
func WriteTar(w io.Writer, src string) (CopyResult, error) {
	var res CopyResult
	st, err := os.Stat(src)
	if err != nil {
		return res, pathErr(src, err)
	}
	tw := tar.NewWriter(errWriter{w})
	base := filepath.Base(filepath.Clean(src))
	if base == "/" || base == "." {
		base = "."
	}
	links := map[[2]uint64]string{}
	var firstErr error
	note := func(err error) {
		if firstErr == nil {
			firstErr = err
		}
	}
	add := func(p, name string, fi fs.FileInfo) error {
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				note(pathErr(p, err))
				return nil
			}
		}
		switch {
		case fi.Mode().IsRegular(), fi.IsDir(), fi.Mode()&fs.ModeSymlink != 0:
		default:
			res.Skipped++
			return nil
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			note(err)
			return nil
		}
		h.Name = name
		if fi.IsDir() {
			h.Name += "/"
		}
		h.Uname, h.Gname = "", ""
		h.Format = tar.FormatPAX
		if sys, ok := fi.Sys().(*syscall.Stat_t); ok && fi.Mode().IsRegular() && sys.Nlink > 1 {
			key := [2]uint64{sys.Dev, sys.Ino}
			if first, ok := links[key]; ok {
				h.Typeflag, h.Linkname, h.Size = tar.TypeLink, first, 0
			} else {
				links[key] = name
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			return err // the stream is broken
		}
		res.Files++
		if h.Typeflag != tar.TypeReg {
			return nil
		}
		f, err := os.Open(p)
		var n int64
		if err == nil {
			n, err = io.CopyN(tw, f, h.Size)
			f.Close()
		}
		res.Bytes += n
		if err != nil {
			var we writeErr
			if errors.As(err, &we) {
				return err
			}
			note(pathErr(p, err))
			if _, err := io.CopyN(tw, zeros{}, h.Size-n); err != nil {
				return err
			}
		}
		return nil
	}
	if !st.IsDir() {
		if err := add(src, base, st); err != nil {
			return res, err
		}
	} else {
		err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				note(pathErr(p, err))
				if d != nil && d.IsDir() && p != src {
					return fs.SkipDir
				}
				return nil
			}
			rel, _ := filepath.Rel(src, p)
			name := path.Join(base, filepath.ToSlash(rel))
			var fi fs.FileInfo
			if p == src {
				fi = st
			} else if fi, err = d.Info(); err != nil {
				note(pathErr(p, err))
				return nil
			}
			return add(p, name, fi)
		})
		if err != nil {
			return res, err
		}
	}
	if err := tw.Close(); err != nil {
		return res, err
	}
	return res, firstErr
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// writeErr marks a failure to write the archive (the stream), as opposed
// to reading a file for it.
type writeErr struct{ error }

func (e writeErr) Unwrap() error { return e.error }

// errWriter wraps w so that WriteTar can tell a broken stream from an
// unreadable file.
type errWriter struct{ w io.Writer }

func (e errWriter) Write(p []byte) (int, error) {
	n, err := e.w.Write(p)
	if err != nil {
		err = writeErr{err}
	}
	return n, err
}

func pathErr(p string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return apierr.New(apierr.NotFound, "%s: no such file or directory", p).With("path", p)
	case errors.Is(err, fs.ErrPermission):
		return apierr.New(apierr.PermissionDenied, "%s: permission denied", p).With("path", p)
	}
	return fmt.Errorf("%s: %w", p, err)
}

// ExtractTar extracts a tar stream into dir, which must exist. Entry names
// must be relative and stay inside dir: absolute names and names with ".."
// are refused (INVALID_INPUT), and every file operation goes through an
// os.Root, so a symlink (already there or in the archive) cannot lead a
// later entry out of dir. When rename is set, the archive must have a
// single top-level entry, which is written under that name instead.
// Ownership is not restored (files belong to the extracting user); modes
// and modification times are. A regular file replaces the one there
// atomically (a new file, synced, renamed over it): a reader never sees it
// missing or partial.
func ExtractTar(r io.Reader, dir, rename string) (CopyResult, error) {
	var res CopyResult
	root, err := os.OpenRoot(dir)
	if err != nil {
		return res, pathErr(dir, err)
	}
	defer root.Close()
	tr := tar.NewReader(r)
	top := ""
	type dirTime struct {
		name string
		h    *tar.Header
	}
	var dirs []dirTime
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return res, apierr.Wrap(apierr.InvalidInput, err, "reading the tar stream")
		}
		name, err := entryName(h.Name)
		if err != nil {
			return res, err
		}
		if name == "." {
			continue
		}
		first, rest, _ := strings.Cut(name, "/")
		if top == "" {
			top = first
		} else if rename != "" && first != top {
			return res, apierr.New(apierr.InvalidInput, "the archive has more than one top-level entry (%s, %s), so it cannot be written under one name", top, first)
		}
		if rename != "" {
			name = rename
			if rest != "" {
				name += "/" + rest
			}
		}
		if parent := path.Dir(name); parent != "." {
			if err := root.MkdirAll(parent, 0o755); err != nil {
				return res, extractErr(name, err)
			}
		}
		mode := fs.FileMode(h.Mode).Perm() | fs.FileMode(h.Mode)&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.Mkdir(name, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return res, extractErr(name, err)
			}
			dirs = append(dirs, dirTime{name, h})
		case tar.TypeReg:
			n, err := writeFile(root, name, tr, mode, h.ModTime)
			res.Bytes += n
			if err != nil {
				return res, extractErr(name, err)
			}
		case tar.TypeSymlink:
			removeNonDir(root, name)
			if err := root.Symlink(h.Linkname, name); err != nil {
				return res, extractErr(name, err)
			}
		case tar.TypeLink:
			target, err := entryName(h.Linkname)
			if err != nil {
				return res, err
			}
			if rename != "" {
				if f, r, _ := strings.Cut(target, "/"); f == top {
					target = rename
					if r != "" {
						target += "/" + r
					}
				}
			}
			removeNonDir(root, name)
			if err := root.Link(target, name); err != nil {
				return res, extractErr(name, err)
			}
		default:
			res.Skipped++
			continue
		}
		res.Files++
	}
	// Directory modes last: a read-only directory must not stop its own
	// extraction.
	for i := len(dirs) - 1; i >= 0; i-- {
		d := dirs[i]
		mode := fs.FileMode(d.h.Mode).Perm() | fs.FileMode(d.h.Mode)&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)
		if err := root.Chmod(d.name, mode); err != nil {
			return res, extractErr(d.name, err)
		}
		_ = root.Chtimes(d.name, d.h.ModTime, d.h.ModTime)
	}
	return res, nil
}

// entryName cleans a tar entry name and refuses one that is absolute or
// climbs with "..".
func entryName(n string) (string, error) {
	if strings.HasPrefix(n, "/") {
		return "", apierr.New(apierr.InvalidInput, "the archive entry %q is an absolute path", n).With("entry", n)
	}
	for _, part := range strings.Split(n, "/") {
		if part == ".." {
			return "", apierr.New(apierr.InvalidInput, "the archive entry %q leaves the destination (..)", n).With("entry", n)
		}
	}
	return path.Clean(n), nil
}

// writeFile writes a regular file the way files that matter are written:
// a new file beside it, synced, then renamed over name, so a reader at the
// same time sees the old file or the new one whole, never a missing,
// empty or partial one (a service account token refreshed in a running
// guest). A failure removes the new file; a crash may leave it, named
// .NAME.volant-tmp-*.
func writeFile(root *os.Root, name string, r io.Reader, mode fs.FileMode, mtime time.Time) (int64, error) {
	if fi, err := root.Lstat(name); err == nil && fi.IsDir() {
		return 0, fmt.Errorf("%s is a directory", name)
	}
	var tmp string
	var f *os.File
	for i := 0; ; i++ {
		tmp = path.Join(path.Dir(name), "."+path.Base(name)+".volant-tmp-"+strconv.FormatUint(rand.Uint64(), 36))
		var err error
		f, err = root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrExist) || i == 10 {
			return 0, err
		}
	}
	n, err := io.Copy(f, r)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = root.Chmod(tmp, mode)
	}
	if err == nil {
		_ = root.Chtimes(tmp, mtime, mtime)
		err = root.Rename(tmp, name)
	}
	if err != nil {
		_ = root.Remove(tmp)
	}
	return n, err
}

func removeNonDir(root *os.Root, name string) {
	if fi, err := root.Lstat(name); err == nil && !fi.IsDir() {
		_ = root.Remove(name)
	}
}

func extractErr(name string, err error) error {
	var pe *fs.PathError
	// os.Root's "path escapes from parent" has no exported sentinel; its
	// text is the only way to tell it from other failures.
	if errors.As(err, &pe) && strings.Contains(pe.Err.Error(), "escapes from parent") {
		return apierr.New(apierr.InvalidInput, "the archive entry %q would be written outside the destination (through a symlink or ..)", name).With("entry", name)
	}
	if errors.Is(err, fs.ErrPermission) {
		return apierr.New(apierr.PermissionDenied, "%s: permission denied", name).With("entry", name)
	}
	return fmt.Errorf("extracting %s: %w", name, err)
}
