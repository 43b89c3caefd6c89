package client

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
)

func TestNewAddresses(t *testing.T) {
	for _, tc := range []struct {
		addr string
		ok   bool
		base string
	}{
		{"", true, "http://volantd"},
		{"/run/volant/volantd.sock", true, "http://volantd"},
		{"unix:///tmp/x.sock", true, "http://volantd"},
		{"http://127.0.0.1:7777", true, "http://127.0.0.1:7777"},
		{"https://volant.example:7777/prefix/", true, "https://volant.example:7777/prefix"},
		{"unix://relative.sock", false, ""},
		{"127.0.0.1:7777", false, ""},
		{"ftp://x", false, ""},
		{"http://", false, ""},
	} {
		c, err := New(tc.addr, Options{})
		if (err == nil) != tc.ok {
			t.Errorf("New(%q): %v", tc.addr, err)
			continue
		}
		if err != nil {
			if !apierr.Is(err, apierr.InvalidInput) {
				t.Errorf("New(%q): code %s", tc.addr, apierr.CodeOf(err))
			}
			continue
		}
		if c.base.String() != tc.base {
			t.Errorf("New(%q): base %s, want %s", tc.addr, c.base, tc.base)
		}
	}
	env := map[string]string{EnvHost: "http://h:1", EnvToken: "tok"}
	c, err := FromEnv(func(k string) string { return env[k] }, Options{})
	if err != nil || c.token != "tok" || c.base.Host != "h:1" {
		t.Fatalf("FromEnv: %+v %v", c, err)
	}
}

// TestUnixSocketAndHeaders: requests go over the socket with the token,
// and error bodies come back as *apierr.Error.
func TestUnixSocketAndHeaders(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "d.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var gotAuth, gotUA string
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth, gotUA = r.Header.Get("Authorization"), r.Header.Get("User-Agent")
		switch r.URL.Path {
		case "/api/v1/vms/web1":
			w.Header().Set("Content-Type", "application/json")
			w.Write([]byte(`{"name":"web1","plugin":"p","state":"running","resources":{"cpu_cores":1,"memory_mb":128},"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"}`))
		case "/api/v1/vms/gone":
			w.WriteHeader(404)
			w.Write([]byte(`{"code":"NOT_FOUND","message":"no VM named gone","details":{"vm":"gone"}}`))
		default:
			w.WriteHeader(502)
			w.Write([]byte("bad gateway from a proxy"))
		}
	})}
	go srv.Serve(l)
	defer srv.Close()
	c, err := New("unix://"+sock, Options{Token: "t0k", UserAgent: "volar/1"})
	if err != nil {
		t.Fatal(err)
	}
	vm, err := c.VM(context.Background(), "web1")
	if err != nil || vm.Name != "web1" || vm.State != api.VMRunning {
		t.Fatalf("VM: %+v %v", vm, err)
	}
	if gotAuth != "Bearer t0k" || gotUA != "volar/1" {
		t.Fatalf("headers: %q %q", gotAuth, gotUA)
	}
	_, err = c.VM(context.Background(), "gone")
	var e *apierr.Error
	if !errors.As(err, &e) || e.Code != apierr.NotFound || e.Details["vm"] != "gone" || e.Message != "no VM named gone" {
		t.Fatalf("error body: %#v", err)
	}
	_, err = c.ListPlugins(context.Background())
	if !apierr.Is(err, apierr.Unavailable) || !strings.Contains(err.Error(), "bad gateway from a proxy") {
		t.Fatalf("non-apierr body: %v", err)
	}
}

func TestTransportErrors(t *testing.T) {
	c, _ := New(filepath.Join(t.TempDir(), "none.sock"), Options{})
	_, err := c.Health(context.Background())
	if !apierr.Is(err, apierr.Unavailable) || !strings.Contains(err.Error(), "cannot reach volantd") {
		t.Fatalf("no daemon: %v", err)
	}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}))
	defer ts.Close()
	c, _ = New(ts.URL, Options{Timeout: 100 * time.Millisecond})
	if _, err := c.Health(context.Background()); !apierr.Is(err, apierr.Timeout) {
		t.Fatalf("slow daemon: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	c, _ = New(ts.URL, Options{})
	if _, err := c.Health(ctx); !apierr.Is(err, apierr.Canceled) {
		t.Fatalf("canceled: %v", err)
	}
}
