package cloudhypervisor

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// BaseURL is where CH serves its API on the socket (the OpenAPI document's
// server: http://localhost/api/v1).
const BaseURL = "http://localhost/api/v1/"

// Client talks to one Cloud Hypervisor process over its API socket. Every
// request it can send is checked against CH's OpenAPI document in tests.
//
// It speaks the little HTTP/1.1 the API needs itself, one request per
// connection as ch-remote does: net/http's client (with TLS, HTTP/2 and
// proxies) would be linked into, and initialized in, every volant-launch
// start for a handful of requests over a unix socket.
type Client struct {
	socket string
}

// NewClient returns a client of the API socket. It does not connect.
func NewClient(socket string) *Client { return &Client{socket: socket} }

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
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("cloud-hypervisor %s: %w", op, err)
		}
		body = b
	}
	status, answer, err := c.roundTrip(ctx, method, op, body)
	if err != nil {
		return fmt.Errorf("cloud-hypervisor %s: %w", op, err)
	}
	if status < 200 || status > 299 {
		return &APIError{Op: op, Status: status, Body: string(answer)}
	}
	if out != nil {
		if err := json.Unmarshal(answer, out); err != nil {
			return fmt.Errorf("cloud-hypervisor %s: decoding answer: %w", op, err)
		}
	}
	return nil
}

// maxAnswer bounds an answer's body.
const maxAnswer = 4 << 20

// roundTrip sends one request on a new connection and reads the answer:
// its status and body (by Content-Length, chunked, or up to the close).
func (c *Client) roundTrip(ctx context.Context, method, op string, body []byte) (int, []byte, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return 0, nil, err
	}
	defer conn.Close()
	// The context's end (its deadline too) interrupts the exchange.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	fail := func(err error) (int, []byte, error) {
		if ctx.Err() != nil {
			return 0, nil, ctx.Err()
		}
		return 0, nil, err
	}

	var req bytes.Buffer
	fmt.Fprintf(&req, "%s /api/v1/%s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n", method, op)
	if method == "GET" {
		req.WriteString("Accept: application/json\r\n")
	}
	if body != nil {
		fmt.Fprintf(&req, "Content-Type: application/json\r\nContent-Length: %d\r\n", len(body))
	} else if method != "GET" {
		req.WriteString("Content-Length: 0\r\n")
	}
	req.WriteString("\r\n")
	req.Write(body)
	if _, err := conn.Write(req.Bytes()); err != nil {
		return fail(err)
	}

	br := bufio.NewReader(conn)
	line, err := br.ReadString('\n')
	if err != nil {
		if errors.Is(err, io.EOF) && line != "" {
			err = io.ErrUnexpectedEOF
		}
		return fail(err)
	}
	proto, rest, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
	code, _, _ := strings.Cut(rest, " ")
	status, err := strconv.Atoi(code)
	if !strings.HasPrefix(proto, "HTTP/1.") || err != nil || status < 100 || status > 999 {
		return 0, nil, fmt.Errorf("malformed HTTP status line %q", line)
	}
	length, chunked := int64(-1), false
	for {
		h, err := br.ReadString('\n')
		if err != nil {
			return fail(io.ErrUnexpectedEOF)
		}
		h = strings.TrimRight(h, "\r\n")
		if h == "" {
			break
		}
		k, v, _ := strings.Cut(h, ":")
		v = strings.TrimSpace(v)
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "content-length":
			if length, err = strconv.ParseInt(v, 10, 64); err != nil || length < 0 {
				return 0, nil, fmt.Errorf("malformed Content-Length %q", v)
			}
		case "transfer-encoding":
			chunked = strings.EqualFold(v, "chunked")
		}
	}
	var r io.Reader = br
	switch {
	case status == 204 || status == 304 || status < 200 || method == "HEAD":
		return status, nil, nil
	case chunked:
		r = &chunkedReader{r: br}
	case length >= 0:
		r = io.LimitReader(br, length)
	}
	answer, err := io.ReadAll(io.LimitReader(r, maxAnswer))
	if err == nil && length >= 0 && !chunked && int64(len(answer)) < min(length, maxAnswer) {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		if ctx.Err() != nil {
			return 0, nil, ctx.Err()
		}
		return 0, nil, fmt.Errorf("reading answer: %w", err)
	}
	return status, answer, nil
}

