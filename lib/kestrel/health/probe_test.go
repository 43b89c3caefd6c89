package health

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/manifest"
)

func TestParseStatusLine(t *testing.T) {
	for _, tc := range []struct {
		line   string
		code   int
		status string
		bad    bool
	}{
		{line: "HTTP/1.1 200 OK", code: 200, status: "200 OK"},
		{line: "HTTP/1.0 503 Service Unavailable", code: 503, status: "503 Service Unavailable"},
		{line: "HTTP/1.1 204", code: 204, status: "204"},
		{line: "HTTP/1.1  302 Found", code: 302, status: "302 Found"},
		{line: "HTTP/2.0 404 Not Found", code: 404, status: "404 Not Found"},
		{line: "HTTP/1.1 100 Continue", code: 100, status: "100 Continue"},
		{line: "", bad: true},
		{line: "HTTP/1.1", bad: true},
		{line: "HTTP/1.1 OK", bad: true},
		{line: "HTTP/1.1 20 OK", bad: true},
		{line: "HTTP/1.1 2000 OK", bad: true},
		{line: "HTTP/1.1 2x0 OK", bad: true},
		{line: "HTTP/1.1 099 low", bad: true},
		{line: "HTTP/1.1 600 high", bad: true},
		{line: "HTTP/11 200 OK", bad: true},
		{line: "HTTPS/1.1 200 OK", bad: true},
		{line: "ICY 200 OK", bad: true},
		{line: "SSH-2.0-OpenSSH_9.2", bad: true},
		{line: "<html>200</html>", bad: true},
	} {
		code, status, err := parseStatusLine(tc.line)
		if tc.bad {
			if err == nil {
				t.Errorf("%q: accepted as %d %q", tc.line, code, status)
			}
			continue
		}
		if err != nil || code != tc.code || status != tc.status {
			t.Errorf("%q: %d %q %v, want %d %q", tc.line, code, status, err, tc.code, tc.status)
		}
	}
}

func TestReadResponse(t *testing.T) {
	for _, tc := range []struct {
		name    string
		resp    string
		code    int
		length  int64
		chunked bool
		err     string
	}{
		{name: "plain", resp: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n", code: 200, length: 3},
		{name: "LF only", resp: "HTTP/1.0 200 OK\nContent-Type: text/plain\n\nok\n", code: 200, length: -1},
		{name: "case-insensitive names", resp: "HTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n", code: 500, length: 0},
		{name: "chunked", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nok\n\r\n0\r\n\r\n", code: 200, length: -1, chunked: true},
		{name: "folded header", resp: "HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\n\r\n", code: 200, length: -1},
		{name: "interim responses skipped", resp: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 404 Not Found\r\n\r\n", code: 404, length: -1},
		{name: "switching protocols is final", resp: "HTTP/1.1 101 Switching Protocols\r\n\r\n", code: 101, length: -1},
		{name: "too many interim", resp: strings.Repeat("HTTP/1.1 100 Continue\r\n\r\n", 7), err: "interim"},
		{name: "nothing", resp: "", err: "closed before a response"},
		{name: "cut in the status line", resp: "HTTP/1.1 20", err: "EOF"},
		{name: "cut in the headers", resp: "HTTP/1.1 200 OK\r\nContent-Le", err: "headers"},
		{name: "no blank line", resp: "HTTP/1.1 200 OK\r\nServer: x\r\n", err: "headers"},
		{name: "header without colon", resp: "HTTP/1.1 200 OK\r\nbroken header\r\n\r\n", err: "malformed header"},
		{name: "space in header name", resp: "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", err: "malformed header"},
		{name: "bad length", resp: "HTTP/1.1 200 OK\r\nContent-Length: -4\r\n\r\n", err: "Content-Length"},
		{name: "not HTTP", resp: "220 smtp.example ESMTP\r\n", err: "status line"},
		{name: "head too long", resp: "HTTP/1.1 200 OK\r\nX: " + strings.Repeat("a", maxHead) + "\r\n\r\n", err: "longer than"},
	} {
		h, err := readResponse(bufio.NewReaderSize(strings.NewReader(tc.resp), 16))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %+v, %v; want an error with %q", tc.name, h, err, tc.err)
			}
			continue
		}
		if err != nil || h.code != tc.code || h.length != tc.length || h.chunked != tc.chunked {
			t.Errorf("%s: %+v, %v; want code %d length %d chunked %v", tc.name, h, err, tc.code, tc.length, tc.chunked)
		}
	}
}

// rawServer answers every connection on 127.0.0.1 with answer(request).
func rawServer(t *testing.T, answer func(req string) string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				var req strings.Builder
				for {
					line, err := br.ReadString('\n')
					req.WriteString(line)
					if err != nil || line == "\r\n" {
						break
					}
				}
				io.WriteString(c, answer(req.String()))
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}

// TestRawProbe: the probe sends a well-formed request for the endpoint
// and judges real answers from a TCP server: good, failing, malformed.
func TestRawProbe(t *testing.T) {
	reqs := make(chan string, 16)
	answers := map[string]string{
		"/ok":        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n",
		"/redirect":  "HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
		"/down":      "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
		"/garbage":   "this is not http\r\n\r\n",
		"/empty":     "",
		"/q?a=1&b=2": "HTTP/1.0 204 No Content\r\n\r\n",
	}
	base := rawServer(t, func(req string) string {
		reqs <- req
		line, _, _ := strings.Cut(req, "\r\n")
		path := strings.TrimSuffix(strings.TrimPrefix(line, "GET "), " HTTP/1.1")
		return answers[path]
	})
	probe := func(endpoint string) error {
		c := NewChecker(base+"/", manifest.HealthCheck{Endpoint: endpoint, TimeoutMS: 2000}, nil, nil)
		if c.target == nil {
			t.Fatalf("%s: not probed raw", c.URL())
		}
		return c.probe(context.Background())
	}
	if err := probe("/ok"); err != nil {
		t.Fatalf("/ok: %v", err)
	}
	req := <-reqs
	host := strings.TrimPrefix(base, "http://")
	for _, want := range []string{"GET /ok HTTP/1.1\r\n", "\r\nHost: " + host + "\r\n", "\r\nUser-Agent: kestrel-health\r\n", "\r\nConnection: close\r\n"} {
		if !strings.Contains(req, want) {
			t.Fatalf("request %q lacks %q", req, want)
		}
	}
	if err := probe("/redirect"); err != nil {
		t.Fatalf("a redirect is an answer below 400: %v", err)
	}
	<-reqs
	if err := probe("/q?a=1&b=2"); err != nil {
		t.Fatalf("query endpoint: %v", err)
	}
	if r := <-reqs; !strings.HasPrefix(r, "GET /q?a=1&b=2 HTTP/1.1\r\n") {
		t.Fatalf("the query was not sent as is: %q", r)
	}
	for path, want := range map[string]string{"/down": "503 Service Unavailable", "/garbage": "malformed HTTP status line", "/empty": "closed before a response"} {
		err := probe(path)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "GET "+base+path) {
			t.Errorf("%s: %v, want an error naming the URL and %q", path, err, want)
		}
	}
	// Nothing listening: refused.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	c := NewChecker("http://"+addr, manifest.HealthCheck{Endpoint: "/", TimeoutMS: 2000}, nil, nil)
	if err := c.probe(context.Background()); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("no listener: %v", err)
	}
}

