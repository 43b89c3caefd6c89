package fetch_test

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/fetch"
)

func TestGet(t *testing.T) {
	body := bytes.Repeat([]byte("volant"), 10000)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) { w.Write(body) })
	mux.HandleFunc("/missing", http.NotFound)
	mux.HandleFunc("/broken", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadGateway) })
	// Headers, a little of the body, then nothing.
	mux.HandleFunc("/stall", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000000")
		w.Write([]byte("abc"))
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	// Never answers.
	mux.HandleFunc("/silent", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	// Says it is huge.
	mux.HandleFunc("/huge", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(1<<30))
		w.Write(body)
	})
	// Does not say, and sends without end (chunked).
	mux.HandleFunc("/endless", func(w http.ResponseWriter, r *http.Request) {
		for r.Context().Err() == nil {
			if _, err := w.Write(body); err != nil {
				return
			}
		}
	})
	// Slow but moving: a byte every 50 ms, longer in all than the stall timeout.
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < 12; i++ {
			w.Write([]byte{'x'})
			w.(http.Flusher).Flush()
			time.Sleep(50 * time.Millisecond)
		}
	})
	ts := httptest.NewServer(mux)
	t.Cleanup(func() { ts.CloseClientConnections(); ts.Close() })

	o := fetch.Options{MaxBytes: 1 << 20, HeaderTimeout: 300 * time.Millisecond, StallTimeout: 300 * time.Millisecond}
	for _, tc := range []struct {
		path string
		want apierr.Code
		n    int
	}{
		{"/ok", "", len(body)},
		{"/slow", "", 12},
		{"/missing", apierr.NotFound, 0},
		{"/broken", apierr.Unavailable, 0},
		{"/stall", apierr.Timeout, -1},
		{"/silent", apierr.Timeout, 0},
		{"/huge", apierr.TooLarge, 0},
		{"/endless", apierr.TooLarge, -1},
	} {
		t.Run(tc.path[1:], func(t *testing.T) {
			var buf bytes.Buffer
			t0 := time.Now()
			n, err := fetch.Get(context.Background(), ts.URL+tc.path, &buf, o)
			if took := time.Since(t0); took > 5*time.Second {
				t.Errorf("took %s", took)
			}
			if apierr.CodeOf(err) != tc.want {
				t.Fatalf("got %v (%s), want %s", err, apierr.CodeOf(err), tc.want)
			}
			if tc.n >= 0 && (n != int64(tc.n) || int64(buf.Len()) != n) {
				t.Fatalf("wrote %d (buffer %d), want %d", n, buf.Len(), tc.n)
			}
			if tc.path == "/ok" && !bytes.Equal(buf.Bytes(), body) {
				t.Fatal("body differs")
			}
		})
	}

	t.Run("canceled", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := fetch.Get(ctx, ts.URL+"/silent", &bytes.Buffer{}, fetch.Options{})
		if c := apierr.CodeOf(err); c != apierr.Timeout && c != apierr.Canceled {
			t.Fatalf("got %v (%s)", err, c)
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		if _, err := fetch.Get(context.Background(), "http://"+addr+"/x", &bytes.Buffer{}, o); apierr.CodeOf(err) != apierr.Unavailable {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("not http", func(t *testing.T) {
		for _, u := range []string{"file:///etc/passwd", "/etc/passwd", "ftp://x/y", "http://"} {
			if _, err := fetch.Get(context.Background(), u, &bytes.Buffer{}, o); apierr.CodeOf(err) != apierr.InvalidInput {
				t.Errorf("%s: got %v", u, err)
			}
		}
	})
}
