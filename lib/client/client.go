// Package client is the Go client of volantd's REST API: every route, typed
// with lib/api's request and response types, errors as *apierr.Error, the
// event stream with automatic resume, and log following. volar and
// `volantd mcp` are built on it.
//
//	c, err := client.New("unix:///run/volant/volantd.sock", client.Options{})
//	vm, err := c.CreateVM(ctx, api.CreateVMRequest{Name: "web1", Plugin: "nginx"})
//	vm, err = c.WaitVM(ctx, "web1", api.VMRunning, time.Minute)
//	if apierr.Is(err, apierr.NotFound) { ... }
//
// # Addresses
//
// New takes where volantd listens:
//
//	unix:///run/volant/volantd.sock   a unix socket (the default)
//	/run/volant/volantd.sock          the same, as a bare path
//	http://127.0.0.1:7777             TCP (volantd --listen --insecure-tcp; needs a token)
//	https://volant.example:7777       TCP over TLS (volantd --tls-cert; Options.CAFile
//	                                  for a self-signed certificate)
//
// FromEnv reads VOLANT_HOST (an address as above; default the unix socket),
// VOLANT_TOKEN (the bearer token for TCP) and VOLANT_CA_FILE (Options.CAFile).
//
// # Errors
//
// Every method returns *apierr.Error on failure: the daemon's own error body
// for 4xx/5xx answers ({"code","message","details"}), UNAVAILABLE when the
// daemon cannot be reached, CANCELED or TIMEOUT when ctx ends. Test with
// apierr.Is(err, apierr.NotFound) or apierr.CodeOf(err).
//
// # Events
//
// Events opens GET /api/v1/events and returns an *EventStream whose Next
// yields events in ID order. When the connection drops (daemon restart,
// network, or the daemon disconnecting a reader that fell behind), the
// stream reconnects with Last-Event-ID and continues without losing or
// repeating an event, until its context ends.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/layout"
)

// DefaultSocket is where volantd listens unless told otherwise (lib/layout).
const DefaultSocket = layout.DefaultSocket

// Environment variables FromEnv reads.
const (
	EnvHost  = layout.EnvHost
	EnvToken = "VOLANT_TOKEN"
	// EnvCAFile names PEM certificates to trust for an https address (a
	// self-signed volantd: volar setup --tls).
	EnvCAFile = "VOLANT_CA_FILE"
)

// Options tune a Client. The zero value is fine for the unix socket.
type Options struct {
	// Token is sent as "Authorization: Bearer <token>" (required by
	// volantd on TCP, ignored on its unix socket).
	Token string
	// Timeout bounds each non-streaming request (default 2 minutes; a VM
	// create waits for its hypervisor to start). Streams (events, logs
	// with Follow) are bounded only by their context.
	Timeout time.Duration
	// Transport replaces the HTTP transport (tests, TLS settings). Its
	// dialer must reach the address given to New.
	Transport http.RoundTripper
	// UserAgent is sent with every request (default "volant-client").
	UserAgent string
	// CAFile holds the PEM certificates an https daemon's certificate must
	// chain to (default the system's roots); ignored with Transport.
	CAFile string
}

// Client talks to one volantd. It is safe for concurrent use.
type Client struct {
	base    *url.URL // scheme + host; path prefix of the daemon
	hc      *http.Client
	token   string
	timeout time.Duration
	ua      string
	addr    string
}

