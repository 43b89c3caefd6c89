package boot

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/bootargs"
	"github.com/volantvm/volant/lib/manifest"
)

const webJSON = `{"name":"web","version":"1","initramfs":{"url":"/x.cpio"},"workload":{"entrypoint":["/bin/httpd"],"base_url":"http://127.0.0.1:80"}}`

func TestLocalManifest(t *testing.T) {
	m, err := manifest.Parse([]byte(webJSON))
	if err != nil {
		t.Fatal(err)
	}
	enc, _ := m.Encode()
	got, err := LocalManifest(bootargs.Args{Manifest: enc, ManifestFile: "/ignored"})
	if err != nil || got.Name != "web" {
		t.Fatal(got, err)
	}
	f := filepath.Join(t.TempDir(), "manifest.json")
	os.WriteFile(f, []byte(webJSON), 0o644)
	if got, err := LocalManifest(bootargs.Args{ManifestFile: f}); err != nil || got.Workload.Restart != "on-failure" {
		t.Fatal(got, err) // normalized
	}
	if got, err := LocalManifest(bootargs.Args{}); got != nil || err != nil {
		t.Fatal(got, err)
	}
	if _, err := LocalManifest(bootargs.Args{ManifestFile: "/no/such"}); err == nil || !strings.Contains(err.Error(), "volant.manifest_file") {
		t.Fatal(err)
	}
	if _, err := LocalManifest(bootargs.Args{Manifest: "!!"}); err == nil || !strings.Contains(err.Error(), "volant.manifest") {
		t.Fatal(err)
	}
}

func argsFor(t *testing.T, srv *httptest.Server, plugin string) bootargs.Args {
	u, _ := url.Parse(srv.URL)
	port, _ := strconv.Atoi(u.Port())
	return bootargs.Args{APIHost: u.Hostname(), APIPort: port, Plugin: plugin}
}

func TestFetchManifestRetriesThenSucceeds(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/plugins/web/manifest" {
			http.NotFound(w, r)
			return
		}
		if hits.Add(1) < 3 {
			http.Error(w, "starting", 503)
			return
		}
		w.Write([]byte(webJSON))
	}))
	defer srv.Close()
	m, err := FetchManifest(context.Background(), argsFor(t, srv, "web"), 10*time.Second, discard())
	if err != nil || m.Name != "web" || hits.Load() != 3 {
		t.Fatal(m, err, hits.Load())
	}
}

func TestFetchManifestWrappedAndFinalErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/v1/plugins/wrapped/manifest":
			w.Write([]byte(`{"version":"1","kind":"plugins.manifest","manifest":` + webJSON + `}`))
		case "/api/v1/plugins/bad/manifest":
			w.Write([]byte(`{"name":"bad"}`))
		default:
			http.Error(w, `{"code":"NOT_FOUND","message":"no plugin"}`, 404)
		}
	}))
	defer srv.Close()
	if m, err := FetchManifest(context.Background(), argsFor(t, srv, "wrapped"), 5*time.Second, discard()); err != nil || m.Name != "web" {
		t.Fatal(m, err)
	}
	t0 := time.Now()
	_, err := FetchManifest(context.Background(), argsFor(t, srv, "ghost"), 5*time.Second, discard())
	if err == nil || !strings.Contains(err.Error(), "404") || time.Since(t0) > 2*time.Second {
		t.Fatalf("404 must fail at once: %v after %s", err, time.Since(t0))
	}
	if _, err := FetchManifest(context.Background(), argsFor(t, srv, "bad"), 5*time.Second, discard()); err == nil || !strings.Contains(err.Error(), "invalid manifest") {
		t.Fatal(err)
	}
}

func TestFetchManifestGivesUp(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "down", 502) }))
	defer srv.Close()
	t0 := time.Now()
	_, err := FetchManifest(context.Background(), argsFor(t, srv, "web"), 700*time.Millisecond, discard())
	if err == nil || !strings.Contains(err.Error(), "no success within 700ms") || time.Since(t0) > 5*time.Second {
		t.Fatalf("%v after %s", err, time.Since(t0))
	}
	if _, err := FetchManifest(context.Background(), bootargs.Args{}, time.Second, discard()); !errors.Is(err, ErrNoManifest) {
		t.Fatal(err)
	}
}
