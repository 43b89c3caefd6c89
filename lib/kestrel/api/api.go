// Package api is kestrel's HTTP API on agentapi.Port inside the guest (see
// lib/agentapi for the contract):
//
//	GET  /healthz            agentapi.Status as JSON, always 200 while kestrel runs
//	GET  /v1/logs            the workload's output ring buffer, text/plain;
//	                         ?follow=1 keeps streaming until the client leaves
//	POST /v1/actions/{name}  the manifest action: method and path from the
//	                         manifest, body and query passed through, its timeout
//	*    /v1/...             reverse-proxied to the workload's base_url without /v1
//
// Errors are lib/apierr JSON objects with the code's HTTP status. The paths
// /v1/logs and /v1/actions/ are kestrel's own, so a workload's /logs and
// /actions/... are not reachable through the proxy.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/kestrel/ringbuf"
	"github.com/volantvm/volant/lib/manifest"
)

// Backend is what the API serves.
type Backend interface {
	Status() agentapi.Status
	Logs() *ringbuf.Buffer
	// Manifest returns the workload's manifest, or nil while it is not
	// known yet (kestrel may still be fetching it).
	Manifest() *manifest.Manifest
}

type server struct {
	b   Backend
	log *slog.Logger
	// transport talks to the workload on loopback: no environment proxy,
	// a short dial timeout, a small idle pool.
	transport *http.Transport
}

// Handler returns the API's handler. log may be nil.
func Handler(b Backend, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &server{b: b, log: log, transport: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     30 * time.Second,
	}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /v1/logs", s.logs)
	mux.HandleFunc("/v1/actions/{name}", s.action)
	mux.HandleFunc("/v1/", s.proxy)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, apierr.New(apierr.NotFound, "no such endpoint %s %s; kestrel serves /healthz, /v1/logs, /v1/actions/{name} and proxies /v1/...", r.Method, r.URL.Path))
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	e := apierr.From(err)
	writeJSON(w, e.Code.HTTPStatus(), e)
}

func (s *server) healthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, s.b.Status())
}

func (s *server) logs(w http.ResponseWriter, r *http.Request) {
	ring := s.b.Logs()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	follow := r.URL.Query().Get("follow")
	if follow == "" || follow == "0" || follow == "false" {
		data, _, _ := ring.ReadFrom(-1)
		_, _ = w.Write(data)
		return
	}
	rc := http.NewResponseController(w)
	off := int64(-1)
	for {
		wake := ring.Wait() // before reading, so no write is missed
		data, next, missed := ring.ReadFrom(off)
		if missed > 0 && off >= 0 {
			fmt.Fprintf(w, "\n[kestrel: %d bytes of output were dropped while this client was behind]\n", missed)
		}
		off = next
		if len(data) > 0 {
			if _, err := w.Write(data); err != nil {
				return
			}
		}
		if err := rc.Flush(); err != nil {
			return
		}
		if ring.Closed() && len(data) == 0 {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-wake:
		}
	}
}

func (s *server) workload() (*manifest.Manifest, *url.URL, error) {
	m := s.b.Manifest()
	if m == nil {
		return nil, nil, apierr.New(apierr.Unavailable, "the workload's manifest is not loaded yet")
	}
	if m.Workload.BaseURL == "" {
		return nil, nil, apierr.New(apierr.NotFound, "workload %s has no base_url: there is nothing to proxy to", m.Name)
	}
	u, err := url.Parse(m.Workload.BaseURL)
	if err != nil {
		return nil, nil, apierr.Wrap(apierr.Internal, err, "workload base_url")
	}
	return m, u, nil
}

func (s *server) action(w http.ResponseWriter, r *http.Request) {
	m, base, err := s.workload()
	if err != nil {
		writeError(w, err)
		return
	}
	name := r.PathValue("name")
	a, ok := m.Actions[name]
	if !ok {
		names := make([]string, 0, len(m.Actions))
		for n := range m.Actions {
			names = append(names, n)
		}
		writeError(w, apierr.New(apierr.NotFound, "plugin %s has no action %q", m.Name, name).With("actions", names))
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, &apierr.Error{Code: apierr.Usage, Message: "actions are invoked with POST, not " + r.Method})
		return
	}
	timeout := time.Duration(a.TimeoutMS) * time.Millisecond
	if timeout <= 0 {
		timeout = manifest.DefaultActionMS * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	method := strings.ToUpper(a.Method)
	if method == "" {
		method = http.MethodPost
	}
	s.reverseProxy(base, func(out *http.Request) {
		out.Method = method
		out.URL.Path, out.URL.RawPath = joinPath(base.Path, a.Path), ""
		if method == http.MethodGet || method == http.MethodDelete {
			if out.ContentLength == 0 {
				out.Body = http.NoBody
			}
		}
	}).ServeHTTP(w, r.WithContext(ctx))
}

func (s *server) proxy(w http.ResponseWriter, r *http.Request) {
	_, base, err := s.workload()
	if err != nil {
		writeError(w, err)
		return
	}
	rest := strings.TrimPrefix(r.URL.Path, "/v1")
	rawRest := ""
	if r.URL.RawPath != "" {
		rawRest = strings.TrimPrefix(r.URL.RawPath, "/v1")
	}
	s.reverseProxy(base, func(out *http.Request) {
		out.URL.Path = joinPath(base.Path, rest)
		if rawRest != "" {
			out.URL.RawPath = joinPath(base.EscapedPath(), rawRest)
		} else {
			out.URL.RawPath = ""
		}
	}).ServeHTTP(w, r)
}

func joinPath(a, b string) string {
	a = strings.TrimSuffix(a, "/")
	if !strings.HasPrefix(b, "/") {
		b = "/" + b
	}
	return a + b
}

func (s *server) reverseProxy(base *url.URL, edit func(*http.Request)) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = base.Scheme
			pr.Out.URL.Host = base.Host
			pr.Out.Host = base.Host
			pr.SetXForwarded()
			edit(pr.Out)
		},
		Transport:     s.transport,
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			code := apierr.Unavailable
			if errors.Is(err, context.DeadlineExceeded) {
				code = apierr.Timeout
			}
			if errors.Is(r.Context().Err(), context.Canceled) {
				return // the client left
			}
			s.log.Debug("proxy to workload failed", "url", base.String(), "err", err)
			writeError(w, &apierr.Error{Code: code, Message: fmt.Sprintf("workload at %s did not answer: %v", base, err)})
		},
	}
}
