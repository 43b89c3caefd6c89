// Package server is volantd's HTTP face: the REST API of lib/api over a
// lib/controller, the resumable event stream (SSE), the endpoint kestrel
// reports to, the Model Context Protocol server, and the OpenAPI document
// describing all of it, generated from the same route table that
// registers the handlers.
//
// Two handlers:
//
//   - Handler: the whole API, for volantd's unix socket and, with a bearer
//     token, for TCP (--listen). Every request but /healthz runs as a
//     principal (lib/auth): the named token it carries, volantd's own
//     token (an admin), or on the unix socket without a token root or
//     volantd's uid (an admin). Each route needs the role the access
//     table (access.go) gives its operation, and every call that asks to
//     change something is recorded in the event log under the
//     principal's name (an "audit" event).
//   - AgentHandler: only what guests need, served on the bridge's gateway
//     address without a token: kestrel's status report (accepted only from
//     the VM's own address) and the plugin manifest fetch.
//
// Request bodies are JSON objects decoded strictly (unknown fields are
// INVALID_INPUT naming the field), limited to MaxBodyBytes (TOO_LARGE).
// Every error is an apierr body {"code","message","details"} with the
// code's HTTP status, and a rejected request changes nothing.
package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/auth"
	"github.com/volantvm/volant/lib/buildinfo"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/workloadlog"
)

// MaxBodyBytes bounds request bodies.
const MaxBodyBytes = 1 << 20

// MaxHeaderBytes bounds a request's line and headers (Go's default is
// 1 MiB, which with MaxConns connections would let idle clients pin a
// GiB). Go's HTTP server itself answers a request over it: 431, in
// plain text, before volantd reads it.
const MaxHeaderBytes = 64 << 10

// Options tune a Server.
type Options struct {
	// Token is volantd's own token (--token-file): sent as
	// "Authorization: Bearer <token>" it makes a call an admin's, named
	// auth.DaemonToken. Named tokens (POST /api/v1/tokens) work besides it.
	Token string
	// SSEBuffer is how many events a slow event-stream reader may fall
	// behind before it is disconnected (default 1024); it then resumes
	// with Last-Event-ID.
	SSEBuffer int
	// SSEKeepAlive is the interval of keep-alive comments (default 15 s).
	SSEKeepAlive time.Duration
	// SSEWriteTimeout drops a reader that does not take an event within
	// this time (default 30 s).
	SSEWriteTimeout time.Duration
	// HeaderTimeout bounds the arrival of a request's headers, BodyTimeout
	// that of its body (default 10 s and 30 s); IdleTimeout closes a
	// keep-alive connection that sends no request for that long (60 s);
	// MaxConns bounds each listener's connections (1024). Streams keep
	// their own keep-alives and are not cut by these.
	HeaderTimeout time.Duration
	BodyTimeout   time.Duration
	IdleTimeout   time.Duration
	MaxConns      int
	// MCPSessionTimeout ends an MCP session that sends no request for
	// that long (default 10 min); MCPMaxSessions bounds the sessions at
	// once (default 256): initialize is UNAVAILABLE past it.
	MCPSessionTimeout time.Duration
	MCPMaxSessions    int
	Logger            *slog.Logger
}

// Server serves one controller.
type Server struct {
	ctl  *controller.Controller
	opts Options
	log  *slog.Logger
	mcp  http.Handler

	access map[string]auth.Role
	// mutating are the operations the audit trail records (audited).
	mutating map[string]bool

	consoles consoles
	lists    vmListCache
	frames   frameCache
	metrics  *metrics
}

