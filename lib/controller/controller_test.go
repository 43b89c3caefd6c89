package controller_test

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/controller/controllertest"
	"github.com/volantvm/volant/lib/hostnet"
	"github.com/volantvm/volant/lib/ipam"
	"github.com/volantvm/volant/lib/store"
	"github.com/volantvm/volant/lib/testutil/wait"
)

type fixture struct {
	t   *testing.T
	dir string
	run string // the controller's InputsDir, apart from the data dir
	st  *store.Store
	rt  *controllertest.Runtime
	nw  *controllertest.Network
	ctx context.Context
	// stop ends the background work of the controller made last, as a
	// restart ends the daemon before the next one opens the store.
	stop func()
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(context.Background(), filepath.Join(dir, "volant.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &fixture{t: t, dir: dir, run: t.TempDir(), st: st, rt: controllertest.NewRuntime(), nw: controllertest.NewNetwork(), ctx: context.Background()}
}

// controller makes a controller on the fixture's store and fakes, as a
// (re)started daemon would, and reconciles it.
func (f *fixture) controller() (*controller.Controller, *controller.ReconcileReport) {
	f.t.Helper()
	// The fakes never report healthy: no boot admission (see lib/controller/admission).
	return f.controllerWith(controller.Config{Prober: controllertest.NewProber(), MaxBooting: -1})
}

// controllerWith is controller with cfg's settings; the store, data
// directory, runtime and network are the fixture's, the health interval
// 50 ms unless set.
func (f *fixture) controllerWith(cfg controller.Config) (*controller.Controller, *controller.ReconcileReport) {
	f.t.Helper()
	if f.stop != nil {
		f.stop() // two daemons never share a store: the last one is gone
	}
	cfg.Store, cfg.DataDir, cfg.Runtime, cfg.Network = f.st, f.dir, f.rt, f.nw
	cfg.InputsDir = f.run
	if cfg.HealthInterval == 0 {
		cfg.HealthInterval = 50 * time.Millisecond
	}
	c, err := controller.New(cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	rep, err := c.Reconcile(f.ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(f.ctx)
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	f.stop = func() { cancel(); <-done }
	f.t.Cleanup(f.stop)
	return c, rep
}

// localArtifact writes body as the plugin artifact file under dataDir's
// plugins directory (volantd takes local artifacts only from there and
// the directories it is told to allow) and returns its path and hex
// SHA-256, for a manifest's url and checksum.
func localArtifact(dataDir, file, body string) (path, sum string) {
	path = filepath.Join(dataDir, "plugins", file)
	os.MkdirAll(filepath.Dir(path), 0o755)
	os.WriteFile(path, []byte(body), 0o644)
	h := sha256.Sum256([]byte(body))
	return path, hex.EncodeToString(h[:])
}

func (f *fixture) plugin(c *controller.Controller, name string) {
	f.t.Helper()
	art, sum := localArtifact(f.dir, name+".img", name)
	m := fmt.Sprintf(`{"name":%q,"version":"1","initramfs":{"url":%q,"checksum":"sha256:%s"},"workload":{"entrypoint":["/a"]}}`, name, art, sum)
	if _, err := c.InstallPlugin(f.ctx, []byte(m), false); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) exec(q string, args ...any) {
	f.t.Helper()
	if err := f.st.Tx(f.ctx, func(tx *sql.Tx) error { _, err := tx.Exec(q, args...); return err }); err != nil {
		f.t.Fatal(err)
	}
}

func sorted(s []string) string {
	s = append([]string(nil), s...)
	sort.Strings(s)
	return strings.Join(s, ",")
}

// TestReconcile sets up what a crash can leave — every kind of interrupted
// operation, dead and live runs, stray leases, taps and runs — and checks
// what a restarted controller makes of it.
func TestReconcile(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controller()
	f.plugin(c, "web")
	for _, n := range []string{"live", "dead", "midcreate", "midstop", "middelete", "stopped", "crashed"} {
		if _, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: n, Plugin: "web"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.StopVM(f.ctx, "stopped"); err != nil {
		t.Fatal(err)
	}
	f.rt.Kill("crashed", nil)
	eventuallyState(t, c, "crashed", api.VMCrashed)

	// What a crash mid-operation leaves in the database and on the host:
	f.rt.Kill("dead", nil) // died while the daemon was away (no watcher saw it: see below)
	f.exec(`UPDATE vms SET step = 'start', pid = NULL, supervisor = NULL, vmm = NULL WHERE id = 'midcreate'`)
	f.rt.Kill("midcreate", nil)
	f.exec(`UPDATE vms SET desired = 'stopped', state = 'stopping', step = 'stop' WHERE id = 'midstop'`)
	f.exec(`UPDATE vms SET desired = 'deleted', state = 'deleting', step = 'untap' WHERE id = 'middelete'`)
	if _, err := ipam.Acquire(f.ctx, f.st, ipam.DefaultPool(), "stray"); err != nil {
		t.Fatal(err)
	}
	f.nw.AddTap(f.ctx, hostnet.TapConfig{VM: "ghost", Bridge: "vbr0"})
	f.rt.Start(f.ctx, "orphan", "")
	// The "dead" VM's watcher ran in the old controller; make the new one
	// find it dead as if that had happened while it was down.
	f.exec(`UPDATE vms SET state = 'running', error = '' WHERE id = 'dead'`)

	// A new controller on the same state.
	c2, rep := f.controller()
	if sorted(rep.Adopted) != "live" {
		t.Errorf("adopted %v", rep.Adopted)
	}
	if sorted(rep.Resumed) != "midcreate" {
		t.Errorf("resumed %v", rep.Resumed)
	}
	if sorted(rep.Crashed) != "dead" {
		t.Errorf("crashed %v", rep.Crashed)
	}
	if sorted(rep.Stopped) != "midstop" || sorted(rep.Deleted) != "middelete" {
		t.Errorf("stopped %v deleted %v", rep.Stopped, rep.Deleted)
	}
	if sorted(rep.FreedLeases) != "stray" || sorted(rep.RemovedTaps) != "vt-ghost" || sorted(rep.OrphanRuns) != "orphan" {
		t.Errorf("freed %v taps %v runs %v", rep.FreedLeases, rep.RemovedTaps, rep.OrphanRuns)
	}
	want := map[string]api.VMState{"live": api.VMStarting, "dead": api.VMCrashed, "midcreate": api.VMStarting,
		"midstop": api.VMStopped, "stopped": api.VMStopped, "crashed": api.VMCrashed}
	vms, _ := c2.ListVMs(f.ctx, api.VMFilter{})
	if len(vms) != len(want) {
		t.Fatalf("VMs %+v", vms)
	}
	for _, v := range vms {
		if v.State != want[v.Name] || v.Step != "" {
			t.Errorf("%s: %s step %q, want %s", v.Name, v.State, v.Step, want[v.Name])
		}
	}
	if sorted(f.rt.Live()) != "live,midcreate" {
		t.Errorf("runs %v", f.rt.Live())
	}
	if f.rt.Starts("live") != 1 {
		t.Errorf("the live VM was started %d times; it should have been adopted", f.rt.Starts("live"))
	}
	if !c2.Watching("live") || !c2.Watching("midcreate") {
		t.Error("adopted runs are not watched")
	}
	leases, _ := ipam.List(f.ctx, f.st)
	if len(leases) != 6 {
		t.Errorf("leases %+v", leases)
	}
	taps := f.nw.Taps()
	if _, ok := taps["vt-middelete"]; ok || len(taps) != 6 {
		t.Errorf("taps %v", taps)
	}
	// A second reconcile finds nothing to do.
	_, rep = f.controller()
	if len(rep.Resumed)+len(rep.Crashed)+len(rep.Deleted)+len(rep.Stopped)+len(rep.FreedLeases)+len(rep.RemovedTaps)+len(rep.OrphanRuns) != 0 ||
		sorted(rep.Adopted) != "live,midcreate" {
		t.Errorf("second reconcile: %+v", rep)
	}
}

func eventuallyState(t *testing.T, c *controller.Controller, name string, st api.VMState) {
	t.Helper()
	var v *api.VM
	var err error
	if werr := wait.For(5*time.Second, func() bool {
		v, err = c.VM(context.Background(), name)
		return err == nil && v.State == st
	}); werr != nil {
		t.Fatalf("%s: %+v %v, want %s (%v)", name, v, err, st, werr)
	}
}

// TestConcurrentCreates: many creates at once get distinct addresses, and
// of racing creates of one name exactly one wins.
func TestConcurrentCreates(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controller()
	f.plugin(c, "web")
	var wg sync.WaitGroup
	errs := make([]error, 40)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("vm%d", i%30) // 10 names are raced twice
			_, errs[i] = c.CreateVM(f.ctx, api.CreateVMRequest{Name: name, Plugin: "web"})
		}()
	}
	wg.Wait()
	ok, conflicts := 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case apierr.Is(err, apierr.Conflict):
			conflicts++
		default:
			t.Fatal(err)
		}
	}
	if ok != 30 || conflicts != 10 {
		t.Fatalf("%d created, %d conflicts", ok, conflicts)
	}
	vms, _ := c.ListVMs(f.ctx, api.VMFilter{})
	seen := map[string]bool{}
	for _, v := range vms {
		if seen[v.IP] || v.IP == "" {
			t.Fatalf("address %q twice", v.IP)
		}
		seen[v.IP] = true
	}
}

// TestFailedCreateIsUndone: a create whose start fails after the VM was
// recorded leaves no VM, lease or tap, and says so in the events.
func TestFailedCreateIsUndone(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controller()
	f.plugin(c, "web")
	f.rt.StartErr["bad"] = apierr.New(apierr.Unavailable, "qemu exited while starting")
	_, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "bad", Plugin: "web"})
	if !apierr.Is(err, apierr.Unavailable) || !strings.Contains(err.Error(), "qemu exited") {
		t.Fatalf("create: %v", err)
	}
	if _, err := c.VM(f.ctx, "bad"); !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("VM left: %v", err)
	}
	if l, _ := ipam.List(f.ctx, f.st); len(l) != 0 || len(f.nw.Taps()) != 0 {
		t.Fatalf("leases %v taps %v", l, f.nw.Taps())
	}
	evs, _ := f.st.EventsSince(f.ctx, 0, 0)
	var types []string
	for _, e := range evs {
		if strings.HasPrefix(e.Type, "vm.") {
			types = append(types, e.Type+":"+string(e.Data))
		}
	}
	if len(types) != 2 || !strings.HasPrefix(types[0], "vm.created") || !strings.Contains(types[1], `"reason":"create failed`) {
		t.Fatalf("events %v", types)
	}
	// A failed start of an existing VM marks it failed instead.
	if _, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "good", Plugin: "web"}); err != nil {
		t.Fatal(err)
	}
	c.StopVM(f.ctx, "good")
	f.rt.StartErr["good"] = apierr.New(apierr.Timeout, "no answer")
	if _, err := c.StartVM(f.ctx, "good"); !apierr.Is(err, apierr.Timeout) {
		t.Fatalf("start: %v", err)
	}
	if v, _ := c.VM(f.ctx, "good"); v.State != api.VMFailed || !strings.Contains(v.Error, "no answer") {
		t.Fatalf("after a failed start: %+v", v)
	}
}

