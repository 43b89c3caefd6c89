package agenthub_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/agenthub"
	"github.com/volantvm/volant/lib/kestrel/access"
)

// serialPort is a virtio-serial port as the guest's kernel and QEMU's
// socket chardev show it, with the properties that matter to a restore:
//
//   - the guest learns only whether a host is connected now: a read with
//     no data returns end-of-stream while none is, and waits while one
//     is. Data wakes a waiting reader at once; a change of the host's
//     connection wakes it only after react (the guest's interrupt, its
//     work queue and kestrel's goroutine run on an emulated CPU), and it
//     then sees the state of that moment, so a host that closes and
//     dials again within react is never seen to have gone;
//   - bytes a host writes wait (in the chardev's socket, and QEMU) until
//     the guest reads them, and die with that host's connection: those
//     the guest has not read when the VM is saved are not in the saved
//     VM; bytes waiting for a guest that has the port open are discarded
//     when it closes the port;
//   - a guest's write waits while no host is connected;
//   - pause freezes the guest as pausing the VM does, at the worst moment
//     it finds (see pause);
//   - restore replaces the host without the guest seeing any change
//     (the saved state says a host was connected, and the new host
//     dialed before the state loaded).
type serialPort struct {
	react time.Duration

	mu      sync.Mutex
	cond    *sync.Cond
	host    *serialHost // connected host, or nil
	view    bool        // whether a host is connected, as the guest last saw
	open    bool        // the guest has the port open
	in      []byte      // host → guest bytes the open port has not read
	held    []byte      // host → guest bytes waiting for the guest to open
	wakes   int         // bumped when a waiting reader should look again
	read    hostStream  // the current host's bytes as the guest read them
	pausing bool        // pause looks for a moment to freeze the guest
	frozen  bool        // the guest is paused: its reads and writes wait
}

// hostStream follows one host connection's bytes as the guest reads
// them: the handshake line, then yamux frames (a 12-byte header and, for
// a data frame, as many bytes of payload as its length says).
type hostStream struct {
	lineRead bool
	n        int // header bytes of the current frame read
	hdr      [12]byte
	body     uint32 // payload bytes of the current frame not read
}

func (s *hostStream) feed(b []byte) {
	for _, c := range b {
		switch {
		case !s.lineRead:
			s.lineRead = c == '\n'
		case s.body > 0:
			s.body--
		default:
			s.hdr[s.n] = c
			if s.n++; s.n == len(s.hdr) {
				s.n = 0
				if s.hdr[1] == 0 { // data
					s.body = binary.BigEndian.Uint32(s.hdr[8:])
				}
			}
		}
	}
}

// midFrame says the guest has read part of a frame.
func (s *hostStream) midFrame() bool { return s.lineRead && (s.n > 0 || s.body > 0) }

// toCut is how many bytes of b the guest reads to end up in the middle of
// a frame (after a data frame's header, before its payload): all of b when
// it holds no such place.
func (s hostStream) toCut(b []byte) int {
	for i := range b {
		s.feed(b[i : i+1])
		if s.body > 0 {
			return i + 1
		}
	}
	return len(b)
}

func newSerialPort(react time.Duration) *serialPort {
	p := &serialPort{react: react}
	p.cond = sync.NewCond(&p.mu)
	return p
}

// serialHost is one host connection (QEMU's chardev socket, the hub's
// end).
type serialHost struct {
	p      *serialPort
	r      *io.PipeReader
	w      *io.PipeWriter
	closed bool
	// out holds the guest's bytes the host has not read, in the order
	// the guest wrote them (the socket's buffer); pump moves them to w.
	out   [][]byte
	ready chan struct{} // signalled when out gains bytes
}

// pump hands the guest's bytes to the host in order until the host's
// end closes.
func (h *serialHost) pump() {
	for range h.ready {
		for {
			h.p.mu.Lock()
			if len(h.out) == 0 {
				h.p.mu.Unlock()
				break
			}
			b := h.out[0]
			h.out = h.out[1:]
			h.p.mu.Unlock()
			if _, err := h.w.Write(b); err != nil {
				return
			}
		}
	}
}

