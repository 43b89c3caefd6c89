package controller

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
)

// Logs writes the VM's serial console log to w: all of it, or its last
// o.Tail lines. With o.Follow it keeps writing what the guest prints
// (following the file across lib/launch's rotation) until ctx ends or the
// VM is deleted; flush is called after each write (nil: none).
func (c *Controller) Logs(ctx context.Context, name string, o api.LogOptions, w io.Writer, flush func()) error {
	if _, err := c.readVM(ctx, name); err != nil {
		return err
	}
	if o.Tail < 0 {
		return apierr.New(apierr.InvalidInput, "tail must not be negative").With("field", "tail")
	}
	if flush == nil {
		flush = func() {}
	}
	path := c.SerialLog(name)
	f, err := os.Open(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return internal(err, "opening the serial log of %s", name)
	}
	var off int64
	if f != nil {
		defer func() { f.Close() }()
		start := int64(0)
		if o.Tail > 0 {
			if start, err = tailOffset(f, o.Tail); err != nil {
				return internal(err, "reading the serial log of %s", name)
			}
		}
		if _, err := f.Seek(start, io.SeekStart); err != nil {
			return err
		}
		n, err := io.Copy(w, f)
		off = start + n
		if err != nil {
			return err
		}
		flush()
	}
	if !o.Follow {
		return nil
	}
	buf := make([]byte, 32<<10)
	lastCheck := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
		if time.Since(lastCheck) > time.Second {
			lastCheck = time.Now()
			if _, err := c.readVM(ctx, name); apierr.Is(err, apierr.NotFound) {
				return nil
			}
		}
		// Reopen when the file was rotated (another inode) or truncated.
		st, err := os.Stat(path)
		if err != nil {
			continue
		}
		if f == nil || !sameFile(f, st) || st.Size() < off {
			if f != nil {
				// Drain what was written to the old file before the rotation.
				if _, err := io.CopyBuffer(w, f, buf); err != nil {
					return err
				}
				f.Close()
			}
			if f, err = os.Open(path); err != nil {
				f = nil
				continue
			}
			off = 0
		}
		n, err := io.CopyBuffer(w, f, buf)
		off += n
		if err != nil {
			return err
		}
		if n > 0 {
			flush()
		}
	}
}

func sameFile(f *os.File, st os.FileInfo) bool {
	fst, err := f.Stat()
	if err != nil {
		return false
	}
	a, ok1 := fst.Sys().(*syscall.Stat_t)
	b, ok2 := st.Sys().(*syscall.Stat_t)
	return ok1 && ok2 && a.Ino == b.Ino && a.Dev == b.Dev
}

// tailOffset returns where the last n lines of f begin.
func tailOffset(f *os.File, n int) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := st.Size()
	pos := size
	buf := make([]byte, 8<<10)
	lines := 0
	// A final line without a newline counts as a line; a trailing newline
	// does not start one.
	skipLast := true
	for pos > 0 {
		k := int64(len(buf))
		if pos < k {
			k = pos
		}
		pos -= k
		if _, err := f.ReadAt(buf[:k], pos); err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		chunk := buf[:k]
		for i := len(chunk) - 1; i >= 0; i-- {
			if chunk[i] != '\n' {
				continue
			}
			if skipLast && pos+int64(i) == size-1 {
				continue
			}
			lines++
			if lines == n {
				return pos + int64(i) + 1, nil
			}
		}
		skipLast = false
	}
	return 0, nil
}

var _ = bytes.MinRead