// New returns a client for the daemon at addr (see the package comment).
func New(addr string, o Options) (*Client, error) {
	if addr == "" {
		addr = DefaultSocket
	}
	c := &Client{token: o.Token, timeout: o.Timeout, ua: o.UserAgent, addr: addr}
	if c.timeout <= 0 {
		c.timeout = 2 * time.Minute
	}
	if c.ua == "" {
		c.ua = "volant-client"
	}
	tr := o.Transport
	switch {
	case strings.HasPrefix(addr, "unix://") || strings.HasPrefix(addr, "/"):
		sock := strings.TrimPrefix(addr, "unix://")
		if sock == "" || !strings.HasPrefix(sock, "/") {
			return nil, apierr.New(apierr.InvalidInput, "volantd address %q: a unix socket needs an absolute path", addr)
		}
		c.base = &url.URL{Scheme: "http", Host: "volantd"}
		if tr == nil {
			tr = &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "unix", sock)
				},
				MaxIdleConnsPerHost: 8,
				IdleConnTimeout:     30 * time.Second,
			}
		}
	case strings.HasPrefix(addr, "http://") || strings.HasPrefix(addr, "https://"):
		u, err := url.Parse(addr)
		if err != nil || u.Host == "" {
			return nil, apierr.New(apierr.InvalidInput, "volantd address %q is not a URL such as http://127.0.0.1:7777", addr)
		}
		u.Path = strings.TrimSuffix(u.Path, "/")
		u.RawQuery, u.Fragment = "", ""
		c.base = u
		if tr == nil {
			t := &http.Transport{Proxy: http.ProxyFromEnvironment, MaxIdleConnsPerHost: 8, IdleConnTimeout: 30 * time.Second}
			if o.CAFile != "" {
				pem, err := os.ReadFile(o.CAFile)
				if err != nil {
					return nil, apierr.Wrap(apierr.InvalidInput, err, "reading the CA file").With("file", o.CAFile)
				}
				pool := x509.NewCertPool()
				if !pool.AppendCertsFromPEM(pem) {
					return nil, apierr.New(apierr.InvalidInput, "the CA file %s holds no PEM certificate", o.CAFile).With("file", o.CAFile)
				}
				t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
			}
			tr = t
		}
	default:
		return nil, apierr.New(apierr.InvalidInput,
			"volantd address %q: use unix:///path/to.sock, /path/to.sock, http://host:port or https://host:port", addr)
	}
	c.hc = &http.Client{Transport: tr}
	return c, nil
}

// FromEnv returns a client for $VOLANT_HOST (default the unix socket) with
// token $VOLANT_TOKEN; getenv is os.Getenv or a test's stand-in.
func FromEnv(getenv func(string) string, o Options) (*Client, error) {
	if o.Token == "" {
		o.Token = getenv(EnvToken)
	}
	if o.CAFile == "" {
		o.CAFile = getenv(EnvCAFile)
	}
	return New(getenv(EnvHost), o)
}

// Addr is the address the client was made for.
func (c *Client) Addr() string { return c.addr }

// request is one API call.
type request struct {
	method string
	path   string // below the base, starting with /
	query  url.Values
	body   any // JSON-encoded unless it is []byte, json.RawMessage or an io.Reader (sent as is)
	header http.Header
	stream bool // no per-request timeout; the caller closes the body
}

func (c *Client) do(ctx context.Context, r request) (*http.Response, context.CancelFunc, error) {
	cancel := context.CancelFunc(func() {})
	if !r.stream {
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
	}
	var body io.Reader
	switch b := r.body.(type) {
	case nil:
	case json.RawMessage:
		body = bytes.NewReader(b)
	case []byte:
		body = bytes.NewReader(b)
	case io.Reader:
		body = b
	default:
		data, err := json.Marshal(b)
		if err != nil {
			cancel()
			return nil, nil, apierr.Wrap(apierr.InvalidInput, err, "encoding the request")
		}
		body = bytes.NewReader(data)
	}
	u := *c.base
	u.Path += r.path
	if len(r.query) > 0 {
		u.RawQuery = r.query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, r.method, u.String(), body)
	if err != nil {
		cancel()
		return nil, nil, apierr.Wrap(apierr.InvalidInput, err, "building the request")
	}
	for k, vs := range r.header {
		req.Header[k] = vs
	}
	if body != nil && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if req.Header.Get("Accept") == "" {
		req.Header.Set("Accept", "application/json")
	}
	req.Header.Set("User-Agent", c.ua)
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		err = c.transportErr(ctx, r, err)
		cancel()
		return nil, nil, err
	}
	if resp.StatusCode >= 300 {
		defer cancel()
		defer resp.Body.Close()
		return nil, nil, decodeError(resp)
	}
	return resp, cancel, nil
}

