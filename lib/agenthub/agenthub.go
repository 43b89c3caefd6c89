// Package agenthub is the host's owner of one VM's agent channel. It runs
// inside the VM's supervisor (`volant-launch run`, lib/launch.Run), which
// lives exactly as long as the VM: it connects to the hypervisor's end of
// the channel (QEMU's chardev socket serves one client; Cloud Hypervisor's
// hybrid vsock socket needs a CONNECT), keeps one session with kestrel,
// reconnects when the session ends while the VM runs, and
//
//   - serves the stream layout of lib/agentchan to any number of clients on
//     a unix socket in the run directory (launch.GuestSocketName), splicing
//     each client stream to a guest stream;
//   - collects the workload's output over a logs stream into the VM's
//     workload log (lib/workloadlog), resuming where it stopped after a
//     reconnect and writing a counted gap when the guest had to drop output.
package agenthub

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/workloadlog"
)

// DefaultGuestWait is how long a client's stream waits for the guest's
// agent to connect (a booting VM) before it is answered UNAVAILABLE.
const DefaultGuestWait = 60 * time.Second

// Options configure a Hub.
type Options struct {
	VM string
	// Dial opens a new byte stream to the guest's end of the channel.
	Dial func(ctx context.Context) (io.ReadWriteCloser, error)
	// Socket is where clients connect (created 0600; its directory
	// should be root's alone).
	Socket string
	// Logs receives the workload's output (nil: not collected).
	Logs *workloadlog.Writer
	// Inputs are sent to kestrel whenever it says it waits for them (at
	// every boot of a VM that has inputs).
	Inputs *agentchan.Inputs
	// GuestWait bounds a client stream's wait for the guest
	// (DefaultGuestWait if 0).
	GuestWait time.Duration
	Log       *slog.Logger
}

// Hub is a running channel owner. Create it with Start.
type Hub struct {
	o      Options
	log    *slog.Logger
	ln     net.Listener
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	sess    *agentchan.Session
	up      chan struct{} // closed while a session is up; replaced when it ends
	clients map[net.Conn]struct{}
	attempt context.CancelFunc // ends the connection attempt under way
	now     chan struct{}      // the next attempt starts without its pause (Wake, Redial)
	away    time.Time          // no dial before this (Redial: the guest must see the channel closed)
	trying  chan struct{}      // closed when the attempt under way has ended (nil: none)
	quiet   int                // Quiesce holds not released: no attempt starts
	calm    chan struct{}      // closed while quiet is 0
}

// RedialGap is how long Redial leaves the channel closed before it dials
// again. A virtio-serial port tells the guest only whether a host is
// connected now: a host that closes and dials again at once is never seen
// to have gone (the guest's reader wakes up to a connected host and the
// new bytes), so a guest wedged in its old session stays wedged. Kept
// closed for a second, the port reads end-of-stream in the guest and
// kestrel starts over with the next handshake.
const RedialGap = time.Second

// Start listens on o.Socket and connects to the guest in the background.
func Start(ctx context.Context, o Options) (*Hub, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.GuestWait <= 0 {
		o.GuestWait = DefaultGuestWait
	}
	os.Remove(o.Socket)
	ln, err := net.Listen("unix", o.Socket)
	if err != nil {
		return nil, apierr.Wrap(apierr.Unavailable, err, "agent channel: listening for clients")
	}
	if err := os.Chmod(o.Socket, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	h := &Hub{o: o, log: o.Log, ln: ln, cancel: cancel, up: make(chan struct{}), clients: map[net.Conn]struct{}{},
		now: make(chan struct{}, 1), calm: make(chan struct{})}
	close(h.calm)
	h.wg.Add(2)
	go func() { defer h.wg.Done(); h.connectLoop(ctx) }()
	go func() { defer h.wg.Done(); h.accept(ctx) }()
	return h, nil
}

// Close stops serving, ends the guest session and every client, and waits.
func (h *Hub) Close() error {
	h.cancel()
	h.ln.Close()
	h.mu.Lock()
	if h.sess != nil {
		h.sess.Close()
	}
	for c := range h.clients {
		c.Close()
	}
	h.mu.Unlock()
	h.wg.Wait()
	if h.o.Logs != nil {
		return h.o.Logs.Flush()
	}
	return nil
}

// Session returns the guest session, waiting for it up to GuestWait.
func (h *Hub) Session(ctx context.Context) (*agentchan.Session, error) {
	t := time.NewTimer(h.o.GuestWait)
	defer t.Stop()
	for {
		h.mu.Lock()
		sess, up := h.sess, h.up
		h.mu.Unlock()
		if sess != nil {
			select {
			case <-sess.Done():
				// ended: wait for the next one
			default:
				return sess, nil
			}
		}
		select {
		case <-up:
		case <-t.C:
			return nil, apierr.New(apierr.Unavailable, "the agent of VM %s is not connected (still booting, or its init is not kestrel)", h.o.VM).With("vm", h.o.VM)
		case <-ctx.Done():
			return nil, apierr.From(context.Cause(ctx))
		}
	}
}

// Redial drops the guest connection, or the attempt to make one, leaves
// the channel closed for RedialGap and connects again (without the
// pause failed attempts build up). A guest that does not take the new
// session (a restored guest whose saved session swallowed the handshake,
// or a kestrel older than agentchan.Accept's restart) is freed by it: it
// sees the host's end gone, which ends the session it held.
func (h *Hub) Redial() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.away = time.Now().Add(RedialGap)
	if h.sess != nil {
		h.sess.Close()
	}
	if h.attempt != nil {
		h.attempt()
	}
	h.wakeLocked()
}

