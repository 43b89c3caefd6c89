package report

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
)

func TestURL(t *testing.T) {
	if got := URL("192.168.127.1", 8080, "web 1"); got != "http://192.168.127.1:8080/api/v1/vms/web%201/agent" {
		t.Fatal(got)
	}
	if got := URL("fd00::1", 0, "a"); got != "http://[fd00::1]:80/api/v1/vms/a/agent" {
		t.Fatal(got)
	}
}

func TestDeliversInOrderAndRetries(t *testing.T) {
	var fail atomic.Bool
	fail.Store(true)
	var mu sync.Mutex
	var got []agentapi.HealthState
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/api/v1/vms/vm1/agent" || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "bad request", 400)
			return
		}
		if fail.Load() {
			http.Error(w, "down", 503)
			return
		}
		var st agentapi.Status
		if err := json.NewDecoder(r.Body).Decode(&st); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		mu.Lock()
		got = append(got, st.Health.State)
		mu.Unlock()
		w.WriteHeader(204)
	}))
	defer srv.Close()
	r := New(srv.URL+agentapi.ReportPath("vm1"), nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	base := time.Now()
	for i, s := range []agentapi.HealthState{"unknown", "healthy", "unhealthy"} {
		r.Send(agentapi.Status{Health: agentapi.HealthStatus{State: s}, Time: base.Add(time.Duration(i))})
	}
	time.Sleep(300 * time.Millisecond) // a few failed attempts
	fail.Store(false)
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("delivered %v", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got[0] != "unknown" || got[1] != "healthy" || got[2] != "unhealthy" {
		t.Fatalf("order %v", got)
	}
	// The server saw the third report before the reporter read its
	// answer and counted it: wait for the count, not a moment.
	var sent, dropped int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if sent, dropped = r.Stats(); sent == 3 || time.Now().After(deadline) {
			break
		}
	}
	if sent != 3 || dropped != 0 {
		t.Fatalf("stats %d %d", sent, dropped)
	}
}

func TestQueueKeepsNewest(t *testing.T) {
	r := New("http://127.0.0.1:1/", nil) // never run
	base := time.Now()
	for i := 0; i < MaxQueue+5; i++ {
		r.Send(agentapi.Status{UptimeMS: int64(i), Time: base.Add(time.Duration(i))})
	}
	if len(r.queue) != MaxQueue || r.queue[0].st.UptimeMS != 5 || r.queue[MaxQueue-1].st.UptimeMS != MaxQueue+4 {
		t.Fatalf("queue %d first %d", len(r.queue), r.queue[0].st.UptimeMS)
	}
	if _, dropped := r.Stats(); dropped != 5 {
		t.Fatalf("dropped %d", dropped)
	}
}

func TestRejectedIsDropped(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Error(w, "no such vm", 404)
	}))
	defer srv.Close()
	r := New(srv.URL, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	r.Send(agentapi.Status{Time: time.Now()})
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, d := r.Stats(); d == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("rejected report not dropped")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	if hits.Load() != 1 {
		t.Fatalf("rejected report retried: %d posts", hits.Load())
	}
}