// transportErr turns a failed round trip into an *apierr.Error.
func (c *Client) transportErr(ctx context.Context, r request, err error) error {
	what := r.method + " " + r.path
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return apierr.Wrap(apierr.Timeout, err, what)
	case errors.Is(ctx.Err(), context.Canceled):
		return apierr.Wrap(apierr.Canceled, err, what)
	}
	return apierr.Wrap(apierr.Unavailable, err, fmt.Sprintf("%s: cannot reach volantd at %s", what, c.addr)).
		With("addr", c.addr).With("hint", "is volantd running? set VOLANT_HOST to its socket or URL")
}

// decodeError reads an apierr body, or makes one from the status.
func decodeError(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var e apierr.Error
	if json.Unmarshal(data, &e) == nil && e.Code != "" {
		if e.Details == nil {
			e.Details = map[string]any{}
		}
		e.Details["http_status"] = resp.StatusCode
		return &e
	}
	code := codeForStatus(resp.StatusCode)
	msg := strings.TrimSpace(string(data))
	if msg == "" {
		msg = resp.Status
	}
	return apierr.New(code, "volantd answered %s: %s", resp.Status, msg).With("http_status", resp.StatusCode)
}

// codeForStatus guesses a code for an answer without an apierr body (a
// proxy in between, or not volantd at all).
func codeForStatus(status int) apierr.Code {
	switch status {
	case http.StatusBadRequest:
		return apierr.InvalidInput
	case http.StatusUnauthorized:
		return apierr.Unauthorized
	case http.StatusForbidden:
		return apierr.PermissionDenied
	case http.StatusNotFound:
		return apierr.NotFound
	case http.StatusConflict:
		return apierr.Conflict
	case http.StatusRequestEntityTooLarge:
		return apierr.TooLarge
	case http.StatusNotImplemented:
		return apierr.NotSupported
	case http.StatusBadGateway, http.StatusServiceUnavailable:
		return apierr.Unavailable
	case http.StatusGatewayTimeout:
		return apierr.Timeout
	}
	return apierr.Internal
}

// call does a request and decodes a JSON answer into out (nil: discard).
func (c *Client) call(ctx context.Context, r request, out any) error {
	resp, cancel, err := c.do(ctx, r)
	if err != nil {
		return err
	}
	defer cancel()
	defer resp.Body.Close()
	if out == nil || resp.StatusCode == http.StatusNoContent {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if raw, ok := out.(*json.RawMessage); ok {
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return apierr.Wrap(apierr.Unavailable, err, "reading the answer of "+r.method+" "+r.path)
		}
		*raw = b
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return apierr.Wrap(apierr.Internal, err, "decoding the answer of "+r.method+" "+r.path)
	}
	return nil
}

func esc(name string) string { return url.PathEscape(name) }

// Health reports whether the daemon is up and has finished reconciling.
func (c *Client) Health(ctx context.Context) (*api.Health, error) {
	var h api.Health
	return &h, c.call(ctx, request{method: http.MethodGet, path: "/healthz"}, &h)
}

// Network returns the guest network (the pool VMs take addresses from).
func (c *Client) Network(ctx context.Context) (*api.Network, error) {
	var n api.Network
	return &n, c.call(ctx, request{method: http.MethodGet, path: api.Prefix + "/network"}, &n)
}

// SetNetwork makes subnet volantd's guest subnet, kept across restarts;
// CONFLICT while VMs hold addresses in another one (see PUT /api/v1/network).
func (c *Client) SetNetwork(ctx context.Context, subnet string) (*api.Network, error) {
	var n api.Network
	return &n, c.call(ctx, request{method: http.MethodPut, path: api.Prefix + "/network", body: api.SetNetworkRequest{Subnet: subnet}}, &n)
}