// Wake tells the hub that the guest's end of the channel can be reached
// now (the VMM answers, so its channel socket is there): if it waits out
// the pause after a failed attempt, or the attempt under way fails, the
// next starts at once. A connection or an attempt under way is left alone.
func (h *Hub) Wake() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.wakeLocked()
}

func (h *Hub) wakeLocked() {
	select {
	case h.now <- struct{}{}:
	default:
	}
}

func (h *Hub) connectLoop(ctx context.Context) {
	var logFrom int64 = -1
	bootID := ""
	pause := 50 * time.Millisecond
	for ctx.Err() == nil {
		h.mu.Lock()
		away := time.Until(h.away)
		h.mu.Unlock()
		if away > 0 {
			t := time.NewTimer(away)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
			continue // Redial may have moved it
		}
		h.mu.Lock()
		if h.quiet > 0 {
			// A snapshot is being taken: a handshake sent now could
			// be saved half read.
			calm := h.calm
			h.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-calm:
			}
			continue
		}
		actx, acancel := context.WithCancel(ctx)
		h.attempt = acancel
		trying := make(chan struct{})
		h.trying = trying
		h.mu.Unlock()
		tried := func() {
			h.mu.Lock()
			if h.trying == trying {
				h.trying = nil
				close(trying)
			}
			h.mu.Unlock()
		}
		conn, err := h.o.Dial(actx)
		if err == nil {
			var sess *agentchan.Session
			sess, err = agentchan.Connect(actx, conn)
			if err != nil && ctx.Err() == nil {
				// The channel was there but the guest did not answer
				// (Redial ended the attempt): what came back says why.
				h.log.Warn("agent channel: the guest did not answer the handshake", "vm", h.o.VM, "err", err)
			}
			if err == nil {
				pause = 50 * time.Millisecond
				if sess.Hello.BootID != bootID {
					bootID, logFrom = sess.Hello.BootID, -1
				}
				h.log.Info("agent channel connected", "vm", h.o.VM, "agent", sess.Hello.Agent, "version", sess.Hello.Version)
				if h.o.Inputs != nil && sess.Hello.Inputs == agentchan.InputsWaiting {
					h.sendInputs(ctx, sess)
				}
				h.mu.Lock()
				h.sess = sess
				close(h.up)
				h.mu.Unlock()
				tried()
				if h.o.Logs != nil {
					logFrom = h.pumpLogs(ctx, sess, logFrom)
				}
				<-sess.Done()
				h.mu.Lock()
				h.sess, h.up = nil, make(chan struct{})
				h.mu.Unlock()
				h.log.Info("agent channel session ended", "vm", h.o.VM)
			}
		}
		tried()
		acancel()
		if err != nil && ctx.Err() == nil {
			h.log.Debug("agent channel: connecting", "vm", h.o.VM, "err", err)
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
		case <-t.C:
			pause = min(pause*2, 2*time.Second)
		case <-h.now:
			pause = 50 * time.Millisecond
		}
		t.Stop()
	}
}

// QuiesceWait bounds how long the supervisor's quiesce op (serveQuiesce)
// waits for the frame under way and for the guest to read what was in
// flight before it answers that the channel is not quiet.
const QuiesceWait = 2 * time.Second

