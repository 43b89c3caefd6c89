package server

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
)

// execUpgradeDoc is what the OpenAPI document says the upgraded exec
// stream carries.
const execUpgradeDoc = "the connection then carries a yamux session (github.com/hashicorp/yamux) in which the client opens one stream per " +
	"operation: a JSON request line, a JSON reply line, then data. An exec is a control stream ({\"op\":\"exec\",\"id\",\"argv\",\"env\",\"dir\"," +
	"\"user\",\"tty\",\"stdin\",\"size\"}; reply {\"ok\",\"pid\"} or {\"error\"}; then resize/signal lines in, one exit line out) plus attach " +
	"streams ({\"op\":\"attach\",\"id\",\"fd\":0|1|2}) for stdin, stdout and stderr. Only exec and attach are allowed here. " +
	"The full layout is in docs/guest-access.md; lib/agentchan implements it."

// vmExec is POST /api/v1/vms/{name}/exec: with an upgrade to
// agentchan.UpgradeProtocol the connection becomes the agent channel's
// stream layout (exec and attach only), spliced to the VM's supervisor;
// without one the body is an api.ExecRequest run to its end.
func (s *Server) vmExec(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if headerHas(r.Header, "Connection", "upgrade") && headerHas(r.Header, "Upgrade", agentchan.UpgradeProtocol) {
		s.vmExecUpgrade(w, r, name)
		return
	}
	var req api.ExecRequest
	data, err := readBody(w, r)
	if err == nil {
		err = decodeStrict(data, &req)
	}
	if err != nil {
		writeError(w, r, err)
		return
	}
	res, err := s.ctl.Exec(r.Context(), name, req)
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *Server) vmExecUpgrade(w http.ResponseWriter, r *http.Request, name string) {
	// Everything that can fail before the switch is an HTTP error.
	sess, err := s.ctl.DialGuest(r.Context(), name)
	if err != nil {
		writeError(w, r, err)
		return
	}
	defer sess.Close()
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		writeError(w, r, apierr.Wrap(apierr.Internal, err, "taking over the connection"))
		return
	}
	defer conn.Close()
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + agentchan.UpgradeProtocol + "\r\n\r\n")
	if err := brw.Flush(); err != nil {
		return
	}
	// The hijacked connection is no longer watched by net/http: the
	// session ends when the client's yamux session or the VM's does.
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	defer cancel()
	go func() {
		select {
		case <-sess.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	up := func(context.Context) (*agentchan.Session, error) { return sess, nil }
	agentchan.Proxy(ctx, &hijacked{Conn: conn, r: brw.Reader}, up,
		agentchan.ProxyOptions{Allow: []string{agentchan.OpExec, agentchan.OpAttach}})
}

// hijacked reads through the buffered reader of a hijacked connection,
// which may hold the client's first bytes.
type hijacked struct {
	net.Conn
	r io.Reader
}

func (h *hijacked) Read(p []byte) (int, error) { return h.r.Read(p) }

// guestPathQuery is the required ?path= of the files routes.
func guestPathQuery(r *http.Request) (string, error) {
	p := r.URL.Query().Get("path")
	if p == "" {
		return "", apierr.New(apierr.InvalidInput, "give the guest path: ?path=/some/where").With("field", "path")
	}
	return p, nil
}

// copyErrorTrailer carries an error that happened after a tar stream's
// first bytes (a file that could not be read midway: the archive holds
// zeros in its place).
const copyErrorTrailer = "Volant-Copy-Error"

// vmFilesGet is GET /api/v1/vms/{name}/files?path=: a tar stream of the
// guest path.
func (s *Server) vmFilesGet(w http.ResponseWriter, r *http.Request) {
	path, err := guestPathQuery(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	sess, err := s.ctl.DialGuest(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, r, err)
		return
	}
	defer sess.Close()
	lw := &lazyWriter{w: w}
	w.Header().Set("Trailer", copyErrorTrailer)
	_, _, err = sess.ReadTar(r.Context(), path, lw)
	if err == nil {
		lw.start()
		return
	}
	if !lw.started {
		w.Header().Del("Trailer")
		writeError(w, r, err)
		return
	}
	b, _ := json.Marshal(apierr.From(err))
	w.Header().Set(copyErrorTrailer, string(b))
}

// lazyWriter sends the 200 header with the first byte, so an error before
// it can still be an error answer.
type lazyWriter struct {
	w       http.ResponseWriter
	started bool
}

func (l *lazyWriter) start() {
	if !l.started {
		l.started = true
		l.w.Header().Set("Content-Type", "application/x-tar")
		l.w.WriteHeader(http.StatusOK)
	}
}

func (l *lazyWriter) Write(p []byte) (int, error) {
	l.start()
	return l.w.Write(p)
}

// vmFilesPut is PUT /api/v1/vms/{name}/files?path=: the body, a tar
// stream, is extracted at the guest path.
func (s *Server) vmFilesPut(w http.ResponseWriter, r *http.Request) {
	path, err := guestPathQuery(r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/x-tar") && !strings.HasPrefix(ct, "application/octet-stream") {
		writeError(w, r, apierr.New(apierr.InvalidInput, "the body must be a tar stream (Content-Type: application/x-tar), not %s", ct))
		return
	}
	sess, err := s.ctl.DialGuest(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, r, err)
		return
	}
	defer sess.Close()
	res, err := sess.WriteTar(r.Context(), path, r.Body)
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, api.CopyResult{Files: res.Files, Bytes: res.Bytes, Skipped: res.Skipped})
}