// Metrics returns volantd's GET /metrics, in the Prometheus text format
// (the caller closes it).
func (c *Client) Metrics(ctx context.Context) (io.ReadCloser, error) {
	resp, cancel, err := c.do(ctx, request{method: http.MethodGet, path: "/metrics",
		header: http.Header{"Accept": {"text/plain"}}})
	if err != nil {
		return nil, err
	}
	return &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}, nil
}

// OpenAPI returns the daemon's OpenAPI document.
func (c *Client) OpenAPI(ctx context.Context) (json.RawMessage, error) {
	var doc json.RawMessage
	return doc, c.call(ctx, request{method: http.MethodGet, path: "/openapi.json"}, &doc)
}

// --- plugins ---

// ListPlugins returns the installed plugins, by name.
func (c *Client) ListPlugins(ctx context.Context) ([]api.Plugin, error) {
	var l api.PluginList
	if err := c.call(ctx, request{method: http.MethodGet, path: api.Prefix + "/plugins"}, &l); err != nil {
		return nil, err
	}
	return l.Plugins, nil
}

// InstallOptions tune InstallPlugin.
type InstallOptions struct {
	// Replace an installed plugin of the same name (VMs already created
	// keep the manifest they were created with).
	Replace bool
	// Signature is the manifest's minisign signature (the text of its
	// .minisig file); the manifest is then sent as a SignedPluginRequest,
	// byte for byte as signed.
	Signature []byte
}

// InstallPlugin installs a plugin from its manifest (JSON). The daemon
// validates it (INVALID_MANIFEST lists every problem), fetches remote
// artifacts and checks every checksum (CHECKSUM_MISMATCH), and checks
// o.Signature with its trusted keys (SIGNATURE_INVALID; SIGNATURE_REQUIRED
// without one when it requires signed plugins). Installing a
// name that exists is CONFLICT unless o.Replace.
func (c *Client) InstallPlugin(ctx context.Context, manifest []byte, o InstallOptions) (*api.Plugin, error) {
	q := url.Values{}
	if o.Replace {
		q.Set("replace", "true")
	}
	var body any = json.RawMessage(manifest)
	if len(o.Signature) > 0 {
		body = api.SignedPluginRequest{Manifest: string(manifest), Signature: string(o.Signature)}
	}
	var p api.Plugin
	return &p, c.call(ctx, request{method: http.MethodPost, path: api.Prefix + "/plugins", query: q, body: body}, &p)
}

// InstallImage builds a plugin from a container image in volantd (POST
// /api/v1/plugins with an InstallImageRequest), or finds the one built
// from that image digest before; built says which. A build takes minutes:
// it is not bounded by the client's timeout, only by ctx (and goes on in
// volantd when ctx ends). Its steps are plugin.build.* events.
func (c *Client) InstallImage(ctx context.Context, req api.InstallImageRequest) (p *api.Plugin, built bool, err error) {
	resp, cancel, err := c.do(ctx, request{method: http.MethodPost, path: api.Prefix + "/plugins", body: req, stream: true})
	if err != nil {
		return nil, false, err
	}
	defer cancel()
	defer resp.Body.Close()
	p = &api.Plugin{}
	if err := json.NewDecoder(resp.Body).Decode(p); err != nil {
		return nil, false, apierr.Wrap(apierr.Internal, err, "decoding the answer of POST "+api.Prefix+"/plugins")
	}
	return p, resp.StatusCode == http.StatusCreated, nil
}

// Plugin returns one plugin (NOT_FOUND if it is not installed).
func (c *Client) Plugin(ctx context.Context, name string) (*api.Plugin, error) {
	var p api.Plugin
	return &p, c.call(ctx, request{method: http.MethodGet, path: api.Prefix + "/plugins/" + esc(name)}, &p)
}

