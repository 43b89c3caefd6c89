package imagetest

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	ispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Stall says where a StallingRegistry stops answering.
type Stall int

const (
	// StallNever serves the image.
	StallNever Stall = iota
	// StallHeaders accepts every request and never sends a response.
	StallHeaders
	// StallLayers serves /v2/, manifests and the config, and sends the
	// first half of each layer blob, then nothing more.
	StallLayers
)

// StallingRegistry serves the image of an OCI layout (WriteLayout's, tag
// tag, as repository "fledge/sample") over plain HTTP on loopback, the way a
// registry that stops answering would: at stall. It returns host:port; the
// server and every stalled request end when the test does.
func StallingRegistry(t testing.TB, layout, tag string, stall Stall) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(layout, ispec.ImageIndexFile))
	if err != nil {
		t.Fatal(err)
	}
	var idx ispec.Index
	if err := json.Unmarshal(b, &idx); err != nil {
		t.Fatal(err)
	}
	var top ispec.Descriptor
	for _, m := range idx.Manifests {
		if m.Annotations[ispec.AnnotationRefName] == tag {
			top = m
		}
	}
	if top.Digest == "" {
		t.Fatalf("no tag %s in %s", tag, layout)
	}
	mb, err := os.ReadFile(filepath.Join(layout, "blobs", "sha256", top.Digest.Encoded()))
	if err != nil {
		t.Fatal(err)
	}
	var man ispec.Manifest
	if err := json.Unmarshal(mb, &man); err != nil {
		t.Fatal(err)
	}
	isLayer := map[string]bool{}
	for _, l := range man.Layers {
		isLayer[l.Digest.String()] = true
	}
	done := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hang := func() {
			select {
			case <-done:
			case <-r.Context().Done():
			}
		}
		if stall == StallHeaders {
			hang()
			return
		}
		p := r.URL.Path
		switch {
		case p == "/v2/" || p == "/v2":
			w.WriteHeader(http.StatusOK)
		case p == "/v2/fledge/sample/manifests/"+tag || p == "/v2/fledge/sample/manifests/"+top.Digest.String():
			w.Header().Set("Content-Type", top.MediaType)
			w.Header().Set("Docker-Content-Digest", top.Digest.String())
			if r.Method != http.MethodHead {
				w.Write(mb)
			}
		case strings.HasPrefix(p, "/v2/fledge/sample/blobs/"):
			dg := strings.TrimPrefix(p, "/v2/fledge/sample/blobs/")
			_, enc, ok := strings.Cut(dg, ":")
			data, err := os.ReadFile(filepath.Join(layout, "blobs", "sha256", filepath.Base(enc)))
			if !ok || err != nil {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Docker-Content-Digest", dg)
			if r.Method == http.MethodHead {
				return
			}
			if stall == StallLayers && isLayer[dg] {
				w.Write(data[:len(data)/2])
				w.(http.Flusher).Flush()
				hang()
				return
			}
			w.Write(data)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(func() {
		close(done)
		srv.CloseClientConnections()
		srv.Close()
	})
	return strings.TrimPrefix(srv.URL, "http://")
}