func TestReplicaName(t *testing.T) {
	if controller.ReplicaName("web", 12) != "web-12" {
		t.Fatal(controller.ReplicaName("web", 12))
	}
	if controller.MaxDeploymentName != 58 {
		t.Fatalf("MaxDeploymentName = %d", controller.MaxDeploymentName)
	}
}

// TestBootAdmission: with one boot slot, a second create waits until the
// first VM's guest reports healthy, then starts.
func TestBootAdmission(t *testing.T) {
	f := newFixture(t)
	pr := controllertest.NewProber()
	c, _ := f.controllerWith(controller.Config{Prober: pr, MaxBooting: 1})
	f.plugin(c, "web")

	v1, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "vm1", Plugin: "web"})
	if err != nil {
		t.Fatal(err)
	}
	second := make(chan error, 1)
	go func() {
		_, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "vm2", Plugin: "web"})
		second <- err
	}()
	select {
	case err := <-second:
		t.Fatalf("the second create did not wait for a boot slot (err %v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	if f.rt.Starts("vm2") != 0 {
		t.Fatal("vm2's hypervisor started while vm1 was still booting")
	}
	pr.Set(netip.MustParseAddr(v1.IP), ptr(controllertest.Healthy("vm1")))
	select {
	case err := <-second:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("vm1 is healthy but vm2 never started")
	}
	eventuallyState(t, c, "vm1", api.VMRunning)
	if f.rt.Starts("vm2") != 1 {
		t.Fatalf("vm2 started %d times", f.rt.Starts("vm2"))
	}
}

