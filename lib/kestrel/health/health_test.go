package health

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/manifest"
)

func TestMachine(t *testing.T) {
	fail := errors.New("refused")
	for _, tc := range []struct {
		name    string
		retries int
		probes  []error
		want    []agentapi.HealthState // after each probe
		changed []bool
	}{
		{"first pass is healthy", 3, []error{nil}, []agentapi.HealthState{"healthy"}, []bool{true}},
		{"unknown until retries fail", 3, []error{fail, fail, fail},
			[]agentapi.HealthState{"unknown", "unknown", "unhealthy"}, []bool{false, false, true}},
		{"healthy tolerates fewer than retries", 3, []error{nil, fail, fail, nil, fail, fail},
			[]agentapi.HealthState{"healthy", "healthy", "healthy", "healthy", "healthy", "healthy"},
			[]bool{true, false, false, false, false, false}},
		{"healthy to unhealthy and back", 2, []error{nil, fail, fail, fail, nil},
			[]agentapi.HealthState{"healthy", "healthy", "unhealthy", "unhealthy", "healthy"},
			[]bool{true, false, true, false, true}},
		{"retries below 1 means 1", 0, []error{fail}, []agentapi.HealthState{"unhealthy"}, []bool{true}},
	} {
		m := NewMachine("/", tc.retries)
		now := time.Unix(1000, 0)
		for i, p := range tc.probes {
			now = now.Add(time.Second)
			ch := m.Observe(now, p)
			st := m.Status()
			if st.State != tc.want[i] || ch != tc.changed[i] {
				t.Fatalf("%s: probe %d: state %s changed %v, want %s %v", tc.name, i, st.State, ch, tc.want[i], tc.changed[i])
			}
			if ch && !st.Since.Equal(now) {
				t.Fatalf("%s: since not updated", tc.name)
			}
			if p != nil && st.LastError != "refused" || p == nil && (st.LastError != "" || st.ConsecutiveFailures != 0) {
				t.Fatalf("%s: probe %d: %+v", tc.name, i, st)
			}
		}
	}
}

func TestCheckerFollowsWorkload(t *testing.T) {
	var status atomic.Int32
	status.Store(200)
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ready" {
			http.NotFound(w, r)
			return
		}
		hits.Add(1)
		w.WriteHeader(int(status.Load()))
	}))
	defer srv.Close()
	var mu sync.Mutex
	var seen []agentapi.HealthState
	c := NewChecker(srv.URL+"/", manifest.HealthCheck{Endpoint: "/ready", IntervalMS: 20, TimeoutMS: 500, Retries: 2}, nil,
		func(st agentapi.HealthStatus) {
			mu.Lock()
			seen = append(seen, st.State)
			mu.Unlock()
		})
	if c.URL() != srv.URL+"/ready" {
		t.Fatalf("url %s", c.URL())
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx)
	wait := func(want agentapi.HealthState) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for c.Status().State != want {
			if time.Now().After(deadline) {
				t.Fatalf("state %+v, want %s", c.Status(), want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	wait(agentapi.HealthHealthy)
	status.Store(503)
	wait(agentapi.HealthUnhealthy)
	if st := c.Status(); st.LastError == "" || st.ConsecutiveFailures < 2 {
		t.Fatalf("unhealthy without detail: %+v", st)
	}
	status.Store(204)
	wait(agentapi.HealthHealthy)
	cancel()
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 3 || seen[0] != "healthy" || seen[1] != "unhealthy" || seen[2] != "healthy" {
		t.Fatalf("changes %v", seen)
	}
}

// TestStartupIsFastButUnhealthyIsNot: with a 2 s interval, a workload that
// starts answering after 300 ms is healthy well before one interval, and a
// workload that never answers is not declared unhealthy before
// retries × interval.
func TestStartupIsFastButUnhealthyIsNot(t *testing.T) {
	var up atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !up.Load() {
			w.WriteHeader(503)
		}
	}))
	defer srv.Close()
	hc := manifest.HealthCheck{Endpoint: "/", IntervalMS: 2000, TimeoutMS: 500, Retries: 2}
	c := NewChecker(srv.URL, hc, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	t0 := time.Now()
	go c.Run(ctx)
	time.AfterFunc(300*time.Millisecond, func() { up.Store(true) })
	for c.Status().State != agentapi.HealthHealthy {
		if time.Since(t0) > 1500*time.Millisecond {
			t.Fatalf("not healthy %s after the workload came up: %+v", time.Since(t0), c.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}

	down := NewChecker(srv.URL+"/x", manifest.HealthCheck{Endpoint: "/", IntervalMS: 300, TimeoutMS: 100, Retries: 3}, nil, nil)
	up.Store(false)
	t1 := time.Now()
	go down.Run(ctx)
	for down.Status().State != agentapi.HealthUnhealthy {
		time.Sleep(10 * time.Millisecond)
	}
	// Failures at 0, 300 and 600 ms: not before 600 ms.
	if took := time.Since(t1); took < 550*time.Millisecond || down.Status().ConsecutiveFailures != 3 {
		t.Fatalf("unhealthy after %s with %+v", took, down.Status())
	}
}

// TestFirstProbeWaits: the first probe comes StartupInterval after Run
// starts (the interval when shorter), not at once, while the workload's
// process has only just been executed.
func TestFirstProbeWaits(t *testing.T) {
	for _, tc := range []struct {
		intervalMS int
		want       time.Duration
	}{{10_000, StartupInterval}, {30, 30 * time.Millisecond}} {
		hit := make(chan time.Time, 1)
		srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
			select {
			case hit <- time.Now():
			default:
			}
		}))
		c := NewChecker(srv.URL, manifest.HealthCheck{Endpoint: "/", IntervalMS: tc.intervalMS, TimeoutMS: 1000, Retries: 1}, nil, nil)
		ctx, cancel := context.WithCancel(context.Background())
		t0 := time.Now()
		go c.Run(ctx)
		select {
		case at := <-hit:
			if at.Sub(t0) < tc.want {
				t.Errorf("interval %d ms: first probe after %s, want at least %s", tc.intervalMS, at.Sub(t0), tc.want)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("interval %d ms: no probe", tc.intervalMS)
		}
		cancel()
		srv.Close()
	}
}
