package workloadlog

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/volantvm/volant/lib/apierr"
)

// ReadOptions select entries.
type ReadOptions struct {
	// Since drops entries older than it (zero: none).
	Since time.Time
	// Tail keeps only the last Tail lines (0: all).
	Tail int
	// Stream is "stdout", "stderr" or "" for both. Gap entries are always
	// returned.
	Stream string
	// Follow keeps reading new entries until ctx ends, through
	// rotations; a follower whose next file was rotated away before it
	// read it (more than Files-1 files behind) goes on from the oldest
	// file still there, after a gap entry for the bytes it missed.
	Follow bool
	// Poll is how often a follower looks for more (250 ms if 0).
	Poll time.Duration
	// Files is how many files the log rotates through (DefaultFiles if
	// 0): the writer's Rotation.Files.
	Files int
}

// Read calls fn with the selected entries of the log at path, oldest
// first. A missing log has no entries. With Follow it then waits for new
// entries (through rotations) until ctx ends, and returns nil.
func Read(ctx context.Context, path string, o ReadOptions, fn func(Entry) error) error {
	if o.Files <= 0 {
		o.Files = DefaultFiles
	}
	if o.Poll <= 0 {
		o.Poll = 250 * time.Millisecond
	}
	want := func(e Entry) bool {
		if e.Offset != nil {
			return false
		}
		if !o.Since.IsZero() && e.Time.Before(o.Since) {
			return false
		}
		return e.Gap > 0 || o.Stream == "" || e.Stream == o.Stream
	}
	files := make([]string, 0, o.Files)
	for i := o.Files - 1; i >= 1; i-- {
		files = append(files, path+"."+strconv.Itoa(i))
	}
	skip := 0
	if o.Tail > 0 {
		lines := 0
		for _, p := range append(files, path) {
			if err := scanFile(p, func(e Entry) error {
				if want(e) && !e.Partial {
					lines++
				}
				return nil
			}); err != nil {
				return err
			}
		}
		skip = max(0, lines-o.Tail)
	}
	emit := func(e Entry) error {
		if !want(e) {
			return nil
		}
		if skip > 0 {
			if !e.Partial {
				skip--
			}
			return nil
		}
		return fn(e)
	}
	for _, p := range files {
		if err := scanFile(p, emit); err != nil {
			return err
		}
	}
	if !o.Follow {
		return scanFile(path, emit)
	}
	return follow(ctx, path, o.Files, o.Poll, emit)
}

// scanFile calls fn for every complete entry of one file.
func scanFile(p string, fn func(Entry) error) error {
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("workload log: %w", err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 64<<10)
	for {
		line, err := r.ReadBytes('\n')
		if err == io.EOF {
			return nil // an unfinished last line is not an entry yet
		}
		if err != nil {
			return fmt.Errorf("workload log: %w", err)
		}
		if err := decode(line, fn); err != nil {
			return err
		}
	}
}

func decode(line []byte, fn func(Entry) error) error {
	var e Entry
	if json.Unmarshal(line, &e) != nil {
		return nil // a torn line (a crash mid-write) is skipped
	}
	return fn(e)
}

