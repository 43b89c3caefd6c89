package api

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/kestrel/ringbuf"
	"github.com/volantvm/volant/lib/manifest"
)

type fake struct {
	mu   sync.Mutex
	m    *manifest.Manifest
	ring *ringbuf.Buffer
}

func (f *fake) Status() agentapi.Status {
	return agentapi.Status{VM: "vm1", Agent: "test", Workload: agentapi.WorkloadStatus{State: agentapi.WorkloadRunning, PID: 7}}
}
func (f *fake) Logs() *ringbuf.Buffer { return f.ring }
func (f *fake) Manifest() *manifest.Manifest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.m
}

// workload echoes what it received.
func workload(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/app/slow" {
			time.Sleep(400 * time.Millisecond)
		}
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Seen", r.Method+" "+r.URL.RequestURI()+" "+string(body)+" host="+r.Host)
		w.WriteHeader(299)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func setup(t *testing.T, base string) (*fake, *httptest.Server) {
	m := &manifest.Manifest{Name: "web", Workload: manifest.Workload{BaseURL: base}, Actions: map[string]manifest.Action{
		"reload": {Method: "PUT", Path: "/admin/reload", TimeoutMS: 1000},
		"slow":   {Method: "GET", Path: "/slow", TimeoutMS: 100},
	}}
	f := &fake{m: m, ring: ringbuf.New(64)}
	srv := httptest.NewServer(Handler(f, nil))
	t.Cleanup(srv.Close)
	return f, srv
}

func do(t *testing.T, method, url, body string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestHealthz(t *testing.T) {
	_, srv := setup(t, "http://127.0.0.1:1")
	resp, body := do(t, "GET", srv.URL+"/healthz", "")
	var st agentapi.Status
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &st) != nil || st.Workload.PID != 7 || st.VM != "vm1" {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
}

func TestProxyStripsV1(t *testing.T) {
	wl := workload(t)
	_, srv := setup(t, wl.URL+"/app/")
	resp, _ := do(t, "POST", srv.URL+"/v1/things/a%2Fb?x=1", "hello")
	want := "POST /app/things/a%2Fb?x=1 hello host=" + strings.TrimPrefix(wl.URL, "http://")
	if resp.StatusCode != 299 || resp.Header.Get("X-Seen") != want {
		t.Fatalf("%d %q, want %q", resp.StatusCode, resp.Header.Get("X-Seen"), want)
	}
}

func TestActions(t *testing.T) {
	wl := workload(t)
	_, srv := setup(t, wl.URL+"/app")
	resp, _ := do(t, "POST", srv.URL+"/v1/actions/reload?force=1", "{}")
	if resp.StatusCode != 299 || resp.Header.Get("X-Seen") != "PUT /app/admin/reload?force=1 {} host="+strings.TrimPrefix(wl.URL, "http://") {
		t.Fatalf("%d %q", resp.StatusCode, resp.Header.Get("X-Seen"))
	}
	for _, tc := range []struct {
		method, path string
		code         apierr.Code
	}{
		{"POST", "/v1/actions/nope", apierr.NotFound},
		{"GET", "/v1/actions/reload", apierr.Usage},
		{"POST", "/v1/actions/slow", apierr.Timeout},
		{"GET", "/nowhere", apierr.NotFound},
	} {
		resp, body := do(t, tc.method, srv.URL+tc.path, "")
		var e apierr.Error
		if err := json.Unmarshal([]byte(body), &e); err != nil || e.Code != tc.code || resp.StatusCode != tc.code.HTTPStatus() {
			t.Errorf("%s %s: %d %s", tc.method, tc.path, resp.StatusCode, body)
		}
	}
}

func TestProxyErrors(t *testing.T) {
	f, srv := setup(t, "http://127.0.0.1:1") // nothing listens on port 1
	resp, body := do(t, "GET", srv.URL+"/v1/", "")
	if resp.StatusCode != 503 || !strings.Contains(body, `"UNAVAILABLE"`) || !strings.Contains(body, "did not answer") {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	f.mu.Lock()
	f.m = nil
	f.mu.Unlock()
	resp, body = do(t, "GET", srv.URL+"/v1/x", "")
	if resp.StatusCode != 503 || !strings.Contains(body, "not loaded yet") {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	f.mu.Lock()
	f.m = &manifest.Manifest{Name: "batch"}
	f.mu.Unlock()
	resp, body = do(t, "GET", srv.URL+"/v1/x", "")
	if resp.StatusCode != 404 || !strings.Contains(body, "no base_url") {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
}

func TestLogsAndFollow(t *testing.T) {
	f, srv := setup(t, "http://127.0.0.1:1")
	f.ring.Write([]byte("one\ntwo\n"))
	resp, body := do(t, "GET", srv.URL+"/v1/logs", "")
	if resp.StatusCode != 200 || body != "one\ntwo\n" || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	resp, err := http.Get(srv.URL + "/v1/logs?follow=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := make(chan string, 10)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func() string {
		select {
		case l := <-lines:
			return l
		case <-time.After(5 * time.Second):
			t.Fatal("no line streamed")
			return ""
		}
	}
	if next() != "one" || next() != "two" {
		t.Fatal("history not streamed first")
	}
	f.ring.Write([]byte("three\n"))
	if l := next(); l != "three" {
		t.Fatalf("got %q", l)
	}
	// The follower falls behind by more than the ring holds.
	f.ring.Write([]byte(strings.Repeat("x", 200) + "\nfour\n"))
	for {
		l := next()
		if l == "four" {
			break
		}
	}
	f.ring.Close()
	for range lines {
	}
}
