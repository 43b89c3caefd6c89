package server

import (
	"context"
	"crypto/subtle"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/auth"
)

// authenticate finds who r comes from (principal) and runs h as them; a
// request it cannot place is UNAUTHORIZED, one with a token in its query
// string too (whatever its header says). /healthz needs no principal.
func (s *Server) authenticate(tcp bool, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if k := auth.TokenInQuery(r.URL.Query()); k != "" {
			s.unauthorized(w, r, apierr.New(apierr.Unauthorized,
				"a token in the query string (%s=) is refused: URLs end up in logs and histories; send Authorization: Bearer <token>", k).
				With("reason", "token_in_query").With("param", k))
			return
		}
		p, err := s.principal(r, tcp)
		if err != nil {
			if r.URL.Path == "/healthz" && r.Header.Get("Authorization") == "" {
				h.ServeHTTP(w, r)
				return
			}
			s.unauthorized(w, r, err)
			return
		}
		h.ServeHTTP(w, r.WithContext(auth.WithPrincipal(r.Context(), p)))
	})
}

func (s *Server) unauthorized(w http.ResponseWriter, r *http.Request, err error) {
	e := apierr.From(err)
	if e.Code == apierr.Unauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="volantd"`)
		s.log.Warn("refused a request", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "reason", e.Details["reason"])
		s.metrics.refused(e.Details["reason"])
	}
	writeError(w, r, e)
}

// principal is who r comes from: the token in its Authorization header,
// or, on the unix socket without one, the local user (an admin when root
// or volantd's own uid).
func (s *Server) principal(r *http.Request, tcp bool) (auth.Principal, error) {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, _ := strings.Cut(h, " ")
		tok = strings.TrimSpace(tok)
		if !strings.EqualFold(scheme, "Bearer") || tok == "" {
			return auth.Principal{}, apierr.New(apierr.Unauthorized, "the Authorization header is not \"Bearer <token>\"").With("reason", "malformed")
		}
		if s.opts.Token != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(s.opts.Token)) == 1 {
			return auth.Principal{Name: auth.DaemonToken, Role: auth.Admin}, nil
		}
		return s.ctl.Authenticate(r.Context(), tok)
	}
	hint := "send Authorization: Bearer <token> (volantd --token-file, or a token from volar tokens create; VOLANT_TOKEN)"
	if tcp {
		return auth.Principal{}, apierr.New(apierr.Unauthorized, "missing bearer token").With("reason", "missing").With("hint", hint)
	}
	uid, ok := r.Context().Value(peerUIDKey{}).(int)
	if !ok {
		// Not a unix socket volantd accepted itself (a handler served
		// by a test): the caller is trusted as the socket is.
		return auth.Principal{Name: "local", Role: auth.Admin}, nil
	}
	if uid == 0 || uid == os.Geteuid() {
		return auth.Principal{Name: auth.UnixName(uid), Role: auth.Admin}, nil
	}
	return auth.Principal{}, apierr.New(apierr.Unauthorized, "uid %d on the unix socket needs a bearer token (only root and volantd's own uid are admins without one)", uid).
		With("reason", "missing").With("uid", uid).With("hint", hint)
}

type peerUIDKey struct{}

// connContext records the peer's uid of a unix socket connection, for
// principal.
func connContext(ctx context.Context, c net.Conn) context.Context {
	if lc, ok := c.(*limitedConn); ok {
		c = lc.Conn
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil || cerr != nil {
		return ctx
	}
	return context.WithValue(ctx, peerUIDKey{}, int(cred.Uid))
}

// auditRec collects what the audit event of a call says about its end.
type auditRec struct{ code apierr.Code }

type auditKey struct{}

// guard lets r through to rt's handler when its principal's role allows
// rt's operation (PERMISSION_DENIED otherwise), and records the call in
// the audit trail when rt asks to change something.
func (s *Server) guard(rt route, h http.Handler) http.Handler {
	need := s.need(rt.id)
	audit := audited(rt) && rt.tag != "mcp" // MCP audits each tool call
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if need == anyone {
			h.ServeHTTP(w, r)
			return
		}
		p, ok := auth.FromContext(r.Context())
		if !ok || !p.Role.Allows(need) {
			err := apierr.New(apierr.PermissionDenied, "%s %s needs the %s role; token %s is %s", r.Method, r.URL.Path, need, p.Name, p.Role).
				With("operation", rt.id).With("role", string(need)).With("token_role", string(p.Role))
			if ok && audit {
				s.audit(r, rt.id, p, http.StatusForbidden, apierr.PermissionDenied)
			}
			writeError(w, r, err)
			return
		}
		if !audit {
			h.ServeHTTP(w, r)
			return
		}
		rec := &auditRec{}
		sw := &statusWriter{ResponseWriter: w}
		h.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), auditKey{}, rec)))
		status := sw.status
		if status == 0 && rt.upgrade != "" || rt.id == "vmConsole" && status == 0 {
			status = http.StatusSwitchingProtocols // the handler hijacked the connection
		}
		s.audit(r, rt.id, p, status, rec.code)
	})
}

// audit appends one audit event; a failure to record is logged (the call
// has happened).
func (s *Server) audit(r *http.Request, op string, p auth.Principal, status int, code apierr.Code) {
	data := map[string]any{"principal": p.Name, "role": p.Role, "operation": op, "method": r.Method, "path": r.URL.Path, "status": status}
	if code != "" {
		data["code"] = code
	}
	if err := s.ctl.Audit(r.Context(), r.PathValue("name"), data); err != nil {
		s.log.Error("recording the audit event failed", "operation", op, "principal", p.Name, "err", err)
	}
}

// noteCode tells the call's audit record the code it ended with.
func noteCode(r *http.Request, code apierr.Code) {
	if r == nil {
		return
	}
	if rec, ok := r.Context().Value(auditKey{}).(*auditRec); ok && rec.code == "" {
		rec.code = code
	}
}

// limitListener bounds the connections served at once; its connections
// stay visible to connContext (netutil's hide what they wrap).
type limitListener struct {
	net.Listener
	sem       chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &limitedConn{Conn: c, release: func() { <-l.sem }}, nil
}

func (l *limitListener) Close() error {
	err := l.Listener.Close()
	l.closeOnce.Do(func() { close(l.done) })
	return err
}

type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// --- token handlers ---

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) {
	ts, err := s.ctl.ListTokens(r.Context())
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, api.TokenList{Tokens: ts})
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	var req api.CreateTokenRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	t, err := s.ctl.CreateToken(r.Context(), req)
	if err != nil {
		writeError(w, r, err)
		return
	}
	w.Header().Set("Location", api.Prefix+"/tokens/"+t.Name)
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusCreated, t)
}

func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) {
	t, err := s.ctl.RevokeToken(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}
