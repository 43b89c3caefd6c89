package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"
)

// Event is one entry of the event log. IDs increase with every append and
// are never reused, so a reader that saw id N resumes with EventsSince(N).
type Event struct {
	ID         int64           `json:"id"`
	Type       string          `json:"type"`
	ResourceID string          `json:"resource_id"`
	Data       json.RawMessage `json:"data,omitempty"`
	Timestamp  time.Time       `json:"timestamp"`
}

// AppendEvent appends an event inside tx, so it commits (or not) with the
// change it describes. data is marshaled to JSON (nil: no data). It returns
// the event with its ID and Timestamp set.
func AppendEvent(ctx context.Context, tx *sql.Tx, typ, resourceID string, data any) (Event, error) {
	if typ == "" {
		return Event{}, fmt.Errorf("appending event: empty type")
	}
	e := Event{Type: typ, ResourceID: resourceID, Timestamp: time.Now().UTC().Truncate(time.Millisecond)}
	var raw sql.NullString
	if data != nil {
		b, err := json.Marshal(data)
		if err != nil {
			return Event{}, fmt.Errorf("appending %s event: encoding data: %w", typ, err)
		}
		e.Data = b
		raw = sql.NullString{String: string(b), Valid: true}
	}
	err := tx.QueryRowContext(ctx,
		"INSERT INTO events (type, resource_id, data, timestamp) VALUES (?, ?, ?, ?) RETURNING id",
		typ, resourceID, raw, FormatTime(e.Timestamp)).Scan(&e.ID)
	if err != nil {
		return Event{}, fmt.Errorf("appending %s event: %w", typ, err)
	}
	return e, nil
}

// AppendEvent appends one event in its own write transaction.
func (s *Store) AppendEvent(ctx context.Context, typ, resourceID string, data any) (Event, error) {
	var e Event
	err := s.Tx(ctx, func(tx *sql.Tx) error {
		var err error
		e, err = AppendEvent(ctx, tx, typ, resourceID, data)
		return err
	})
	return e, err
}

// EventsSince returns up to limit events with an ID greater than afterID,
// oldest first (limit <= 0: all of them). afterID 0 starts at the beginning.
//
// Because writers hold SQLite's write lock from BEGIN IMMEDIATE to COMMIT,
// events become visible in ID order: once a reader has seen ID N, no event
// with an ID at or below N can appear later.
func (s *Store) EventsSince(ctx context.Context, afterID int64, limit int) ([]Event, error) {
	if limit <= 0 {
		limit = -1 // SQLite: no limit
	}
	var out []Event
	err := s.Read(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx,
			"SELECT id, type, resource_id, data, timestamp FROM events WHERE id > ? ORDER BY id LIMIT ?", afterID, limit)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var e Event
			var data sql.NullString
			var ts string
			if err := rows.Scan(&e.ID, &e.Type, &e.ResourceID, &data, &ts); err != nil {
				return err
			}
			if data.Valid {
				e.Data = json.RawMessage(data.String)
			}
			if e.Timestamp, err = ParseTime(ts); err != nil {
				return err
			}
			out = append(out, e)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("reading events after %d: %w", afterID, err)
	}
	return out, nil
}
