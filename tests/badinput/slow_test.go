package badinput

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestSlowClients: 200 slowloris connections (TLS done, headers trickled
// a byte at a time) and 200 event-stream subscribers that never read,
// against one real volantd while events pour in. Every other request is
// answered, volantd's memory stays bounded, and the answers' p99 is
// printed (the target is 100 ms on an idle machine; this asserts only
// that each comes within the header timeout).
func TestSlowClients(t *testing.T) {
	d := startHTTPDaemon(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dial := func() (net.Conn, error) {
		var c net.Conn
		err := d.ns.Do(func() (err error) {
			c, err = (&net.Dialer{Timeout: 10 * time.Second}).Dial("tcp", d.addr)
			return err
		})
		if err != nil {
			return nil, err
		}
		tc := tls.Client(c, &tls.Config{RootCAs: d.roots, ServerName: "127.0.0.1"})
		if err := tc.Handshake(); err != nil {
			c.Close()
			return nil, err
		}
		return tc, nil
	}
	rss0 := rssKiB(t, d.pid)

	var conns []net.Conn
	var mu sync.Mutex
	defer func() {
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	}()
	keep := func(c net.Conn) { mu.Lock(); conns = append(conns, c); mu.Unlock() }
	// 200 subscribers that send their request and never read.
	for i := 0; i < 200; i++ {
		c, err := dial()
		if err != nil {
			t.Fatalf("subscriber %d: %v", i, err)
		}
		fmt.Fprintf(c, "GET /api/v1/events?since=0 HTTP/1.1\r\nHost: volantd\r\nAuthorization: Bearer %s\r\n\r\n", d.secrets["viewer"])
		keep(c)
	}
	// 200 slowloris connections, each trickling one header byte a second.
	for i := 0; i < 200; i++ {
		c, err := dial()
		if err != nil {
			t.Fatalf("slow client %d: %v", i, err)
		}
		keep(c)
		go func() {
			io.WriteString(c, "GET /api/v1/vms HTTP/1.1\r\nHost: volantd\r\nX-Slow: ")
			for ctx.Err() == nil {
				if _, err := io.WriteString(c, "a"); err != nil {
					return // the server closed it (header timeout)
				}
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
		}()
	}
	// Events pour in: each token made is a token.created and an audit event.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil && i < 400; i++ {
			st, _, body := d.do(t, "POST", "/api/v1/tokens", "application/json", "",
				fmt.Sprintf(`{"name":"load-%d","role":"viewer"}`, i), "")
			if st != 201 {
				t.Errorf("making token %d: %d %s", i, st, body)
				return
			}
		}
	}()
	// Meanwhile: 200 reads, each on a connection of its own.
	var took []time.Duration
	client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialTLSContext: func(context.Context, string, string) (net.Conn, error) { return dial() }}}
	for i := 0; i < 200; i++ {
		req, _ := http.NewRequest("GET", "https://"+d.addr+"/api/v1/vms", nil)
		req.Header.Set("Authorization", "Bearer "+d.secrets["viewer"])
		t0 := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("read %d among the slow clients: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		took = append(took, time.Since(t0))
		if resp.StatusCode != 200 {
			t.Fatalf("read %d: %d", i, resp.StatusCode)
		}
	}
	wg.Wait()
	rss1 := rssKiB(t, d.pid)
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	p50, p99 := took[len(took)/2], took[len(took)*99/100]
	fmt.Fprintf(os.Stderr, "slow clients: 200 slowloris + 200 SSE readers that never read, 800 events: GET /api/v1/vms p50 %s p99 %s (target 100ms); volantd RSS %d → %d KiB\n",
		p50.Round(time.Microsecond), p99.Round(time.Microsecond), rss0, rss1)
	if p99 > 10*time.Second {
		t.Errorf("p99 %s: not answered within the header timeout", p99)
	}
	if rss1-rss0 > 128<<10 {
		t.Errorf("volantd grew by %d KiB with 400 slow connections", rss1-rss0)
	}
}

// rssKiB is a process's resident memory (VmRSS).
func rssKiB(t *testing.T, pid int) int {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	t.Fatal("no VmRSS")
	return 0
}
