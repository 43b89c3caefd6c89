package kubelet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/renameio/v2"
)

// TestServingCertReloads: the kubelet API presents the serving
// certificate --tls-cert-file has now: a certificate renewed on disk
// (cert-manager, or an operator's script, replacing the files) is served
// to new connections without a restart, as the kubelet's
// ReloadKubeletServerCertificateFile does. A pair that does not match
// while the files are being replaced is not taken: the old one stays.
func TestServingCertReloads(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "kubelet.crt"), filepath.Join(dir, "kubelet.key")
	_, _, ca, caKey := testCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}, nil, nil)
	issue := func(name string) *x509.Certificate {
		certPEM, keyPEM, cert, _ := testCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: name}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ca, caKey)
		// The key first: for a moment the pair does not match.
		if err := renameio.WriteFile(keyFile, keyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
		if err := renameio.WriteFile(certFile, certPEM, 0o644); err != nil {
			t.Fatal(err)
		}
		return cert
	}
	first := issue("vol-1")
	opt, err := servingCert(ctx, certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	// As nodeutil serves the kubelet API: no Certificates of its own.
	tc := &tls.Config{}
	if err := opt(tc); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})}
	go srv.Serve(tls.NewListener(l, tc))
	defer srv.Close()
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	served := func() string {
		c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{RootCAs: pool})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	if got := served(); got != first.Subject.CommonName {
		t.Fatalf("served %s, want %s", got, first.Subject.CommonName)
	}
	second := issue("vol-2")
	deadline := time.Now().Add(90 * time.Second) // a missed file event: the content is read again every minute
	for got := served(); got != second.Subject.CommonName; got = served() {
		if got != first.Subject.CommonName {
			t.Fatalf("served %s while the files were replaced", got)
		}
		if time.Now().After(deadline) {
			t.Fatalf("still serving %s 90 s after the files were replaced", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
