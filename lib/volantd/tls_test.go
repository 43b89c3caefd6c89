package volantd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/selfsigned"
)

const tlsTestToken = "Zk3vQ9xLm2Rt7Wp4Ys8Nb6Hd1Jc5Fg0T"

// pairFiles writes a self-signed pair for 127.0.0.1 and returns its files
// and a pool trusting it.
func pairFiles(t *testing.T) (cert, key string, pool *x509.CertPool, pair tls.Certificate) {
	t.Helper()
	p, err := selfsigned.New([]string{"127.0.0.1", "localhost"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(cert, p.Cert, 0o644)
	os.WriteFile(key, p.Key, 0o600)
	pool = x509.NewCertPool()
	pool.AppendCertsFromPEM(p.Cert)
	pair, err = tls.X509KeyPair(p.Cert, p.Key)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key, pool, pair
}

// serveTLS runs Serve on a TCP listener of its own with tc and returns
// its address.
func serveTLS(t *testing.T, tc TLS) string {
	t.Helper()
	a := serveWith(t, func(c *Config) { c.TLS = tc })
	return a.API[0].String()
}

// serveWith runs Serve on a TCP listener of its own with the config edit
// makes and returns its addresses.
func serveWith(t *testing.T, edit func(*Config)) Addrs {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan Addrs, 1)
	done := make(chan error, 1)
	cfg := Config{
		Listeners: []net.Listener{l}, Token: tlsTestToken,
		DataDir: filepath.Join(dir, "data"), RunRoot: filepath.Join(dir, "run"),
		AgentListen: "off", Launcher: "/bin/true", VMRunner: "detached",
		Ready: func(a Addrs) { ready <- a },
	}
	edit(&cfg)
	go func() { done <- Serve(ctx, cfg) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case a := <-ready:
		return a
	case err := <-done:
		t.Fatalf("Serve ended before serving: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not become ready")
	}
	return Addrs{}
}

func get(c *http.Client, url string) (int, string, error) {
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+tlsTestToken)
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

func tlsClient(pool *x509.CertPool, certs ...tls.Certificate) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: certs}}}
}

// TCP is served over TLS: a client that trusts the certificate gets its
// answers, one that does not is refused by its own check, and plain HTTP
// on the TLS port gets no API answer but INVALID_INPUT (tls_required).
func TestServeTLS(t *testing.T) {
	cert, key, pool, _ := pairFiles(t)
	addr := serveTLS(t, TLS{Cert: cert, Key: key})
	if code, body, err := get(tlsClient(pool), "https://"+addr+"/api/v1/vms"); err != nil || code != 200 || !strings.Contains(body, `"vms"`) {
		t.Fatalf("over TLS: %d %q %v", code, body, err)
	}
	if _, _, err := get(tlsClient(x509.NewCertPool()), "https://"+addr+"/api/v1/vms"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a client that does not trust the certificate: %v", err)
	}
	if code, body, err := get(&http.Client{Timeout: 10 * time.Second}, "http://"+addr+"/api/v1/vms"); err != nil || code != 400 ||
		!strings.Contains(body, `"code":"INVALID_INPUT"`) || !strings.Contains(body, `"reason":"tls_required"`) {
		t.Fatalf("plain HTTP on the TLS port answered %d %q %v", code, body, err)
	}
	// TLS 1.1 is refused.
	c := tlsClient(pool)
	c.Transport.(*http.Transport).TLSClientConfig.MaxVersion = tls.VersionTLS11
	if _, _, err := get(c, "https://"+addr+"/healthz"); err == nil {
		t.Fatal("a TLS 1.1 client was served")
	}
}

// With --tls-client-ca, a connection without a client certificate the CA
// signed is refused in the handshake, before any token is looked at.
func TestServeTLSClientCA(t *testing.T) {
	cert, key, pool, _ := pairFiles(t)
	caCert, _, _, clientPair := pairFiles(t)
	addr := serveTLS(t, TLS{Cert: cert, Key: key, ClientCA: caCert})
	if _, _, err := get(tlsClient(pool), "https://"+addr+"/api/v1/vms"); err == nil {
		t.Fatal("served a client without a certificate")
	}
	_, _, _, stranger := pairFiles(t)
	if _, _, err := get(tlsClient(pool, stranger), "https://"+addr+"/api/v1/vms"); err == nil {
		t.Fatal("served a client whose certificate the CA did not sign")
	}
	if code, _, err := get(tlsClient(pool, clientPair), "https://"+addr+"/api/v1/vms"); err != nil || code != 200 {
		t.Fatalf("the CA's client: %d %v", code, err)
	}
}

