// Package volume makes, grows and removes the disk images behind Volant's
// volumes: data that outlives the VMs that use it. A volume is a sparse raw
// image file holding a filesystem (ext4, made by mkfs.ext4 from e2fsprogs),
// attached to a VM as a virtio-blk disk and mounted by kestrel.
//
// This package works on files only; lib/controller keeps the records
// (which volumes exist, which VMs use them) and decides when an operation
// is allowed. Every operation is safe to interrupt:
//
//   - Create writes the image under a temporary name in the same
//     directory, makes the filesystem, syncs it and renames it into place
//     without replacing anything, so the final name only ever holds a
//     whole image. A failure (a full disk included: NO_SPACE) removes the
//     temporary file; a crash leaves one behind that CleanTemp removes.
//   - Grow enlarges the file, then the filesystem (e2fsck -f -p, then
//     resize2fs). Both steps are idempotent, so a grow interrupted between
//     them is finished by running it again with the same size.
//   - Remove deletes the file and syncs the directory.
//
// The images are raw so every hypervisor can boot them and a snapshot can
// copy them (clone.go: PointInTime, Derive).
package volume

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/apierr"
)

// Filesystems a volume can be created with.
const (
	FSExt4 = "ext4"
)

// DefaultFS is the filesystem of a volume unless asked otherwise.
const DefaultFS = FSExt4

// Size bounds of a volume. Sizes are rounded up to a whole MiB.
const (
	MiB     = int64(1) << 20
	GiB     = int64(1) << 30
	MinSize = 16 * MiB
	MaxSize = int64(16) << 40 // 16 TiB
)

// tempMarker is in the name of every temporary file this package makes.
const tempMarker = ".volant-tmp-"

// Filesystems lists the filesystems Create can make.
func Filesystems() []string { return []string{FSExt4} }

// CheckFS returns INVALID_INPUT for a filesystem Create cannot make.
func CheckFS(fs string) error {
	for _, f := range Filesystems() {
		if fs == f {
			return nil
		}
	}
	return apierr.New(apierr.InvalidInput, "filesystem %q is not one volumes can be made with (%s)", fs, strings.Join(Filesystems(), ", ")).
		With("field", "fs").With("filesystems", Filesystems())
}

// ParseSize reads a size such as "1GiB", "512MiB", "1G" (binary units:
// K, M, G, T with or without "iB"), "500MB" (decimal units: kB, MB, GB,
// TB) or a plain number of bytes, and rounds it up to a whole MiB.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	bad := func() (int64, error) {
		return 0, apierr.New(apierr.InvalidInput, "size %q is not a size such as 1GiB, 512MiB or 10G", s).With("field", "size")
	}
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	if i == 0 {
		return bad()
	}
	num, err := strconv.ParseFloat(t[:i], 64)
	if err != nil || num <= 0 {
		return bad()
	}
	unit := strings.TrimSpace(t[i:])
	mult := map[string]float64{
		"": 1, "B": 1,
		"K": 1 << 10, "KiB": 1 << 10, "Ki": 1 << 10, "kB": 1e3, "KB": 1e3,
		"M": 1 << 20, "MiB": 1 << 20, "Mi": 1 << 20, "MB": 1e6,
		"G": 1 << 30, "GiB": 1 << 30, "Gi": 1 << 30, "GB": 1e9,
		"T": 1 << 40, "TiB": 1 << 40, "Ti": 1 << 40, "TB": 1e12,
	}[unit]
	if mult == 0 {
		return bad()
	}
	f := math.Ceil(num * mult)
	if f > float64(MaxSize) {
		return 0, tooBig(s)
	}
	return RoundSize(int64(f)), nil
}

// RoundSize rounds n up to a whole MiB.
func RoundSize(n int64) int64 { return (n + MiB - 1) / MiB * MiB }