// PluginManifest returns the manifest of a plugin as installed.
func (c *Client) PluginManifest(ctx context.Context, name string) (json.RawMessage, error) {
	var m json.RawMessage
	return m, c.call(ctx, request{method: http.MethodGet, path: agentapi.ManifestPath(name)}, &m)
}

// EnablePlugin allows VMs to be created from a plugin.
func (c *Client) EnablePlugin(ctx context.Context, name string) (*api.Plugin, error) {
	var p api.Plugin
	return &p, c.call(ctx, request{method: http.MethodPost, path: api.Prefix + "/plugins/" + esc(name) + "/enable"}, &p)
}

// DisablePlugin stops new VMs from being created from a plugin; running
// VMs are left alone.
func (c *Client) DisablePlugin(ctx context.Context, name string) (*api.Plugin, error) {
	var p api.Plugin
	return &p, c.call(ctx, request{method: http.MethodPost, path: api.Prefix + "/plugins/" + esc(name) + "/disable"}, &p)
}

// RemovePlugin uninstalls a plugin and returns it as it was. It is
// CONFLICT while a VM or deployment uses the plugin.
func (c *Client) RemovePlugin(ctx context.Context, name string) (*api.Plugin, error) {
	var p api.Plugin
	return &p, c.call(ctx, request{method: http.MethodDelete, path: api.Prefix + "/plugins/" + esc(name)}, &p)
}

// --- VMs ---

// ListVMs returns the VMs matching f, by name.
func (c *Client) ListVMs(ctx context.Context, f api.VMFilter) ([]api.VM, error) {
	q := url.Values{}
	if f.Plugin != "" {
		q.Set("plugin", f.Plugin)
	}
	if f.Deployment != "" {
		q.Set("deployment", f.Deployment)
	}
	if f.State != "" {
		q.Set("state", string(f.State))
	}
	if f.Label != "" {
		q.Set("label", f.Label)
	}
	var l api.VMList
	if err := c.call(ctx, request{method: http.MethodGet, path: api.Prefix + "/vms", query: q}, &l); err != nil {
		return nil, err
	}
	return l.VMs, nil
}

// CreateVM creates and starts a VM. It returns once the hypervisor runs,
// normally in state "starting" with its IP; use WaitVM for "running".
// A failed create leaves nothing behind.
func (c *Client) CreateVM(ctx context.Context, req api.CreateVMRequest) (*api.VM, error) {
	var vm api.VM
	return &vm, c.call(ctx, request{method: http.MethodPost, path: api.Prefix + "/vms", body: req}, &vm)
}

// VM returns one VM (NOT_FOUND if there is none of that name).
func (c *Client) VM(ctx context.Context, name string) (*api.VM, error) {
	var vm api.VM
	return &vm, c.call(ctx, request{method: http.MethodGet, path: api.Prefix + "/vms/" + esc(name)}, &vm)
}

func (c *Client) vmAction(ctx context.Context, method, name, action string) (*api.VM, error) {
	p := api.Prefix + "/vms/" + esc(name)
	if action != "" {
		p += "/" + action
	}
	var vm api.VM
	return &vm, c.call(ctx, request{method: method, path: p}, &vm)
}

// PauseVM pauses a running VM's vCPUs (state "paused"; a paused VM is
// returned as is).
func (c *Client) PauseVM(ctx context.Context, name string) (*api.VM, error) {
	return c.vmAction(ctx, http.MethodPost, name, "pause")
}

// ResumeVM resumes a paused VM (a running one is returned as is).
func (c *Client) ResumeVM(ctx context.Context, name string) (*api.VM, error) {
	return c.vmAction(ctx, http.MethodPost, name, "resume")
}

// StartVM starts a stopped, crashed or failed VM (a VM already starting or
// running is returned as is).
func (c *Client) StartVM(ctx context.Context, name string) (*api.VM, error) {
	return c.vmAction(ctx, http.MethodPost, name, "start")
}

