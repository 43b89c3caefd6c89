package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/portmap"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// trafficClient sends requests for version.txt through a published port
// from a namespace, two at a time, each on a new connection, until
// stopped, and counts the answers by version and the failures.
type trafficClient struct {
	mu     sync.Mutex
	got    map[string]int
	errs   []error
	failed atomic.Int64
	stop   chan struct{}
	done   sync.WaitGroup
}

func sendTraffic(ns *netnstest.NS, addr string) *trafficClient {
	tc := &trafficClient{got: map[string]int{}, stop: make(chan struct{})}
	for range 2 {
		tc.done.Add(1)
		go func() {
			defer tc.done.Done()
			for {
				select {
				case <-tc.stop:
					return
				default:
				}
				b, err := getIn(ns, "http://"+addr+"/version.txt", 10*time.Second)
				tc.mu.Lock()
				if err != nil {
					tc.failed.Add(1)
					tc.errs = append(tc.errs, fmt.Errorf("%s: %w", time.Now().Format("15:04:05.000"), err))
				} else {
					tc.got["v"+b]++
				}
				tc.mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	return tc
}

// end stops the client and returns its counts.
func (tc *trafficClient) end() (map[string]int, int, []error) {
	close(tc.stop)
	tc.done.Wait()
	tc.mu.Lock()
	defer tc.mu.Unlock()
	n := 0
	for _, k := range tc.got {
		n += k
	}
	return tc.got, n, tc.errs
}

// healthSampler reads the deployment every 100 ms and keeps the fewest
// endpoints (replicas running, healthy and not on their way out) and the
// most replicas it saw.
type healthSampler struct {
	minOK, maxN, samples atomic.Int64
	stop                 chan struct{}
	done                 chan struct{}
}

func sampleHealth(c *client.Client, dep string) *healthSampler {
	s := &healthSampler{stop: make(chan struct{}), done: make(chan struct{})}
	s.minOK.Store(1 << 30)
	go func() {
		defer close(s.done)
		for {
			select {
			case <-s.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			d, err := c.Deployment(ctx, dep)
			cancel()
			if err != nil {
				continue
			}
			s.samples.Add(1)
			if n := int64(len(d.Endpoints)); n < s.minOK.Load() {
				s.minOK.Store(n)
			}
			if n := int64(len(d.VMs)); n > s.maxN.Load() {
				s.maxN.Store(n)
			}
		}
	}()
	return s
}

func (s *healthSampler) end() (minOK, maxN, samples int64) {
	close(s.stop)
	<-s.done
	return s.minOK.Load(), s.maxN.Load(), s.samples.Load()
}

// waitRolloutVM waits for the deployment's update revision to reach state.
func waitRolloutVM(t *testing.T, c *client.Client, dep string, rev int, state api.RolloutState, timeout time.Duration) *api.Rollout {
	t.Helper()
	t0 := time.Now()
	for {
		r, err := c.Rollout(context.Background(), dep)
		if err == nil && r.Revision == rev && r.State == state {
			return r
		}
		if err == nil && r.Revision == rev && !r.State.Active() {
			t.Fatalf("update %d ended %s (%s), want %s", rev, r.State, r.Reason, state)
		}
		if time.Since(t0) > timeout {
			vms, _ := c.ListVMs(context.Background(), api.VMFilter{Deployment: dep})
			t.Fatalf("update %d: %+v %v, want %s after %s\nVMs: %+v", rev, r, err, state, timeout, vms)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// replicaVersions says which replica runs which version.
func replicaVersions(t *testing.T, c *client.Client, dep string) string {
	t.Helper()
	vms, err := c.ListVMs(context.Background(), api.VMFilter{Deployment: dep})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, v := range vms {
		out = append(out, v.Name+"@"+v.PluginVersion)
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

// TestVMRollingUpdate boots real guests (QEMU TCG, kestrel, busybox httpd)
// behind volantd in a namespace of their own, a deployment of 3 replicas
// of svc v1 published on port 8080, with a "LAN" namespace beside it that
// sends requests through the port all along: the update to v2 (max surge
// 1, max unavailable 0) loses no request; an update to a v3 whose health
// check never passes is rolled back to v2 at its deadline, and the
// deployment never has fewer than 3 healthy replicas meanwhile (sampled
// every 100 ms). The events record each step.
func TestVMRollingUpdate(t *testing.T) {
	h := newQEMUHost(t, "nft")
	k, kestrel := h.k, h.kestrel
	far := lan(t, h.ns)
	d := h.daemon(t, "--health-interval", "1s", "--start-timeout", "120s")
	ctx := context.Background()
	data := filepath.Join(h.dir, "data")
	for _, v := range []struct{ version, health string }{{"1", "/health"}, {"2", "/health"}, {"3", "/never-there"}} {
		if _, err := d.c.InstallPlugin(ctx, svcPlugin(t, data, k.ModulesDir, kestrel, v.version, v.health), client.InstallOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if p, err := d.c.Plugin(ctx, "svc"); err != nil || p.Version != "3" || strings.Join(p.Versions, ",") != "1,2,3" {
		t.Fatalf("svc: %+v %v", p, err)
	}
	ports := []portmap.Mapping{{HostPort: 8080, GuestPort: 80}}
	if _, err := d.c.CreateDeployment(ctx, api.CreateDeploymentRequest{Name: "svc", Plugin: "svc@1", Replicas: 3, Ports: ports}); err != nil {
		t.Fatal(err)
	}
	took := waitEndpoints(t, d.c, "svc", []string{"svc-1", "svc-2", "svc-3"}, 300*time.Second)
	t.Logf("3 replicas of svc@1 healthy behind 8080 after %s", took.Round(time.Millisecond))
	if b, err := getIn(far, "http://10.77.0.1:8080/version.txt", 10*time.Second); err != nil || b != "1" {
		t.Fatalf("through 8080 before the update: %q %v", b, err)
	}
	evs, err := d.c.Events(ctx, api.EventOptions{Types: []string{"deployment.rollout.*"}})
	if err != nil {
		t.Fatal(err)
	}
	defer evs.Close()

	// v1 → v2 under traffic.
	traffic := sendTraffic(far, "10.77.0.1:8080")
	sampler := sampleHealth(d.c, "svc")
	t0 := time.Now()
	dep, err := d.c.UpdateDeployment(ctx, "svc", api.UpdateDeploymentRequest{Plugin: "svc@2", DeadlineMS: 240000})
	if err != nil || dep.Rollout == nil || dep.Rollout.Revision != 1 {
		t.Fatalf("update to v2: %+v %v", dep, err)
	}
	waitRolloutVM(t, d.c, "svc", 1, api.RolloutComplete, 600*time.Second)
	updated := time.Since(t0)
	time.Sleep(time.Second) // traffic after the end, all to v2
	got, n, errs := traffic.end()
	minOK, maxN, samples := sampler.end()
	t.Logf("v1 → v2 in %s: %d requests through 8080, %d failed, by version %v; fewest healthy %d, most replicas %d (%d samples)",
		updated.Round(time.Millisecond), n, len(errs), got, minOK, maxN, samples)
	if len(errs) > 0 {
		t.Fatalf("%d of %d requests failed during the update: %v", len(errs), n, errs)
	}
	if got["v1"] == 0 || got["v2"] == 0 || len(got) != 2 {
		t.Fatalf("answers by version %v: want both v1 and v2 and nothing else", got)
	}
	if minOK < 3 || maxN > 4 {
		t.Fatalf("during the update: fewest healthy %d (want ≥ 3), most replicas %d (want ≤ 4)", minOK, maxN)
	}
	if v := replicaVersions(t, d.c, "svc"); strings.Count(v, "@2") != 3 || strings.Count(v, "@") != 3 {
		t.Fatalf("after the update: %s", v)
	}

	// v2 → v3, whose health check never passes: rolled back at the deadline.
	const deadline = 60 * time.Second
	before := replicaVersions(t, d.c, "svc")
	traffic = sendTraffic(far, "10.77.0.1:8080")
	sampler = sampleHealth(d.c, "svc")
	t0 = time.Now()
	if _, err := d.c.UpdateDeployment(ctx, "svc", api.UpdateDeploymentRequest{Plugin: "svc@3", DeadlineMS: deadline.Milliseconds()}); err != nil {
		t.Fatal(err)
	}
	r := waitRolloutVM(t, d.c, "svc", 2, api.RolloutRolledBack, deadline+300*time.Second)
	back := time.Since(t0)
	got, n, errs = traffic.end()
	minOK, maxN, samples = sampler.end()
	t.Logf("v2 → v3 rolled back after %s (%s): %d requests, %d failed, by version %v; fewest healthy %d, most replicas %d (%d samples)",
		back.Round(time.Millisecond), r.Reason, n, len(errs), got, minOK, maxN, samples)
	if back < deadline || !strings.Contains(r.Reason, "not healthy within the deadline") {
		t.Fatalf("rolled back after %s (deadline %s): %q", back, deadline, r.Reason)
	}
	if minOK < 3 || maxN > 4 {
		t.Fatalf("during the failed update: fewest healthy %d (want ≥ 3 − 0), most replicas %d (want ≤ 4)", minOK, maxN)
	}
	if len(errs) > 0 || got["v3"] > 0 {
		t.Fatalf("during the failed update: %d of %d requests failed (%v), by version %v", len(errs), n, errs, got)
	}
	if after := replicaVersions(t, d.c, "svc"); after != before {
		t.Fatalf("after the rollback: %s, before the update %s", after, before)
	}
	if dep, err := d.c.Deployment(ctx, "svc"); err != nil || dep.PluginVersion != "2" || len(dep.Endpoints) != 3 {
		t.Fatalf("after the rollback: %+v %v", dep, err)
	}

	// The events of both updates, in order.
	var seen []string
	for len(seen) == 0 || seen[len(seen)-1] != api.EventRolloutRolledBack {
		e, err := evs.Next()
		if err != nil {
			t.Fatalf("events: %v (so far %v)", err, seen)
		}
		var ed struct{ Action, VM string }
		json.Unmarshal(e.Data, &ed)
		s := e.Type
		if ed.Action != "" {
			s += " " + ed.Action + " " + ed.VM
		}
		seen = append(seen, s)
	}
	t.Logf("update events: %v", seen)
	creates, removes := 0, 0
	for _, s := range seen {
		creates += strings.Count(s, " create ")
		removes += strings.Count(s, " remove ")
	}
	if seen[0] != api.EventRolloutStarted || creates != 4 || removes != 4 {
		t.Fatalf("update events %v: want 4 creates (3 of v2, 1 of v3) and 4 removes", seen)
	}
	h2 := fmt.Sprint(mustHistory(t, d.c, "svc"))
	if !strings.Contains(h2, "rolled_back") || !strings.Contains(h2, "complete") {
		t.Fatalf("history: %s", h2)
	}
	if _, err := d.c.DeleteDeployment(ctx, "svc"); err != nil {
		t.Fatal(err)
	}
}

func mustHistory(t *testing.T, c *client.Client, dep string) []string {
	t.Helper()
	rs, err := c.RolloutHistory(context.Background(), dep)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rs {
		out = append(out, fmt.Sprintf("%d %s→%s %s", r.Revision, r.From, r.To, r.State))
	}
	return out
}
