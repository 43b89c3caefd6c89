package controller_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/controller/controllertest"
	"github.com/volantvm/volant/lib/hostnet"
)

// TestPausedVMs (fakes): a paused replica leaves its deployment's
// endpoints, is not polled into "unhealthy" while its guest cannot answer,
// is neither counted nor replaced, stays paused across a controller
// restart, comes back running on resume, can still crash, and stops.
func TestPausedVMs(t *testing.T) {
	f := newFixture(t)
	pr := controllertest.NewProber()
	c, _ := f.controllerWith(controller.Config{Prober: pr, MaxBooting: -1, ReconcileInterval: 50 * time.Millisecond})
	f.plugin(c, "web")
	if _, err := c.CreateDeployment(f.ctx, api.CreateDeploymentRequest{Name: "svc", Plugin: "web", Replicas: 2, Ports: pm(t, "9090:80")}); err != nil {
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
	eventuallyPublished(t, f.nw, hostnet.DeploymentPorts("svc"), ips["svc-1"].String(), ips["svc-2"].String())

	vm, err := c.PauseVM(f.ctx, "svc-1")
	if err != nil || vm.State != api.VMPaused {
		t.Fatalf("PauseVM: %+v %v", vm, err)
	}
	if again, err := c.PauseVM(f.ctx, "svc-1"); err != nil || again.State != api.VMPaused {
		t.Fatalf("pausing a paused VM: %+v %v", again, err)
	}
	// Out of the set at once (before the answer), and its guest, which
	// cannot answer while paused, is not polled into "unhealthy".
	if set := f.nw.Published()[hostnet.DeploymentPorts("svc")]; len(set.Backends) != 1 || set.Backends[0] != ips["svc-2"].String() {
		t.Fatalf("published while svc-1 is paused: %+v", set)
	}
	pr.Set(ips["svc-1"], nil)
	time.Sleep(500 * time.Millisecond) // ten health intervals, ten reconcile passes
	if v, _ := c.VM(f.ctx, "svc-1"); v.State != api.VMPaused || v.Health != "healthy" {
		t.Fatalf("paused VM after 10 health intervals: state %s health %s", v.State, v.Health)
	}
	if n := f.rt.Starts("svc-1"); n != 1 {
		t.Fatalf("the paused replica was started %d times", n)
	}
	if d, _ := c.Deployment(f.ctx, "svc"); d.Current != 1 || len(d.Endpoints) != 1 {
		t.Fatalf("deployment while svc-1 is paused: current %d endpoints %v", d.Current, d.Endpoints)
	}

	// A restarted controller adopts it paused.
	c2, rep := f.controllerWith(controller.Config{Prober: pr, MaxBooting: -1, ReconcileInterval: 50 * time.Millisecond})
	if v, _ := c2.VM(f.ctx, "svc-1"); v.State != api.VMPaused {
		t.Fatalf("after a restart: %s (%+v)", v.State, rep)
	}

	// Resumed: it had passed its check, so it is running and an endpoint.
	st := controllertest.Healthy("svc-1")
	pr.Set(ips["svc-1"], &st)
	if vm, err := c2.ResumeVM(f.ctx, "svc-1"); err != nil || vm.State != api.VMRunning {
		t.Fatalf("ResumeVM: %+v %v", vm, err)
	}
	eventuallyPublished(t, f.nw, hostnet.DeploymentPorts("svc"), ips["svc-1"].String(), ips["svc-2"].String())

	// A paused VM's run can still end: crashed, then replaced.
	if _, err := c2.PauseVM(f.ctx, "svc-2"); err != nil {
		t.Fatal(err)
	}
	f.rt.Kill("svc-2", nil)
	for deadline := time.Now().Add(5 * time.Second); f.rt.Starts("svc-2") != 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("svc-2 started %d times, want 2 (created, then recreated after its crash)", f.rt.Starts("svc-2"))
		}
	}

	// Paused, then stopped.
	if _, err := c2.PauseVM(f.ctx, "svc-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.CreateVM(f.ctx, api.CreateVMRequest{Name: "solo", Plugin: "web"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.PauseVM(f.ctx, "solo"); err != nil {
		t.Fatal(err)
	}
	if vm, err := c2.StopVM(f.ctx, "solo"); err != nil || vm.State != api.VMStopped {
		t.Fatalf("stopping a paused VM: %+v %v", vm, err)
	}
	if _, err := c2.PauseVM(f.ctx, "solo"); !apierr.Is(err, apierr.Conflict) {
		t.Fatalf("pausing a stopped VM: %v", err)
	}
	if _, err := c2.ResumeVM(f.ctx, "solo"); !apierr.Is(err, apierr.Conflict) {
		t.Fatalf("resuming a stopped VM: %v", err)
	}

	// The events.
	evs, err := f.st.EventsSince(f.ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, e := range evs {
		count[e.Type+" "+e.ResourceID]++
	}
	if count["vm.paused svc-1"] != 2 || count["vm.crashed svc-2"] != 1 || count["vm.resumed svc-1"] != 1 || count["vm.unhealthy svc-1"] != 0 || count["vm.paused solo"] != 1 {
		t.Fatalf("events: %v", count)
	}
}
