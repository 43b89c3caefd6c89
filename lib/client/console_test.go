package client

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/apierr"
)

// serveUnix serves h on a unix socket in a temp dir and returns the path.
func serveUnix(t *testing.T, h http.Handler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "d.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

// TestConsoleUpgrade checks the client side of the console route: the
// request asks for the upgrade, a 101 answer becomes a byte stream both
// ways, and an error answer before the upgrade is the daemon's error.
func TestConsoleUpgrade(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/vms/web1/console", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "tcp" || !strings.EqualFold(r.Header.Get("Connection"), "upgrade") {
			http.Error(w, `{"code":"INVALID_INPUT","message":"not an upgrade"}`, http.StatusBadRequest)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
		brw.WriteString("login: ")
		brw.Flush()
		// Echo upper-cased lines, as a guest would answer.
		sc := bufio.NewScanner(brw)
		for sc.Scan() {
			brw.WriteString(strings.ToUpper(sc.Text()) + "\r\n")
			brw.Flush()
		}
	})
	mux.HandleFunc("GET /api/v1/vms/gone/console", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `{"code":"NOT_FOUND","message":"no VM named gone"}`)
	})
	mux.HandleFunc("GET /api/v1/vms/plain/console", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "not upgraded")
	})
	c, err := New(serveUnix(t, mux), Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	conn, err := c.Console(ctx, "web1")
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	prompt := make([]byte, len("login: "))
	if _, err := io.ReadFull(br, prompt); err != nil || string(prompt) != "login: " {
		t.Fatalf("prompt = %q, %v", prompt, err)
	}
	if _, err := io.WriteString(conn, "root\n"); err != nil {
		t.Fatal(err)
	}
	line, err := br.ReadString('\n')
	if err != nil || line != "ROOT\r\n" {
		t.Fatalf("echo = %q, %v", line, err)
	}
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}

	_, err = c.Console(ctx, "gone")
	if !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("console of a missing VM: %v, want NOT_FOUND", err)
	}
	_, err = c.Console(ctx, "plain")
	if !apierr.Is(err, apierr.NotSupported) {
		t.Fatalf("console without upgrade: %v, want NOT_SUPPORTED", err)
	}
}