// New returns a server for ctl.
func New(ctl *controller.Controller, o Options) *Server {
	if o.SSEBuffer <= 0 {
		o.SSEBuffer = 1024
	}
	if o.SSEKeepAlive <= 0 {
		o.SSEKeepAlive = 15 * time.Second
	}
	if o.SSEWriteTimeout <= 0 {
		o.SSEWriteTimeout = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.HeaderTimeout <= 0 {
		o.HeaderTimeout = DefaultHeaderTimeout
	}
	if o.BodyTimeout <= 0 {
		o.BodyTimeout = DefaultBodyTimeout
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.MaxConns <= 0 {
		o.MaxConns = DefaultMaxConns
	}
	s := &Server{ctl: ctl, opts: o, log: o.Logger, access: access(), mutating: map[string]bool{}}
	s.metrics = newMetrics(s)
	s.mcp = MCPHandler(ControllerBackend{ctl}, MCPOptions{SessionTimeout: o.MCPSessionTimeout, MaxSessions: o.MCPMaxSessions, Logger: o.Logger,
		guard: s})
	for _, rt := range s.routes() {
		s.mutating[rt.id] = s.mutating[rt.id] || audited(rt)
	}
	return s
}

// Handler serves the whole API. With tcp, every route but /healthz needs
// a bearer token. Without it (the unix socket) a call without a token is
// an admin's unless its connection is a unix socket whose peer is neither
// root nor volantd's own uid; a call with a token runs as that token.
func (s *Server) Handler(tcp bool) http.Handler {
	mux := http.NewServeMux()
	streams := map[string]bool{}
	for _, rt := range s.routes() {
		mux.Handle(rt.pattern(), s.metrics.instrument(rt.id, s.guard(rt, rt.handler)))
		// A tar body is a stream of any size (PUT .../files).
		if rt.reqContent == "application/x-tar" {
			streams[rt.pattern()] = true
		}
	}
	streamed := func(r *http.Request) bool {
		_, pattern := mux.Handler(r)
		return streams[pattern]
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if allow := allowed(mux, r); len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			writeError(w, r, apierr.New(apierr.MethodNotAllowed, "%s %s: this path answers only %s", r.Method, r.URL.Path, strings.Join(allow, ", ")).
				With("method", r.Method).With("path", r.URL.Path).With("allow", allow))
			return
		}
		writeError(w, r, apierr.New(apierr.NotFound, "no route %s %s; GET /openapi.json lists them", r.Method, r.URL.Path).
			With("method", r.Method).With("path", r.URL.Path))
	})
	h := s.authenticate(tcp, s.bodyDeadline(false, streamed, mux))
	return s.logRequests(s.bodyDeadline(true, nil, h))
}

// MetricsHandler serves only GET /metrics, for a listener of its own
// (volantd --metrics-listen); with auth it needs a token of any role.
func (s *Server) MetricsHandler(auth bool) http.Handler {
	mux := http.NewServeMux()
	var mh http.Handler = s.metrics.handler()
	if auth {
		mh = s.guard(route{method: "GET", path: "/metrics", id: "metrics"}, mh)
	}
	mux.Handle("GET /metrics", mh)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, apierr.New(apierr.NotFound, "this listener serves only GET /metrics").With("path", r.URL.Path))
	})
	var h http.Handler = mux
	if auth {
		h = s.authenticate(true, h)
	}
	return s.logRequests(h)
}

// Run does the server's background work until ctx ends: it follows the
// event log for the boot duration histogram.
func (s *Server) Run(ctx context.Context) {
	s.metrics.followBoots(ctx)
}

// AgentHandler serves only the routes guests use, without a token.
func (s *Server) AgentHandler() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range s.routes() {
		if rt.agent {
			mux.Handle(rt.pattern(), rt.handler)
		}
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, apierr.New(apierr.NotFound, "the agent endpoint serves only kestrel's report and manifest routes").
			With("path", r.URL.Path))
	})
	return s.logRequests(s.bodyDeadline(true, nil, withAgent(s.bodyDeadline(false, nil, mux))))
}

// allowed returns the methods mux serves r's path with (other than the
// catch-all), sorted.
func allowed(mux *http.ServeMux, r *http.Request) []string {
	var out []string
	for _, m := range []string{"DELETE", "GET", "PATCH", "POST", "PUT"} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, pattern := mux.Handler(probe); m != r.Method && pattern != "/" && pattern != "" {
			out = append(out, m)
		}
	}
	return out
}

type agentKey struct{}

// withAgent marks requests that came through the agent listener.
func withAgent(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), agentKey{}, true)))
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (s *Server) logRequests(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t0 := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		h.ServeHTTP(sw, r)
		s.log.Debug("request", "method", r.Method, "path", r.URL.Path, "status", sw.status, "elapsed", time.Since(t0).Round(time.Microsecond))
	})
}

// writeJSON writes v with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := encodeJSON(v)
	if err != nil {
		http.Error(w, `{"code":"INTERNAL","message":"encoding the answer failed"}`, http.StatusInternalServerError)
		return
	}
	writeBody(w, status, body)
}

