package controller_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/controller/controllertest"
	"github.com/volantvm/volant/lib/testutil/wait"
)

// pluginVersion installs version of plugin name, with an artifact of its
// own.
func (f *fixture) pluginVersion(c *controller.Controller, name, version string) *api.Plugin {
	f.t.Helper()
	art, sum := localArtifact(f.dir, name+"-"+version+".img", name+"@"+version)
	m := fmt.Sprintf(`{"name":%q,"version":%q,"initramfs":{"url":%q,"checksum":"sha256:%s"},"workload":{"entrypoint":["/a"]}}`,
		name, version, art, sum)
	p, err := c.InstallPlugin(f.ctx, []byte(m), false)
	if err != nil {
		f.t.Fatal(err)
	}
	return p
}

// TestPluginVersions: versions of a plugin side by side; a bare name means
// the one installed last; a VM runs the version it was created with; one
// version is removed while others stay (CONFLICT while a VM runs it); the
// default goes back to the newest left.
func TestPluginVersions(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controller()
	f.pluginVersion(c, "web", "1")
	p := f.pluginVersion(c, "web", "2")
	if p.Version != "2" || !slices.Equal(p.Versions, []string{"1", "2"}) {
		t.Fatalf("after installing 2: %+v", p)
	}
	if _, err := c.InstallPlugin(f.ctx, mustManifest(t, c, "web@1"), false); apierr.CodeOf(err) != apierr.Conflict {
		t.Fatalf("installing web@1 again: %v", err)
	}
	if p, err := c.Plugin(f.ctx, "web@1"); err != nil || p.Version != "1" || !json.Valid(p.Manifest) {
		t.Fatalf("web@1: %+v %v", p, err)
	}
	if _, err := c.Plugin(f.ctx, "web@9"); apierr.CodeOf(err) != apierr.NotFound {
		t.Fatalf("web@9: %v", err)
	}
	ps, _ := c.ListPlugins(f.ctx)
	if len(ps) != 1 || ps[0].Version != "2" {
		t.Fatalf("list: %+v", ps)
	}
	v1, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "a", Plugin: "web@1"})
	if err != nil || v1.PluginVersion != "1" {
		t.Fatalf("a: %+v %v", v1, err)
	}
	v2, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "b", Plugin: "web"})
	if err != nil || v2.PluginVersion != "2" {
		t.Fatalf("b: %+v %v", v2, err)
	}
	// Each VM's launch spec names its version's artifact.
	for vm, art := range map[string]string{"a": "web-1.img", "b": "web-2.img"} {
		spec, err := os.ReadFile(filepath.Join(f.dir, "vms", vm, "spec.json"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(spec), art) {
			t.Fatalf("%s's spec does not name %s:\n%s", vm, art, spec)
		}
	}
	if _, err := c.RemovePlugin(f.ctx, "web@1"); apierr.CodeOf(err) != apierr.Conflict {
		t.Fatalf("removing web@1 while a runs it: %v", err)
	}
	if _, err := c.DeleteVM(f.ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RemovePlugin(f.ctx, "web@2"); err != nil {
		t.Fatalf("removing web@2: %v", err)
	}
	if p, err := c.Plugin(f.ctx, "web"); err != nil || p.Version != "1" || !slices.Equal(p.Versions, []string{"1"}) {
		t.Fatalf("web after removing 2: %+v %v", p, err)
	}
	if _, err := c.RemovePlugin(f.ctx, "web"); apierr.CodeOf(err) != apierr.Conflict {
		t.Fatalf("removing web while a runs it: %v", err)
	}
}

func mustManifest(t *testing.T, c *controller.Controller, ref string) []byte {
	t.Helper()
	m, err := c.PluginManifest(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// guests plays kestrel for the fakes: every 10 ms each VM that runs a
// good version answers healthy, the others do not answer; and it samples
// the deployment: the fewest endpoints (healthy replicas) and the most
// replicas seen since arm.
type guests struct {
	t     *testing.T
	pr    *controllertest.Prober
	mu    sync.Mutex
	c     *controller.Controller
	good  map[string]bool
	armed atomic.Bool
	minOK atomic.Int64
	maxN  atomic.Int64
}

func newGuests(t *testing.T, pr *controllertest.Prober, good ...string) *guests {
	g := &guests{t: t, pr: pr, good: map[string]bool{}}
	for _, v := range good {
		g.good[v] = true
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			g.tick(ctx)
			time.Sleep(10 * time.Millisecond)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return g
}

func (g *guests) use(c *controller.Controller) { g.mu.Lock(); g.c = c; g.mu.Unlock() }

// setGood says whether replicas of version v answer healthy from the next
// tick on.
func (g *guests) setGood(v string, ok bool) { g.mu.Lock(); g.good[v] = ok; g.mu.Unlock() }

func (g *guests) arm() { g.minOK.Store(1 << 30); g.maxN.Store(0); g.armed.Store(true) }

func (g *guests) tick(ctx context.Context) {
	g.mu.Lock()
	c, good := g.c, maps.Clone(g.good)
	g.mu.Unlock()
	if c == nil {
		return
	}
	vms, err := c.ListVMs(ctx, api.VMFilter{Deployment: "svc"})
	if err != nil {
		return
	}
	for _, v := range vms {
		if v.IP == "" {
			continue
		}
		ip := netip.MustParseAddr(v.IP)
		if good[v.PluginVersion] && (v.State == api.VMStarting || v.State == api.VMRunning) {
			st := controllertest.Healthy(v.Name)
			g.pr.Set(ip, &st)
		} else {
			g.pr.Set(ip, nil)
		}
	}
	if !g.armed.Load() {
		return
	}
	if n := int64(healthyOf(vms)); n < g.minOK.Load() {
		g.minOK.Store(n)
	}
	if n := int64(len(vms)); n > g.maxN.Load() {
		g.maxN.Store(n)
	}
}

// waitRollout waits for the deployment's latest update to reach state.
func waitRollout(t *testing.T, c *controller.Controller, rev int, state api.RolloutState, within time.Duration) *api.Rollout {
	t.Helper()
	var r *api.Rollout
	var err error
	if werr := wait.For(within, func() bool {
		r, err = c.Rollout(context.Background(), "svc")
		return err == nil && r.Revision == rev && r.State == state
	}); werr != nil {
		vms, _ := c.ListVMs(context.Background(), api.VMFilter{Deployment: "svc"})
		t.Fatalf("update %d: %+v %v, want %s (%v)\nVMs: %+v", rev, r, err, state, werr, vms)
	}
	return r
}

// versions says which replicas run which version, sorted by name.
func versions(t *testing.T, c *controller.Controller) string {
	t.Helper()
	vms, err := c.ListVMs(context.Background(), api.VMFilter{Deployment: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, v := range vms {
		out = append(out, v.Name+"@"+v.PluginVersion)
	}
	sort.Strings(out)
	return fmt.Sprint(out)
}

// allAt checks that svc has 3 replicas, all at version, all healthy.
func allAt(t *testing.T, c *controller.Controller, version string) {
	t.Helper()
	vms, err := c.ListVMs(context.Background(), api.VMFilter{Deployment: "svc"})
	if err != nil || len(vms) != 3 || healthyOf(vms) != 3 {
		t.Fatalf("svc: %s (%d healthy), want 3 healthy at %s (%v)", versions(t, c), healthyOf(vms), version, err)
	}
	for _, v := range vms {
		if v.PluginVersion != version {
			t.Fatalf("svc: %s, want 3 at %s", versions(t, c), version)
		}
	}
}

// rolloutEvents are the deployment's update events, by type, with the
// steps as "create vm" / "remove vm".
func rolloutEvents(t *testing.T, f *fixture, since int64) (map[string]int, []string) {
	t.Helper()
	evs, err := f.st.EventsSince(f.ctx, since, 0)
	if err != nil {
		t.Fatal(err)
	}
	n := map[string]int{}
	var steps []string
	for _, e := range evs {
		if e.ResourceID != "svc" {
			continue
		}
		n[e.Type]++
		if e.Type == api.EventRolloutStep {
			var d struct{ Action, VM string }
			json.Unmarshal(e.Data, &d)
			steps = append(steps, d.Action+" "+d.VM)
		}
	}
	return n, steps
}

func lastEventID(t *testing.T, f *fixture) int64 {
	evs, err := f.st.EventsSince(f.ctx, 0, 0)
	if err != nil || len(evs) == 0 {
		t.Fatal(err)
	}
	return evs[len(evs)-1].ID
}

// TestRollingUpdate (fakes): a 3-replica deployment moves from v1 to v2
// one surge replica at a time, never with fewer than 3 healthy or more
// than 4 replicas; a v3 that never turns healthy is rolled back to v2 at
// its deadline; the history has both; undo goes back to v1; the events
// record every step.
func TestRollingUpdate(t *testing.T) {
	f := newFixture(t)
	pr := controllertest.NewProber()
	c, _ := f.controllerWith(controller.Config{Prober: pr, MaxBooting: -1, ReconcileInterval: 50 * time.Millisecond,
		DrainDelay: 5 * time.Millisecond, ReplicaBackoff: 10 * time.Millisecond, HealthInterval: 20 * time.Millisecond})
	g := newGuests(t, pr, "1", "2")
	g.use(c)
	for _, v := range []string{"1", "2", "3"} {
		f.pluginVersion(c, "web", v)
	}
	if _, err := c.CreateDeployment(f.ctx, api.CreateDeploymentRequest{Name: "svc", Plugin: "web@1", Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	waitEndpointsN(t, c, 3)
	if _, err := c.Rollout(f.ctx, "svc"); apierr.CodeOf(err) != apierr.NotFound {
		t.Fatalf("the status of a deployment never updated: %v", err)
	}

	// v1 → v2, max surge 1 (the default).
	since := lastEventID(t, f)
	g.arm()
	d, err := c.UpdateDeployment(f.ctx, "svc", api.UpdateDeploymentRequest{Plugin: "web@2"})
	if err != nil || d.Rollout == nil || d.Rollout.Revision != 1 || d.Rollout.State != api.RolloutProgressing || d.PluginVersion != "2" {
		t.Fatalf("update: %+v %v", d, err)
	}
	r := waitRollout(t, c, 1, api.RolloutComplete, 20*time.Second)
	if r.From != "web@1" || r.To != "web@2" || r.MaxSurge != 1 || r.MaxUnavailable != 0 || r.FinishedAt == nil ||
		r.Progress == nil || r.Progress.Ready != 3 || r.Progress.Old != 0 {
		t.Fatalf("finished update: %+v %+v", r, r.Progress)
	}
	allAt(t, c, "2")
	t.Logf("v1 → v2: fewest healthy %d, most replicas %d", g.minOK.Load(), g.maxN.Load())
	if g.minOK.Load() < 3 || g.maxN.Load() > 4 {
		t.Fatalf("v1 → v2 with surge 1: fewest healthy %d (want ≥ 3), most replicas %d (want ≤ 4)", g.minOK.Load(), g.maxN.Load())
	}
	// One at a time: a create (the surge), then a remove once it is
	// healthy; the highest old index goes first, and its index is the
	// next create's.
	n, steps := rolloutEvents(t, f, since)
	t.Logf("v1 → v2 steps: %v", steps)
	if n[api.EventRolloutStarted] != 1 || n[api.EventRolloutComplete] != 1 ||
		!slices.Equal(steps, []string{"create svc-4", "remove svc-3", "create svc-3", "remove svc-2", "create svc-2", "remove svc-1"}) {
		t.Fatalf("events %v, steps %v", n, steps)
	}
	v23 := versions(t, c)

	// v2 → v3, which never turns healthy: rolled back at the deadline.
	since = lastEventID(t, f)
	g.arm()
	t0 := time.Now()
	if _, err := c.UpdateDeployment(f.ctx, "svc", api.UpdateDeploymentRequest{Plugin: "web@3", DeadlineMS: 300}); err != nil {
		t.Fatal(err)
	}
	r = waitRollout(t, c, 2, api.RolloutRolledBack, 20*time.Second)
	if took := time.Since(t0); took < 300*time.Millisecond {
		t.Fatalf("rolled back after %s, before the deadline", took)
	}
	if got := versions(t, c); got != v23 {
		t.Fatalf("after the rollback: %s, before the update %s", got, v23)
	}
	if d, _ := c.Deployment(f.ctx, "svc"); d.PluginVersion != "2" {
		t.Fatalf("the deployment points at %s after the rollback", d.PluginVersion)
	}
	if !strings.Contains(r.Reason, "not healthy within the deadline") {
		t.Fatalf("reason %q", r.Reason)
	}
	t.Logf("v2 → v3 (broken): rolled back; fewest healthy %d, most replicas %d", g.minOK.Load(), g.maxN.Load())
	if g.minOK.Load() < 3 || g.maxN.Load() > 4 {
		t.Fatalf("v2 → v3: fewest healthy %d, most replicas %d", g.minOK.Load(), g.maxN.Load())
	}
	n, steps = rolloutEvents(t, f, since)
	if n[api.EventRolloutRollingBack] != 1 || n[api.EventRolloutRolledBack] != 1 || !slices.Equal(steps, []string{"create svc-1", "remove svc-1"}) &&
		!slices.Equal(steps, []string{"create svc-4", "remove svc-4"}) {
		t.Fatalf("events %v, steps %v", n, steps)
	}

	// The history, newest first; undo goes back to what revision 1 came from.
	h, err := c.RolloutHistory(f.ctx, "svc")
	if err != nil || len(h) != 2 || h[0].State != api.RolloutRolledBack || h[1].State != api.RolloutComplete {
		t.Fatalf("history %+v %v", h, err)
	}
	r, err = c.UndoRollout(f.ctx, "svc")
	if err != nil || r.Revision != 3 || r.To != "web@1" {
		t.Fatalf("undo: %+v %v", r, err)
	}
	waitRollout(t, c, 3, api.RolloutComplete, 20*time.Second)
	allAt(t, c, "1")
	// Nothing brought it to v1 by an update of its own: nothing to undo to
	// but revision 3's origin.
	if r, err := c.UndoRollout(f.ctx, "svc"); err != nil || r.To != "web@2" {
		t.Fatalf("second undo: %+v %v", r, err)
	}
	waitRollout(t, c, 4, api.RolloutComplete, 20*time.Second)
	// The same version again: nothing to do.
	if d, err := c.UpdateDeployment(f.ctx, "svc", api.UpdateDeploymentRequest{Plugin: "web@2"}); err != nil || d.Rollout.Revision != 4 {
		t.Fatalf("an update to the version it runs: %+v %v", d, err)
	}
	if _, err := c.RemovePlugin(f.ctx, "web@2"); apierr.CodeOf(err) != apierr.Conflict {
		t.Fatalf("removing the version a deployment runs: %v", err)
	}
	if _, err := c.RemovePlugin(f.ctx, "web@3"); err != nil {
		t.Fatalf("removing an unused version: %v", err)
	}
}

// TestRollingUpdateUnavailable (fakes): max_surge 0, max_unavailable 1:
// each replica is replaced in its place (the same index: a volume
// template's volume would be the same), never more than 3 replicas at
// once and never fewer than 2 healthy; limits that cannot work and a
// version not installed are refused.
func TestRollingUpdateUnavailable(t *testing.T) {
	f := newFixture(t)
	pr := controllertest.NewProber()
	c, _ := f.controllerWith(controller.Config{Prober: pr, MaxBooting: -1, ReconcileInterval: 50 * time.Millisecond,
		DrainDelay: 5 * time.Millisecond, ReplicaBackoff: 10 * time.Millisecond, HealthInterval: 20 * time.Millisecond})
	g := newGuests(t, pr, "1", "2")
	g.use(c)
	f.pluginVersion(c, "web", "1")
	f.pluginVersion(c, "web", "2")
	if _, err := c.CreateDeployment(f.ctx, api.CreateDeploymentRequest{Name: "svc", Plugin: "web@1", Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	waitEndpointsN(t, c, 3)
	g.arm()
	zero, one := 0, 1
	if _, err := c.UpdateDeployment(f.ctx, "svc", api.UpdateDeploymentRequest{Plugin: "web@2", MaxSurge: &zero, MaxUnavailable: &one}); err != nil {
		t.Fatal(err)
	}
	waitRollout(t, c, 1, api.RolloutComplete, 20*time.Second)
	if got := versions(t, c); got != "[svc-1@2 svc-2@2 svc-3@2]" {
		t.Fatalf("after an in-place update: %s", got) // in place: the same indexes
	}
	t.Logf("in place: fewest healthy %d, most replicas %d", g.minOK.Load(), g.maxN.Load())
	if g.minOK.Load() < 2 || g.maxN.Load() > 3 {
		t.Fatalf("surge 0 unavailable 1: fewest healthy %d (want ≥ 2), most replicas %d (want ≤ 3)", g.minOK.Load(), g.maxN.Load())
	}
	if _, err := c.UpdateDeployment(f.ctx, "svc", api.UpdateDeploymentRequest{Plugin: "web@2", MaxSurge: &zero, MaxUnavailable: &zero}); apierr.CodeOf(err) != apierr.InvalidInput {
		t.Fatalf("surge 0 and unavailable 0: %v", err)
	}
	if _, err := c.UpdateDeployment(f.ctx, "svc", api.UpdateDeploymentRequest{Plugin: "web@7"}); apierr.CodeOf(err) != apierr.NotFound {
		t.Fatalf("a version not installed: %v", err)
	}
}

// TestRollingUpdateRestart (fakes): volantd stops in the middle of an
// update (one new replica made, the old ones all there); a new controller
// on the same database resumes it and finishes, making each new replica
// once; one stopped while rolling back finishes the rollback.
func TestRollingUpdateRestart(t *testing.T) {
	f := newFixture(t)
	pr := controllertest.NewProber()
	cfg := controller.Config{Prober: pr, MaxBooting: -1, ReconcileInterval: 50 * time.Millisecond,
		DrainDelay: 5 * time.Millisecond, ReplicaBackoff: 10 * time.Millisecond, HealthInterval: 20 * time.Millisecond}
	g := newGuests(t, pr, "1", "2")
	c, stop := f.startController(cfg)
	g.use(c)
	for _, v := range []string{"1", "2", "3"} {
		f.pluginVersion(c, "web", v)
	}
	if _, err := c.CreateDeployment(f.ctx, api.CreateDeploymentRequest{Name: "svc", Plugin: "web@1", Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	waitEndpointsN(t, c, 3)
	// Hold the new version's replicas unhealthy, so the update is caught
	// after its first create.
	g.setGood("2", false)
	if _, err := c.UpdateDeployment(f.ctx, "svc", api.UpdateDeploymentRequest{Plugin: "web@2", DeadlineMS: 60000}); err != nil {
		t.Fatal(err)
	}
	if err := wait.For(10*time.Second, func() bool { return versions(t, c) == "[svc-1@1 svc-2@1 svc-3@1 svc-4@2]" }); err != nil {
		t.Fatalf("the first batch: %s", versions(t, c))
	}
	stop()
	g.use(nil)
	g.setGood("2", true)

	c2, stop2 := f.startController(cfg)
	g.use(c2)
	g.arm()
	waitRollout(t, c2, 1, api.RolloutComplete, 20*time.Second)
	allAt(t, c2, "2")
	if f.rt.Starts("svc-4") != 1 {
		t.Fatalf("svc-4, made before the restart, was started %d times", f.rt.Starts("svc-4"))
	}
	if g.minOK.Load() < 3 {
		t.Fatalf("fewest healthy after the restart: %d", g.minOK.Load())
	}
	n, steps := rolloutEvents(t, f, 0)
	creates := 0
	for _, s := range steps {
		if s[:6] == "create" {
			creates++
		}
	}
	if creates != 3 || n[api.EventRolloutComplete] != 1 {
		t.Fatalf("events %v steps %v", n, steps)
	}

	// Stopped while rolling back v3: the next controller finishes the rollback.
	if _, err := c2.UpdateDeployment(f.ctx, "svc", api.UpdateDeploymentRequest{Plugin: "web@3", DeadlineMS: 200}); err != nil {
		t.Fatal(err)
	}
	waitRollout(t, c2, 2, api.RolloutRollingBack, 10*time.Second)
	stop2()
	c3, _ := f.startController(cfg)
	g.use(c3)
	waitRollout(t, c3, 2, api.RolloutRolledBack, 20*time.Second)
	allAt(t, c3, "2")
}

// startController is controllerWith with a stop: it ends the controller's
// Run as a stopping volantd would.
func (f *fixture) startController(cfg controller.Config) (*controller.Controller, func()) {
	f.t.Helper()
	cfg.Store, cfg.DataDir, cfg.Runtime, cfg.Network = f.st, f.dir, f.rt, f.nw
	cfg.InputsDir = f.run
	c, err := controller.New(cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := c.Reconcile(f.ctx); err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(f.ctx)
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	f.t.Cleanup(stop)
	return c, stop
}

// healthyOf counts the replicas that serve: running and healthy.
func healthyOf(vms []api.VM) int {
	n := 0
	for _, v := range vms {
		if v.State == api.VMRunning && v.Health == "healthy" {
			n++
		}
	}
	return n
}

func waitEndpointsN(t *testing.T, c *controller.Controller, n int) {
	t.Helper()
	var vms []api.VM
	if err := wait.For(10*time.Second, func() bool {
		vms, _ = c.ListVMs(context.Background(), api.VMFilter{Deployment: "svc"})
		return healthyOf(vms) == n
	}); err != nil {
		t.Fatalf("svc: %+v, want %d healthy", vms, n)
	}
}
