package server_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/controller/controllertest"
	"github.com/volantvm/volant/lib/controller/events"
	"github.com/volantvm/volant/lib/ipam"
	"github.com/volantvm/volant/lib/server"
	"github.com/volantvm/volant/lib/store"
	"github.com/volantvm/volant/lib/testutil/wait"
)

// env is a controller on in-memory fakes behind an httptest server.
type env struct {
	t    testing.TB
	dir  string
	st   *store.Store
	ctl  *controller.Controller
	srv  *server.Server
	rt   *controllertest.Runtime
	nw   *controllertest.Network
	pr   *controllertest.Prober
	ts   *httptest.Server
	c    *client.Client
	ctx  context.Context
	stop context.CancelFunc
}

type envOpt func(*controller.Config, *server.Options)

func newEnv(t testing.TB, opts ...envOpt) *env {
	t.Helper()
	return newEnvDB(t, "", opts...)
}

// newEnvDB is newEnv on the database at db ("" for a new one).
func newEnvDB(t testing.TB, db string, opts ...envOpt) *env {
	t.Helper()
	dir := t.TempDir()
	if db == "" {
		db = filepath.Join(dir, "volant.db")
	}
	ctx, cancel := context.WithCancel(context.Background())
	st, err := store.Open(ctx, db, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, dir: dir, st: st, rt: controllertest.NewRuntime(), nw: controllertest.NewNetwork(), pr: controllertest.NewProber(), ctx: ctx, stop: cancel}
	cfg := controller.Config{MaxBooting: -1, Store: st, DataDir: dir, InputsDir: filepath.Join(dir, "run-inputs"), Runtime: e.rt, Network: e.nw, Prober: e.pr,
		HealthInterval: 50 * time.Millisecond, ReconcileInterval: 100 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	so := server.Options{}
	for _, o := range opts {
		o(&cfg, &so)
	}
	e.ctl, err = controller.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.ctl.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { e.ctl.Run(ctx); close(done) }()
	e.srv = server.New(e.ctl, so)
	e.ts = httptest.NewServer(e.srv.Handler(so.Token != ""))
	e.c, err = client.New(e.ts.URL, client.Options{Token: so.Token, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.ts.CloseClientConnections()
		e.ts.Close()
		cancel()
		<-done
		st.Close()
	})
	return e
}

// plugin writes an artifact and returns a manifest for it.
func (e *env) plugin(name string, extra string) []byte {
	e.t.Helper()
	// In the plugins directory: volantd takes local artifacts only from
	// there and the directories it is told to allow.
	art := filepath.Join(e.dir, "plugins", name+".cpio")
	os.MkdirAll(filepath.Dir(art), 0o755)
	data := []byte("initramfs of " + name)
	if err := os.WriteFile(art, data, 0o644); err != nil {
		e.t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return []byte(fmt.Sprintf(`{"name":%q,"version":"1.0.0","initramfs":{"url":%q,"checksum":"sha256:%s"},
		"workload":{"entrypoint":["/bin/app"],"base_url":"http://127.0.0.1:80"},"resources":{"cpu_cores":1,"memory_mb":128}%s}`,
		name, art, hex.EncodeToString(sum[:]), extra))
}

func (e *env) install(name string) *api.Plugin {
	e.t.Helper()
	p, err := e.c.InstallPlugin(e.ctx, e.plugin(name, ""), client.InstallOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

// do sends a raw request and returns the status and body.
func (e *env) do(method, path, contentType string, body []byte, hdr ...string) (int, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.ts.URL+path, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// apiErr decodes an error body, failing when it is not one.
func (e *env) apiErr(status int, body []byte, wantStatus int, wantCode apierr.Code) *apierr.Error {
	e.t.Helper()
	var ae apierr.Error
	if err := json.Unmarshal(body, &ae); err != nil || ae.Code == "" || ae.Message == "" {
		e.t.Fatalf("status %d: body is not an apierr object: %s", status, body)
	}
	if status != wantStatus || ae.Code != wantCode {
		e.t.Fatalf("got %d %s (%s), want %d %s", status, ae.Code, ae.Message, wantStatus, wantCode)
	}
	return &ae
}

// snapshot is the state a rejected request must not change.
type snapshot struct {
	VMs, Plugins, Deployments, Leases []string
	Events                            int64
	Taps                              []string
	Runs                              []string
}

func (e *env) snapshot() snapshot {
	e.t.Helper()
	var s snapshot
	q := func(query string) []string {
		var out []string
		err := e.st.Read(e.ctx, func(tx *sql.Tx) error {
			rows, err := tx.Query(query)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				var a string
				if err := rows.Scan(&a); err != nil {
					return err
				}
				out = append(out, a)
			}
			return rows.Err()
		})
		if err != nil {
			e.t.Fatal(err)
		}
		return out
	}
	s.VMs = q(`SELECT id || ':' || state || ':' || desired || ':' || coalesce(ip,'') FROM vms ORDER BY id`)
	s.Plugins = q(`SELECT name || ':' || version || ':' || enabled FROM plugins ORDER BY name`)
	s.Deployments = q(`SELECT name || ':' || replicas FROM deployments ORDER BY name`)
	s.Leases = q(`SELECT vm_id || ':' || ip FROM ip_leases ORDER BY ip`)
	// The audit trail records refused calls too: they change nothing else.
	for _, n := range q(`SELECT coalesce(max(id), 0) FROM events WHERE type != 'audit'`) {
		s.Events, _ = strconv.ParseInt(n, 10, 64)
	}
	for n := range e.nw.Taps() {
		s.Taps = append(s.Taps, n)
	}
	sort.Strings(s.Taps)
	s.Runs = e.rt.Live()
	return s
}

func (e *env) unchanged(before snapshot, what string) {
	e.t.Helper()
	after := e.snapshot()
	a, _ := json.Marshal(before)
	b, _ := json.Marshal(after)
	if !bytes.Equal(a, b) {
		e.t.Fatalf("%s changed state:\nbefore %s\nafter  %s", what, a, b)
	}
}

// events returns the stored events of the given types (all when none).
func (e *env) events(types ...string) []api.Event {
	e.t.Helper()
	evs, err := e.ctl.Events().Since(e.ctx, 0, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []api.Event
	for _, ev := range evs {
		if events.MatchType(types, ev.Type) {
			out = append(out, ev)
		}
	}
	return out
}

func eventTypes(evs []api.Event) string {
	var s []string
	for _, e := range evs {
		s = append(s, e.Type+"("+e.ResourceID+")")
	}
	return strings.Join(s, " ")
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	wait.Until(t, timeout, what, cond)
}

func (e *env) lease(vm string) (ipam.Lease, bool) {
	l, err := ipam.Get(e.ctx, e.st, vm)
	if apierr.Is(err, apierr.NotFound) {
		return l, false
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return l, true
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Logf("%s", bytes.TrimRight(b, "\n"))
	return len(b), nil
}

func newServer(t *testing.T, s *server.Server) *httptest.Server {
	ts := httptest.NewServer(s.Handler(false))
	t.Cleanup(func() {
		ts.CloseClientConnections()
		ts.Close()
	})
	return ts
}

func mustClient(t *testing.T, ts *httptest.Server) *client.Client {
	c, err := client.New(ts.URL, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}
