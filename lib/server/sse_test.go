package server_test

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/server"
	"github.com/volantvm/volant/lib/store"
	"github.com/volantvm/volant/lib/store/storetest"
)

// appendEvents appends n events of about size bytes each, in one
// transaction, as any change would, and wakes the bus.
func (e *env) appendEvents(n, size int) {
	e.t.Helper()
	pad := strings.Repeat("x", size)
	err := e.st.Tx(e.ctx, func(tx *sql.Tx) error {
		for i := 0; i < n; i++ {
			if _, err := store.AppendEvent(e.ctx, tx, "test.flood", "t", map[string]any{"i": i, "pad": pad}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.ctl.Events().Kick()
}

func (e *env) allIDs(after int64) []int64 {
	evs, err := e.st.EventsSince(e.ctx, after, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	var ids []int64
	for _, ev := range evs {
		ids = append(ids, ev.ID)
	}
	return ids
}

type sseEvent struct {
	id        string
	typ, data string
}

// readSSE reads blocks from a raw SSE stream until n events were read,
// the stream ends, or the deadline.
func readSSE(t *testing.T, r *bufio.Reader, n int) ([]sseEvent, error) {
	t.Helper()
	var out []sseEvent
	var cur sseEvent
	for n < 0 || len(out) < n {
		line, err := r.ReadString('\n')
		if err != nil {
			return out, err
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "":
			if cur.data != "" || cur.id != "" {
				out = append(out, cur)
			}
			cur = sseEvent{}
		case strings.HasPrefix(line, ":"), strings.HasPrefix(line, "retry:"):
		case strings.HasPrefix(line, "id: "):
			cur.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			cur.typ = line[7:]
		case strings.HasPrefix(line, "data: "):
			cur.data = line[6:]
		default:
			t.Fatalf("unexpected SSE line %q", line)
		}
	}
	return out, nil
}

func TestSSEFormatAndResume(t *testing.T) {
	e := newEnv(t)
	e.install("web")
	if _, err := e.c.CreateVM(e.ctx, api.CreateVMRequest{Name: "web1", Plugin: "web"}); err != nil {
		t.Fatal(err)
	}
	all := e.allIDs(0)
	open := func(query string, hdr ...string) (*http.Response, *bufio.Reader) {
		req, _ := http.NewRequestWithContext(e.ctx, "GET", e.ts.URL+"/api/v1/events"+query, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("events: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		return resp, bufio.NewReader(resp.Body)
	}

	// since=0: the position block, then the whole log in order.
	_, r := open("?since=0")
	evs, err := readSSE(t, r, len(all)+1)
	if err != nil {
		t.Fatal(err)
	}
	if evs[0].id != "0" || evs[0].data != "" {
		t.Fatalf("first block %+v, want the id-only position block", evs[0])
	}
	for i, id := range all {
		ev := evs[i+1]
		if ev.id != strconv.FormatInt(id, 10) || ev.typ == "" || !strings.Contains(ev.data, `"id":`+ev.id) || !strings.Contains(ev.data, `"type":"`+ev.typ+`"`) {
			t.Fatalf("event %d: %+v (want id %d)", i, ev, id)
		}
	}

	// Last-Event-ID resumes after that id, and new events follow live.
	mid := all[len(all)/2]
	_, r = open("", "Last-Event-ID", strconv.FormatInt(mid, 10))
	rest := e.allIDs(mid)
	evs, err = readSSE(t, r, len(rest)+1)
	if err != nil {
		t.Fatal(err)
	}
	if evs[1].id != strconv.FormatInt(rest[0], 10) || evs[len(evs)-1].id != strconv.FormatInt(all[len(all)-1], 10) {
		t.Fatalf("resume after %d: %v", mid, evs)
	}
	if _, err := e.c.StopVM(e.ctx, "web1"); err != nil {
		t.Fatal(err)
	}
	evs, err = readSSE(t, r, 1)
	if err != nil || evs[0].typ != api.EventVMStopped {
		t.Fatalf("live event: %+v %v", evs, err)
	}

	// No position: only new events; a type filter.
	_, r = open("?type=vm.*,plugin.installed")
	if evs, _ := readSSE(t, r, 1); evs[0].data != "" || evs[0].id != strconv.FormatInt(e.allIDs(0)[len(e.allIDs(0))-1], 10) {
		t.Fatalf("position block: %+v", evs)
	}
	if _, err := e.c.StartVM(e.ctx, "web1"); err != nil {
		t.Fatal(err)
	}
	e.install("db")
	evs, err = readSSE(t, r, 2)
	if err != nil || evs[0].typ != api.EventVMStarted || evs[1].typ != api.EventPluginInstalled {
		t.Fatalf("filtered: %+v %v", evs, err)
	}

	for _, q := range []string{"?since=-1", "?since=abc"} {
		code, body := e.do("GET", "/api/v1/events"+q, "", nil)
		e.apiErr(code, body, 400, apierr.InvalidInput)
	}
}

// TestResumeAfterPrunedEvents: a stream resuming from a position older
// than the log holds says so first, with how many events it cannot replay,
// and then replays what is kept; a position the log still covers, or none,
// gets no notice.
func TestResumeAfterPrunedEvents(t *testing.T) {
	e := newEnv(t)
	e.install("web")
	e.install("db")
	e.install("cache")
	all := e.allIDs(0)
	if len(all) < 3 {
		t.Fatalf("events: %v", all)
	}
	if err := e.ctl.Events().Prune(e.ctx, 2); err != nil {
		t.Fatal(err)
	}
	kept := e.allIDs(0)
	if len(kept) != 2 {
		t.Fatalf("kept %v", kept)
	}
	open := func(lastID int64) *bufio.Reader {
		req, _ := http.NewRequestWithContext(e.ctx, "GET", e.ts.URL+"/api/v1/events", nil)
		req.Header.Set("Last-Event-ID", strconv.FormatInt(lastID, 10))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return bufio.NewReader(resp.Body)
	}

	from := all[0] - 1 // before everything ever written
	evs, err := readSSE(t, open(from), 4)
	if err != nil {
		t.Fatal(err)
	}
	gap := evs[1]
	var notice api.Event
	if err := json.Unmarshal([]byte(gap.data), &notice); err != nil {
		t.Fatal(err)
	}
	wantData := fmt.Sprintf(`{"after":%d,"first_kept":%d,"missed":%d}`, from, kept[0], kept[0]-from-1)
	if gap.typ != api.EventsPruned || gap.id != "" || notice.ID != 0 || notice.Type != api.EventsPruned || string(notice.Data) != wantData {
		t.Fatalf("notice %+v (data %s), want %s", gap, notice.Data, wantData)
	}
	if evs[2].id != strconv.FormatInt(kept[0], 10) || evs[3].id != strconv.FormatInt(kept[1], 10) {
		t.Fatalf("after the notice: %+v", evs[2:])
	}

	// Resuming inside what is kept: no notice, straight to the events.
	evs, err = readSSE(t, open(kept[0]), 2)
	if err != nil || evs[1].typ == api.EventsPruned || evs[1].id != strconv.FormatInt(kept[1], 10) {
		t.Fatalf("resume within the log: %+v %v", evs, err)
	}

	// lib/client hands the notice over like an event and keeps its place
	// (from is 0 here: the whole retained log).
	es, err := e.c.Events(e.ctx, api.EventOptions{FromStart: true})
	if err != nil {
		t.Fatal(err)
	}
	defer es.Close()
	first, err := es.Next()
	if err != nil || first.Type != api.EventsPruned || es.LastID() != from {
		t.Fatalf("client: %+v %v, last id %d", first, err, es.LastID())
	}
	next, err := es.Next()
	if err != nil || next.ID != kept[0] {
		t.Fatalf("client after the notice: %+v %v", next, err)
	}
}

// TestSlowReaderIsDroppedAndResumes: a reader that stops reading does not
// hold the daemon up; it is disconnected once its buffer overflows and,
// reconnecting with Last-Event-ID, gets every event exactly once.
func TestSlowReaderIsDroppedAndResumes(t *testing.T) {
	e := newEnv(t, func(_ *controller.Config, o *server.Options) {
		o.SSEBuffer = 16
		o.SSEWriteTimeout = time.Second
	})
	start := e.allIDs(0)
	var base int64
	if len(start) > 0 {
		base = start[len(start)-1]
	}
	u, _ := url.Parse(e.ts.URL)
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetReadBuffer(4096)
	}
	fmt.Fprintf(conn, "GET /api/v1/events?since=%d HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n", base)

	// Flood: far more than the socket buffers and the subscription hold.
	const n, size = 3000, 2048
	t0 := time.Now()
	e.appendEvents(n, size)
	// The daemon stays responsive while the reader stalls.
	for i := 0; i < 5; i++ {
		h, err := e.c.Health(e.ctx)
		if err != nil || h.LastEventID != base+n {
			t.Fatalf("health during the stall: %+v %v", h, err)
		}
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Fatalf("the daemon took %s to answer while a reader stalled", d)
	}
	time.Sleep(2 * time.Second) // the subscription overflows; the write deadline passes

	// Drain what the stalled connection got: it must end (dropped).
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, rerr := readSSE(t, bufio.NewReader(resp.Body), -1)
	if rerr != io.EOF && rerr != io.ErrUnexpectedEOF {
		t.Fatalf("the stalled stream did not end: %v after %d events", rerr, len(got))
	}
	var ids []int64
	for _, ev := range got {
		if ev.data == "" {
			continue
		}
		id, _ := strconv.ParseInt(ev.id, 10, 64)
		ids = append(ids, id)
	}
	if len(ids) >= n {
		t.Fatalf("the slow reader got all %d events; it was never dropped", len(ids))
	}
	last := base
	if len(ids) > 0 {
		last = ids[len(ids)-1]
	}
	t.Logf("dropped after %d of %d events", len(ids), n)

	// Resume with the client, which reconnects by itself.
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	defer cancel()
	s, err := e.c.Events(ctx, api.EventOptions{Since: last})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for len(ids) < n {
		ev, err := s.Next()
		if err != nil {
			t.Fatalf("after %d events: %v", len(ids), err)
		}
		ids = append(ids, ev.ID)
	}
	for i, id := range ids {
		if id != base+int64(i)+1 {
			t.Fatalf("event %d has id %d, want %d (lost or repeated)", i, id, base+int64(i)+1)
		}
	}
}

// TestClientStreamSurvivesDrops: a client that reads slowly is dropped by
// the daemon several times and still sees every event once, in order.
func TestClientStreamSurvivesDrops(t *testing.T) {
	e := newEnv(t, func(_ *controller.Config, o *server.Options) {
		o.SSEBuffer = 8
		o.SSEWriteTimeout = 300 * time.Millisecond
	})
	ctx, cancel := context.WithTimeout(e.ctx, 60*time.Second)
	defer cancel()
	s, err := e.c.Events(ctx, api.EventOptions{FromStart: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const rounds, per = 3, 2000
	var ids []int64
	for r := 0; r < rounds; r++ {
		e.appendEvents(per, 2048)
		time.Sleep(time.Second) // do not read: overflow
		for len(ids) < (r+1)*per {
			ev, err := s.Next()
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, ev.ID)
		}
	}
	for i := 1; i < len(ids); i++ {
		if ids[i] != ids[i-1]+1 {
			t.Fatalf("gap or repeat at %d: %d then %d", i, ids[i-1], ids[i])
		}
	}
	if s.Reconnects() == 0 {
		t.Fatal("the stream was never dropped; the test proves nothing")
	}
	t.Logf("%d events, %d reconnects", len(ids), s.Reconnects())
}

// TestEventsResumeAcrossDaemonRestart: events are in the table, so a new
// daemon on the same database serves what a client missed.
func TestEventsSurviveRestart(t *testing.T) {
	e := newEnv(t)
	e.install("web")
	last, err := e.ctl.Events().Last(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	e.install("db")
	// A second controller and server on the same database.
	ctl2, err := controller.New(controller.Config{MaxBooting: -1, Store: e.st, DataDir: e.dir, InputsDir: filepath.Join(e.dir, "run-inputs"), Runtime: e.rt, Network: e.nw, Prober: e.pr})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	go ctl2.Run(ctx)
	srv := server.New(ctl2, server.Options{})
	ts := newServer(t, srv)
	c := mustClient(t, ts)
	s, err := c.Events(ctx, api.EventOptions{Since: last})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := s.Next()
	if err != nil || ev.Type != api.EventPluginInstalled || ev.ResourceID != "db" || ev.ID != last+1 {
		t.Fatalf("after restart: %+v %v", ev, err)
	}
}

// TestEventsOverDamagedLog: a replay that meets a damaged page of the
// event log ends with an error event carrying DATA_CORRUPT, instead of
// stopping as if the log ended there.
func TestEventsOverDamagedLog(t *testing.T) {
	ctx := context.Background()
	db := filepath.Join(t.TempDir(), "volant.db")
	st, err := store.Open(ctx, db, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = st.Tx(ctx, func(tx *sql.Tx) error {
		for i := 0; i < 3000; i++ {
			if _, err := store.AppendEvent(ctx, tx, "test.event", fmt.Sprintf("r%d", i), map[string]int{"i": i}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	pages := storetest.TablePages(t, db, "events")
	storetest.Garble(t, db, pages[len(pages)/2])

	e := newEnvDB(t, db)
	req, _ := http.NewRequest("GET", e.ts.URL+"/api/v1/events?since=0", nil)
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	frames := strings.Split(strings.TrimSpace(string(body)), "\n\n")
	last := frames[len(frames)-1]
	if !strings.HasPrefix(last, "event: error\n") || !strings.Contains(last, `"code":"DATA_CORRUPT"`) {
		t.Fatalf("%d frames; the stream ends with:\n%s", len(frames), last)
	}
	if strings.Contains(last, "\nid:") || strings.HasPrefix(last, "id:") {
		t.Fatalf("the error frame moves the client's position: %s", last)
	}
}

// TestClientGetsTheStreamsError: lib/client's stream returns the error
// event's error instead of reconnecting into it forever.
func TestClientGetsTheStreamsError(t *testing.T) {
	ctx := context.Background()
	db := filepath.Join(t.TempDir(), "volant.db")
	st, err := store.Open(ctx, db, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st.Tx(ctx, func(tx *sql.Tx) error {
		for i := 0; i < 3000; i++ {
			store.AppendEvent(ctx, tx, "test.event", "r", map[string]int{"i": i})
		}
		return nil
	})
	st.Close()
	pages := storetest.TablePages(t, db, "events")
	storetest.Garble(t, db, pages[len(pages)/2])
	e := newEnvDB(t, db)
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	s, err := e.c.Events(ctx, api.EventOptions{FromStart: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	n := 0
	for {
		_, err := s.Next()
		if err != nil {
			if !apierr.Is(err, apierr.DataCorrupt) {
				t.Fatalf("after %d events: %v (%s)", n, err, apierr.CodeOf(err))
			}
			break
		}
		n++
	}
	if s.Reconnects() > 1 {
		t.Fatalf("%d reconnects", s.Reconnects())
	}
}
