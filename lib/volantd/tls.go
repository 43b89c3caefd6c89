package volantd

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"

	"github.com/volantvm/volant/lib/apierr"
)

// TLS is how the API is served on TCP: a certificate and key (PEM), and
// optionally the CA whose client certificates are required.
type TLS struct {
	Cert string
	Key  string
	// ClientCA, when set, makes a client certificate signed by it
	// required on every TCP connection (besides the bearer token).
	ClientCA string
}

// Enabled reports whether TCP is served over TLS.
func (t TLS) Enabled() bool { return t.Cert != "" || t.Key != "" }

// serverConfig loads what t names, so a bad file fails the start with USAGE
// before anything is opened.
func (t TLS) serverConfig() (*tls.Config, error) {
	if !t.Enabled() {
		return nil, apierr.New(apierr.Usage, "--tls-client-ca needs --tls-cert and --tls-key")
	}
	if (t.Cert == "") != (t.Key == "") {
		return nil, apierr.New(apierr.Usage, "give --tls-cert and --tls-key together")
	}
	pair, err := tls.LoadX509KeyPair(t.Cert, t.Key)
	if err != nil {
		return nil, apierr.Wrap(apierr.Usage, err, "loading --tls-cert and --tls-key").With("cert", t.Cert).With("key", t.Key)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	if t.ClientCA != "" {
		pem, err := os.ReadFile(t.ClientCA)
		if err != nil {
			return nil, apierr.Wrap(apierr.Usage, err, "reading --tls-client-ca").With("file", t.ClientCA)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, apierr.New(apierr.Usage, "--tls-client-ca %s holds no PEM certificate", t.ClientCA).With("file", t.ClientCA)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// wrapTCP serves the TCP listeners of lns over TLS when cfg is set.
func wrapTCP(lns []net.Listener, cfg *tls.Config) []net.Listener {
	if cfg == nil {
		return lns
	}
	out := make([]net.Listener, len(lns))
	for i, l := range lns {
		out[i] = l
		if l.Addr().Network() == "tcp" {
			out[i] = tls.NewListener(l, cfg)
		}
	}
	return out
}