// StopVM stops a VM (ACPI power button, then a hard stop); stopping a
// stopped VM succeeds. The VM keeps its address.
func (c *Client) StopVM(ctx context.Context, name string) (*api.VM, error) {
	return c.vmAction(ctx, http.MethodPost, name, "stop")
}

// RestartVM stops and starts a VM.
func (c *Client) RestartVM(ctx context.Context, name string) (*api.VM, error) {
	return c.vmAction(ctx, http.MethodPost, name, "restart")
}

// DeleteVM stops a VM, frees its address and tap, and forgets it. It
// returns the VM as it was, with state "deleted".
func (c *Client) DeleteVM(ctx context.Context, name string) (*api.VM, error) {
	return c.vmAction(ctx, http.MethodDelete, name, "")
}

// WaitVM waits until the VM is in state, for at most timeout (0: the
// daemon's default of 30 s). It fails with TIMEOUT when the time runs out,
// and with CONFLICT when the VM reaches a state it cannot leave by itself
// (stopped, crashed or failed while waiting for running, for example).
func (c *Client) WaitVM(ctx context.Context, name string, state api.VMState, timeout time.Duration) (*api.VM, error) {
	q := url.Values{"state": {string(state)}}
	if timeout > 0 {
		q.Set("timeout", timeout.String())
	}
	var vm api.VM
	r := request{method: http.MethodGet, path: api.Prefix + "/vms/" + esc(name) + "/wait", query: q}
	if timeout+30*time.Second > c.timeout {
		r.stream = true // the server bounds it; don't cut it short here
	}
	return &vm, c.call(ctx, r, &vm)
}

// VMLogs returns the VM's serial console log. With o.Follow the reader
// keeps delivering what the guest writes until ctx ends, the reader is
// closed, or the VM is deleted. The caller closes it.
func (c *Client) VMLogs(ctx context.Context, name string, o api.LogOptions) (io.ReadCloser, error) {
	q := url.Values{}
	if o.Follow {
		q.Set("follow", "1")
	}
	if o.Tail > 0 {
		q.Set("tail", strconv.Itoa(o.Tail))
	}
	if o.Stream != "" {
		q.Set("stream", o.Stream)
	}
	if !o.Since.IsZero() {
		q.Set("since", o.Since.UTC().Format(time.RFC3339Nano))
	}
	if o.Timestamps {
		q.Set("timestamps", "1")
	}
	resp, cancel, err := c.do(ctx, request{method: http.MethodGet, path: api.Prefix + "/vms/" + esc(name) + "/logs",
		query: q, stream: o.Follow, header: http.Header{"Accept": {"text/plain"}}})
	if err != nil {
		return nil, err
	}
	return &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}, nil
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// ReportAgent posts a kestrel status report for vm, as kestrel does.
func (c *Client) ReportAgent(ctx context.Context, vm string, st agentapi.Status) error {
	return c.call(ctx, request{method: http.MethodPost, path: agentapi.ReportPath(vm), body: st}, nil)
}

// --- deployments ---

// ListDeployments returns the deployments, by name.
func (c *Client) ListDeployments(ctx context.Context) ([]api.Deployment, error) {
	var l api.DeploymentList
	if err := c.call(ctx, request{method: http.MethodGet, path: api.Prefix + "/deployments"}, &l); err != nil {
		return nil, err
	}
	return l.Deployments, nil
}

// CreateDeployment creates a deployment; its replicas are created in the
// background (watch the events or Deployment's Current).
func (c *Client) CreateDeployment(ctx context.Context, req api.CreateDeploymentRequest) (*api.Deployment, error) {
	var d api.Deployment
	return &d, c.call(ctx, request{method: http.MethodPost, path: api.Prefix + "/deployments", body: req}, &d)
}

// Deployment returns one deployment.
func (c *Client) Deployment(ctx context.Context, name string) (*api.Deployment, error) {
	var d api.Deployment
	return &d, c.call(ctx, request{method: http.MethodGet, path: api.Prefix + "/deployments/" + esc(name)}, &d)
}

