package report

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
)

// After SetURL, reports go to the new URL, and the ones queued for the old
// one (the identity the guest had) are dropped.
func TestSetURL(t *testing.T) {
	var mu sync.Mutex
	got := map[string][]string{}
	handler := func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			var st agentapi.Status
			json.NewDecoder(r.Body).Decode(&st)
			mu.Lock()
			got[name] = append(got[name], st.VM)
			mu.Unlock()
		}
	}
	oldSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusServiceUnavailable) // the old one never takes a report
	}))
	defer oldSrv.Close()
	newSrv := httptest.NewServer(handler("new"))
	defer newSrv.Close()
	r := New(oldSrv.URL, nil)
	r.Send(agentapi.Status{VM: "saved"})
	r.Send(agentapi.Status{VM: "saved"})
	r.SetURL(newSrv.URL)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	r.Send(agentapi.Status{VM: "restored"})
	r.Resume()
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(got["new"])
		mu.Unlock()
		if n >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no report reached the new URL")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(got["new"]) != 1 || got["new"][0] != "restored" {
		t.Errorf("the new URL got %v", got["new"])
	}
	if _, dropped := r.Stats(); dropped != 2 {
		t.Errorf("%d reports dropped, want the 2 queued before SetURL", dropped)
	}
}

// SetURL drops the idle connections: after a guest took a new address
// (a restored guest's identity), no report goes over a connection made
// from the address it had — even to the same control plane.
func TestSetURLDropsIdleConnections(t *testing.T) {
	var mu sync.Mutex
	conns, reports := 0, 0
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		reports++
		mu.Unlock()
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			mu.Lock()
			conns++
			mu.Unlock()
		}
	}
	srv.Start()
	defer srv.Close()
	r := New(srv.URL, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	sent := func(n int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			mu.Lock()
			got := reports
			mu.Unlock()
			if got >= n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d reports arrived, want %d", got, n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	r.Send(agentapi.Status{VM: "saved"})
	sent(1)
	r.Send(agentapi.Status{VM: "saved"})
	sent(2)
	mu.Lock()
	before := conns
	mu.Unlock()
	if before != 1 {
		t.Fatalf("%d connections for two reports; the test needs keep-alive", before)
	}
	r.SetURL(srv.URL)
	r.Send(agentapi.Status{VM: "restored"})
	r.Resume()
	sent(3)
	mu.Lock()
	defer mu.Unlock()
	if conns != 2 {
		t.Errorf("%d connections after SetURL, want a new one (2)", conns)
	}
}

// SetURL holds deliveries until Resume (a restored guest's tap is down
// until then: a connection tried meanwhile waits out the guest's ARP and
// SYN retransmission timers once it is up), and ends a post under way, so
// that the first report after Resume goes at once.
func TestSetURLHoldsUntilResume(t *testing.T) {
	stuck := make(chan struct{})
	posting := make(chan struct{}, 1)
	oldSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case posting <- struct{}{}:
		default:
		}
		select { // a post that never ends, as one to a peer gone with the saved VM
		case <-stuck:
		case <-r.Context().Done():
		}
	}))
	defer func() { close(stuck); oldSrv.Close() }()
	got := make(chan string, 4)
	newSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var st agentapi.Status
		json.NewDecoder(r.Body).Decode(&st)
		got <- st.VM
	}))
	defer newSrv.Close()
	r := New(oldSrv.URL, nil)
	// The client's own timeout would end the old post too, a few seconds
	// on: without it, a report after Resume can only come from SetURL
	// ending the post, however slowly the test runs.
	r.client.Timeout = 0
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	r.Send(agentapi.Status{VM: "saved"})
	select {
	case <-posting: // the post to the old URL is under way
	case <-time.After(time.Minute):
		t.Fatal("the first report was never posted")
	}
	r.SetURL(newSrv.URL)
	r.Send(agentapi.Status{VM: "restored"})
	select {
	case vm := <-got:
		t.Fatalf("a report (%s) went before Resume", vm)
	case <-time.After(300 * time.Millisecond):
	}
	r.Resume()
	select {
	case vm := <-got:
		if vm != "restored" {
			t.Fatalf("first report after Resume: %s", vm)
		}
	case <-time.After(HoldMax / 2):
		// Only a hold Resume did not end would let it come later, at
		// HoldMax.
		t.Fatal("no report after Resume: the hold or the post to the old URL still holds the reporter")
	}
}