// writeBody writes an encoded JSON answer.
func writeBody(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// writeError converts err once, at the boundary, and writes it.
func writeError(w http.ResponseWriter, r *http.Request, err error) {
	e := apierr.From(err)
	if r != nil && errors.Is(r.Context().Err(), context.Canceled) && e.Code == apierr.Internal {
		e.Code = apierr.Canceled
	}
	noteCode(r, e.Code)
	writeJSON(w, e.Code.HTTPStatus(), e)
}

// decode reads a JSON object body strictly into v.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	data, err := readBody(w, r)
	if err != nil {
		return err
	}
	return decodeStrict(data, v)
}

func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			return nil, apierr.New(apierr.InvalidInput, "Content-Type must be application/json, not %q", ct)
		}
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, apierr.New(apierr.TooLarge, "request body is larger than %d bytes", MaxBodyBytes).With("limit_bytes", MaxBodyBytes)
		}
		return nil, apierr.Wrap(apierr.InvalidInput, err, "reading the request body")
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, apierr.New(apierr.InvalidInput, "the request needs a JSON object body")
	}
	return data, nil
}

func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		msg := strings.TrimPrefix(err.Error(), "json: ")
		e := apierr.New(apierr.InvalidInput, "invalid request body: %s", msg)
		if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			e.With("field", strings.Trim(f, `"`))
		}
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			e.Message = fmt.Sprintf("invalid request body: field %q must be %s, not %s", te.Field, te.Type, te.Value)
			e.With("field", te.Field)
		}
		var se *json.SyntaxError
		if errors.As(err, &se) {
			e.With("offset", se.Offset)
		}
		return e
	}
	if dec.More() {
		return apierr.New(apierr.InvalidInput, "invalid request body: trailing data after the JSON object")
	}
	return nil
}

// remoteAddr is the client's IP, or the zero Addr (unix socket).
func remoteAddr(r *http.Request) netip.Addr {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
}

// --- handlers ---

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	last, err := s.ctl.Events().Last(r.Context())
	if err != nil {
		writeError(w, r, err)
		return
	}
	n := s.ctl.Network()
	writeJSON(w, http.StatusOK, api.Health{Status: "ok", Version: buildinfo.String(), Ready: s.ctl.Ready(), LastEventID: last, Network: &n})
}

func (s *Server) getNetwork(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.ctl.Network())
}

func (s *Server) setNetwork(w http.ResponseWriter, r *http.Request) {
	var req api.SetNetworkRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	n, _, err := s.ctl.SetNetwork(r.Context(), req.Subnet)
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, n)
}

func (s *Server) listPlugins(w http.ResponseWriter, r *http.Request) {
	ps, err := s.ctl.ListPlugins(r.Context())
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, api.PluginList{Plugins: ps})
}

func boolQuery(r *http.Request, key string) (bool, error) {
	v := r.URL.Query().Get(key)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, apierr.New(apierr.InvalidInput, "query parameter %s=%q is not a boolean", key, v).With("field", key)
	}
	return b, nil
}

func (s *Server) installPlugin(w http.ResponseWriter, r *http.Request) {
	replace, err := boolQuery(r, "replace")
	if err != nil {
		writeError(w, r, err)
		return
	}
	data, err := readBody(w, r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if isImageRequest(data) {
		var req api.InstallImageRequest
		if err := decodeStrict(data, &req); err != nil {
			writeError(w, r, err)
			return
		}
		req.Replace = req.Replace || replace
		p, built, err := s.ctl.InstallImage(r.Context(), req)
		if err != nil {
			writeError(w, r, err)
			return
		}
		status := http.StatusOK
		if built {
			status = http.StatusCreated
		}
		writeJSON(w, status, p)
		return
	}
	var sig []byte
	if isSignedRequest(data) {
		var req api.SignedPluginRequest
		if err := decodeStrict(data, &req); err != nil {
			writeError(w, r, err)
			return
		}
		data, sig = []byte(req.Manifest), []byte(req.Signature)
		if len(sig) == 0 {
			writeError(w, r, apierr.New(apierr.InvalidInput, "signature is empty").With("field", "signature"))
			return
		}
	}
	p, err := s.ctl.InstallSignedPlugin(r.Context(), data, sig, replace)
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, p)
}

