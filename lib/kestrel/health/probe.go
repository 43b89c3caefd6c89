package health

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// The raw probe of an http:// URL: one GET over a fresh TCP connection
// (Connection: close), whose response head is read here. It judges what
// net/http's client would: the status line must be HTTP/major.minor and a
// three-digit code, header lines must be "Name: value", interim 1xx
// responses (other than 101) are skipped, and redirects are answers, not
// followed. Up to maxDrain bytes of the body are read before the
// connection closes, as the client did, so a workload does not see its
// answer cut off by a reset.

const (
	// maxHead bounds a response's status line and headers (net/http's
	// client default for the same).
	maxHead = 1 << 20
	// maxDrain is how much of the body is read before closing.
	maxDrain = 64 << 10
	// maxInterim is how many 1xx responses may precede the answer.
	maxInterim = 5
)

// target is a parsed http:// URL: where to dial and what to send.
type target struct {
	addr    string // host:port to dial
	ip      netip.AddrPort
	request []byte
}

func newTarget(u *url.URL) *target {
	port := u.Port()
	if port == "" {
		port = "80"
	}
	path := u.RequestURI()
	req := "GET " + path + " HTTP/1.1\r\nHost: " + u.Host + "\r\nUser-Agent: kestrel-health\r\nConnection: close\r\n\r\n"
	t := &target{addr: net.JoinHostPort(u.Hostname(), port), request: []byte(req)}
	// An address (the usual http://127.0.0.1:port) is dialled without
	// the resolver's code: under software emulation the first probe's
	// code is translated while the workload starts.
	if ip, err := netip.ParseAddr(u.Hostname()); err == nil && ip.Zone() == "" {
		if p, err := strconv.ParseUint(port, 10, 16); err == nil {
			t.ip = netip.AddrPortFrom(ip, uint16(p))
		}
	}
	return t
}

// dial connects to t.
func (t *target) dial(ctx context.Context) (net.Conn, error) {
	// No keep-alive probes for a connection of one request, and plain
	// TCP (Go's default for dialling) without consulting GODEBUG.
	d := net.Dialer{KeepAlive: -1}
	d.SetMultipathTCP(false)
	if t.ip.IsValid() {
		return d.DialTCP(ctx, "tcp", netip.AddrPort{}, t.ip)
	}
	return d.DialContext(ctx, "tcp", t.addr)
}

// probeRaw is one probe of c.target within c.timeout.
func (c *Checker) probeRaw(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	conn, err := c.target.dial(ctx)
	if err != nil {
		return fmt.Errorf("GET %s: %w", c.url, err)
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	// The end of ctx (the agent stopping) ends a read or write at once.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := conn.Write(c.target.request); err != nil {
		return fmt.Errorf("GET %s: %w", c.url, err)
	}
	br := bufio.NewReaderSize(conn, 4096)
	h, err := readResponse(br)
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fmt.Errorf("GET %s: %w", c.url, err)
	}
	h.drain(br)
	if h.code >= 400 {
		return fmt.Errorf("GET %s: %s", c.url, h.status)
	}
	return nil
}

// head is what the probe keeps of a response's head.
type head struct {
	code    int
	status  string // "503 Service Unavailable"
	length  int64  // Content-Length, -1 when absent
	chunked bool
}

// readResponse reads the response heads from br up to the final one.
func readResponse(br *bufio.Reader) (head, error) {
	for i := 0; ; i++ {
		h, err := readHead(br)
		if err != nil {
			return h, err
		}
		if h.code >= 200 || h.code == 101 {
			return h, nil
		}
		if i == maxInterim {
			return h, fmt.Errorf("more than %d interim (1xx) responses", maxInterim)
		}
	}
}

// readHead reads one response's status line and headers.
func readHead(br *bufio.Reader) (head, error) {
	h := head{length: -1}
	budget := maxHead
	line, err := readLine(br, &budget)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return h, fmt.Errorf("connection closed before a response: %w", io.ErrUnexpectedEOF)
		}
		return h, err
	}
	if h.code, h.status, err = parseStatusLine(line); err != nil {
		return h, err
	}
	for {
		line, err := readLine(br, &budget)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return h, fmt.Errorf("reading the response's headers: %w", err)
		}
		if line == "" {
			return h, nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			continue // the continuation of the previous header's value
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || name == "" || strings.ContainsAny(name, " \t") {
			return h, fmt.Errorf("malformed header line %q", clip(line))
		}
		value = strings.TrimSpace(value)
		switch {
		case strings.EqualFold(name, "Content-Length"):
			n, err := strconv.ParseInt(value, 10, 64)
			if err != nil || n < 0 {
				return h, fmt.Errorf("bad Content-Length %q", clip(value))
			}
			h.length = n
		case strings.EqualFold(name, "Transfer-Encoding"):
			h.chunked = h.chunked || strings.Contains(strings.ToLower(value), "chunked")
		}
	}
}

// parseStatusLine parses "HTTP/1.1 200 OK" into 200 and "200 OK".
func parseStatusLine(line string) (code int, status string, err error) {
	proto, rest, ok := strings.Cut(line, " ")
	if !ok || !validProto(proto) {
		return 0, "", fmt.Errorf("malformed HTTP status line %q", clip(line))
	}
	status = strings.TrimLeft(rest, " ")
	digits, _, _ := strings.Cut(status, " ")
	if len(digits) != 3 || digits[0] < '1' || digits[0] > '5' || !isDigit(digits[1]) || !isDigit(digits[2]) {
		return 0, "", fmt.Errorf("malformed HTTP status code %q", clip(digits))
	}
	code = int(digits[0]-'0')*100 + int(digits[1]-'0')*10 + int(digits[2]-'0')
	return code, status, nil
}

// validProto accepts "HTTP/" followed by one-digit major and minor
// versions, as net/http's ParseHTTPVersion.
func validProto(p string) bool {
	v, ok := strings.CutPrefix(p, "HTTP/")
	return ok && len(v) == 3 && isDigit(v[0]) && v[1] == '.' && isDigit(v[2])
}

func isDigit(b byte) bool { return '0' <= b && b <= '9' }

// readLine reads one CRLF- or LF-terminated line without its end,
// counting its bytes against budget.
func readLine(br *bufio.Reader, budget *int) (string, error) {
	var line []byte
	for {
		frag, err := br.ReadSlice('\n')
		*budget -= len(frag)
		if *budget < 0 {
			return "", fmt.Errorf("response head longer than %d bytes", maxHead)
		}
		line = append(line, frag...)
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return "", err
		}
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return string(line), nil
}

// drain reads up to maxDrain bytes of the body: its Content-Length, or up
// to the end of the connection when the body has no length. A chunked
// body and bodyless statuses are not read. Errors do not matter here.
func (h head) drain(br *bufio.Reader) {
	switch {
	case h.code == 204 || h.code == 304 || h.code == 101 || h.chunked:
		return
	case h.length >= 0:
		_, _ = io.CopyN(io.Discard, br, min(h.length, maxDrain))
	default:
		_, _ = io.CopyN(io.Discard, br, maxDrain)
	}
}

// clip shortens what a bad response sent for an error message.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
