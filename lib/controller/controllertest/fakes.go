// Package controllertest has in-memory stand-ins for the controller's
// host-facing dependencies — the VM runtime, the host network and the
// health prober — so the API and the orchestration logic can be tested
// without root, taps or hypervisors. The privileged tests of cmd/volantd
// run the real ones (volant-launch with the fake Cloud Hypervisor, taps in
// a network namespace) and the real-VM tests boot QEMU.
package controllertest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/hostnet"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/vmm"
	"github.com/volantvm/volant/lib/vmm/supervise"
)

// Runtime is an in-memory controller.Runtime: a "run" is a record with a
// made-up process identity that lasts until Stop or Kill.
type Runtime struct {
	mu     sync.Mutex
	runs   map[string]*run
	next   int
	starts map[string]int
	// CheckErr, when set, is returned by Check for specs of that plugin.
	CheckErr map[string]error
	// StartErr, when set, is returned by Start for that VM.
	StartErr map[string]error
	// StartDelay delays every Start.
	StartDelay time.Duration
	// StopDelay delays every Stop, as a guest taking its time to power off.
	StopDelay time.Duration
	// StartHold, when set, holds every Start until it receives from it
	// (a hypervisor slow to answer); Starting counts the Starts held.
	StartHold chan struct{}
	starting  int
	unplanned map[string]bool
	lastErr   map[string]error

	stopping, maxStopping int
	counterCalls          int
}

type run struct {
	info   *launch.Status
	done   chan struct{}
	paused bool
	// spec is the spec the run was started from, when it could be read.
	spec launch.Spec
}

// NewRuntime returns an empty runtime.
func NewRuntime() *Runtime {
	return &Runtime{runs: map[string]*run{}, starts: map[string]int{}, CheckErr: map[string]error{}, StartErr: map[string]error{},
		unplanned: map[string]bool{}, lastErr: map[string]error{}}
}

var _ controller.Runtime = (*Runtime)(nil)