// isSignedRequest tells a SignedPluginRequest from a manifest.
func isSignedRequest(data []byte) bool {
	var top map[string]json.RawMessage
	if json.Unmarshal(data, &top) != nil {
		return false
	}
	_, sig := top["signature"]
	_, workload := top["workload"]
	return sig && !workload
}

// isImageRequest tells an InstallImageRequest from a manifest (which
// may name the image it was built from, but always has a workload).
func isImageRequest(data []byte) bool {
	var top map[string]json.RawMessage
	if json.Unmarshal(data, &top) != nil {
		return false
	}
	_, image := top["image"]
	_, workload := top["workload"]
	return image && !workload
}

func (s *Server) getPlugin(w http.ResponseWriter, r *http.Request) {
	p, err := s.ctl.Plugin(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

func (s *Server) pluginManifest(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if r.Context().Value(agentKey{}) != nil {
		// A guest may read only its own plugin's manifest (manifests can
		// carry the workload's environment).
		from := remoteAddr(r)
		vms, err := s.ctl.ListVMs(r.Context(), api.VMFilter{Plugin: name})
		if err != nil {
			writeError(w, r, err)
			return
		}
		ok := false
		for _, v := range vms {
			ok = ok || (from.IsValid() && v.IP == from.String())
		}
		if !ok {
			writeError(w, r, apierr.New(apierr.PermissionDenied, "only a VM of plugin %s may read its manifest here", name).With("plugin", name))
			return
		}
	}
	m, err := s.ctl.PluginManifest(r.Context(), name)
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, m)
}

func (s *Server) removePlugin(w http.ResponseWriter, r *http.Request) {
	p, err := s.ctl.RemovePlugin(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

func (s *Server) setPluginEnabled(enabled bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, err := s.ctl.SetPluginEnabled(r.Context(), r.PathValue("name"), enabled)
		if err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, p)
	}
}

func (s *Server) listVMs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := api.VMFilter{Plugin: q.Get("plugin"), Deployment: q.Get("deployment"), State: api.VMState(q.Get("state")), Label: q.Get("label")}
	body, err := s.lists.list(r.Context(), s.ctl.Generation, s.ctl.ListVMs, f)
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeBody(w, http.StatusOK, body)
}

func (s *Server) createVM(w http.ResponseWriter, r *http.Request) {
	var req api.CreateVMRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	vm, err := s.ctl.CreateVM(r.Context(), req)
	if err != nil {
		writeError(w, r, err)
		return
	}
	w.Header().Set("Location", api.Prefix+"/vms/"+vm.Name)
	writeJSON(w, http.StatusCreated, vm)
}

func (s *Server) getVM(w http.ResponseWriter, r *http.Request) {
	vm, err := s.ctl.VM(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, vm)
}

func (s *Server) vmAction(fn func(context.Context, string) (*api.VM, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		vm, err := fn(r.Context(), r.PathValue("name"))
		if err != nil {
			writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, vm)
	}
}

func (s *Server) waitVM(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	state := api.VMState(q.Get("state"))
	if state == "" {
		state = api.VMRunning
	}
	var timeout time.Duration
	if t := q.Get("timeout"); t != "" {
		d, err := time.ParseDuration(t)
		if err != nil {
			if n, nerr := strconv.Atoi(t); nerr == nil {
				d, err = time.Duration(n)*time.Second, nil
			}
		}
		if err != nil || d <= 0 || d > 10*time.Minute {
			writeError(w, r, apierr.New(apierr.InvalidInput, "timeout %q must be a duration such as 30s, at most 10m", t).With("field", "timeout"))
			return
		}
		timeout = d
	}
	vm, err := s.ctl.WaitVM(r.Context(), r.PathValue("name"), state, timeout)
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, vm)
}

