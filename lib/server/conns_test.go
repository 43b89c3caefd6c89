package server_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/server"
)

const (
	testHeaderTimeout = 300 * time.Millisecond
	testBodyTimeout   = 300 * time.Millisecond
	testIdleTimeout   = 300 * time.Millisecond
	testMaxConns      = 8
)

// bounded serves e's API (with a token on TCP, without on the unix
// socket) and its agent endpoint as volantd does, with short bounds, and
// returns the three addresses and the most connections each held at once.
func bounded(t *testing.T, e *env) (unix, tcp, agent string, peak func() [3]int64) {
	t.Helper()
	ul, err := net.Listen("unix", filepath.Join(t.TempDir(), "api.sock"))
	if err != nil {
		t.Fatal(err)
	}
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	al, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var cur, max [3]atomic.Int64
	for i, x := range []struct {
		l net.Listener
		h http.Handler
	}{{ul, e.srv.Handler(false)}, {tl, e.srv.Handler(true)}, {al, e.srv.AgentHandler()}} {
		hs := e.srv.HTTPServer(x.h, func(net.Listener) context.Context { return e.ctx })
		go hs.Serve(e.srv.LimitListener(&countingListener{Listener: x.l, cur: &cur[i], max: &max[i]}))
		t.Cleanup(func() { hs.Close() })
	}
	return ul.Addr().String(), tl.Addr().String(), al.Addr().String(), func() [3]int64 {
		return [3]int64{max[0].Load(), max[1].Load(), max[2].Load()}
	}
}

// countingListener counts the connections it accepted that are not
// closed yet, and the most at once.
type countingListener struct {
	net.Listener
	cur, max *atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	n := l.cur.Add(1)
	for m := l.max.Load(); n > m && !l.max.CompareAndSwap(m, n); m = l.max.Load() {
	}
	return &countedConn{Conn: c, cur: l.cur}, nil
}

type countedConn struct {
	net.Conn
	cur  *atomic.Int64
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.cur.Add(-1) })
	return c.Conn.Close()
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	network := "tcp"
	if strings.HasPrefix(addr, "/") {
		network = "unix"
	}
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedWithin reports whether the server ends c (EOF or an answer and
// then EOF) within d.
func closedWithin(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	return err == nil // EOF: closed by the server; a timeout: still open
}

// TestConnectionBounds: slow bodies, idle keep-alive connections and
// connections that send nothing are closed after their timeouts, on the
// unix socket, on TCP before the token is checked, and on the agent
// endpoint; each listener holds at most MaxConns connections; an event
// stream outlives all of the timeouts.
func TestConnectionBounds(t *testing.T) {
	e := newEnv(t, func(_ *controller.Config, o *server.Options) {
		o.Token = "0123456789abcdef0123456789abcdef"
		o.HeaderTimeout, o.BodyTimeout, o.IdleTimeout, o.MaxConns = testHeaderTimeout, testBodyTimeout, testIdleTimeout, testMaxConns
		o.SSEKeepAlive = 100 * time.Millisecond
	})
	unix, tcp, agent, peak := bounded(t, e)
	wait := 3 * time.Second
	for _, where := range []struct{ name, addr, path string }{
		{"unix", unix, "/api/v1/plugins"}, {"tcp", tcp, "/api/v1/plugins"}, {"agent", agent, "/api/v1/vms/web1/agent"},
	} {
		t.Run(where.name, func(t *testing.T) {
			// A body that never finishes.
			c := dial(t, where.addr)
			fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"name\":", where.path)
			if !closedWithin(c, wait) {
				t.Errorf("a slow body kept the connection for %s", wait)
			}
			// Headers that never finish.
			c = dial(t, where.addr)
			fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n")
			if !closedWithin(c, wait) {
				t.Errorf("slow headers kept the connection for %s", wait)
			}
			// Nothing at all.
			if c = dial(t, where.addr); !closedWithin(c, wait) {
				t.Errorf("a silent connection stayed for %s", wait)
			}
			// An idle keep-alive connection after one request.
			c = dial(t, where.addr)
			fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if !closedWithin(c, wait) {
				t.Errorf("an idle keep-alive connection stayed for %s", wait)
			}
		})
	}

	// Many connections at once: each listener holds at most MaxConns.
	var wg sync.WaitGroup
	for _, addr := range []string{unix, tcp, agent} {
		for i := 0; i < 3*testMaxConns; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := dial(t, addr)
				fmt.Fprintf(c, "POST /api/v1/plugins HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{")
				closedWithin(c, 10*time.Second)
			}()
		}
	}
	wg.Wait()
	if p := peak(); p[0] > testMaxConns || p[1] > testMaxConns || p[2] > testMaxConns {
		t.Errorf("connections held at once (unix, tcp, agent): %v, cap %d", p, testMaxConns)
	}

	// The event stream is not cut by the read or idle timeouts.
	c := dial(t, unix)
	fmt.Fprintf(c, "GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("events: %v %v", resp, err)
	}
	deadline := time.Now().Add(10 * (testHeaderTimeout + testBodyTimeout + testIdleTimeout) / 3)
	lines := 0
	for time.Now().Before(deadline) {
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := resp.Body.Read(make([]byte, 256)); err != nil {
			t.Fatalf("the event stream ended after %d reads: %v", lines, err)
		}
		lines++
	}
}
