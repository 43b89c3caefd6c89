package agentchan

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/volantvm/volant/lib/apierr"
)

const magic = "VOLANT-AGENT"

// bufConn reads through a bufio.Reader that may hold bytes read past a
// handshake line, and writes and closes the underlying stream.
type bufConn struct {
	r *bufio.Reader
	io.WriteCloser
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// NewID returns a random exec ID: 32 hex digits.
func NewID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b[:])
}

// Connect performs the host's side of the handshake on a fresh byte stream
// to the guest and starts the yamux session on it. It gives up when ctx
// ends (closing conn). Bytes before the guest's answer are skipped.
func Connect(ctx context.Context, conn io.ReadWriteCloser) (*Session, error) {
	nonce := NewID()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if _, err := fmt.Fprintf(conn, "%s %d %s\n", magic, ProtocolVersion, nonce); err != nil {
		return nil, handshakeErr(ctx, err)
	}
	r := bufio.NewReaderSize(conn, 64<<10)
	want := []byte(fmt.Sprintf("%s %d %s ", magic, ProtocolVersion, nonce))
	for {
		line, err := r.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			continue // skipping stale bytes
		}
		if err != nil {
			return nil, handshakeErr(ctx, err)
		}
		rest, ok := bytes.CutPrefix(line, want)
		if !ok {
			continue
		}
		var h Hello
		if err := json.Unmarshal(rest, &h); err != nil {
			conn.Close()
			return nil, apierr.Wrap(apierr.Unavailable, err, "agent channel: the guest's hello is malformed")
		}
		if !stop() {
			return nil, handshakeErr(ctx, ctx.Err())
		}
		cfg := YamuxConfig()
		cfg.EnableKeepAlive, cfg.KeepAliveInterval = true, KeepAlive
		mux, err := yamux.Client(&bufConn{r: r, WriteCloser: conn}, cfg)
		if err != nil {
			conn.Close()
			return nil, err
		}
		return &Session{mux: mux, Hello: h}, nil
	}
}

func handshakeErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return apierr.Wrap(apierr.Timeout, context.Cause(ctx), "agent channel: no handshake from the guest")
	}
	return apierr.Wrap(apierr.Unavailable, err, "agent channel: handshake")
}

// Accept performs the guest's side of the handshake: it skips input until a
// host's handshake line, answers it with hello and starts the yamux
// session (the guest is its server). An error means the stream ended
// before a handshake.
func Accept(conn io.ReadWriteCloser, hello Hello) (*yamux.Session, error) {
	r := bufio.NewReaderSize(conn, 4096)
	prefix := []byte(fmt.Sprintf("%s %d ", magic, ProtocolVersion))
	for {
		line, err := r.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			return nil, err
		}
		nonce, ok := bytes.CutPrefix(line, prefix)
		if !ok {
			continue
		}
		nonce = bytes.TrimSpace(nonce)
		if len(nonce) == 0 || len(nonce) > 64 {
			continue
		}
		b, err := json.Marshal(hello)
		if err != nil {
			return nil, err
		}
		if _, err := fmt.Fprintf(conn, "%s %d %s %s\n", magic, ProtocolVersion, nonce, b); err != nil {
			return nil, err
		}
		return yamux.Server(&bufConn{r: r, WriteCloser: conn}, YamuxConfig())
	}
}

// DialVsock connects to port in the guest through Cloud Hypervisor's
// hybrid vsock socket: it writes "CONNECT <port>\n" and expects
// "OK <host port>\n" before the stream is the guest's.
func DialVsock(ctx context.Context, socket string, port uint32) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	} else {
		c.SetDeadline(time.Now().Add(10 * time.Second))
	}
	if _, err := fmt.Fprintf(c, "CONNECT %d\n", port); err != nil {
		c.Close()
		return nil, err
	}
	// Read byte by byte: what follows the OK line is the guest's.
	var line []byte
	b := make([]byte, 1)
	for len(line) < 64 {
		if _, err := io.ReadFull(c, b); err != nil {
			c.Close()
			return nil, fmt.Errorf("vsock %s port %d: no answer to CONNECT (is the guest listening?): %w", socket, port, err)
		}
		if b[0] == '\n' {
			break
		}
		line = append(line, b[0])
	}
	f := strings.Fields(string(line))
	if len(f) != 2 || f[0] != "OK" {
		c.Close()
		return nil, fmt.Errorf("vsock %s port %d: unexpected answer %q", socket, port, line)
	}
	if _, err := strconv.ParseUint(f[1], 10, 32); err != nil {
		c.Close()
		return nil, fmt.Errorf("vsock %s port %d: unexpected answer %q", socket, port, line)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}
