package client

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/selfsigned"
)

// An https daemon with a self-signed certificate is reached with CAFile
// ($VOLANT_CA_FILE) naming that certificate, and refused without it.
func TestCAFile(t *testing.T) {
	p, err := selfsigned.New([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, _ := tls.X509KeyPair(p.Cert, p.Key)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"status":"ok"}`))
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	srv.StartTLS()
	defer srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, p.Cert, 0o644)
	ctx := context.Background()

	c, err := FromEnv(func(k string) string {
		return map[string]string{EnvHost: srv.URL, EnvCAFile: ca}[k]
	}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if h, err := c.Health(ctx); err != nil || h.Status != "ok" {
		t.Fatalf("with the CA file: %+v %v", h, err)
	}
	c, _ = New(srv.URL, Options{})
	if _, err := c.Health(ctx); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("without the CA file: %v", err)
	}
	if _, err := New(srv.URL, Options{CAFile: "/etc/hostname"}); !apierr.Is(err, apierr.InvalidInput) {
		t.Fatalf("a CA file without PEM: %v", err)
	}
}
