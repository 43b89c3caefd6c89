package controller_test

import (
	"context"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/controller/controllertest"
	"github.com/volantvm/volant/lib/store"
)

func lastEvent(t *testing.T, st *store.Store) int64 {
	t.Helper()
	evs, err := st.EventsSince(context.Background(), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) == 0 {
		return 0
	}
	return evs[len(evs)-1].ID
}

// TestFailingReplicaBacksOff: a replica whose create fails after the VM
// was recorded (the bridge is missing: the tap step fails, the create is
// undone) is retried with an exponential, capped backoff, not at once
// whenever its own undo wakes the reconciler (which made 4,879 events in
// 20 s). Once the cause is gone it comes up, and once it has run for
// longer than the cap, a crash is retried after the base delay again (its
// failures are forgotten).
func TestFailingReplicaBacksOff(t *testing.T) {
	f := newFixture(t)
	pr := controllertest.NewProber()
	c, _ := f.controllerWith(controller.Config{Prober: pr, MaxBooting: -1, ReconcileInterval: 100 * time.Millisecond,
		ReplicaBackoff: 200 * time.Millisecond, ReplicaBackoffMax: 2 * time.Second})
	f.plugin(c, "web")
	f.nw.SetNoBridge(true)
	before := lastEvent(t, f.st)
	if _, err := c.CreateDeployment(f.ctx, api.CreateDeploymentRequest{Name: "svc", Plugin: "web", Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	const window = 3 * time.Second
	time.Sleep(window)
	evs, err := f.st.EventsSince(f.ctx, before, 0)
	if err != nil {
		t.Fatal(err)
	}
	created := 0
	for _, e := range evs {
		if e.Type == api.EventVMCreated {
			created++
		}
	}
	// Tries at 0, 0.2, 0.6, 1.4 s, then 3 s (and every 2 s): 4 or 5 in 3 s.
	t.Logf("%d events, %d creates of the replica in %s", len(evs), created, window)
	if created < 3 || created > 7 {
		t.Fatalf("%d creates in %s (%d events), want 4 or 5", created, window, len(evs))
	}
	// Each try is a vm.created and its undo's vm.deleted: the storm of
	// issue 21 was 4,879 events in 20 s.
	if len(evs) > 6*7 {
		t.Fatalf("%d events in %s", len(evs), window)
	}
	d, err := c.Deployment(f.ctx, "svc")
	if err != nil || d.Error == "" {
		t.Fatalf("the deployment does not say why: %+v %v", d, err)
	}

	// The bridge is back: the replica comes up within the capped delay.
	f.nw.SetNoBridge(false)
	var vm *api.VM
	deadline := time.Now().Add(10 * time.Second)
	for {
		if vm, err = c.VM(f.ctx, "svc-1"); err == nil && vm.IP != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replica did not come back: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	st := controllertest.Healthy("svc-1")
	pr.Set(netip.MustParseAddr(vm.IP), &st)
	eventuallyState(t, c, "svc-1", api.VMRunning)

	// Once it has run for longer than the cap its failures are forgotten:
	// a crash now is replaced after about the base delay (0.2 s), not the
	// capped one (2 s).
	vm, err = c.VM(f.ctx, "svc-1")
	if err != nil || vm.PID == 0 || vm.StartedAt == nil {
		t.Fatalf("running without a pid or start time: %+v %v", vm, err)
	}
	time.Sleep(time.Until(vm.StartedAt.Add(2*time.Second + 300*time.Millisecond))) // the condition is the time it has run
	old := vm.PID
	f.rt.Kill("svc-1", nil)
	t0 := time.Now()
	for {
		v, err := c.VM(f.ctx, "svc-1")
		if err == nil && v.PID != 0 && v.PID != old {
			break
		}
		if time.Since(t0) > 5*time.Second {
			t.Fatal("the crashed replica was not replaced")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if d := time.Since(t0); d < 150*time.Millisecond || d > 1500*time.Millisecond {
		t.Fatalf("the crashed replica was replaced after %s; want about the base delay (200ms)", d)
	}
}

// passCounter counts the deployment reconciler's passes (its debug line).
type passCounter struct{ n atomic.Int64 }

func (p *passCounter) Enabled(context.Context, slog.Level) bool { return true }
func (p *passCounter) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "deployments: a reconcile pass" {
		p.n.Add(1)
	}
	return nil
}
func (p *passCounter) WithAttrs([]slog.Attr) slog.Handler { return p }
func (p *passCounter) WithGroup(string) slog.Handler      { return p }

// TestReplicaFailureStartsNoPass: the undo of a replica's failed create
// (its vm.deleted) does not wake the deployment reconciler at once; only
// the end of the replica's backoff does. Before, every failed create
// woke it, so a pass followed each failure (and, without the backoff,
// created the replica again at once). With no periodic passes in the
// window, the passes are about the tries.
func TestReplicaFailureStartsNoPass(t *testing.T) {
	f := newFixture(t)
	passes := &passCounter{}
	c, _ := f.controllerWith(controller.Config{Prober: controllertest.NewProber(), MaxBooting: -1, ReconcileInterval: time.Hour,
		ReplicaBackoff: 200 * time.Millisecond, ReplicaBackoffMax: 2 * time.Second, Logger: slog.New(passes)})
	f.plugin(c, "web")
	f.nw.SetNoBridge(true)
	before := lastEvent(t, f.st)
	p0 := passes.n.Load()
	if _, err := c.CreateDeployment(f.ctx, api.CreateDeploymentRequest{Name: "svc", Plugin: "web", Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	const window = 2500 * time.Millisecond
	time.Sleep(window)
	n := passes.n.Load() - p0
	evs, err := f.st.EventsSince(f.ctx, before, 0)
	if err != nil {
		t.Fatal(err)
	}
	created := 0
	for _, e := range evs {
		if e.Type == api.EventVMCreated {
			created++
		}
	}
	// Tries at 0, 0.2, 0.6 and 1.4 s: one pass each (the first woken by
	// the create of the deployment, the others by the end of a wait),
	// and at most one more (the start-up kick, if it came late).
	t.Logf("%d passes, %d creates in %s", n, created, window)
	if created < 3 || created > 5 {
		t.Fatalf("%d creates in %s, want 4", created, window)
	}
	if n > int64(created)+1 {
		t.Fatalf("%d passes for %d creates: a failure woke the reconciler", n, created)
	}
}

// TestCrashLoopBacksOff: a replica that comes up healthy and crashes soon
// after, again and again, waits longer before each recreation — the base
// delay doubled with each crash, up to the cap — instead of being
// recreated after the base delay every time because it was seen running
// in between.
func TestCrashLoopBacksOff(t *testing.T) {
	f := newFixture(t)
	pr := controllertest.NewProber()
	const base, ceiling = 100 * time.Millisecond, 800 * time.Millisecond
	c, _ := f.controllerWith(controller.Config{Prober: pr, MaxBooting: -1, ReconcileInterval: 50 * time.Millisecond,
		ReplicaBackoff: base, ReplicaBackoffMax: ceiling})
	f.plugin(c, "web")
	if _, err := c.CreateDeployment(f.ctx, api.CreateDeploymentRequest{Name: "svc", Plugin: "web", Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	// newRun waits for a run of svc-1 other than old's hypervisor and
	// returns its pid.
	newRun := func(old int, limit time.Duration) int {
		t.Helper()
		for deadline := time.Now().Add(limit); ; time.Sleep(5 * time.Millisecond) {
			if v, err := c.VM(f.ctx, "svc-1"); err == nil && v.PID != 0 && v.PID != old && v.IP != "" {
				return v.PID
			}
			if time.Now().After(deadline) {
				t.Fatalf("no new run of svc-1 within %s", limit)
			}
		}
	}
	// up makes the run healthy and waits for it to be running.
	up := func() {
		t.Helper()
		v, err := c.VM(f.ctx, "svc-1")
		if err != nil {
			t.Fatal(err)
		}
		st := controllertest.Healthy("svc-1")
		pr.Set(netip.MustParseAddr(v.IP), &st)
		eventuallyState(t, c, "svc-1", api.VMRunning)
	}
	pid := newRun(0, 10*time.Second)
	up()
	// Six crashes, each right after the replica came up: the waits are
	// 0.1, 0.2, 0.4, 0.8, then capped at 0.8 s (uncapped: 1.6, 3.2 s).
	want := []time.Duration{base, 2 * base, 4 * base, 8 * base, ceiling, ceiling}
	var gaps []time.Duration
	for range want {
		f.rt.Kill("svc-1", nil)
		t0 := time.Now()
		pid = newRun(pid, 30*time.Second)
		gaps = append(gaps, time.Since(t0))
		up()
	}
	t.Logf("crash to the next run: %v (waits %v)", gaps, want)
	for i, w := range want {
		if gaps[i] < w*9/10 {
			t.Errorf("crash %d: recreated after %s, before its wait of %s", i+1, gaps[i], w)
		}
	}
	// The cap: the last waits are not doubled any more (3.2 s uncapped).
	if last := gaps[len(gaps)-1]; last > 2*ceiling+time.Second {
		t.Errorf("the sixth crash was recreated after %s; the cap is %s", last, ceiling)
	}
}
