package volantd

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"

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

// wrapTCP serves the TCP listeners of lns over TLS when cfg is set. A
// client that speaks plain HTTP to such a port (a downgrade, or an
// http:// URL by mistake) is answered with a JSON error, INVALID_INPUT
// with details.reason "tls_required", instead of net/http's text, and
// nothing else.
func wrapTCP(lns []net.Listener, cfg *tls.Config) []net.Listener {
	if cfg == nil {
		return lns
	}
	out := make([]net.Listener, len(lns))
	for i, l := range lns {
		out[i] = l
		if l.Addr().Network() == "tcp" {
			out[i] = &tlsListener{Listener: l, cfg: cfg}
		}
	}
	return out
}

// tlsListener hands out connections that start TLS when the client's
// first byte opens a TLS handshake record, and refuse plain HTTP. The
// first byte is read on the server's first Read, under the deadline it
// set (the header timeout), so Accept never blocks on a slow client.
type tlsListener struct {
	net.Listener
	cfg *tls.Config
}

func (l *tlsListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &sniffConn{Conn: c, cfg: l.cfg}, nil
}

// sniffConn is a server connection that becomes a *tls.Conn (tls) once
// its first byte says the client speaks TLS.
type sniffConn struct {
	net.Conn // the raw connection
	cfg      *tls.Config
	once     sync.Once
	tls      atomic.Pointer[tls.Conn]
	err      error
}

// recordTypeHandshake is the first byte of a TLS ClientHello record.
const recordTypeHandshake = 0x16

func (c *sniffConn) sniff() {
	var b [1]byte
	if _, err := io.ReadFull(c.Conn, b[:]); err != nil {
		c.err = err
		return
	}
	if b[0] != recordTypeHandshake {
		e := apierr.New(apierr.InvalidInput, "this port serves the API over TLS only: use https://").With("reason", "tls_required")
		body, _ := json.Marshal(e)
		fmt.Fprintf(c.Conn, "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
			len(body), body)
		c.err = e
		return
	}
	c.tls.Store(tls.Server(&prefixConn{Conn: c.Conn, first: b[:]}, c.cfg))
}

func (c *sniffConn) Read(p []byte) (int, error) {
	c.once.Do(c.sniff)
	if c.err != nil {
		return 0, c.err
	}
	return c.tls.Load().Read(p)
}

func (c *sniffConn) Write(p []byte) (int, error) {
	c.once.Do(c.sniff)
	if c.err != nil {
		return 0, c.err
	}
	return c.tls.Load().Write(p)
}

func (c *sniffConn) Close() error {
	if t := c.tls.Load(); t != nil {
		return t.Close()
	}
	return c.Conn.Close()
}

// prefixConn reads first before the connection.
type prefixConn struct {
	net.Conn
	first []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.first) > 0 {
		n := copy(p, c.first)
		c.first = c.first[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
