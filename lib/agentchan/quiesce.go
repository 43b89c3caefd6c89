package agentchan

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"sync"

	"github.com/volantvm/volant/lib/apierr"
)

// OpQuiesce is served by a VM's supervisor itself, never passed on to the
// guest: it holds the host's side of the agent channel still for a
// snapshot of the VM (Session.Quiesce, lib/agenthub Hub.Quiesce). The
// supervisor answers a QuiesceReply once no host→guest frame is in flight,
// or once it gave up waiting, and keeps the channel held until the client
// closes the stream: after the VM was saved and runs again.
const OpQuiesce = "quiesce"

// QuiesceReply answers OpQuiesce.
type QuiesceReply struct {
	Reply
	// Quiet says the guest has read every byte the host sent it and the
	// host sends nothing more while the stream is open: a snapshot taken
	// now cuts no frame. False: the supervisor gave up waiting (Detail
	// says why); it still holds what it has not begun to send.
	Quiet    bool   `json:"quiet,omitempty"`
	Detail   string `json:"detail,omitempty"`
	WaitedMS int64  `json:"waited_ms"`
}

// frames follows yamux's framing through a byte stream: a 12-byte header
// (version 0, type, flags, stream ID, length) and, for a data frame, length
// bytes of payload (the one type whose length counts bytes that follow).
type frames struct {
	hdr  [yamuxHeader]byte
	n    int    // header bytes of the current frame seen
	body uint32 // payload bytes of the current frame still to come
}

// yamux's frame types and flags that the channel's own code reads.
const (
	yamuxPing = 2
	yamuxSYN  = 1
	yamuxACK  = 2
)

// boundary says the next byte begins a frame.
func (f *frames) boundary() bool { return f.n == 0 && f.body == 0 }

// take consumes the bytes at the start of p that belong to the current
// frame's header or payload, whichever comes first, so that a caller
// looping over p meets every boundary. header says they completed a
// header (f.hdr holds it).
func (f *frames) take(p []byte) (n int, header bool) {
	if f.body > 0 {
		k := min(uint32(len(p)), f.body)
		f.body -= k
		return int(k), false
	}
	n = copy(f.hdr[f.n:], p)
	f.n += n
	if f.n < yamuxHeader {
		return n, false
	}
	f.n = 0
	if f.hdr[1] == yamuxData {
		f.body = binary.BigEndian.Uint32(f.hdr[8:])
	}
	return n, true
}

// toBoundary is how many bytes at the start of p finish the current
// frame (all of p when it does not), without consuming them.
func (f frames) toBoundary(p []byte) int {
	n := 0
	for n < len(p) {
		k, _ := f.take(p[n:])
		n += k
		if f.boundary() {
			break
		}
	}
	return n
}

// hostConn is the byte stream of a direct session as the host's yamux
// sees it (Connect): it follows the frames both ways, so that Quiesce can
// stop the host's writes at a frame boundary and learn when the guest has
// read everything before it.
type hostConn struct {
	r    io.Reader // the stream after the handshake
	conn io.ReadWriteCloser
	in   frames // read side: yamux's reader goroutine alone

	mu      sync.Mutex
	out     frames
	holds   int  // Quiesce calls not released
	writing bool // a write is under way (its bytes may not have reached the stream)
	closed  bool
	pings   map[uint32]chan struct{} // quiesce pings waiting for the guest's answer
	nextID  uint32
	changed chan struct{} // closed and replaced whenever the fields above change
}

func newHostConn(r io.Reader, conn io.ReadWriteCloser) *hostConn {
	return &hostConn{r: r, conn: conn, pings: map[uint32]chan struct{}{}, changed: make(chan struct{})}
}

// quiescePing marks the IDs of the pings Quiesce sends: yamux numbers its
// own from 0 and ignores answers to IDs it did not send.
const quiescePing = 1 << 31