func (s *Server) vmLogs(w http.ResponseWriter, r *http.Request) {
	follow, err := boolQuery(r, "follow")
	if err != nil {
		writeError(w, r, err)
		return
	}
	var tail int
	if t := r.URL.Query().Get("tail"); t != "" {
		if tail, err = strconv.Atoi(t); err != nil || tail < 0 {
			writeError(w, r, apierr.New(apierr.InvalidInput, "tail %q must be a number of lines", t).With("field", "tail"))
			return
		}
	}
	name := r.PathValue("name")
	if _, err := s.ctl.VM(r.Context(), name); err != nil {
		writeError(w, r, err)
		return
	}
	q := r.URL.Query()
	stream := q.Get("stream")
	if stream != "" && stream != api.LogConsole {
		o := api.LogOptions{Follow: follow, Tail: tail, Stream: stream}
		if o.Timestamps, err = boolQuery(r, "timestamps"); err == nil {
			o.Since, err = workloadlog.ParseSince(q.Get("since"), time.Now())
		}
		if err == nil && !slices.Contains(api.LogStreams(), stream) {
			err = apierr.New(apierr.InvalidInput, "stream %q is not one of %s", stream, strings.Join(api.LogStreams(), ", ")).With("field", "stream")
		}
		if err != nil {
			writeError(w, r, err)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		rc := http.NewResponseController(w)
		w.WriteHeader(http.StatusOK)
		if err := s.ctl.WorkloadLogText(r.Context(), name, o, w, func() { _ = rc.Flush() }); err != nil && r.Context().Err() == nil {
			s.log.Warn("streaming workload logs", "vm", name, "err", err)
		}
		return
	}
	if q.Get("since") != "" {
		writeError(w, r, apierr.New(apierr.InvalidInput, "since applies to the workload's output (stream=workload, stdout or stderr), not the console").With("field", "since"))
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if follow {
		w.Header().Set("Cache-Control", "no-cache")
	}
	rc := http.NewResponseController(w)
	w.WriteHeader(http.StatusOK)
	flush := func() { _ = rc.Flush() }
	if err := s.ctl.Logs(r.Context(), name, api.LogOptions{Follow: follow, Tail: tail}, w, flush); err != nil && r.Context().Err() == nil {
		s.log.Warn("streaming logs", "vm", name, "err", err)
	}
}

func (s *Server) agentReport(w http.ResponseWriter, r *http.Request) {
	var st agentapi.Status
	data, err := readBody(w, r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	// kestrel's report may grow fields: decode leniently.
	if err := json.Unmarshal(data, &st); err != nil {
		writeError(w, r, apierr.Wrap(apierr.InvalidInput, err, "invalid status report"))
		return
	}
	var from netip.Addr
	if r.Context().Value(agentKey{}) != nil {
		from = remoteAddr(r)
		if !from.IsValid() {
			writeError(w, r, apierr.New(apierr.PermissionDenied, "reports on the agent endpoint must come over TCP from the VM"))
			return
		}
	}
	if err := s.ctl.Report(r.Context(), r.PathValue("name"), st, from); err != nil {
		writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) listDeployments(w http.ResponseWriter, r *http.Request) {
	ds, err := s.ctl.ListDeployments(r.Context())
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, api.DeploymentList{Deployments: ds})
}

func (s *Server) createDeployment(w http.ResponseWriter, r *http.Request) {
	var req api.CreateDeploymentRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	d, err := s.ctl.CreateDeployment(r.Context(), req)
	if err != nil {
		writeError(w, r, err)
		return
	}
	w.Header().Set("Location", api.Prefix+"/deployments/"+d.Name)
	writeJSON(w, http.StatusCreated, d)
}

func (s *Server) getDeployment(w http.ResponseWriter, r *http.Request) {
	d, err := s.ctl.Deployment(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

func (s *Server) scaleDeployment(w http.ResponseWriter, r *http.Request) {
	var req api.ScaleRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	d, err := s.ctl.ScaleDeployment(r.Context(), r.PathValue("name"), req.Replicas)
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

func (s *Server) updateDeployment(w http.ResponseWriter, r *http.Request) {
	var req api.UpdateDeploymentRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, r, err)
		return
	}
	d, err := s.ctl.UpdateDeployment(r.Context(), r.PathValue("name"), req)
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

func (s *Server) getRollout(w http.ResponseWriter, r *http.Request) {
	ro, err := s.ctl.Rollout(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ro)
}

func (s *Server) undoRollout(w http.ResponseWriter, r *http.Request) {
	ro, err := s.ctl.UndoRollout(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, ro)
}

func (s *Server) listRollouts(w http.ResponseWriter, r *http.Request) {
	rs, err := s.ctl.RolloutHistory(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, api.RolloutList{Rollouts: rs})
}

func (s *Server) deleteDeployment(w http.ResponseWriter, r *http.Request) {
	d, err := s.ctl.DeleteDeployment(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

func (s *Server) openapi(w http.ResponseWriter, r *http.Request) {
	doc, err := s.OpenAPI()
	if err != nil {
		writeError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(doc)
}
