package agentchan

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
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
		return nil, handshakeErr(ctx, err, 0)
	}
	r := bufio.NewReaderSize(conn, 64<<10)
	want := []byte(fmt.Sprintf("%s %d %s ", magic, ProtocolVersion, nonce))
	skipped := 0    // bytes from the guest before its answer, for the error
	var tail []byte // the end of a line longer than the buffer: the answer may begin there
	for {
		slice, err := r.ReadSlice('\n')
		full := err == bufio.ErrBufferFull
		if err != nil && !full {
			return nil, handshakeErr(ctx, err, skipped+len(slice))
		}
		// The answer may follow bytes of a session the guest held
		// before on this stream (a restored guest's) on the same line,
		// more than fill the buffer.
		line := append(tail, slice...)
		i := bytes.Index(line, want)
		if i < 0 {
			skipped += len(slice)
			tail = nil
			if full {
				tail = bytes.Clone(line[max(0, len(line)-len(want)+1):])
			}
			continue
		}
		rest := bytes.Clone(line[i+len(want):])
		for full && len(rest) <= MaxLine {
			slice, err = r.ReadSlice('\n')
			full = err == bufio.ErrBufferFull
			if err != nil && !full {
				return nil, handshakeErr(ctx, err, skipped)
			}
			rest = append(rest, slice...)
		}
		var h Hello
		if err := json.Unmarshal(rest, &h); err != nil {
			conn.Close()
			return nil, apierr.Wrap(apierr.Unavailable, err, "agent channel: the guest's hello is malformed")
		}
		if !stop() {
			return nil, handshakeErr(ctx, ctx.Err(), skipped)
		}
		cfg := YamuxConfig()
		cfg.EnableKeepAlive, cfg.KeepAliveInterval = true, KeepAlive
		hc := newHostConn(r, conn)
		mux, err := yamux.Client(hc, cfg)
		if err != nil {
			conn.Close()
			return nil, err
		}
		return &Session{mux: mux, conn: hc, Hello: h}, nil
	}
}

// handshakeErr is Connect's error; got is how many bytes the guest sent
// that were not its answer (none: nothing came back at all, as from a
// guest that did not read the handshake or whose answers do not reach the
// host; some: the guest writes, but not to this handshake).
func handshakeErr(ctx context.Context, err error, got int) error {
	if ctx.Err() != nil {
		return apierr.Wrap(apierr.Timeout, context.Cause(ctx),
			fmt.Sprintf("agent channel: no handshake from the guest (%d other bytes from it)", got)).With("bytes_received", got)
	}
	return apierr.Wrap(apierr.Unavailable, err, fmt.Sprintf("agent channel: handshake (%d other bytes from the guest)", got)).With("bytes_received", got)
}

// Accept performs the guest's side of the handshake: it skips input until a
// host's handshake line, answers it with hello and starts the yamux
// session (the guest is its server). An error means the stream ended
// before a handshake.
//
// The session also ends when the host starts over: a byte other than
// yamux's version where a frame should begin, as from a host that dialed
// afresh while the guest still holds an older session on the same byte
// stream — a guest restored from a snapshot holds the saved VM's session,
// and the new host's handshake arrives into it. conn is then left open and
// Restarted returns the stream from that byte on, for the next Accept:
// the host's handshake is answered at once instead of being lost with the
// old session (which left both sides waiting until the host gave up).
func Accept(conn io.ReadWriteCloser, hello Hello) (*GuestSession, error) {
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
		w := newFrameWatch(r, conn)
		mux, err := yamux.Server(w, YamuxConfig())
		if err != nil {
			return nil, err
		}
		return &GuestSession{Session: mux, w: w}, nil
	}
}

// GuestSession is the guest's side of a session (Accept).
type GuestSession struct {
	*yamux.Session
	w *frameWatch
}

// Restarted returns, once the session ended because the host started over
// (see Accept), the byte stream from the host's new handshake on; else
// nil.
func (g *GuestSession) Restarted() io.ReadWriteCloser {
	g.w.mu.Lock()
	defer g.w.mu.Unlock()
	if g.w.rest == nil {
		return nil
	}
	return &bufConn{r: bufio.NewReader(io.MultiReader(bytes.NewReader(g.w.rest), g.w.r)), WriteCloser: &handover{w: g.w}}
}