func (p *serialPort) dial(ctx context.Context) (io.ReadWriteCloser, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.host != nil {
		return nil, errors.New("the chardev serves one client")
	}
	h := &serialHost{p: p, ready: make(chan struct{}, 1)}
	h.r, h.w = io.Pipe()
	go h.pump()
	p.host = h
	p.read = hostStream{}
	p.changedLocked()
	return h, nil
}

// changedLocked tells the guest after react that the host's connection
// changed: it sees whether one is connected then.
func (p *serialPort) changedLocked() {
	time.AfterFunc(p.react, func() {
		p.mu.Lock()
		p.view = p.host != nil
		p.wakes++
		p.cond.Broadcast()
		p.mu.Unlock()
	})
}

// pause freezes the guest as pausing the VM does, at the worst moment it
// finds within window: as soon as a read leaves the guest in the middle
// of a frame of the host's (it reads up to just after a data frame's
// header, if a read would take it past one). When the host sends nothing
// in window, it freezes the guest where it is. It says whether the guest
// was frozen with a frame half read.
func (p *serialPort) pause(window time.Duration) (midFrame bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pausing = true
	t := time.AfterFunc(window, func() {
		p.mu.Lock()
		if p.pausing { // else pause has returned
			p.frozen = true
			p.wakes++
			p.cond.Broadcast()
		}
		p.mu.Unlock()
	})
	for !p.frozen {
		p.cond.Wait()
	}
	t.Stop()
	p.pausing = false
	return p.read.midFrame()
}

// resume lets a paused guest run on, with the same host.
func (p *serialPort) resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.frozen = false
	p.wakes++
	p.cond.Broadcast()
}

// restore replaces the host's end without the guest noticing: the old
// host (the saved VM's supervisor) is gone with the bytes the guest had
// not read, nobody is connected until the new host dials, and the guest
// still believes one is. A paused guest runs on (as the restored VM).
func (p *serialPort) restore() {
	p.mu.Lock()
	old := p.host
	p.host = nil
	p.held = nil
	p.in = nil
	p.frozen = false
	p.wakes++
	p.cond.Broadcast()
	p.mu.Unlock()
	if old != nil {
		old.w.CloseWithError(io.ErrClosedPipe)
	}
}

func (h *serialHost) Read(b []byte) (int, error) { return h.r.Read(b) }

func (h *serialHost) Write(b []byte) (int, error) {
	p := h.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if h.closed || p.host != h {
		return 0, io.ErrClosedPipe
	}
	if p.open {
		p.in = append(p.in, b...)
		p.wakes++
		p.cond.Broadcast() // data wakes the reader at once
	} else {
		p.held = append(p.held, b...)
	}
	return len(b), nil
}

func (h *serialHost) Close() error {
	p := h.p
	p.mu.Lock()
	if !h.closed && p.host == h {
		p.host = nil
		p.held = nil
		p.changedLocked()
	}
	if !h.closed {
		close(h.ready)
	}
	h.closed = true
	p.mu.Unlock()
	h.w.CloseWithError(io.ErrClosedPipe)
	h.r.Close()
	return nil
}

// guestOpen opens the port in the guest (kestrel's servePort).
func (p *serialPort) guestOpen() *guestPort {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.open = true
	p.in = append(p.in, p.held...)
	p.held = nil
	return &guestPort{p: p}
}

type guestPort struct {
	p      *serialPort
	closed bool
}

func (g *guestPort) Read(b []byte) (int, error) {
	p := g.p
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		if g.closed {
			return 0, io.ErrClosedPipe
		}
		if p.pausing && !p.frozen && p.read.midFrame() {
			p.frozen = true // the worst moment: freeze here
			p.wakes++
			p.cond.Broadcast()
		}
		if len(p.in) > 0 && !p.frozen {
			n := len(p.in)
			if p.pausing {
				n = p.read.toCut(p.in)
			}
			n = copy(b, p.in[:n])
			p.read.feed(b[:n])
			p.in = p.in[n:]
			return n, nil
		}
		if !p.view && !p.frozen {
			return 0, io.EOF
		}
		w := p.wakes
		for p.wakes == w && !g.closed {
			p.cond.Wait()
		}
	}
}