// follow reads the live file from its start, then what is appended, and
// when the log rotates moves on to the file written after the one it read:
// a follower that fell behind by whole files reads them in order. One that
// fell so far behind that the next file was rotated away goes on from the
// oldest file still there, and passes fn a gap entry for what it missed:
// the difference between that file's offset entry and the offset the
// follower reached. Without offset entries (a log written before they
// were) it cannot say how much was lost, and returns an error rather than
// skip entries silently.
func follow(ctx context.Context, path string, files int, poll time.Duration, fn func(Entry) error) error {
	var f *os.File
	var r *bufio.Reader
	var pending []byte
	// pos is the offset reached in the log's output, known once an
	// offset entry was read; lapped is set when f is the oldest file
	// after a skip, and its offset entry tells the gap.
	var pos int64
	known, lapped := false, false
	lost := func() error {
		return apierr.New(apierr.Unavailable, "following %s: the reader fell behind the log's rotation (more than %d files) and missed entries the log does not count (it has no offset entries)", path, files-1).
			With("path", path)
	}
	emit := func(e Entry) error {
		if e.Offset != nil {
			if lapped && !known {
				return lost()
			}
			lapped = false
			if gap := *e.Offset - pos; known && gap > 0 {
				if err := fn(Entry{Time: e.Time, Gap: gap}); err != nil {
					return err
				}
			}
			pos, known = *e.Offset, true
			return nil
		}
		if lapped {
			return lost()
		}
		pos += e.size()
		return fn(e)
	}
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		if f == nil {
			nf, err := os.Open(path)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("workload log: %w", err)
			}
			if nf != nil {
				f, r, pending = nf, bufio.NewReaderSize(nf, 64<<10), nil
			}
		}
		if f != nil {
			drain := func() error {
				for {
					part, err := r.ReadBytes('\n')
					pending = append(pending, part...)
					if err == io.EOF {
						return nil
					}
					if err != nil {
						return fmt.Errorf("workload log: %w", err)
					}
					if err := decode(pending, emit); err != nil {
						return err
					}
					pending = pending[:0]
				}
			}
			if err := drain(); err != nil {
				return err
			}
			if rotated(f, path) {
				// The old file is complete now: read what was written
				// to it after the drain above, then move on.
				if err := drain(); err != nil {
					return err
				}
				next, skipped, err := successor(ctx, f, path, files)
				f.Close()
				f = nil
				if err != nil {
					return err
				}
				if next != nil {
					f, r, pending = next, bufio.NewReaderSize(next, 64<<10), nil
					lapped = skipped
				}
				continue
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// successor opens the file written after f, which rotation has renamed
// to path.k: path.k-1, or path itself when k is 1. A rotation racing the
// lookup is retried. When f is none of the rotated files it was removed:
// the reader fell behind by more than the files kept, and successor opens
// the oldest file there is and reports the skip. It returns nil when ctx
// ends.
func successor(ctx context.Context, f *os.File, path string, files int) (next *os.File, skipped bool, err error) {
	name := func(k int) string {
		if k == 0 {
			return path
		}
		return path + "." + strconv.Itoa(k)
	}
	for ctx.Err() == nil {
		k := 0
		for i := 1; i < files; i++ {
			if same(f, name(i)) {
				k = i
				break
			}
		}
		if k == 0 {
			k = files // removed: take the oldest file
		}
		for j := k - 1; j >= 0; j-- {
			next, err = os.Open(name(j))
			if err == nil {
				skipped = j < k-1 || k == files
				break
			}
			if !errors.Is(err, os.ErrNotExist) {
				return nil, false, fmt.Errorf("workload log: %w", err)
			}
		}
		// Nothing moved since the lookup (a rotation renames the older
		// files first) if f is still where it was.
		stayed := k == files || same(f, name(k))
		switch {
		case next != nil && stayed:
			return next, skipped, nil
		case next != nil:
			next.Close() // moved on: look again
			next = nil
		default:
			time.Sleep(time.Millisecond) // the writer creates the new live file
		}
	}
	return nil, false, nil
}

// same reports whether the file named p is f.
func same(f *os.File, p string) bool {
	a, err := f.Stat()
	if err != nil {
		return false
	}
	b, err := os.Stat(p)
	return err == nil && os.SameFile(a, b)
}

// rotated reports whether path now names another file than f.
func rotated(f *os.File, path string) bool {
	a, err := f.Stat()
	if err != nil {
		return true
	}
	b, err := os.Stat(path)
	if err != nil {
		return false // not created again yet
	}
	as, ok1 := a.Sys().(*syscall.Stat_t)
	bs, ok2 := b.Sys().(*syscall.Stat_t)
	return ok1 && ok2 && (as.Ino != bs.Ino || as.Dev != bs.Dev)
}

// Printer writes entries as the workload's output, with an RFC 3339
// timestamp before each line when asked. A gap is a line of its own, so
// lost output never goes unnoticed:
//
//	[volant: 4096 bytes of output were lost here: the guest's buffer overflowed]
func Printer(w io.Writer, timestamps bool) func(Entry) error {
	atLineStart := true
	return func(e Entry) error {
		if e.Gap > 0 {
			prefix := ""
			if !atLineStart {
				prefix = "\n"
			}
			_, err := fmt.Fprintf(w, "%s[volant: %d bytes of output were lost here: the guest's buffer overflowed]\n", prefix, e.Gap)
			atLineStart = true
			return err
		}
		if timestamps && atLineStart {
			if _, err := io.WriteString(w, e.Time.UTC().Format(time.RFC3339Nano)+" "); err != nil {
				return err
			}
		}
		_, err := w.Write(e.Data())
		atLineStart = !e.Partial
		return err
	}
}

// ParseSince reads a --since or ?since= value: RFC 3339, or a duration
// before now ("10m", not negative). "" is the zero time (no bound).
func ParseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			// A bound in the future would match no line, silently.
			return time.Time{}, apierr.New(apierr.InvalidInput, "since %q: a duration counts back from now, so it cannot be negative (10m is ten minutes ago)", s).With("field", "since")
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, apierr.New(apierr.InvalidInput, "since %q: use RFC 3339 (2026-12-05T10:00:00Z) or a duration (10m)", s).With("field", "since")
	}
	return t, nil
}