// Plain TCP is refused unless asked for; TLS files that do not load are
// USAGE before anything is opened.
func TestValidateTCP(t *testing.T) {
	cert, key, _, _ := pairFiles(t)
	base := func() Config {
		return Config{Listen: "127.0.0.1:0", Token: tlsTestToken, DataDir: t.TempDir(), VMRunner: "detached"}
	}
	c := base()
	if err := c.Validate(); !apierr.Is(err, apierr.Usage) || !strings.Contains(err.Error(), "--insecure-tcp") {
		t.Fatalf("plain TCP: %v", err)
	}
	c = base()
	c.InsecureTCP = true
	if err := c.Validate(); err != nil {
		t.Fatalf("--insecure-tcp: %v", err)
	}
	c = base()
	c.TLS = TLS{Cert: cert, Key: key}
	if err := c.Validate(); err != nil {
		t.Fatalf("TLS: %v", err)
	}
	for name, tc := range map[string]TLS{
		"cert alone":        {Cert: cert},
		"key for the cert":  {Cert: key, Key: key},
		"client CA alone":   {ClientCA: cert},
		"missing client CA": {Cert: cert, Key: key, ClientCA: "/nonexistent"},
		"client CA not PEM": {Cert: cert, Key: key, ClientCA: "/etc/hostname"},
	} {
		c := base()
		c.TLS = tc
		if err := c.Validate(); !apierr.Is(err, apierr.Usage) {
			t.Errorf("%s: %v, want USAGE", name, err)
		}
	}
}

// --metrics-listen is served over the API's TLS (and client CA) when they
// are set: a client that trusts the certificate and shows a client
// certificate the CA signed gets the metrics; plain HTTP, a client without
// a certificate, or one that does not trust the server's, get none.
func TestServeMetricsTLS(t *testing.T) {
	cert, key, pool, _ := pairFiles(t)
	caCert, _, _, clientPair := pairFiles(t)
	a := serveWith(t, func(c *Config) {
		c.TLS = TLS{Cert: cert, Key: key, ClientCA: caCert}
		c.MetricsListen = "127.0.0.1:0"
	})
	url := "https://" + a.Metrics.String() + "/metrics"
	if code, body, err := get(tlsClient(pool, clientPair), url); err != nil || code != 200 || !strings.Contains(body, "# TYPE") {
		t.Fatalf("metrics over TLS: %d %.200q %v", code, body, err)
	}
	if _, _, err := get(tlsClient(pool), url); err == nil {
		t.Error("metrics served to a client without a certificate")
	}
	if _, _, err := get(tlsClient(x509.NewCertPool(), clientPair), url); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a client that does not trust the certificate: %v", err)
	}
	if code, body, err := get(&http.Client{Timeout: 10 * time.Second}, "http://"+a.Metrics.String()+"/metrics"); err == nil && (code == 200 || strings.Contains(body, "# TYPE")) {
		t.Errorf("plain HTTP on the metrics port answered %d %.200q", code, body)
	}
}

// Without TLS, metrics on TCP are refused (USAGE) unless --insecure-tcp
// says plain TCP is wanted; then they are served in plain HTTP.
func TestMetricsPlainOnlyWhenInsecure(t *testing.T) {
	c := Config{Socket: filepath.Join(t.TempDir(), "s.sock"), Token: tlsTestToken, MetricsListen: "127.0.0.1:0", DataDir: t.TempDir(), VMRunner: "detached"}
	if err := c.Validate(); !apierr.Is(err, apierr.Usage) || !strings.Contains(err.Error(), "--insecure-tcp") {
		t.Fatalf("plain metrics without --insecure-tcp: %v", err)
	}
	a := serveWith(t, func(c *Config) {
		c.InsecureTCP = true
		c.MetricsListen = "127.0.0.1:0"
	})
	if code, body, err := get(&http.Client{Timeout: 10 * time.Second}, "http://"+a.Metrics.String()+"/metrics"); err != nil || code != 200 || !strings.Contains(body, "# TYPE") {
		t.Fatalf("plain metrics with --insecure-tcp: %d %.200q %v", code, body, err)
	}
}