// handover is the writing end of a stream whose host started over, for
// the next session: its first write waits until the old session has
// written the rest of the frame it was writing (a restored guest may have
// been paused between a frame's header and its payload), and from then on
// the old session writes nothing. So the new host reads the old session's
// bytes only before the answer to its handshake, which it skips (Connect),
// never after it, where they would be taken for frames of the new session.
type handover struct {
	w    *frameWatch
	once sync.Once
}

// handoverWait bounds the next session's wait for the old session's
// frame.
const handoverWait = 10 * time.Second

func (h *handover) Write(p []byte) (int, error) {
	h.once.Do(h.w.handOver)
	return h.w.conn.Write(p)
}

func (h *handover) Close() error { return h.w.conn.Close() }

// ReadErr is the error the session's byte stream ended with (io.EOF: the
// host's end closed), or nil.
func (g *GuestSession) ReadErr() error {
	g.w.mu.Lock()
	defer g.w.mu.Unlock()
	return g.w.err
}

// errHostRestarted ends a guest session whose host started over.
var errHostRestarted = errors.New("agent channel: the host started a new session")

// frameWatch is the guest session's byte stream, as yamux reads it: it
// follows yamux's framing (a 12-byte header — version 0, type, flags,
// stream ID, length — and, for a data frame, length bytes of payload) and
// stops at a frame boundary whose first byte is not version 0: the host
// started over. The bytes from there on are kept in rest, yamux reads an
// error, and closing the session leaves conn open for the next Accept.
//
// It follows the frames the session writes too, so that the next session
// writes only after the old one's last frame (handover).
type frameWatch struct {
	r    io.Reader
	conn io.ReadWriteCloser
	in   frames

	mu      sync.Mutex
	rest    []byte
	err     error // the error reading the stream ended with
	out     frames
	writing bool          // a write is under way
	gone    bool          // the next session writes now: this one may not
	changed chan struct{} // closed and replaced when writing ends
}

func newFrameWatch(r io.Reader, conn io.ReadWriteCloser) *frameWatch {
	return &frameWatch{r: r, conn: conn, changed: make(chan struct{})}
}

// yamuxHeader is the size of a yamux frame header; yamuxData its type of
// a data frame, the one type whose length counts payload bytes that follow.
const (
	yamuxHeader = 12
	yamuxData   = 0
)

func (w *frameWatch) Read(p []byte) (int, error) {
	w.mu.Lock()
	restarted := w.rest != nil
	w.mu.Unlock()
	if restarted {
		return 0, errHostRestarted
	}
	n, err := w.r.Read(p)
	if err != nil {
		w.mu.Lock()
		w.err = err
		w.mu.Unlock()
	}
	for i := 0; i < n; {
		if w.in.boundary() && p[i] != 0 {
			w.mu.Lock()
			w.rest = bytes.Clone(p[i:n])
			w.mu.Unlock()
			if i == 0 {
				return 0, errHostRestarted
			}
			return i, nil
		}
		k, _ := w.in.take(p[i:n])
		i += k
	}
	return n, err
}

func (w *frameWatch) Write(p []byte) (int, error) {
	w.mu.Lock()
	if w.gone {
		w.mu.Unlock()
		return 0, errHostRestarted
	}
	w.writing = true
	w.mu.Unlock()
	n, err := w.conn.Write(p)
	w.mu.Lock()
	for i := 0; i < n; {
		k, _ := w.out.take(p[i:n])
		i += k
	}
	w.writing = false
	close(w.changed)
	w.changed = make(chan struct{})
	w.mu.Unlock()
	return n, err
}

// handOver waits (up to handoverWait) until the session has no frame half
// written, and ends its writing.
func (w *frameWatch) handOver() {
	t := time.NewTimer(handoverWait)
	defer t.Stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.writing || !w.out.boundary() {
		ch := w.changed
		w.mu.Unlock()
		select {
		case <-ch:
		case <-t.C:
			w.mu.Lock()
			w.gone = true
			return
		}
		w.mu.Lock()
	}
	w.gone = true
}

// Close closes conn, unless the host started over: the next session
// needs it.
func (w *frameWatch) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.rest != nil {
		return nil
	}
	return w.conn.Close()
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