// TestRawProbeTimeoutAndCancel: a workload that accepts but never answers
// fails the probe after timeout_ms, and the agent stopping ends a probe
// at once rather than after the timeout.
func TestRawProbeTimeoutAndCancel(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, silent
		}
	}()
	c := NewChecker("http://"+ln.Addr().String(), manifest.HealthCheck{Endpoint: "/", TimeoutMS: 200}, nil, nil)
	t0 := time.Now()
	if err := c.probe(context.Background()); err == nil || time.Since(t0) < 150*time.Millisecond {
		t.Fatalf("silent workload: %v after %s", err, time.Since(t0))
	}
	slow := NewChecker("http://"+ln.Addr().String(), manifest.HealthCheck{Endpoint: "/", TimeoutMS: 60_000}, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- slow.probe(ctx) }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a cancelled probe passed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the probe did not end with its context")
	}
}

// TestHTTPSUsesClient: only http:// URLs are probed raw.
func TestHTTPSUsesClient(t *testing.T) {
	c := NewChecker("https://127.0.0.1:8443", manifest.HealthCheck{Endpoint: "/"}, nil, nil)
	if c.target != nil || c.client == nil {
		t.Fatalf("https probed raw: %+v", c)
	}
}

// TestRawProbeHostForms: the probe dials an address directly and a name
// through the resolver, and both reach the workload with the URL's Host.
func TestRawProbeHostForms(t *testing.T) {
	hosts := make(chan string, 4)
	base := rawServer(t, func(req string) string {
		for _, l := range strings.Split(req, "\r\n") {
			if h, ok := strings.CutPrefix(l, "Host: "); ok {
				hosts <- h
			}
		}
		return "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
	})
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(base, "http://"))
	for _, tc := range []struct {
		host   string
		direct bool
	}{{"127.0.0.1", true}, {"localhost", false}} {
		u := "http://" + net.JoinHostPort(tc.host, port)
		c := NewChecker(u, manifest.HealthCheck{Endpoint: "/", TimeoutMS: 2000}, nil, nil)
		if c.target == nil || c.target.ip.IsValid() != tc.direct {
			t.Fatalf("%s: target %+v, want dialled directly: %v", u, c.target, tc.direct)
		}
		if err := c.probe(context.Background()); err != nil {
			t.Fatalf("%s: %v", u, err)
		}
		if h := <-hosts; h != net.JoinHostPort(tc.host, port) {
			t.Fatalf("%s: Host %q", u, h)
		}
	}
}