// Check implements controller.Runtime: the manifest must parse; then
// CheckErr of its plugin, if any.
func (r *Runtime) Check(_ context.Context, spec launch.Spec) error {
	m, err := manifest.Parse(spec.Manifest)
	if err != nil {
		return err
	}
	if spec.Name == "" {
		return apierr.New(apierr.Usage, "no name")
	}
	// As volant-launch's check: the inputs file a spec names is there.
	if spec.InputsFile != "" {
		if st, err := os.Stat(spec.InputsFile); err != nil || !st.Mode().IsRegular() {
			return apierr.New(apierr.InvalidInput, "inputs_file %s is not a readable file", spec.InputsFile)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.CheckErr[m.Name]
}

// Start implements controller.Runtime.
func (r *Runtime) Start(ctx context.Context, name, specPath string) (*launch.Status, bool, error) {
	if r.StartHold != nil {
		r.mu.Lock()
		r.starting++
		r.mu.Unlock()
		select {
		case <-r.StartHold:
		case <-ctx.Done():
		}
		r.mu.Lock()
		r.starting--
		r.mu.Unlock()
		if ctx.Err() != nil {
			return nil, false, ctx.Err()
		}
	}
	if r.StartDelay > 0 {
		select {
		case <-time.After(r.StartDelay):
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.StartErr[name]; err != nil {
		return nil, false, err
	}
	if ru := r.runs[name]; ru != nil {
		return ru.status(), true, nil
	}
	r.next++
	r.starts[name]++
	id := supervise.Identity{Pid: 100000 + r.next, StartTime: uint64(r.next), BootID: "fake"}
	vm := supervise.Identity{Pid: 200000 + r.next, StartTime: uint64(r.next), BootID: "fake"}
	now := time.Now().UTC()
	info := &launch.Status{Name: name, Running: true, State: vmm.StateRunning, VMM: "fake", Console: "/fake/run/" + name + "/" + launch.ConsoleName,
		Supervisor: &launch.ProcessStatus{Identity: id, Alive: true}, Process: &launch.ProcessStatus{Identity: vm, Alive: true}, StartedAt: &now}
	ru := &run{info: info, done: make(chan struct{})}
	if b, err := os.ReadFile(specPath); err == nil {
		json.Unmarshal(b, &ru.spec)
	}
	r.runs[name] = ru
	delete(r.lastErr, name)
	return ru.status(), false, nil
}

// status is a copy of the run's status as Inspect would report it.
func (ru *run) status() *launch.Status {
	cp := *ru.info
	if ru.paused {
		cp.State = vmm.StatePaused
	}
	return &cp
}

// Inspect implements controller.Runtime.
func (r *Runtime) Inspect(_ context.Context, name string) (*launch.Status, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ru := r.runs[name]
	if ru == nil {
		return nil, apierr.New(apierr.NotFound, "no run of %s", name)
	}
	st := ru.status()
	if r.unplanned[name] {
		st.Console = ""
	}
	return st, nil
}

// SetUnplanned makes the run of VM name one that has not written its plan
// yet (true): Inspect reports no console socket.
func (r *Runtime) SetUnplanned(name string, unplanned bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.unplanned[name] = unplanned
}

// Pause implements controller.Runtime.
func (r *Runtime) Pause(_ context.Context, name string) (*launch.Status, error) {
	return r.setPaused(name, true)
}

// Resume implements controller.Runtime.
func (r *Runtime) Resume(_ context.Context, name string) (*launch.Status, error) {
	return r.setPaused(name, false)
}

func (r *Runtime) setPaused(name string, paused bool) (*launch.Status, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ru := r.runs[name]
	if ru == nil {
		return nil, apierr.New(apierr.Conflict, "VM %s is not running (state stopped)", name)
	}
	ru.paused = paused
	return ru.status(), nil
}

// Snapshot implements controller.Runtime: a snapshot directory as
// launch.Snapshot writes one, with a made-up state file and no disks.
func (r *Runtime) Snapshot(_ context.Context, name, dir string) (*launch.SnapshotInfo, error) {
	r.mu.Lock()
	ru := r.runs[name]
	r.mu.Unlock()
	if ru == nil {
		return nil, apierr.New(apierr.Conflict, "VM %s is not running (state stopped)", name)
	}
	if err := os.MkdirAll(filepath.Join(dir, launch.SnapshotStateName), 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, launch.SnapshotStateName, "memory"), make([]byte, 4096), 0o600); err != nil {
		return nil, err
	}
	info := &launch.SnapshotInfo{Version: 1, VM: name, VMM: "fake", CPUs: ru.spec.CPUs, MemoryMB: ru.spec.MemoryMB, StateBytes: 4096,
		CreatedAt: time.Now().UTC()}
	if err := launch.WriteSnapshotInfo(dir, info); err != nil {
		return nil, err
	}
	return info, nil
}

// Counters implements controller.Runtime: one made-up disk whose
// read_ops count the calls.
func (r *Runtime) Counters(_ context.Context, name string) (*launch.CountersReport, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ru := r.runs[name]
	if ru == nil {
		return nil, apierr.New(apierr.Conflict, "VM %s is not running (state stopped)", name)
	}
	r.counterCalls++
	return &launch.CountersReport{Name: name, VMM: "fake", Counters: map[string]map[string]int64{
		"disk0": {"read_ops": int64(r.counterCalls)},
	}}, nil
}

// Stop implements controller.Runtime.
func (r *Runtime) Stop(ctx context.Context, name string, _ time.Duration) (string, error) {
	r.mu.Lock()
	r.stopping++
	r.maxStopping = max(r.maxStopping, r.stopping)
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.stopping--
		r.mu.Unlock()
	}()
	if r.StopDelay > 0 {
		select {
		case <-time.After(r.StopDelay):
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	ru := r.runs[name]
	if ru == nil {
		return "not_running", nil
	}
	delete(r.runs, name)
	close(ru.done)
	return "power_button", nil
}

// MaxConcurrentStops is the most Stop calls that were in progress at once.
func (r *Runtime) MaxConcurrentStops() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.maxStopping
}

// Wait implements controller.Runtime.
func (r *Runtime) Wait(ctx context.Context, info *launch.Status) error {
	r.mu.Lock()
	ru := r.runs[info.Name]
	r.mu.Unlock()
	if ru == nil || ru.info.SupervisorID() != info.SupervisorID() {
		return nil
	}
	select {
	case <-ru.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Runs implements controller.Runtime.
func (r *Runtime) Runs(context.Context) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for n := range r.runs {
		out = append(out, n)
	}
	sort.Strings(out)
	return out, nil
}

// LastError implements controller.Runtime.
func (r *Runtime) LastError(name string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastErr[name]
}

// Kill ends a VM's run as a crash would, with an optional error.
func (r *Runtime) Kill(name string, cause error) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	ru := r.runs[name]
	if ru == nil {
		return false
	}
	delete(r.runs, name)
	if cause != nil {
		r.lastErr[name] = cause
	}
	close(ru.done)
	return true
}

// Live lists the VMs with a run.
func (r *Runtime) Live() []string {
	out, _ := r.Runs(context.Background())
	return out
}

// Starting is the number of Starts StartHold holds now.
func (r *Runtime) Starting() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.starting
}

// Starts counts how often a VM's run was started (not adopted).
func (r *Runtime) Starts(name string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.starts[name]
}

// Network is an in-memory controller.Network.
type Network struct {
	mu   sync.Mutex
	taps map[string]hostnet.Tap // by tap name
	// NoBridge makes AddTap fail as it does without the bridge.
	NoBridge bool

	ports      map[hostnet.PortOwner]hostnet.PortSet
	portWrites int
	listening  map[int]bool
	hold       chan struct{} // SetPorts waits on it (HoldPorts)
	held       []hostnet.PortSet
}

// NewNetwork returns a network without taps.
func NewNetwork() *Network { return &Network{taps: map[string]hostnet.Tap{}} }

var _ controller.Network = (*Network)(nil)

// SetNoBridge sets NoBridge while the network is in use.
func (n *Network) SetNoBridge(v bool) {
	n.mu.Lock()
	n.NoBridge = v
	n.mu.Unlock()
}

// AddTap implements controller.Network.
func (n *Network) AddTap(_ context.Context, cfg hostnet.TapConfig) (*hostnet.TapResult, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.NoBridge {
		return nil, apierr.New(apierr.NotFound, "bridge %s does not exist", cfg.Bridge)
	}
	name := cfg.Name
	if name == "" {
		name = hostnet.TapName(cfg.VM)
	}
	t := hostnet.Tap{Name: name, VM: cfg.VM, Bridge: cfg.Bridge, MAC: cfg.MAC, IP: cfg.IP, Up: true}
	old, ok := n.taps[name]
	if ok && old.VM != cfg.VM {
		return nil, apierr.New(apierr.Conflict, "tap %s belongs to %s", name, old.VM)
	}
	n.taps[name] = t
	return &hostnet.TapResult{Tap: t, Changed: !ok || old != t}, nil
}

// DelTap implements controller.Network.
func (n *Network) DelTap(_ context.Context, ref hostnet.TapRef) (*hostnet.DelTapResult, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	name := ref.Name
	if name == "" {
		name = hostnet.TapName(ref.VM)
	}
	_, ok := n.taps[name]
	delete(n.taps, name)
	return &hostnet.DelTapResult{Tap: name, VM: ref.VM, Changed: ok}, nil
}

// GCTaps implements controller.Network.
func (n *Network) GCTaps(_ context.Context, keep []string) (*hostnet.GCResult, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	want := map[string]bool{}
	for _, k := range keep {
		want[k] = true
	}
	res := &hostnet.GCResult{Removed: []hostnet.Tap{}, Skipped: []hostnet.Tap{}, Kept: []hostnet.Tap{}}
	for name, t := range n.taps {
		if want[t.VM] {
			res.Kept = append(res.Kept, t)
			continue
		}
		delete(n.taps, name)
		res.Removed = append(res.Removed, t)
	}
	return res, nil
}

// Taps returns the taps by name.
func (n *Network) Taps() map[string]hostnet.Tap {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := map[string]hostnet.Tap{}
	for k, v := range n.taps {
		out[k] = v
	}
	return out
}

// Prober is a controller.Prober answering with set statuses.
type Prober struct {
	mu sync.Mutex
	st map[netip.Addr]*agentapi.Status
}

// NewProber returns a prober for which no guest answers.
func NewProber() *Prober { return &Prober{st: map[netip.Addr]*agentapi.Status{}} }

// Set makes the guest at ip answer with st (nil: not answer).
func (p *Prober) Set(ip netip.Addr, st *agentapi.Status) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if st == nil {
		delete(p.st, ip)
		return
	}
	cp := *st
	p.st[ip] = &cp
}

// Probe implements controller.Prober.
func (p *Prober) Probe(_ context.Context, agent netip.AddrPort) (*agentapi.Status, error) {
	ip := agent.Addr()
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.st[ip]
	if st == nil {
		return nil, fmt.Errorf("connect to %s:8080: connection refused", ip)
	}
	cp := *st
	return &cp, nil
}

// Healthy is a status kestrel reports for a healthy VM.
func Healthy(vm string) agentapi.Status {
	now := time.Now().UTC()
	return agentapi.Status{VM: vm, Agent: "test", Boot: "initramfs", Workload: agentapi.WorkloadStatus{State: agentapi.WorkloadRunning, PID: 42},
		Health: agentapi.HealthStatus{State: agentapi.HealthHealthy, Since: &now}, Time: now}
}
