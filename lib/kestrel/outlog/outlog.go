// Package outlog keeps the workload's recent output in kestrel, per stream
// and with timestamps, for the host to collect over the agent channel.
//
// Output is a sequence of records (one per read of the workload's pipe),
// each with its stream, the time kestrel read it and its sequence number:
// the offset of its first byte in all output since kestrel started, both
// streams together. The store holds at most Max bytes; a write never waits
// for a reader (the workload is never slowed down by a slow host). When
// the oldest records make room for new ones, a reader that had not read
// them learns how many bytes it lost (Since's gap), so the host can write
// a counted gap marker rather than drop output silently.
package outlog

import (
	"io"
	"sync"
	"time"
)

// DefaultMax is the store's size when New is given 0: four seconds of
// output at 1 MB/s, well within a 128 MiB guest.
const DefaultMax = 4 << 20

// Record is one piece of output.
type Record struct {
	Seq    int64
	Stream string
	Time   time.Time
	Data   []byte
}

// Store is the bounded record queue. The zero value is not usable; call New.
type Store struct {
	mu     sync.Mutex
	max    int
	recs   []Record // recs[head:] are held
	head   int
	held   int   // bytes held
	next   int64 // sequence of the next byte written
	wake   chan struct{}
	closed bool
	now    func() time.Time
}

// New returns a store holding at most max bytes (DefaultMax if max <= 0).
func New(max int) *Store {
	if max <= 0 {
		max = DefaultMax
	}
	return &Store{max: max, wake: make(chan struct{}), now: time.Now}
}

// Writer returns a writer that appends to stream (its writes are copied).
func (s *Store) Writer(stream string) io.Writer { return writer{s, stream} }

type writer struct {
	s      *Store
	stream string
}

func (w writer) Write(p []byte) (int, error) {
	w.s.Append(w.stream, p)
	return len(p), nil
}

// Append adds a copy of p as a record of stream. It never blocks on
// readers: the oldest records are dropped to make room.
func (s *Store) Append(stream string, p []byte) {
	if len(p) == 0 {
		return
	}
	if len(p) > s.max {
		// Only the tail can be held; the head is lost at once.
		s.mu.Lock()
		s.next += int64(len(p) - s.max)
		s.mu.Unlock()
		p = p[len(p)-s.max:]
	}
	data := append([]byte(nil), p...)
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.held+len(data) > s.max && s.head < len(s.recs) {
		s.held -= len(s.recs[s.head].Data)
		s.recs[s.head] = Record{}
		s.head++
	}
	if s.head > 64 && s.head*2 > len(s.recs) {
		s.recs = append(s.recs[:0], s.recs[s.head:]...)
		s.head = 0
	}
	s.recs = append(s.recs, Record{Seq: s.next, Stream: stream, Time: s.now(), Data: data})
	s.held += len(data)
	s.next += int64(len(data))
	close(s.wake)
	s.wake = make(chan struct{})
}

// Next is the sequence number the next byte written will have.
func (s *Store) Next() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.next
}

// Since returns up to limit bytes of records from sequence from on (at
// least one record when there is one) and the sequence to continue from.
// When from is older than what the store holds, gap is the number of
// bytes lost before the first record returned. A negative from means the
// oldest record held, with no gap.
func (s *Store) Since(from int64, limit int) (recs []Record, gap, next int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	held := s.recs[s.head:]
	oldest := s.next
	if len(held) > 0 {
		oldest = held[0].Seq
	}
	if from < 0 {
		from = oldest
	}
	if from > s.next {
		from = s.next
	}
	if from < oldest {
		gap = oldest - from
		from = oldest
	}
	// Records are in sequence order: find the one holding from.
	lo, hi := 0, len(held)
	for lo < hi {
		m := (lo + hi) / 2
		if held[m].Seq+int64(len(held[m].Data)) <= from {
			lo = m + 1
		} else {
			hi = m
		}
	}
	size := 0
	for i := lo; i < len(held); i++ {
		r := held[i]
		if skip := from - r.Seq; skip > 0 {
			r.Data = r.Data[skip:]
			r.Seq = from
		}
		if len(recs) > 0 && size+len(r.Data) > limit {
			break
		}
		recs = append(recs, r)
		size += len(r.Data)
		from = r.Seq + int64(len(r.Data))
	}
	return recs, gap, from
}

// Wait returns a channel closed by the next Append or by Close.
func (s *Store) Wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c := make(chan struct{})
		close(c)
		return c
	}
	return s.wake
}

// Close wakes every waiter for good.
func (s *Store) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		close(s.wake)
	}
}

// Closed reports whether Close was called.
func (s *Store) Closed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}