func (c *hostConn) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// wait waits, with c.mu held, until cond holds, c is closed or ctx ends.
func (c *hostConn) wait(ctx context.Context, cond func() bool) error {
	for !cond() && !c.closed {
		ch := c.changed
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			c.mu.Lock()
			return context.Cause(ctx)
		}
		c.mu.Lock()
	}
	if c.closed {
		return io.ErrClosedPipe
	}
	return nil
}

func (c *hostConn) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	for i := 0; i < n; {
		k, header := c.in.take(p[i:n])
		i += k
		if header && c.in.hdr[1] == yamuxPing && binary.BigEndian.Uint16(c.in.hdr[2:])&yamuxACK != 0 {
			id := binary.BigEndian.Uint32(c.in.hdr[8:])
			c.mu.Lock()
			if ch := c.pings[id]; ch != nil {
				delete(c.pings, id)
				close(ch)
				c.notifyLocked()
			}
			c.mu.Unlock()
		}
	}
	return n, err
}

// Write writes p frame by frame: while the stream is held, a frame that
// has not begun waits, one under way is finished.
func (c *hostConn) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		c.mu.Lock()
		c.wait(context.Background(), func() bool { return !c.writing && (c.holds == 0 || !c.out.boundary()) })
		k := c.out.toBoundary(p[done:])
		c.writing = true
		c.mu.Unlock()
		n, err := c.conn.Write(p[done : done+k])
		c.mu.Lock()
		for i := 0; i < n; {
			m, _ := c.out.take(p[done+i : done+n])
			i += m
		}
		c.writing = false
		c.notifyLocked()
		c.mu.Unlock()
		done += n
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

func (c *hostConn) Close() error {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		c.notifyLocked()
	}
	c.mu.Unlock()
	return c.conn.Close()
}

// Quiesce holds the host's side of a direct session (Connect) still, for
// a snapshot of the VM: no frame begins after it is called, the frame
// under way is written whole, and it returns once the guest has read
// every byte sent before (the guest answers a ping written after them).
// A snapshot taken then has no frame of the host's half received, and a
// VM restored from it reads the next host's handshake where a frame
// begins (Accept) instead of as the rest of a frame.
//
// The hold lasts until release is called, also when Quiesce returns an
// error (ctx ended first: the guest did not read what was in flight, or
// the session ended). Writes wait meanwhile; the guest's side runs on.
func (s *Session) Quiesce(ctx context.Context) (release func(), err error) {
	c := s.conn
	if c == nil {
		return func() {}, apierr.New(apierr.NotSupported, "agent channel: only a direct session can be quiesced")
	}
	c.mu.Lock()
	c.holds++
	c.notifyLocked()
	var once sync.Once
	release = func() {
		once.Do(func() {
			c.mu.Lock()
			c.holds--
			c.notifyLocked()
			c.mu.Unlock()
		})
	}
	// The frame under way, to its end.
	if err := c.wait(ctx, func() bool { return !c.writing && c.out.boundary() }); err != nil {
		c.mu.Unlock()
		return release, quiesceErr("the frame under way was not written whole", err)
	}
	id := quiescePing | c.nextID
	c.nextID = (c.nextID + 1) &^ quiescePing
	answered := make(chan struct{})
	c.pings[id] = answered
	c.writing = true
	c.mu.Unlock()
	var hdr [yamuxHeader]byte
	hdr[1] = yamuxPing
	binary.BigEndian.PutUint16(hdr[2:], yamuxSYN)
	binary.BigEndian.PutUint32(hdr[8:], id)
	_, err = c.conn.Write(hdr[:])
	c.mu.Lock()
	c.writing = false
	c.notifyLocked()
	if err == nil {
		err = c.wait(ctx, func() bool {
			select {
			case <-answered:
				return true
			default:
				return false
			}
		})
	}
	delete(c.pings, id)
	c.mu.Unlock()
	if err != nil {
		return release, quiesceErr("the guest did not read what was in flight", err)
	}
	return release, nil
}

func quiesceErr(what string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return apierr.Wrap(apierr.Timeout, err, "agent channel: quiescing: "+what)
	}
	return apierr.Wrap(apierr.Unavailable, err, "agent channel: quiescing: "+what)
}