func (g *guestPort) Write(b []byte) (int, error) {
	p := g.p
	p.mu.Lock()
	for (!p.view || p.frozen) && !g.closed {
		p.cond.Wait()
	}
	if g.closed {
		p.mu.Unlock()
		return 0, io.ErrClosedPipe
	}
	if h := p.host; h != nil { // else QEMU drops it: no host
		// The socket buffers it, in order: one goroutine per write
		// would hand the host a reordered stream.
		h.out = append(h.out, append([]byte(nil), b...))
		select {
		case h.ready <- struct{}{}:
		default:
		}
	}
	p.mu.Unlock()
	return len(b), nil
}

func (g *guestPort) Close() error {
	p := g.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if !g.closed {
		g.closed = true
		p.open = false
		p.in = nil // the kernel discards what the guest did not read
		p.wakes++
		p.cond.Broadcast()
	}
	return nil
}

// serveGuest is kestrel's servePort on the model: open the port, serve
// host sessions on it, close it, and open it again after a pause.
func serveGuest(ctx context.Context, p *serialPort, srv *access.Server) {
	for ctx.Err() == nil {
		g := p.guestOpen()
		srv.ServeConn(ctx, g)
		g.Close()
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// startSerialGuest serves kestrel's access server (as VM "saved") on a
// model of a virtio-serial port until the test ends.
func startSerialGuest(ctx context.Context, t *testing.T) *serialPort {
	port := newSerialPort(100 * time.Millisecond)
	srv := access.New(access.Config{VM: "saved", Version: "test"})
	gctx, gcancel := context.WithCancel(ctx)
	guestDone := make(chan struct{})
	go func() { defer close(guestDone); serveGuest(gctx, port, srv) }()
	t.Cleanup(func() { gcancel(); port.restore(); <-guestDone })
	return port
}

// A restored guest whose saved session was cut in the middle of a frame
// from the old host (here: a data frame's header announcing a megabyte of
// payload) swallows the new host's handshake as that payload, and never
// answers it. Redial must free it: the new host's end going away ends the
// saved session. On virtio-serial the guest only sees that if the host
// stays away long enough for its reader to look; a hub that dials again
// at once leaves the guest wedged however often it redials.
func TestRedialFreesAGuestWedgedMidFrame(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	port := startSerialGuest(ctx, t)

	// The saved VM's supervisor: a session, then half a frame of it
	// when the VM was paused.
	conn, err := port.dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	old, err := agentchan.Connect(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	var hdr [12]byte // version 0, type data, no flags, stream 1, 1 MiB
	binary.BigEndian.PutUint32(hdr[4:], 1)
	binary.BigEndian.PutUint32(hdr[8:], 1<<20)
	if _, err := conn.Write(hdr[:]); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for { // until the guest took the header in
		port.mu.Lock()
		left := len(port.in)
		port.mu.Unlock()
		if left == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	port.restore()

	h, err := agenthub.Start(ctx, agenthub.Options{VM: "clone", Dial: port.dial,
		Socket: filepath.Join(t.TempDir(), "agent.sock"), GuestWait: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	h.Wake()
	sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
	_, err = h.Session(sctx)
	scancel()
	if err == nil {
		t.Fatal("the guest answered a handshake its saved session should have swallowed: the model does not reproduce the wedge")
	}
	for attempt := 1; attempt <= 3; attempt++ {
		t0 := time.Now()
		h.Redial()
		sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
		sess, err := h.Session(sctx)
		scancel()
		if err == nil {
			t.Logf("the guest answered %v after redial %d", time.Since(t0).Round(time.Millisecond), attempt)
			if sess.Hello.VM != "saved" {
				t.Errorf("hello %+v", sess.Hello)
			}
			if attempt > 1 {
				t.Errorf("it took %d redials", attempt)
			}
			return
		}
	}
	t.Fatal("after three redials the guest still held the saved session: it never saw the host go")
}
