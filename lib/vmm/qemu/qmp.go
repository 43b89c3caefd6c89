package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// QMP is a client of the QEMU Machine Protocol over a unix socket: JSON
// objects, one per line, commands answered in order with "return" or
// "error" (matched by "id"), asynchronous "event"s interleaved.
//
// QEMU's QMP socket serves one client at a time (others wait in the listen
// queue), so callers connect, act and close rather than holding a
// connection: the supervisor, `volant-launch status` and volantd all take
// turns.
type QMP struct {
	conn net.Conn

	wmu    sync.Mutex // serializes writes
	mu     sync.Mutex // guards pending, nextID, err
	nextID int
	pend   map[string]chan qmpResponse
	err    error // set once the reader stops

	events chan Event
	done   chan struct{}
}

// Event is an asynchronous QMP event (SHUTDOWN, STOP, RESUME, POWERDOWN...).
type Event struct {
	Name      string          `json:"event"`
	Data      json.RawMessage `json:"data,omitempty"`
	Timestamp Timestamp       `json:"timestamp"`
}

// Timestamp is QEMU's event time.
type Timestamp struct {
	Seconds      int64 `json:"seconds"`
	Microseconds int64 `json:"microseconds"`
}

// Error is a QMP error response.
type Error struct {
	Command string
	Class   string `json:"class"`
	Desc    string `json:"desc"`
}

func (e *Error) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

type qmpResponse struct {
	Return json.RawMessage `json:"return"`
	Error  *Error          `json:"error"`
	ID     string          `json:"id"`
	Event  string          `json:"event"`
	Data   json.RawMessage `json:"data"`
	Time   Timestamp       `json:"timestamp"`
	QMP    json.RawMessage `json:"QMP"`
}

// ErrClosed is returned for commands on a connection QEMU closed (it exited).
var ErrClosed = errors.New("qmp connection closed")

// DialQMP connects to a QMP socket, reads the greeting and negotiates
// capabilities (qmp_capabilities), after which commands may be sent.
func DialQMP(ctx context.Context, socket string) (*QMP, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("connecting to QMP socket: %w", err)
	}
	q := &QMP{
		conn:   conn,
		pend:   map[string]chan qmpResponse{},
		events: make(chan Event, 64),
		done:   make(chan struct{}),
	}
	// The greeting comes first, before the reader runs.
	if dl, ok := ctx.Deadline(); ok {
		conn.SetReadDeadline(dl)
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadBytes('\n')
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("reading QMP greeting: %w", err)
	}
	var greet qmpResponse
	if err := json.Unmarshal(line, &greet); err != nil || greet.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("not a QMP greeting: %q", line)
	}
	conn.SetReadDeadline(time.Time{})
	go q.read(r)
	if err := q.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		q.Close()
		return nil, err
	}
	return q, nil
}

func (q *QMP) read(r *bufio.Reader) {
	dec := json.NewDecoder(r)
	var err error
	for {
		var m qmpResponse
		if err = dec.Decode(&m); err != nil {
			break
		}
		if m.Event != "" {
			ev := Event{Name: m.Event, Data: m.Data, Timestamp: m.Time}
			select {
			case q.events <- ev:
			default: // nobody is listening; events are advisory
			}
			continue
		}
		q.mu.Lock()
		ch := q.pend[m.ID]
		delete(q.pend, m.ID)
		q.mu.Unlock()
		if ch != nil {
			ch <- m
		}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		err = ErrClosed
	}
	q.mu.Lock()
	q.err = err
	for id, ch := range q.pend {
		close(ch)
		delete(q.pend, id)
	}
	q.mu.Unlock()
	close(q.done)
	close(q.events)
}

// Execute runs one command with optional arguments and decodes its "return"
// into result (may be nil).
func (q *QMP) Execute(ctx context.Context, cmd string, args any, result any) error {
	return q.execute(ctx, cmd, args, nil, result)
}

// ExecuteWithFile runs one command with f's descriptor attached to it
// (SCM_RIGHTS), as getfd takes it: QEMU keeps a duplicate under the name
// the command gives, and f may be closed afterwards.
func (q *QMP) ExecuteWithFile(ctx context.Context, cmd string, args any, f *os.File, result any) error {
	if _, ok := q.conn.(*net.UnixConn); !ok {
		return fmt.Errorf("qmp %s: passing a file needs a unix socket", cmd)
	}
	return q.execute(ctx, cmd, args, unix.UnixRights(int(f.Fd())), result)
}

func (q *QMP) execute(ctx context.Context, cmd string, args any, oob []byte, result any) error {
	q.mu.Lock()
	if q.err != nil {
		err := q.err
		q.mu.Unlock()
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	q.nextID++
	id := fmt.Sprintf("v%d", q.nextID)
	ch := make(chan qmpResponse, 1)
	q.pend[id] = ch
	q.mu.Unlock()

	msg := map[string]any{"execute": cmd, "id": id}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return fmt.Errorf("qmp %s: encoding: %w", cmd, err)
	}
	q.wmu.Lock()
	if dl, ok := ctx.Deadline(); ok {
		q.conn.SetWriteDeadline(dl)
	}
	if oob != nil {
		_, _, err = q.conn.(*net.UnixConn).WriteMsgUnix(append(b, '\n'), oob, nil)
	} else {
		_, err = q.conn.Write(append(b, '\n'))
	}
	q.conn.SetWriteDeadline(time.Time{})
	q.wmu.Unlock()
	if err != nil {
		q.forget(id)
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	select {
	case m, ok := <-ch:
		if !ok {
			q.mu.Lock()
			err := q.err
			q.mu.Unlock()
			return fmt.Errorf("qmp %s: %w", cmd, err)
		}
		if m.Error != nil {
			m.Error.Command = cmd
			return m.Error
		}
		if result != nil && len(m.Return) > 0 {
			if err := json.Unmarshal(m.Return, result); err != nil {
				return fmt.Errorf("qmp %s: decoding reply: %w", cmd, err)
			}
		}
		return nil
	case <-ctx.Done():
		q.forget(id)
		return fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
	}
}

func (q *QMP) forget(id string) {
	q.mu.Lock()
	delete(q.pend, id)
	q.mu.Unlock()
}

// Events delivers asynchronous events until the connection closes. Events
// arriving while nobody reads (more than 64 queued) are dropped.
func (q *QMP) Events() <-chan Event { return q.events }

// Done is closed when the connection ends (QEMU exited or Close).
func (q *QMP) Done() <-chan struct{} { return q.done }

// Close closes the connection.
func (q *QMP) Close() error { return q.conn.Close() }
