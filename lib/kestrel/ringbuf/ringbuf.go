// Package ringbuf keeps the last N bytes of the workload's output in memory
// for kestrel's /v1/logs endpoint, and lets followers stream what arrives.
//
// Positions are absolute byte offsets since the buffer was created, so a
// follower remembers where it stopped and learns how much it missed when it
// fell more than the buffer's size behind.
package ringbuf

import "sync"

// DefaultSize is the ring's size when none is given: enough for a few
// thousand lines without weighing on a 128 MiB guest.
const DefaultSize = 256 << 10

// Buffer is a fixed-size ring of bytes. The zero value is not usable; call New.
type Buffer struct {
	mu    sync.Mutex
	buf   []byte
	total int64         // bytes ever written
	wake  chan struct{} // closed (and replaced) on every write
	done  bool
}

// New returns a buffer holding the last size bytes (DefaultSize if size <= 0).
func New(size int) *Buffer {
	if size <= 0 {
		size = DefaultSize
	}
	return &Buffer{buf: make([]byte, size), wake: make(chan struct{})}
}

// Write appends p, overwriting the oldest bytes when full. It never fails.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(p)
	size := len(b.buf)
	if len(p) > size {
		// Only the tail can survive; account for the skipped head.
		b.total += int64(len(p) - size)
		p = p[len(p)-size:]
	}
	for len(p) > 0 {
		at := int(b.total % int64(size))
		c := copy(b.buf[at:], p)
		p = p[c:]
		b.total += int64(c)
	}
	if n > 0 {
		close(b.wake)
		b.wake = make(chan struct{})
	}
	return n, nil
}

// Total is the number of bytes ever written: the offset of the next byte.
func (b *Buffer) Total() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.total
}

// ReadFrom returns a copy of the bytes from offset off to the end and the
// offset to continue from. When off is older than what the ring still holds,
// the returned data starts at the oldest byte held and missed says how many
// bytes were lost. A negative off means "the oldest byte held".
func (b *Buffer) ReadFrom(off int64) (data []byte, next int64, missed int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	size := int64(len(b.buf))
	oldest := b.total - size
	if oldest < 0 {
		oldest = 0
	}
	if off < 0 {
		off = oldest
	}
	if off < oldest {
		missed = oldest - off
		off = oldest
	}
	if off >= b.total {
		return nil, b.total, missed
	}
	data = make([]byte, 0, b.total-off)
	for pos := off; pos < b.total; {
		at := pos % size
		end := size
		if rem := b.total - pos; rem < size-at {
			end = at + rem
		}
		data = append(data, b.buf[at:end]...)
		pos += end - at
	}
	return data, b.total, missed
}

// Wait returns a channel that is closed by the next Write (or by Close).
func (b *Buffer) Wait() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		c := make(chan struct{})
		close(c)
		return c
	}
	return b.wake
}

// Close wakes every follower for good; Closed then reports true. Writes
// after Close are still kept.
func (b *Buffer) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.done {
		b.done = true
		close(b.wake)
		b.wake = make(chan struct{})
	}
}

// Closed reports whether Close was called.
func (b *Buffer) Closed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.done
}
