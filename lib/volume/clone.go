package volume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/apierr"
)

// Copies of disk images for snapshots. Each makes its file under a
// temporary name beside the destination, syncs it and renames it into
// place, so a destination never holds a partial copy.
//
//	PointInTime  a copy of an image as it is now, independent of it: a
//	             reflink (FICLONE) where the filesystem shares blocks
//	             (xfs, btrfs), else a copy of its data only (holes stay
//	             holes); a qcow2 image is flattened to raw.
//	Derive       a writable image that starts as an image that never
//	             changes again (a snapshot's): a reflink where the
//	             filesystem can, else a qcow2 overlay on it (qemu-img), so
//	             nothing is copied either way.

// How a copy was made.
const (
	MethodReflink = "reflink"
	MethodData    = "data-copy"
	MethodFlatten = "qcow2-flatten"
	MethodOverlay = "qcow2-overlay"
)

// Formats of disk images.
const (
	FormatRaw   = "raw"
	FormatQcow2 = "qcow2"
)

// ErrNoReflink is returned by Reflink when the filesystem cannot share
// blocks between files (ext4, tmpfs) or the files are on two filesystems.
var ErrNoReflink = errors.New("the filesystem cannot reflink")

// Reflink makes dst share src's blocks (ioctl FICLONE): a copy that costs
// no space and no time until either file is written.
func Reflink(src, dst string) error {
	return viaTemp(dst, func(tmp *os.File) error {
		in, err := os.Open(src)
		if err != nil {
			return err
		}
		defer in.Close()
		if err := unix.IoctlFileClone(int(tmp.Fd()), int(in.Fd())); err != nil {
			switch {
			case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EXDEV), errors.Is(err, unix.EINVAL),
				errors.Is(err, unix.ENOTTY), errors.Is(err, unix.ENOSYS):
				return fmt.Errorf("%w (%s): %v", ErrNoReflink, filepath.Dir(dst), err)
			}
			return fmt.Errorf("reflinking %s: %w", src, err)
		}
		return nil
	})
}

// CopyData copies src to dst, reading only its data (SEEK_DATA/SEEK_HOLE)
// and copying it in the kernel (copy_file_range): a sparse image costs
// what it holds, and dst is as sparse.
func CopyData(ctx context.Context, src, dst string) error {
	return viaTemp(dst, func(tmp *os.File) error {
		in, err := os.Open(src)
		if err != nil {
			return err
		}
		defer in.Close()
		st, err := in.Stat()
		if err != nil {
			return err
		}
		size := st.Size()
		if err := tmp.Truncate(size); err != nil {
			return fsErr(err, "sizing the copy")
		}
		fd := int(in.Fd())
		for off := int64(0); off < size; {
			if err := ctx.Err(); err != nil {
				return err
			}
			data, err := unix.Seek(fd, off, unix.SEEK_DATA)
			if errors.Is(err, unix.ENXIO) {
				break // only a hole is left
			}
			if err != nil {
				return fmt.Errorf("finding data in %s: %w", src, err)
			}
			hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
			if err != nil {
				return fmt.Errorf("finding a hole in %s: %w", src, err)
			}
			if err := copyRange(in, tmp, data, hole-data); err != nil {
				return fsErr(err, "copying "+src)
			}
			off = hole
		}
		return nil
	})
}

// copyRange copies n bytes at off from in to out (same offset).
func copyRange(in, out *os.File, off, n int64) error {
	for n > 0 {
		roff, woff := off, off
		c, err := unix.CopyFileRange(int(in.Fd()), &roff, int(out.Fd()), &woff, int(min(n, 1<<30)), 0)
		if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) {
			_, err = io.Copy(io.NewOffsetWriter(out, off), io.NewSectionReader(in, off, n))
			return err
		}
		if err != nil {
			return err
		}
		if c == 0 {
			return io.ErrUnexpectedEOF
		}
		off += int64(c)
		n -= int64(c)
	}
	return nil
}

// PointInTime makes dst a raw copy of the image src (of format, raw or
// qcow2) as it is now, that no later write to src changes: a reflink
// where the filesystem can, else a copy of its data; a qcow2 image (an
// overlay, perhaps) is flattened to raw, so the copy depends on nothing.
// It returns how the copy was made.
func PointInTime(ctx context.Context, src, format, dst string) (string, error) {
	switch format {
	case "", FormatRaw:
		if err := Reflink(src, dst); err == nil {
			return MethodReflink, nil
		} else if !errors.Is(err, ErrNoReflink) {
			return "", err
		}
		return MethodData, CopyData(ctx, src, dst)
	case FormatQcow2:
		return MethodFlatten, viaTempPath(dst, func(tmp string) error {
			return runQemuImg(ctx, "flattening "+src, "convert", "-f", FormatQcow2, "-O", FormatRaw, "-S", "4k", src, tmp)
		})
	}
	return "", apierr.New(apierr.InvalidInput, "image format %q: want raw or qcow2", format)
}

// Derive makes dst a writable image that starts as the raw image base,
// which must never change again (a snapshot's file): a reflink where the
// filesystem can (raw), else a qcow2 overlay backed by base (qemu-img),
// which costs nothing until the guest writes. It returns dst's format and
// how it was made. An overlay needs base to stay where it is: callers keep
// the snapshot while images derived from it exist.
func Derive(ctx context.Context, base, dst string) (format, method string, err error) {
	if err := Reflink(base, dst); err == nil {
		return FormatRaw, MethodReflink, nil
	} else if !errors.Is(err, ErrNoReflink) {
		return "", "", err
	}
	abs, err := filepath.Abs(base)
	if err != nil {
		return "", "", err
	}
	err = viaTempPath(dst, func(tmp string) error {
		return runQemuImg(ctx, "making an overlay on "+base, "create", "-q", "-f", FormatQcow2, "-F", FormatRaw, "-b", abs, tmp)
	})
	return FormatQcow2, MethodOverlay, err
}

func runQemuImg(ctx context.Context, what string, args ...string) error {
	err := run(ctx, "qemu-img", args, what)
	if apierr.Is(err, apierr.Unavailable) {
		return apierr.New(apierr.Unavailable, "%s: qemu-img is not installed (Debian package qemu-utils)", what)
	}
	return err
}

// viaTemp creates a temporary file beside dst, lets fill write it, syncs
// it and renames it to dst (replacing what is there); on failure the
// temporary file is removed.
func viaTemp(dst string, fill func(tmp *os.File) error) error {
	dir := filepath.Dir(dst)
	f, err := os.CreateTemp(dir, "."+filepath.Base(dst)+tempMarker+"*")
	if err != nil {
		return fsErr(err, "creating "+dst)
	}
	tmp := f.Name()
	err = fill(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
		return fsErr(err, "writing "+dst)
	}
	return syncPath(dir)
}

// viaTempPath is viaTemp for a tool that writes a path itself.
func viaTempPath(dst string, fill func(tmp string) error) error {
	dir := filepath.Dir(dst)
	f, err := os.CreateTemp(dir, "."+filepath.Base(dst)+tempMarker+"*")
	if err != nil {
		return fsErr(err, "creating "+dst)
	}
	tmp := f.Name()
	f.Close()
	err = fill(tmp)
	if err == nil {
		err = syncPath(tmp)
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
		return fsErr(err, "writing "+dst)
	}
	return syncPath(dir)
}
