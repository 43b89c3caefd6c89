package controller

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
)

// A VM's poller keeps one connection to kestrel across its polls (an idle
// guest then answers two packets per poll, not a handshake, an accept and
// a close), dials again when the connection broke, and closes it when the
// poller ends; the shared prober dials per poll.
func TestProberForVMKeepsItsConnection(t *testing.T) {
	var mu sync.Mutex
	states := map[http.ConnState]int{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(agentapi.Status{VM: "web1", Health: agentapi.HealthStatus{State: agentapi.HealthHealthy}})
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		mu.Lock()
		states[s]++
		mu.Unlock()
	}
	srv.Start()
	defer srv.Close()
	agent := netip.MustParseAddrPort(srv.Listener.Addr().String())
	count := func(s http.ConnState) int {
		mu.Lock()
		defer mu.Unlock()
		return states[s]
	}
	ctx := context.Background()
	probe := func(p Prober) {
		t.Helper()
		st, err := p.Probe(ctx, agent)
		if err != nil || st.VM != "web1" || st.Health.State != agentapi.HealthHealthy {
			t.Fatalf("probe: %+v %v", st, err)
		}
	}

	shared := HTTPProber{}
	for range 3 {
		probe(shared)
	}
	if n := count(http.StateNew); n != 3 {
		t.Fatalf("the shared prober made %d connections for 3 probes, want 3", n)
	}

	p, done := shared.forVM()
	for range 3 {
		probe(p)
	}
	if n := count(http.StateNew); n != 4 {
		t.Fatalf("a VM's prober made %d connections for 3 probes, want 1", n-3)
	}
	srv.CloseClientConnections() // kestrel restarted, say
	probe(p)
	if n := count(http.StateNew); n != 5 {
		t.Fatalf("after the connection broke: %d connections in all, want 5 (one dialed again)", n)
	}
	closed := count(http.StateClosed)
	done()
	for deadline := time.Now().Add(5 * time.Second); count(http.StateClosed) == closed; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the poller's connection stayed open after it ended")
		}
	}
}