// ScaleDeployment sets a deployment's replica count; replicas are created
// or deleted (highest index first) in the background.
func (c *Client) ScaleDeployment(ctx context.Context, name string, replicas int) (*api.Deployment, error) {
	var d api.Deployment
	return &d, c.call(ctx, request{method: http.MethodPost, path: api.Prefix + "/deployments/" + esc(name) + "/scale",
		body: api.ScaleRequest{Replicas: replicas}}, &d)
}

// UpdateDeployment starts a rolling update of a deployment's replicas to
// another plugin version (PATCH /api/v1/deployments/{name}); the replicas
// are replaced in the background (watch Rollout or the events).
func (c *Client) UpdateDeployment(ctx context.Context, name string, req api.UpdateDeploymentRequest) (*api.Deployment, error) {
	var d api.Deployment
	return &d, c.call(ctx, request{method: http.MethodPatch, path: api.Prefix + "/deployments/" + esc(name), body: req}, &d)
}

// Rollout returns a deployment's latest rolling update and its progress.
func (c *Client) Rollout(ctx context.Context, name string) (*api.Rollout, error) {
	var r api.Rollout
	return &r, c.call(ctx, request{method: http.MethodGet, path: api.Prefix + "/deployments/" + esc(name) + "/rollout"}, &r)
}

// UndoRollout rolls back the update under way, or starts one back to the
// version before the last complete one.
func (c *Client) UndoRollout(ctx context.Context, name string) (*api.Rollout, error) {
	var r api.Rollout
	return &r, c.call(ctx, request{method: http.MethodPost, path: api.Prefix + "/deployments/" + esc(name) + "/rollout/undo"}, &r)
}

// RolloutHistory lists a deployment's rolling updates, newest first.
func (c *Client) RolloutHistory(ctx context.Context, name string) ([]api.Rollout, error) {
	var l api.RolloutList
	if err := c.call(ctx, request{method: http.MethodGet, path: api.Prefix + "/deployments/" + esc(name) + "/rollouts"}, &l); err != nil {
		return nil, err
	}
	return l.Rollouts, nil
}

// DeleteDeployment deletes a deployment and its VMs, and returns it as it was.
func (c *Client) DeleteDeployment(ctx context.Context, name string) (*api.Deployment, error) {
	var d api.Deployment
	return &d, c.call(ctx, request{method: http.MethodDelete, path: api.Prefix + "/deployments/" + esc(name)}, &d)
}

// Console attaches to a VM's serial console: GET /api/v1/vms/{name}/console
// upgraded to a raw byte stream (HTTP/1.1 "Upgrade: tcp", as Docker's
// attach). What is written goes to the guest's serial port; what is read is
// what the guest writes there. The caller closes the stream to detach.
// Before the upgrade the daemon answers with an ordinary error: NOT_FOUND,
// CONFLICT (no live console, or another client attached), UNAVAILABLE
// (the VM's run is still starting: its console is not up yet).
func (c *Client) Console(ctx context.Context, name string) (io.ReadWriteCloser, error) {
	resp, cancel, err := c.do(ctx, request{method: http.MethodGet, path: api.Prefix + "/vms/" + esc(name) + "/console",
		stream: true, header: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"tcp"}, "Accept": {"*/*"}}})
	if err != nil {
		return nil, err
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if resp.StatusCode != http.StatusSwitchingProtocols || !ok {
		resp.Body.Close()
		cancel()
		return nil, apierr.New(apierr.NotSupported, "volantd at %s answered the console request with %s instead of switching protocols", c.addr, resp.Status).
			With("http_status", resp.StatusCode)
	}
	return &cancelOnCloseRW{ReadWriteCloser: rwc, cancel: cancel}, nil
}

type cancelOnCloseRW struct {
	io.ReadWriteCloser
	cancel context.CancelFunc
}

func (c *cancelOnCloseRW) Close() error {
	err := c.ReadWriteCloser.Close()
	c.cancel()
	return err
}
