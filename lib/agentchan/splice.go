package agentchan

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/volantvm/volant/lib/apierr"
)

// Upstream opens streams toward the guest for a proxy: the supervisor's
// returns the guest session (waiting for it while the guest boots),
// volantd's dials the supervisor's socket.
type Upstream func(ctx context.Context) (*Session, error)

// ProxyOptions tune Proxy.
type ProxyOptions struct {
	// Allow lists the ops clients may use; nil allows every op.
	Allow []string
	// Local serves ops in the proxy itself instead of passing them on
	// (the supervisor's OpQuiesce): the handler gets the client's stream
	// after its request line, and the stream closes when it returns.
	Local map[string]func(ctx context.Context, st *Stream, line []byte)
}

// Proxy serves the stream layout to one client on conn (the server side
// of a yamux session): every stream the client opens is spliced to a new
// stream of the session up returns, after its request line was checked
// against opts.Allow (an op in opts.Local is served there instead). A
// request that cannot be passed on is answered with an error reply. Proxy
// returns when the client's session ends (closing the streams it spliced)
// or ctx does.
func Proxy(ctx context.Context, conn io.ReadWriteCloser, up Upstream, opts ProxyOptions) error {
	mux, err := yamux.Server(conn, YamuxConfig())
	if err != nil {
		conn.Close()
		return err
	}
	stop := context.AfterFunc(ctx, func() { mux.Close() })
	defer stop()
	defer mux.Close()
	// The client's session ending (a client that went away) ends every
	// splice at once: the far side may never close the streams it was
	// given, and a wait for the guest is given up.
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-mux.CloseChan():
			cancel()
		case <-sctx.Done():
		}
	}()
	Serve(mux, func(st *Stream) { splice(sctx, st, up, opts) })
	return nil
}

func splice(ctx context.Context, client *Stream, up Upstream, opts ProxyOptions) {
	line, err := ReadLine(client.r)
	if err != nil {
		return
	}
	var req Request
	if err := json.Unmarshal(line, &req); err != nil {
		client.WriteLine(ErrorReply(apierr.Wrap(apierr.InvalidInput, err, "agent channel: malformed request")))
		return
	}
	if serve := opts.Local[req.Op]; serve != nil {
		serve(ctx, client, line)
		return
	}
	if opts.Allow != nil && !allowed(opts.Allow, req.Op) {
		client.WriteLine(ErrorReply(apierr.New(apierr.PermissionDenied, "the %q operation is not allowed here", req.Op).With("op", req.Op)))
		return
	}
	// Give up waiting for the guest when the client goes away.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sess, err := up(wctx)
	if err != nil {
		client.WriteLine(ErrorReply(err))
		return
	}
	guest, err := sess.mux.OpenStream()
	if err != nil {
		client.WriteLine(ErrorReply(lost("while opening a stream", err)))
		return
	}
	defer guest.Close()
	// Ends the copies below (Pipe aborts both sides) when ctx ends.
	unblock := context.AfterFunc(ctx, func() { guest.SetDeadline(time.Now()) })
	defer unblock()
	if _, err := guest.Write(append(line, '\n')); err != nil {
		client.WriteLine(ErrorReply(lost("while sending a request", err)))
		return
	}
	Pipe(client, guest)
}

func allowed(list []string, op string) bool {
	for _, a := range list {
		if a == op {
			return true
		}
	}
	return false
}

// Pipe copies between a and b both ways until both directions have ended:
// each direction's end is passed on as a half close. When either side
// fails (not a clean end), both are aborted.
func Pipe(a io.ReadWriteCloser, b net.Conn) {
	var wg sync.WaitGroup
	abort := func() {
		if s, ok := a.(*Stream); ok {
			s.Abort()
		} else {
			a.Close()
		}
		b.Close()
	}
	one := func(dst io.WriteCloser, src io.Reader) {
		defer wg.Done()
		_, err := io.Copy(dst, src)
		if err != nil && !isClosed(err) {
			abort()
			return
		}
		dst.Close() // half close: EOF for the reader on the other side
	}
	wg.Add(2)
	go one(b, a)
	go one(halfCloser{a}, b)
	wg.Wait()
}

// halfCloser makes Close a yamux half close for a *Stream (whose Close is
// already one) and a CloseWrite for connections that have it.
type halfCloser struct{ io.ReadWriteCloser }

func (h halfCloser) Close() error {
	if cw, ok := h.ReadWriteCloser.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return h.ReadWriteCloser.Close()
}