// Quiesce holds the channel still for a snapshot of the VM, until release
// is called (after the VM runs again, or when the snapshot failed): no
// connection to the guest starts, a connection under way finishes its
// handshake, and the session is held at a frame boundary until the guest
// has read everything the host sent (agentchan.Session.Quiesce). Then the
// VM can be paused and saved without a host→guest frame cut in two: a VM
// restored from it answers the new host's first handshake instead of
// reading it as the rest of a frame (which only Redial frees, 15 s
// later). When ctx ends first, the error says so; the hold stays until
// release all the same.
func (h *Hub) Quiesce(ctx context.Context) (release func(), err error) {
	h.mu.Lock()
	if h.quiet++; h.quiet == 1 {
		h.calm = make(chan struct{})
	}
	trying := h.trying
	h.mu.Unlock()
	held := func() {}
	var once sync.Once
	release = func() {
		once.Do(func() {
			held()
			h.mu.Lock()
			if h.quiet--; h.quiet == 0 {
				close(h.calm)
			}
			h.mu.Unlock()
		})
	}
	if trying != nil {
		select {
		case <-trying:
		case <-ctx.Done():
			return release, apierr.Wrap(apierr.Timeout, context.Cause(ctx), "agent channel: quiescing: a connection to the guest was under way")
		}
	}
	h.mu.Lock()
	sess := h.sess
	h.mu.Unlock()
	if sess == nil {
		return release, nil // nothing in flight, and nothing will be
	}
	held, err = sess.Quiesce(ctx)
	return release, err
}

// serveQuiesce is the supervisor's quiesce op (agentchan.OpQuiesce): the
// channel is held still from the reply until the client closes the
// stream, or its connection ends.
func (h *Hub) serveQuiesce(ctx context.Context, st *agentchan.Stream, _ []byte) {
	t0 := time.Now()
	qctx, cancel := context.WithTimeout(ctx, QuiesceWait)
	release, err := h.Quiesce(qctx)
	cancel()
	defer release()
	rep := agentchan.QuiesceReply{Reply: agentchan.Reply{OK: true}, Quiet: err == nil, WaitedMS: time.Since(t0).Milliseconds()}
	if err != nil {
		rep.Detail = err.Error()
		h.log.Warn("agent channel: not quiet for the snapshot; a VM restored from it may need a redial", "vm", h.o.VM, "err", err)
	} else {
		h.log.Info("agent channel: quiet for a snapshot", "vm", h.o.VM, "waited", time.Since(t0).Round(time.Millisecond))
	}
	if st.WriteLine(rep) != nil {
		return
	}
	io.Copy(io.Discard, st)
	h.log.Info("agent channel: released after the snapshot", "vm", h.o.VM, "held", time.Since(t0).Round(time.Millisecond))
}

// sendInputs hands the VM's inputs to kestrel, which starts the workload
// once it has them. A failure is logged: kestrel still waits, and the next
// session tries again.
func (h *Hub) sendInputs(ctx context.Context, sess *agentchan.Session) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := sess.SendInputs(ctx, h.o.Inputs); err != nil {
		h.log.Warn("agent channel: the guest did not take the VM's inputs", "vm", h.o.VM, "err", err)
		return
	}
	h.log.Info("agent channel: inputs sent", "vm", h.o.VM, "files", len(h.o.Inputs.Files), "env", len(h.o.Inputs.Env))
}

// pumpLogs copies the workload's output into the log until the session
// ends, and returns the sequence to resume from.
func (h *Hub) pumpLogs(ctx context.Context, sess *agentchan.Session, from int64) int64 {
	st, err := sess.Call(ctx, agentchan.LogsRequest{Op: agentchan.OpLogs, From: from}, &agentchan.Reply{})
	if err != nil {
		h.log.Warn("agent channel: no workload output", "vm", h.o.VM, "err", err)
		return from
	}
	defer st.Conn.Close()
	buf := make([]byte, 64<<10)
	for {
		var r agentchan.LogRecord
		if err := st.ReadLine(&r); err != nil {
			h.o.Logs.Flush()
			return from
		}
		if r.Gap > 0 {
			h.log.Warn("the guest dropped workload output", "vm", h.o.VM, "bytes", r.Gap)
			h.o.Logs.Gap(time.Now(), r.Gap)
			from = r.Seq + r.Gap
			continue
		}
		if r.N > len(buf) {
			buf = make([]byte, r.N)
		}
		if _, err := io.ReadFull(st, buf[:r.N]); err != nil {
			h.o.Logs.Flush()
			return from
		}
		if err := h.o.Logs.Write(r.Stream, time.Unix(0, r.Time), buf[:r.N]); err != nil {
			h.log.Warn("writing the workload log", "vm", h.o.VM, "err", err)
		}
		from = r.Seq + int64(r.N)
		if st.Buffered() == 0 {
			h.o.Logs.Flush() // caught up with what arrived
		}
	}
}

func (h *Hub) accept(ctx context.Context) {
	for {
		c, err := h.ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		h.mu.Lock()
		h.clients[c] = struct{}{}
		h.mu.Unlock()
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			// Clients get every op but identity, which only the
			// supervisor itself sends (after a restore).
			agentchan.Proxy(ctx, c, h.Session, agentchan.ProxyOptions{Allow: agentchan.ClientOps(),
				Local: map[string]func(context.Context, *agentchan.Stream, []byte){agentchan.OpQuiesce: h.serveQuiesce}})
			h.mu.Lock()
			delete(h.clients, c)
			h.mu.Unlock()
		}()
	}
}