// CheckSize returns INVALID_INPUT for a size outside MinSize..MaxSize.
func CheckSize(n int64) error {
	switch {
	case n < MinSize:
		return apierr.New(apierr.InvalidInput, "size %s is below the smallest volume, %s", FormatSize(n), FormatSize(MinSize)).
			With("field", "size").With("min_bytes", MinSize)
	case n > MaxSize:
		return tooBig(FormatSize(n))
	}
	return nil
}

func tooBig(s string) error {
	return apierr.New(apierr.InvalidInput, "size %s is above the largest volume, %s", s, FormatSize(MaxSize)).
		With("field", "size").With("max_bytes", MaxSize)
}

// FormatSize prints n in the largest binary unit that divides it
// ("1GiB", "1536MiB"), else in bytes.
func FormatSize(n int64) string {
	for _, u := range []struct {
		name string
		v    int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.v && n%u.v == 0 {
			return strconv.FormatInt(n/u.v, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}

// CreateOptions describe a new volume image.
type CreateOptions struct {
	// Path is where the image goes; it must not exist.
	Path string
	// Size is the image's size in bytes (CheckSize).
	Size int64
	// FS is the filesystem (default DefaultFS).
	FS string
	// Label is the filesystem label (at most 16 bytes; longer is cut).
	Label string
}

// Create makes a sparse image of o.Size holding an empty filesystem at
// o.Path. It fails with CONFLICT when o.Path exists and with NO_SPACE when
// the host's filesystem fills up; either way nothing is left behind.
func Create(ctx context.Context, o CreateOptions) (err error) {
	if o.FS == "" {
		o.FS = DefaultFS
	}
	if err := CheckFS(o.FS); err != nil {
		return err
	}
	if err := CheckSize(o.Size); err != nil {
		return err
	}
	if _, err := os.Lstat(o.Path); err == nil {
		return apierr.New(apierr.Conflict, "volume image %s exists already", o.Path).With("path", o.Path)
	}
	dir := filepath.Dir(o.Path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating the volume directory: %w", err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(o.Path)+tempMarker+"*")
	if err != nil {
		return fsErr(err, "creating the volume image")
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if err := f.Truncate(o.Size); err != nil {
		f.Close()
		return fsErr(err, "sizing the volume image")
	}
	if err := f.Close(); err != nil {
		return fsErr(err, "creating the volume image")
	}
	if err := mkfs(ctx, o, tmp); err != nil {
		return err
	}
	if err := syncPath(tmp); err != nil {
		return fsErr(err, "syncing the volume image")
	}
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, o.Path, unix.RENAME_NOREPLACE); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return apierr.New(apierr.Conflict, "volume image %s exists already", o.Path).With("path", o.Path)
		}
		return fsErr(err, "moving the volume image into place")
	}
	if err := syncPath(dir); err != nil {
		return fsErr(err, "syncing the volume directory")
	}
	return nil
}

func mkfs(ctx context.Context, o CreateOptions, path string) error {
	label := o.Label
	if len(label) > 16 {
		label = label[:16]
	}
	// Lazy init keeps the image sparse and mkfs quick: the guest kernel
	// zeroes the inode tables in the background on first mount. No
	// reserved blocks: nothing on a data volume needs root's reserve.
	args := []string{"-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"}
	if label != "" {
		args = append(args, "-L", label)
	}
	args = append(args, path)
	return run(ctx, "mkfs.ext4", args, "making the volume's filesystem")
}

// run runs a tool, turning a full disk into NO_SPACE and a missing tool
// into UNAVAILABLE with the package to install.
func run(ctx context.Context, tool string, args []string, what string) error {
	cmd := exec.CommandContext(ctx, tool, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err == nil {
		return nil
	}
	if errors.Is(err, exec.ErrNotFound) {
		return apierr.Wrap(apierr.Unavailable, err, what+": "+tool+" is not installed (Debian package e2fsprogs)")
	}
	if ctx.Err() != nil {
		return apierr.From(context.Cause(ctx))
	}
	msg := strings.TrimSpace(out.String())
	if isNoSpace(msg) {
		return apierr.New(apierr.NoSpace, "%s: the host's filesystem is full: %s", what, lastLine(msg)).With("tool", tool)
	}
	return fmt.Errorf("%s: %s: %w: %s", what, tool, err, lastLine(msg))
}

func isNoSpace(msg string) bool {
	m := strings.ToLower(msg)
	return strings.Contains(m, "no space left") || strings.Contains(m, "could not allocate block") ||
		strings.Contains(m, "file too large")
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// fsErr wraps a file system error, as NO_SPACE when the disk is full.
func fsErr(err error, what string) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return apierr.Wrap(apierr.NoSpace, err, what+": the host's filesystem is full")
	}
	return fmt.Errorf("%s: %w", what, err)
}

func syncPath(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// Grow enlarges the image at path to size bytes and its filesystem to
// fill it. The filesystem must not be mounted (the VMs using the volume
// are stopped). Growing to the size the image has already only finishes
// the filesystem's part, so an interrupted grow is completed by calling
// Grow again; a smaller size is INVALID_INPUT (volumes do not shrink).
func Grow(ctx context.Context, path string, size int64) error {
	if err := CheckSize(size); err != nil {
		return err
	}
	st, err := os.Stat(path)
	if err != nil {
		return imageErr(path, err)
	}
	if size < st.Size() {
		return apierr.New(apierr.InvalidInput, "volumes only grow: %s is smaller than the volume's %s", FormatSize(size), FormatSize(st.Size())).
			With("field", "size").With("size_bytes", st.Size())
	}
	// Check first: resize2fs refuses a filesystem not checked since its
	// last mount, and a volume whose VM crashed has a journal to replay.
	if err := fsck(ctx, path); err != nil {
		return err
	}
	if size > st.Size() {
		if err := os.Truncate(path, size); err != nil {
			return fsErr(err, "growing the volume image")
		}
	}
	if err := run(ctx, "resize2fs", []string{path}, "growing the volume's filesystem"); err != nil {
		return err
	}
	return syncPath(path)
}

// fsck checks and repairs what e2fsck repairs without asking (-p).
// Exit statuses 0 (clean) and 1 (repaired) are fine.
func fsck(ctx context.Context, path string) error {
	err := run(ctx, "e2fsck", []string{"-f", "-p", path}, "checking the volume's filesystem")
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 1 {
		return nil
	}
	return err
}

// Remove deletes the image at path; an image that is gone already is no
// error.
func Remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing the volume image: %w", err)
	}
	if err := syncPath(filepath.Dir(path)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("syncing the volume directory: %w", err)
	}
	return nil
}

// CleanTemp removes what interrupted Creates left of the image at path
// (its temporary files) and reports how many it removed.
func CleanTemp(path string) (int, error) {
	matches, err := filepath.Glob(filepath.Join(filepath.Dir(path), "."+globEscape(filepath.Base(path))+tempMarker+"*"))
	if err != nil {
		return 0, err
	}
	n := 0
	for _, m := range matches {
		if err := os.Remove(m); err == nil {
			n++
		}
	}
	return n, nil
}

func globEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, "*", `\*`, "?", `\?`, "[", `\[`).Replace(s)
}

// Info is what the host knows of an image.
type Info struct {
	// Size is the image's size in bytes, what the guest sees.
	Size int64 `json:"size_bytes"`
	// Allocated is what it takes on the host's disk (it is sparse).
	Allocated int64 `json:"allocated_bytes"`
}

// Stat reports an image's size and allocation; NOT_FOUND when it is missing.
func Stat(path string) (Info, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return Info{}, imageErr(path, err)
	}
	return Info{Size: st.Size, Allocated: st.Blocks * 512}, nil
}

func imageErr(path string, err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return apierr.New(apierr.NotFound, "volume image %s is missing", path).With("path", path)
	}
	return fmt.Errorf("volume image %s: %w", path, err)
}