func ptr[T any](v T) *T { return &v }

// TestDeploymentQueuesReplicasForBootSlots: a deployment's replicas queue
// at the boot gate while the slots are held, even when the creates in
// flight (ReplicaParallelism) are all waiting for their hypervisors to
// answer; a slot freed by a healthy guest goes to a queued replica at
// once. (The bound used to cover the start too: with both creates waiting
// for their hypervisors nothing was prepared, and a freed slot stayed
// idle until one answered and the next replica was made.)
func TestDeploymentQueuesReplicasForBootSlots(t *testing.T) {
	f := newFixture(t)
	f.rt.StartHold = make(chan struct{}) // hypervisors answer when told
	pr := controllertest.NewProber()
	c, _ := f.controllerWith(controller.Config{Prober: pr, MaxBooting: 2, ReplicaParallelism: 1, StartTimeout: time.Minute})
	t.Cleanup(func() {
		// Every hypervisor answers; the replicas still queued give up.
		close(f.rt.StartHold)
		if _, err := c.DeleteDeployment(f.ctx, "d"); err != nil {
			t.Error(err)
		}
	})
	f.plugin(c, "web")
	if _, err := c.CreateDeployment(f.ctx, api.CreateDeploymentRequest{Name: "d", Plugin: "web", Replicas: 5}); err != nil {
		t.Fatal(err)
	}
	until := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("never %s: %d starts waiting for their hypervisor, %d replicas queued for a slot",
					what, f.rt.Starting(), c.Stats().BootQueue)
			}
		}
	}
	// Both slots' hypervisors are starting, the other three replicas are
	// made and queued, though only one replica is prepared at a time.
	until("two starting and three queued", func() bool { return f.rt.Starting() == 2 && c.Stats().BootQueue == 3 })
	if vms, _ := c.ListVMs(f.ctx, api.VMFilter{Deployment: "d"}); len(vms) != 5 {
		t.Fatalf("%d replicas made, want all 5", len(vms))
	}
	// One hypervisor answers and its guest turns healthy: its slot goes to
	// a queued replica, whose start begins without another create.
	f.rt.StartHold <- struct{}{}
	until("one started", func() bool { return f.rt.Starting() == 1 })
	var first api.VM
	until("a replica with a run", func() bool {
		vms, _ := c.ListVMs(f.ctx, api.VMFilter{Deployment: "d"})
		for _, v := range vms {
			if v.PID != 0 {
				first = v
				return true
			}
		}
		return false
	})
	pr.Set(netip.MustParseAddr(first.IP), ptr(controllertest.Healthy(first.Name)))
	until("the freed slot taken by a queued replica", func() bool { return f.rt.Starting() == 2 && c.Stats().BootQueue == 2 })
}

