package cloudhypervisor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
)

// BaseURL is where CH serves its API on the socket (the OpenAPI document's
// server: http://localhost/api/v1).
const BaseURL = "http://localhost/api/v1/"

// Client talks to one Cloud Hypervisor process over its API socket. Every
// request it can send is checked against CH's OpenAPI document in tests.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client of the API socket. It does not connect.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:      1,
		DisableKeepAlives: true, // one request per connection, as ch-remote does
	}
	return &Client{socket: socket, http: &http.Client{Transport: tr}}
}

// APIError is a non-2xx answer.
type APIError struct {
	Op     string
	Status int
	Body   string
}

func (e *APIError) Error() string {
	msg := fmt.Sprintf("cloud-hypervisor %s: HTTP %d", e.Op, e.Status)
	if b := strings.TrimSpace(e.Body); b != "" {
		msg += ": " + b
	}
	return msg
}

// PingResponse is GET /vmm.ping's answer (VmmPingResponse).
type PingResponse struct {
	BuildVersion string   `json:"build_version,omitempty"`
	Version      string   `json:"version"`
	Pid          int64    `json:"pid,omitempty"`
	Features     []string `json:"features,omitempty"`
}

// VMInfo is the part of GET /vm.info's answer (VmInfo) Volant reads.
type VMInfo struct {
	State            string          `json:"state"`
	Config           json.RawMessage `json:"config"`
	MemoryActualSize int64           `json:"memory_actual_size,omitempty"`
}

func (c *Client) do(ctx context.Context, method, op string, out any) error {
	return c.doBody(ctx, method, op, nil, out)
}

// doBody is do with a JSON request body (nil: none).
func (c *Client) doBody(ctx context.Context, method, op string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("cloud-hypervisor %s: %w", op, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, BaseURL+op, body)
	if err != nil {
		return fmt.Errorf("cloud-hypervisor %s: %w", op, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if method == http.MethodGet {
		req.Header.Set("Accept", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cloud-hypervisor %s: %w", op, err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("cloud-hypervisor %s: reading answer: %w", op, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return &APIError{Op: op, Status: resp.StatusCode, Body: string(answer)}
	}
	if out != nil {
		if err := json.Unmarshal(answer, out); err != nil {
			return fmt.Errorf("cloud-hypervisor %s: decoding answer: %w", op, err)
		}
	}
	return nil
}

// Ping is GET /vmm.ping.
func (c *Client) Ping(ctx context.Context) (PingResponse, error) {
	var r PingResponse
	err := c.do(ctx, http.MethodGet, "vmm.ping", &r)
	return r, err
}

// Info is GET /vm.info.
func (c *Client) Info(ctx context.Context) (VMInfo, error) {
	var r VMInfo
	err := c.do(ctx, http.MethodGet, "vm.info", &r)
	return r, err
}

// Counters is GET /vm.counters: per-device counters.
func (c *Client) Counters(ctx context.Context) (map[string]map[string]int64, error) {
	r := map[string]map[string]int64{}
	err := c.do(ctx, http.MethodGet, "vm.counters", &r)
	return r, err
}

// PowerButton is PUT /vm.power-button.
func (c *Client) PowerButton(ctx context.Context) error {
	return c.do(ctx, http.MethodPut, "vm.power-button", nil)
}

// ShutdownVM is PUT /vm.shutdown: the guest stops, the VMM stays.
func (c *Client) ShutdownVM(ctx context.Context) error {
	return c.do(ctx, http.MethodPut, "vm.shutdown", nil)
}

// Pause is PUT /vm.pause.
func (c *Client) Pause(ctx context.Context) error { return c.do(ctx, http.MethodPut, "vm.pause", nil) }

// Resume is PUT /vm.resume.
func (c *Client) Resume(ctx context.Context) error {
	return c.do(ctx, http.MethodPut, "vm.resume", nil)
}

// ShutdownVMM is PUT /vmm.shutdown: the VMM process exits. The connection
// dropping before the answer means it is already on its way out.
func (c *Client) ShutdownVMM(ctx context.Context) error {
	err := c.do(ctx, http.MethodPut, "vmm.shutdown", nil)
	if err != nil && isGone(err) {
		return nil
	}
	return err
}

// Snapshot is PUT /vm.snapshot: CH writes the paused VM's config, device
// state and memory into the directory of a file:// URL.
func (c *Client) Snapshot(ctx context.Context, destinationURL string) error {
	return c.doBody(ctx, http.MethodPut, "vm.snapshot", map[string]any{"destination_url": destinationURL}, nil)
}

// RestoreConfig is the body of PUT /vm.restore (RestoreConfig).
type RestoreConfig struct {
	SourceURL string `json:"source_url"`
	Prefault  bool   `json:"prefault,omitempty"`
	Resume    bool   `json:"resume,omitempty"`
}

// Restore is PUT /vm.restore: a VMM started without a VM brings one back
// from a snapshot's directory.
func (c *Client) Restore(ctx context.Context, rc RestoreConfig) error {
	return c.doBody(ctx, http.MethodPut, "vm.restore", rc, nil)
}

// isGone reports errors that mean the VMM closed or removed its socket.
func isGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.EPIPE)
}

// Close releases idle connections.
func (c *Client) Close() error {
	c.http.CloseIdleConnections()
	return nil
}
