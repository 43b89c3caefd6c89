package controller_test

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/controller/controllertest"
)

// TestLivenessGrace (fakes): a running replica whose health check keeps
// failing is replaced once it has been unhealthy for the grace, not
// before; the delete says why; one that recovers within the grace is
// kept; with a negative grace none is replaced.
func TestLivenessGrace(t *testing.T) {
	const grace = 600 * time.Millisecond
	f := newFixture(t)
	pr := controllertest.NewProber()
	c, _ := f.controllerWith(controller.Config{Prober: pr, MaxBooting: -1, ReconcileInterval: 50 * time.Millisecond,
		LivenessGrace: grace, ReplicaBackoff: 10 * time.Millisecond})
	f.plugin(c, "web")
	if _, err := c.CreateDeployment(f.ctx, api.CreateDeploymentRequest{Name: "svc", Plugin: "web", Replicas: 2}); err != nil {
		t.Fatal(err)
	}
	ips := map[string]netip.Addr{}
	for _, n := range []string{"svc-1", "svc-2"} {
		eventuallyState(t, c, n, api.VMStarting)
		v, _ := c.VM(f.ctx, n)
		ips[n] = netip.MustParseAddr(v.IP)
		st := controllertest.Healthy(n)
		pr.Set(ips[n], &st)
		eventuallyState(t, c, n, api.VMRunning)
	}
	sick := func(n string) {
		st := controllertest.Healthy(n)
		st.Health.State, st.Health.LastError = agentapi.HealthUnhealthy, "GET /health: 503"
		pr.Set(ips[n], &st)
	}
	// svc-2 is sick for less than the grace: kept.
	sick("svc-2")
	t0 := time.Now()
	sick("svc-1")
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		v, _ := c.VM(f.ctx, "svc-2")
		if v.Health == "unhealthy" && time.Since(t0) > grace/3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("svc-2 never turned unhealthy: %+v", v)
		}
	}
	well := controllertest.Healthy("svc-2")
	pr.Set(ips["svc-2"], &well)

	// svc-1 is replaced: a second start, after the grace.
	for deadline := time.Now().Add(10 * time.Second); f.rt.Starts("svc-1") < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("svc-1 was not replaced within 10 s (starts %d)", f.rt.Starts("svc-1"))
		}
	}
	if took := time.Since(t0); took < grace {
		t.Fatalf("svc-1 was replaced %s after it turned sick, before the grace %s", took, grace)
	}
	time.Sleep(2 * grace)
	if n := f.rt.Starts("svc-2"); n != 1 {
		t.Fatalf("svc-2, sick for less than the grace, was started %d times", n)
	}
	evs, err := f.st.EventsSince(f.ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var reason string
	for _, e := range evs {
		if e.Type == api.EventVMDeleted && e.ResourceID == "svc-1" {
			var d struct{ Reason string }
			json.Unmarshal(e.Data, &d)
			reason = d.Reason
		}
	}
	if !strings.Contains(reason, "liveness grace") || !strings.Contains(reason, "GET /health: 503") {
		t.Fatalf("svc-1's vm.deleted reason: %q", reason)
	}
	t.Logf("svc-1 replaced: %s", reason)
}

// TestLivenessNever: a negative grace replaces nobody.
func TestLivenessNever(t *testing.T) {
	f := newFixture(t)
	pr := controllertest.NewProber()
	c, _ := f.controllerWith(controller.Config{Prober: pr, MaxBooting: -1, ReconcileInterval: 50 * time.Millisecond, LivenessGrace: -1})
	f.plugin(c, "web")
	if _, err := c.CreateDeployment(f.ctx, api.CreateDeploymentRequest{Name: "svc", Plugin: "web", Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	eventuallyState(t, c, "svc-1", api.VMStarting)
	v, _ := c.VM(f.ctx, "svc-1")
	st := controllertest.Healthy("svc-1")
	pr.Set(netip.MustParseAddr(v.IP), &st)
	eventuallyState(t, c, "svc-1", api.VMRunning)
	st.Health.State = agentapi.HealthUnhealthy
	pr.Set(netip.MustParseAddr(v.IP), &st)
	time.Sleep(3 * time.Second)
	if v, _ := c.VM(f.ctx, "svc-1"); v.Health != "unhealthy" || f.rt.Starts("svc-1") != 1 {
		t.Fatalf("with no liveness: health %s, starts %d (%+v)", v.Health, f.rt.Starts("svc-1"), v.Agent)
	}
}