// TestDeleteWhileQueuedForBoot: deleting a VM whose create waits for a boot
// slot ends the wait at once: the create fails and is undone, the delete
// answers, and the VM never started.
func TestDeleteWhileQueuedForBoot(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controllerWith(controller.Config{Prober: controllertest.NewProber(), MaxBooting: 1})
	f.plugin(c, "web")
	if _, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "vm1", Plugin: "web"}); err != nil {
		t.Fatal(err)
	}
	created := make(chan error, 1)
	go func() {
		_, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "vm2", Plugin: "web"})
		created <- err
	}()
	eventuallyState(t, c, "vm2", api.VMStarting) // recorded, queued for a slot
	t0 := time.Now()
	v, err := c.DeleteVM(f.ctx, "vm2")
	if err != nil {
		t.Fatal(err)
	}
	if v.State != api.VMDeleted || time.Since(t0) > 3*time.Second {
		t.Fatalf("delete answered %+v after %s", v, time.Since(t0))
	}
	if err := <-created; err == nil {
		t.Fatal("the queued create succeeded after its VM was deleted")
	}
	if f.rt.Starts("vm2") != 0 {
		t.Fatal("vm2 booted although it was deleted while queued")
	}
	if _, err := c.VM(f.ctx, "vm2"); !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("vm2 still there: %v", err)
	}
	if _, ok := f.nw.Taps()[hostnet.TapName("vm2")]; ok {
		t.Fatal("vm2's tap left behind")
	}
	leases, _ := ipam.List(f.ctx, f.st)
	for _, l := range leases {
		if l.VM == "vm2" {
			t.Fatal("vm2's lease left behind")
		}
	}
}

