package agentchan

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"

	"github.com/hashicorp/yamux"

	"github.com/volantvm/volant/lib/apierr"
)

// Session is the host's end of a yamux session that reaches a guest agent:
// directly (Connect, after the handshake) or through a proxy (Client, on a
// connection to a supervisor's guest socket or volantd's exec route).
type Session struct {
	mux *yamux.Session
	// conn is a direct session's byte stream (nil through a proxy).
	conn *hostConn
	// Hello is the guest's handshake (zero through a proxy).
	Hello Hello
}

// Client starts the client side of a session on conn, which reaches a
// proxy that serves this package's stream layout (no handshake).
func Client(conn io.ReadWriteCloser) (*Session, error) {
	mux, err := yamux.Client(conn, YamuxConfig())
	if err != nil {
		return nil, err
	}
	return &Session{mux: mux}, nil
}

// Dial connects to a unix socket serving the stream layout (a VM
// supervisor's guest socket) and starts a client session on it.
func Dial(ctx context.Context, socket string) (*Session, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, err
	}
	return Client(c)
}

// Close ends the session and every stream in it.
func (s *Session) Close() error { return s.mux.Close() }

// Done is closed when the session has ended.
func (s *Session) Done() <-chan struct{} { return s.mux.CloseChan() }

// Streams is the number of open streams.
func (s *Session) Streams() int { return s.mux.NumStreams() }

// Open opens a stream and writes the request line. It does not wait for
// the reply.
func (s *Session) Open(req any) (*Stream, error) {
	c, err := s.mux.OpenStream()
	if err != nil {
		return nil, lost("while opening a stream", err)
	}
	st := NewStream(c)
	if err := st.WriteLine(req); err != nil {
		c.Close()
		return nil, lost("while sending a request", err)
	}
	return st, nil
}

// Call opens a stream, writes req and reads the reply line into reply
// (which must embed Reply, or be one). A reply with an error closes the
// stream and returns the error.
func (s *Session) Call(ctx context.Context, req any, reply interface{ Err() error }) (*Stream, error) {
	st, err := s.Open(req)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { st.Abort() })
	err = st.ReadLine(reply)
	if !stop() {
		st.Conn.Close()
		return nil, apierr.From(context.Cause(ctx))
	}
	if err != nil {
		st.Conn.Close()
		return nil, lost("before its reply", err)
	}
	if err := reply.Err(); err != nil {
		st.Conn.Close()
		return nil, err
	}
	return st, nil
}

// accept is the guest's view of the session: yamux's Accept as this
// package's Stream.
func acceptStream(mux *yamux.Session) (*Stream, error) {
	c, err := mux.AcceptStream()
	if err != nil {
		return nil, err
	}
	return NewStream(c), nil
}

// Serve accepts the host's streams on a guest-side session until it ends,
// calling handle for each in its own goroutine, and waits for the handlers.
func Serve(mux *yamux.Session, handle func(st *Stream)) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		st, err := acceptStream(mux)
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer st.Conn.Close()
			handle(st)
		}()
	}
}

// isClosed reports errors that mean the stream or session went away.
func isClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, yamux.ErrStreamClosed) || errors.Is(err, yamux.ErrSessionShutdown) ||
		errors.Is(err, yamux.ErrConnectionReset) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe)
}
