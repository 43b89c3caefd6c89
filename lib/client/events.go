package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
)

// EventStream is an open GET /api/v1/events that resumes by itself. It is
// not safe for concurrent use: one goroutine calls Next.
type EventStream struct {
	c    *Client
	ctx  context.Context
	opts api.EventOptions

	last      int64 // newest ID seen (events, or the id-only block on connect)
	connected bool
	body      io.ReadCloser
	cancel    context.CancelFunc
	br        *bufio.Reader

	reconnects int
}

// Events opens the event stream. It connects before returning, so a wrong
// token or address fails here; later disconnects are resumed inside Next.
func (c *Client) Events(ctx context.Context, o api.EventOptions) (*EventStream, error) {
	s := &EventStream{c: c, ctx: ctx, opts: o, last: o.Since}
	if err := s.connect(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *EventStream) connect() error {
	q := url.Values{}
	h := http.Header{"Accept": {"text/event-stream"}}
	switch {
	case s.connected || s.last > 0:
		h.Set("Last-Event-ID", strconv.FormatInt(s.last, 10))
	case s.opts.FromStart:
		q.Set("since", "0")
	}
	if len(s.opts.Types) > 0 {
		q.Set("type", strings.Join(s.opts.Types, ","))
	}
	resp, cancel, err := s.c.do(s.ctx, request{method: http.MethodGet, path: api.Prefix + "/events", query: q, header: h, stream: true})
	if err != nil {
		return err
	}
	s.body, s.cancel, s.br = resp.Body, cancel, bufio.NewReaderSize(resp.Body, 64<<10)
	s.connected = true
	return nil
}

func (s *EventStream) drop() {
	if s.body != nil {
		s.body.Close()
		s.cancel()
		s.body = nil
	}
}

// Next returns the next event. It blocks until one arrives, reconnecting
// (with Last-Event-ID, backing off up to 5 s) when the connection drops. It
// returns an error only when the stream's context ends (CANCELED or
// TIMEOUT), when it was closed, or when the daemon refuses the stream with
// a 4xx answer (UNAUTHORIZED, INVALID_INPUT...).
func (s *EventStream) Next() (api.Event, error) {
	backoff := 100 * time.Millisecond
	for {
		if s.body == nil {
			if err := s.ctx.Err(); err != nil {
				return api.Event{}, apierr.From(err)
			}
			err := s.connect()
			if err != nil {
				if permanent(err) {
					return api.Event{}, err
				}
				select {
				case <-s.ctx.Done():
					return api.Event{}, apierr.From(s.ctx.Err())
				case <-time.After(backoff):
				}
				backoff = min(backoff*2, 5*time.Second)
				continue
			}
			s.reconnects++
		}
		ev, ok, err := s.read()
		var se streamError
		if errors.As(err, &se) {
			// The server ended the stream for a reason a reconnect
			// cannot fix (a damaged event log).
			s.drop()
			return api.Event{}, se.err
		}
		if err != nil {
			s.drop()
			if s.ctx.Err() != nil {
				return api.Event{}, apierr.From(s.ctx.Err())
			}
			continue // resume from s.last
		}
		if ok {
			return ev, nil
		}
	}
}

// permanent reports errors a reconnect cannot fix.
func permanent(err error) bool {
	var e *apierr.Error
	if !errors.As(err, &e) {
		return false
	}
	st, _ := e.Details["http_status"].(int)
	return st >= 400 && st < 500 && st != http.StatusRequestTimeout && st != http.StatusTooManyRequests
}

// streamError is an "error" event: the server's reason for ending the
// stream.
type streamError struct{ err *apierr.Error }

func (e streamError) Error() string { return e.err.Error() }

// read parses one SSE block. ok is false for blocks that carry no event
// (comments, the id-only block sent on connect).
func (s *EventStream) read() (api.Event, bool, error) {
	var data strings.Builder
	var id, typ string
	seen := false
	for {
		line, err := s.br.ReadString('\n')
		if err != nil {
			return api.Event{}, false, err
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			if !seen {
				continue
			}
			break
		}
		seen = true
		if strings.HasPrefix(line, ":") {
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "id":
			id = value
		case "event":
			typ = value
		case "data":
			if data.Len() > 0 {
				data.WriteByte('\n')
			}
			data.WriteString(value)
		}
	}
	if id != "" {
		if n, err := strconv.ParseInt(id, 10, 64); err == nil && n > s.last {
			s.last = n
		}
	}
	if data.Len() == 0 {
		return api.Event{}, false, nil
	}
	if typ == "error" {
		e := &apierr.Error{}
		if err := json.Unmarshal([]byte(data.String()), e); err != nil || e.Code == "" {
			e = apierr.New(apierr.Internal, "the event stream ended: %s", data.String())
		}
		return api.Event{}, false, streamError{e}
	}
	var ev api.Event
	if err := json.Unmarshal([]byte(data.String()), &ev); err != nil {
		return api.Event{}, false, apierr.Wrap(apierr.Internal, err, "decoding an event")
	}
	if ev.ID > s.last {
		s.last = ev.ID
	}
	return ev, true, nil
}

// LastID is the ID of the newest event seen (where a resume starts).
func (s *EventStream) LastID() int64 { return s.last }

// Reconnects counts how many times the stream reconnected.
func (s *EventStream) Reconnects() int { return s.reconnects }

// Close ends the stream; Next then fails.
func (s *EventStream) Close() error {
	s.drop()
	s.ctx = canceledCtx()
	return nil
}

func canceledCtx() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}