// TestDeploymentStopsReplicasConcurrently: deleting a deployment (and
// scaling one down) stops its replicas several at a time, within the bound,
// not one after another; every replica, lease and tap is gone after.
func TestDeploymentStopsReplicasConcurrently(t *testing.T) {
	f := newFixture(t)
	f.rt.StopDelay = 100 * time.Millisecond // set before any goroutine reads it
	c, _ := f.controller()
	f.plugin(c, "web")
	const n = controller.StopParallelism + 4
	if _, err := c.CreateDeployment(f.ctx, api.CreateDeploymentRequest{Name: "d", Plugin: "web", Replicas: n}); err != nil {
		t.Fatal(err)
	}
	waitReplicas := func(want int) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if vms, _ := c.ListVMs(f.ctx, api.VMFilter{Deployment: "d"}); len(vms) == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the deployment never reached %d replicas", want)
			}
		}
	}
	waitReplicas(n)
	if _, err := c.ScaleDeployment(f.ctx, "d", 2); err != nil {
		t.Fatal(err)
	}
	waitReplicas(2)
	if _, err := c.DeleteDeployment(f.ctx, "d"); err != nil {
		t.Fatal(err)
	}
	if got := f.rt.MaxConcurrentStops(); got < 2 || got > controller.StopParallelism {
		t.Fatalf("at most %d stops ran at once; want 2..%d", got, controller.StopParallelism)
	}
	if live := f.rt.Live(); len(live) != 0 {
		t.Fatalf("runs left: %v", live)
	}
	if taps := f.nw.Taps(); len(taps) != 0 {
		t.Fatalf("taps left: %v", taps)
	}
	if leases, _ := ipam.List(f.ctx, f.st); len(leases) != 0 {
		t.Fatalf("leases left: %v", leases)
	}
}

// TestDeleteDeploymentWhileBootsQueue: a deployment whose replicas queue
// for boot slots (one slot, held by a guest that never turns healthy) is
// deleted at once: the reconcile pass stops creating, the queued creates
// give up, and the delete does not wait for the boot timeout.
func TestDeleteDeploymentWhileBootsQueue(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controllerWith(controller.Config{Prober: controllertest.NewProber(), MaxBooting: 1, StartTimeout: time.Minute})
	f.plugin(c, "web")
	if _, err := c.CreateDeployment(f.ctx, api.CreateDeploymentRequest{Name: "d", Plugin: "web", Replicas: 6}); err != nil {
		t.Fatal(err)
	}
	// One replica boots (and holds the only slot); another waits for it.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		vms, _ := c.ListVMs(f.ctx, api.VMFilter{Deployment: "d"})
		if len(f.rt.Live()) == 1 && len(vms) >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never had one replica booting and one queued: %d live, %d VMs", len(f.rt.Live()), len(vms))
		}
	}
	t0 := time.Now()
	if _, err := c.DeleteDeployment(f.ctx, "d"); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(t0); took > 10*time.Second {
		t.Fatalf("the delete took %s: it waited for queued boots", took)
	}
	if vms, _ := c.ListVMs(f.ctx, api.VMFilter{}); len(vms) != 0 {
		t.Fatalf("VMs left: %v", vms)
	}
	if live := f.rt.Live(); len(live) != 0 {
		t.Fatalf("runs left: %v", live)
	}
	if leases, _ := ipam.List(f.ctx, f.st); len(leases) != 0 {
		t.Fatalf("leases left: %v", leases)
	}
	if _, err := c.Deployment(f.ctx, "d"); !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("deployment still there: %v", err)
	}
}

