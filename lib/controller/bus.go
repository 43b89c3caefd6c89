package controller

import (
	"context"
	"database/sql"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/store"
)

// Bus fans the event log out to subscribers. Events are appended to the
// store first (in the transaction of the change they describe); the bus
// reads the table after each commit (Kick) and every second (events
// appended by other processes, such as volant-ipam), and delivers each
// event, in ID order, to every subscriber's bounded buffer. A subscriber
// whose buffer is full is dropped — its channel closed — and resumes from
// the table with its last ID: the bus never waits for a reader.
type Bus struct {
	st  *store.Store
	log *slog.Logger

	kick chan struct{}

	mu   sync.Mutex
	subs map[*Subscription]struct{}
	last int64 // newest ID delivered
	init bool
}

// Subscription receives events; see Bus.Subscribe.
type Subscription struct {
	b *Bus
	// C delivers events in ID order. It is closed when the subscription is
	// dropped for falling behind (Dropped reports true) or canceled.
	C       <-chan api.Event
	c       chan api.Event
	dropped bool
	closed  bool
}

// NewBus returns a bus over the store's event log.
func NewBus(st *store.Store, log *slog.Logger) *Bus {
	return &Bus{st: st, log: log, kick: make(chan struct{}, 1), subs: map[*Subscription]struct{}{}}
}

// Kick asks the bus to read new events now.
func (b *Bus) Kick() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// Subscribe registers a subscriber with a buffer of size events. Events
// committed after Subscribe returns are delivered (or the subscription is
// dropped); a caller that also replays the log (EventsSince) should
// subscribe first and skip IDs it has already seen.
func (b *Bus) Subscribe(size int) *Subscription {
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

// LastID is the newest event ID the bus has delivered.
func (b *Bus) LastID(ctx context.Context) (int64, error) {
	if err := b.start(ctx); err != nil {
		return 0, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last, nil
}

func (b *Bus) start(ctx context.Context) error {
	b.mu.Lock()
	done := b.init
	b.mu.Unlock()
	if done {
		return nil
	}
	last, err := LastEventID(ctx, b.st)
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
func (b *Bus) Run(ctx context.Context) {
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
func (b *Bus) poll(ctx context.Context) {
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
			ev := FromStore(e)
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

// FromStore converts a stored event to its API form.
func FromStore(e store.Event) api.Event {
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

// LastEventID returns the newest event's ID (0 for an empty log).
func LastEventID(ctx context.Context, st *store.Store) (int64, error) {
	var id sql.NullInt64
	err := st.Read(ctx, func(tx *sql.Tx) error {
		// sqlite_sequence keeps the AUTOINCREMENT high-water mark even when
		// the newest events were pruned.
		return tx.QueryRowContext(ctx, `SELECT max(n) FROM (SELECT max(id) AS n FROM events UNION ALL SELECT seq FROM sqlite_sequence WHERE name = 'events')`).Scan(&id)
	})
	if err != nil {
		return 0, internal(err, "reading the newest event id")
	}
	return id.Int64, nil
}

// FirstEventID returns the ID of the oldest event the log holds, 0 when it
// holds none.
func FirstEventID(ctx context.Context, st *store.Store) (int64, error) {
	var id sql.NullInt64
	err := st.Read(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT min(id) FROM events`).Scan(&id)
	})
	if err != nil {
		return 0, internal(err, "reading the oldest event id")
	}
	return id.Int64, nil
}

// PruneEvents deletes all but the newest keep events.
func PruneEvents(ctx context.Context, st *store.Store, keep int) error {
	return st.Tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - ?`, keep)
		return err
	})
}
