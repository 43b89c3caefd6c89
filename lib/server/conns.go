package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/volantvm/volant/lib/apierr"
)

// Connection bounds (Options) unless set.
const (
	DefaultHeaderTimeout = 10 * time.Second
	DefaultBodyTimeout   = 30 * time.Second
	DefaultIdleTimeout   = 60 * time.Second
	DefaultMaxConns      = 1024
)

// HTTPServer returns the http.Server to serve h (Handler or AgentHandler)
// with: request headers must arrive within HeaderTimeout, an idle
// keep-alive connection is closed after IdleTimeout, and the request line
// and headers may take at most MaxHeaderBytes. The body deadline
// (BodyTimeout) is the handlers' own (bodyDeadline), so that streams
// (events, log follows, the console, long polls, MCP's stream) are not
// cut by it; they keep themselves alive.
func (s *Server) HTTPServer(h http.Handler, base func(net.Listener) context.Context) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: s.opts.HeaderTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		IdleTimeout:       s.opts.IdleTimeout,
		BaseContext:       base,
		ConnContext:       connContext,
	}
}

// LimitListener bounds the connections served from l at once (MaxConns);
// more wait in the listen backlog.
func (s *Server) LimitListener(l net.Listener) net.Listener {
	return &limitListener{Listener: l, sem: make(chan struct{}, s.opts.MaxConns), done: make(chan struct{})}
}

// bodyDeadline bounds the time a request's body may take to arrive. The
// outer half sets the connection's read deadline before anything else
// runs, so that a request refused early (no token) cannot hold the
// connection while the server discards its body; the inner half, which
// runs once the request is let in, reads the whole body (at most
// MaxBodyBytes) within that deadline and then lifts it, so the handler
// runs without one. A body streamed(r) says is a stream (a tar stream to a
// guest) is neither read ahead nor bounded: the inner half lifts the
// deadline and the handler reads the body as it arrives.
func (s *Server) bodyDeadline(outer bool, streamed func(*http.Request) bool, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		if outer {
			_ = rc.SetReadDeadline(time.Now().Add(s.opts.BodyTimeout))
			h.ServeHTTP(w, r)
			return
		}
		if r.Body != nil && r.Body != http.NoBody && (streamed == nil || !streamed(r)) {
			data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
			if err != nil {
				w.Header().Set("Connection", "close")
				writeError(w, r, bodyErr(err, s.opts.BodyTimeout))
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(data))
		}
		_ = rc.SetReadDeadline(time.Time{})
		h.ServeHTTP(w, r)
	})
}

func bodyErr(err error, limit time.Duration) error {
	var mbe *http.MaxBytesError
	var ne net.Error
	switch {
	case errors.As(err, &mbe):
		return apierr.New(apierr.TooLarge, "request body is larger than %d bytes", MaxBodyBytes).With("limit_bytes", MaxBodyBytes)
	case errors.As(err, &ne) && ne.Timeout():
		return apierr.New(apierr.Timeout, "the request body did not arrive within %s", limit).With("body_timeout", limit.String())
	}
	return apierr.Wrap(apierr.InvalidInput, err, "reading the request body")
}