// TestPauseResumeCounters: the controller reaches a running VM's
// hypervisor through its runtime, under the VM's lock, and refuses VMs
// that do not run.
func TestPauseResumeCounters(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controller()
	f.plugin(c, "web")
	if _, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "web1", Plugin: "web"}); err != nil {
		t.Fatal(err)
	}
	vm, err := c.PauseVM(f.ctx, "web1")
	if err != nil || vm.State != api.VMPaused {
		t.Fatalf("PauseVM: %+v %v", vm, err)
	}
	if st, err := f.rt.Inspect(f.ctx, "web1"); err != nil || st.State != "paused" {
		t.Fatalf("the runtime's run after PauseVM: %+v %v", st, err)
	}
	// It never passed its check (the fakes never report healthy): resumed,
	// it is starting again, and its run is running.
	if vm, err := c.ResumeVM(f.ctx, "web1"); err != nil || vm.State != api.VMStarting {
		t.Fatalf("ResumeVM: %+v %v", vm, err)
	}
	if st, err := f.rt.Inspect(f.ctx, "web1"); err != nil || st.State != "running" {
		t.Fatalf("the runtime's run after ResumeVM: %+v %v", st, err)
	}
	rep, err := c.VMCounters(f.ctx, "web1")
	if err != nil || rep.Name != "web1" || rep.Counters["disk0"]["read_ops"] != 1 {
		t.Fatalf("VMCounters: %+v %v", rep, err)
	}
	if _, err := c.StopVM(f.ctx, "web1"); err != nil {
		t.Fatal(err)
	}
	for op, fn := range map[string]func(context.Context, string) error{
		"pause":    func(ctx context.Context, n string) error { _, err := c.PauseVM(ctx, n); return err },
		"resume":   func(ctx context.Context, n string) error { _, err := c.ResumeVM(ctx, n); return err },
		"counters": func(ctx context.Context, n string) error { _, err := c.VMCounters(ctx, n); return err },
	} {
		if err := fn(f.ctx, "web1"); !apierr.Is(err, apierr.Conflict) {
			t.Errorf("%s of a stopped VM: %v, want CONFLICT", op, err)
		}
		if err := fn(f.ctx, "nope"); !apierr.Is(err, apierr.NotFound) {
			t.Errorf("%s of a missing VM: %v, want NOT_FOUND", op, err)
		}
		if err := fn(f.ctx, "Bad Name"); !apierr.Is(err, apierr.InvalidInput) {
			t.Errorf("%s of a bad name: %v, want INVALID_INPUT", op, err)
		}
	}
}

// The console socket of a VM comes from its run. A run that has not
// written its plan yet has none: UNAVAILABLE (try again), not the
// NOT_SUPPORTED of the days when Cloud Hypervisor's console was only
// logged (volant-launch relays it now, lib/launch.TestConsoleRelay).
func TestConsoleSocket(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controller()
	f.plugin(c, "web")
	if _, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "web1", Plugin: "web"}); err != nil {
		t.Fatal(err)
	}
	info, err := f.rt.Inspect(f.ctx, "web1")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.ConsoleSocket(f.ctx, "web1"); err != nil || got != info.Console || got == "" {
		t.Fatalf("ConsoleSocket: %q %v, want the run's %q", got, err, info.Console)
	}
	f.rt.SetUnplanned("web1", true)
	_, err = c.ConsoleSocket(f.ctx, "web1")
	if !apierr.Is(err, apierr.Unavailable) || strings.Contains(err.Error(), "serves no console") {
		t.Fatalf("a run without its plan yet: %v, want UNAVAILABLE", err)
	}
	if _, err := c.StopVM(f.ctx, "web1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ConsoleSocket(f.ctx, "web1"); !apierr.Is(err, apierr.Conflict) {
		t.Fatalf("a stopped VM: %v, want CONFLICT", err)
	}
	if _, err := c.ConsoleSocket(f.ctx, "nope"); !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("a missing VM: %v, want NOT_FOUND", err)
	}
}