// chunkedReader reads a chunked HTTP/1.1 body (RFC 9112 7.1), trailers
// ignored.
type chunkedReader struct {
	r    *bufio.Reader
	left int64
	done bool
}

func (c *chunkedReader) Read(p []byte) (int, error) {
	for c.left == 0 {
		if c.done {
			return 0, io.EOF
		}
		line, err := c.r.ReadString('\n')
		if err != nil {
			return 0, io.ErrUnexpectedEOF
		}
		size, _, _ := strings.Cut(strings.TrimRight(line, "\r\n"), ";")
		n, err := strconv.ParseInt(strings.TrimSpace(size), 16, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("malformed chunk size %q", line)
		}
		if n == 0 {
			c.done = true
			for { // trailers, up to the empty line
				t, err := c.r.ReadString('\n')
				if err != nil || strings.TrimRight(t, "\r\n") == "" {
					break
				}
			}
			return 0, io.EOF
		}
		c.left = n
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	if c.left == 0 && err == nil {
		if _, err := c.r.Discard(2); err != nil { // the chunk's CRLF
			return n, io.ErrUnexpectedEOF
		}
	}
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// Ping is GET /vmm.ping.
func (c *Client) Ping(ctx context.Context) (PingResponse, error) {
	var r PingResponse
	err := c.do(ctx, "GET", "vmm.ping", &r)
	return r, err
}

// Info is GET /vm.info.
func (c *Client) Info(ctx context.Context) (VMInfo, error) {
	var r VMInfo
	err := c.do(ctx, "GET", "vm.info", &r)
	return r, err
}

// Counters is GET /vm.counters: per-device counters.
func (c *Client) Counters(ctx context.Context) (map[string]map[string]int64, error) {
	r := map[string]map[string]int64{}
	err := c.do(ctx, "GET", "vm.counters", &r)
	return r, err
}

// PowerButton is PUT /vm.power-button.
func (c *Client) PowerButton(ctx context.Context) error {
	return c.do(ctx, "PUT", "vm.power-button", nil)
}

// ShutdownVM is PUT /vm.shutdown: the guest stops, the VMM stays.
func (c *Client) ShutdownVM(ctx context.Context) error {
	return c.do(ctx, "PUT", "vm.shutdown", nil)
}

// Pause is PUT /vm.pause.
func (c *Client) Pause(ctx context.Context) error { return c.do(ctx, "PUT", "vm.pause", nil) }

// Resume is PUT /vm.resume.
func (c *Client) Resume(ctx context.Context) error {
	return c.do(ctx, "PUT", "vm.resume", nil)
}

// ShutdownVMM is PUT /vmm.shutdown: the VMM process exits. The connection
// dropping before the answer means it is already on its way out.
func (c *Client) ShutdownVMM(ctx context.Context) error {
	err := c.do(ctx, "PUT", "vmm.shutdown", nil)
	if err != nil && isGone(err) {
		return nil
	}
	return err
}

// Snapshot is PUT /vm.snapshot: CH writes the paused VM's config, device
// state and memory into the directory of a file:// URL.
func (c *Client) Snapshot(ctx context.Context, destinationURL string) error {
	return c.doBody(ctx, "PUT", "vm.snapshot", map[string]any{"destination_url": destinationURL}, nil)
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
	return c.doBody(ctx, "PUT", "vm.restore", rc, nil)
}

// isGone reports errors that mean the VMM closed or removed its socket.
func isGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.EPIPE)
}

// Close releases the client's resources (none: each request has its own
// connection).
func (c *Client) Close() error { return nil }
