// Package events is volantd's event log: the events table of lib/store,
// appended to by every change in the transaction of that change, read back
// in ID order (IDs are never reused and become visible in order), pruned to
// a retention, and fanned out to live subscribers by a bus.
//
// A stream that resumes from an ID (the server's SSE endpoint) subscribes
// first, then replays the log after its ID with Since, then follows the
// subscription, skipping IDs it has seen: nothing is lost or repeated
// between the two. When the log no longer holds events after the ID (they
// were pruned), Pruned says how many the stream missed.
package events

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/store"
)

// Log is the event log of one store, with its bus. Events are appended to
// the store first (in the transaction of the change they describe); the
// bus reads the table after each commit (Kick) and every second (events
// appended by other processes, such as volant-ipam), and delivers each
// event, in ID order, to every subscriber's bounded buffer. A subscriber
// whose buffer is full is dropped — its channel closed — and resumes from
// the table with its last ID: the bus never waits for a reader.
type Log struct {
	st  *store.Store
	log *slog.Logger

	kick chan struct{}

	mu   sync.Mutex
	subs map[*Subscription]struct{}
	last int64 // newest ID delivered
	init bool
}

// Subscription receives events; see Log.Subscribe.
type Subscription struct {
	b *Log
	// C delivers events in ID order. It is closed when the subscription is
	// dropped for falling behind (Dropped reports true) or canceled.
	C       <-chan api.Event
	c       chan api.Event
	dropped bool
	closed  bool
}

// New returns the event log of a store. Its bus delivers nothing until Run.
func New(st *store.Store, log *slog.Logger) *Log {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Log{st: st, log: log, kick: make(chan struct{}, 1), subs: map[*Subscription]struct{}{}}
}

// Kick asks the bus to read new events now.
func (b *Log) Kick() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// Subscribe registers a subscriber with a buffer of size events. Events
// committed after Subscribe returns are delivered (or the subscription is
// dropped); a caller that also replays the log (Since) should subscribe
// first and skip IDs it has already seen.
func (b *Log) Subscribe(size int) *Subscription {
	if size < 1 {
		size = 1
	}
	ch := make(chan api.Event, size)
	s := &Subscription{b: b, C: ch, c: ch}
	b.mu.Lock()
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	return s
}

// Cancel ends the subscription and closes C.
func (s *Subscription) Cancel() {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if !s.closed {
		s.closed = true
		delete(s.b.subs, s)
		close(s.c)
	}
}

// Dropped reports whether the bus dropped the subscription because its
// buffer was full.
func (s *Subscription) Dropped() bool {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	return s.dropped
}

// Delivered is the newest event ID the bus has delivered.
func (b *Log) Delivered(ctx context.Context) (int64, error) {
	if err := b.start(ctx); err != nil {
		return 0, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last, nil
}

func (b *Log) start(ctx context.Context) error {
	b.mu.Lock()
	done := b.init
	b.mu.Unlock()
	if done {
		return nil
	}
	last, err := b.Last(ctx)
	if err != nil {
		return err
	}
	b.mu.Lock()
	if !b.init {
		b.last, b.init = last, true
	}
	b.mu.Unlock()
	return nil
}

// Run delivers events until ctx ends, then closes every subscription.
func (b *Log) Run(ctx context.Context) {
	defer func() {
		b.mu.Lock()
		for s := range b.subs {
			s.closed = true
			close(s.c)
		}
		b.subs = map[*Subscription]struct{}{}
		b.mu.Unlock()
	}()
	for ctx.Err() == nil {
		if err := b.start(ctx); err != nil {
			b.log.Warn("event bus: reading the newest event id", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		break
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.kick:
		case <-tick.C:
		}
		b.poll(ctx)
	}
}

// poll reads and delivers what was committed since the last delivery.
func (b *Log) poll(ctx context.Context) {
	for {
		b.mu.Lock()
		after := b.last
		b.mu.Unlock()
		evs, err := b.st.EventsSince(ctx, after, 500)
		if err != nil {
			if ctx.Err() == nil {
				b.log.Warn("event bus: reading events", "err", err)
			}
			return
		}
		if len(evs) == 0 {
			return
		}
		b.mu.Lock()
		for _, e := range evs {
			ev := fromStore(e)
			for s := range b.subs {
				select {
				case s.c <- ev:
				default:
					s.dropped, s.closed = true, true
					delete(b.subs, s)
					close(s.c)
				}
			}
			b.last = e.ID
		}
		b.mu.Unlock()
	}
}

// Since returns up to limit events with an ID above after, oldest first.
func (b *Log) Since(ctx context.Context, after int64, limit int) ([]api.Event, error) {
	evs, err := b.st.EventsSince(ctx, after, limit)
	if err != nil {
		return nil, err
	}
	out := make([]api.Event, len(evs))
	for i, e := range evs {
		out[i] = fromStore(e)
	}
	return out, nil
}

// fromStore converts a stored event to its API form.
func fromStore(e store.Event) api.Event {
	return api.Event{ID: e.ID, Type: e.Type, ResourceID: e.ResourceID, Data: e.Data, Timestamp: e.Timestamp}
}

// MatchType reports whether an event type matches one of the patterns:
// exact types, or prefixes ending in "*" ("vm.*"). No patterns match all.
func MatchType(patterns []string, typ string) bool {
	if len(patterns) == 0 {
		return true
	}
	for _, p := range patterns {
		if p == typ || p == "*" || (strings.HasSuffix(p, "*") && strings.HasPrefix(typ, strings.TrimSuffix(p, "*"))) {
			return true
		}
	}
	return false
}

// Last returns the newest event's ID ever written (0 for an empty log),
// also when that event was pruned since.
func (b *Log) Last(ctx context.Context) (int64, error) {
	var id sql.NullInt64
	err := b.st.Read(ctx, func(tx *sql.Tx) error {
		// sqlite_sequence keeps the AUTOINCREMENT high-water mark even when
		// the newest events were pruned.
		return tx.QueryRowContext(ctx, `SELECT max(n) FROM (SELECT max(id) AS n FROM events UNION ALL SELECT seq FROM sqlite_sequence WHERE name = 'events')`).Scan(&id)
	})
	if err != nil {
		return 0, internal(err, "reading the newest event id")
	}
	return id.Int64, nil
}

// First returns the ID of the oldest event the log holds, 0 when it holds
// none.
func (b *Log) First(ctx context.Context) (int64, error) {
	var id sql.NullInt64
	err := b.st.Read(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT min(id) FROM events`).Scan(&id)
	})
	if err != nil {
		return 0, internal(err, "reading the oldest event id")
	}
	return id.Int64, nil
}

// Pruned returns the events.pruned notice for a stream resuming after ID
// from when the log lost events after it (last is Last's answer), or nil.
func (b *Log) Pruned(ctx context.Context, from, last int64) (*api.Event, error) {
	first, err := b.First(ctx)
	if err != nil {
		return nil, err
	}
	missed := first - from - 1
	if first == 0 {
		missed = last - from
	}
	if missed <= 0 {
		return nil, nil
	}
	data, _ := json.Marshal(map[string]int64{"after": from, "first_kept": first, "missed": missed})
	return &api.Event{Type: api.EventsPruned, Data: data, Timestamp: time.Now().UTC()}, nil
}

// Prune deletes all but the newest keep events.
func (b *Log) Prune(ctx context.Context, keep int) error {
	return b.st.Tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - ?`, keep)
		return err
	})
}

func internal(err error, what string) error {
	return fmt.Errorf("%s: %w", what, err)
}
