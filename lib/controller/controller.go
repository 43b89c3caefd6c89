// Package controller is volantd's orchestration: plugins, VMs and
// deployments over lib/store, lib/ipam, lib/hostnet and lib/runner, with
// every change recorded in the event log.
//
// Each job has its own files or package, behind a small interface:
//
//	vms.go, plugins.go, deployments.go   the API's operations, as steps
//	db.go                                the vms table's rows and SQL
//	reconcile.go                         what a restarted daemon makes of the state
//	runs.go                              watching runs: a run that ends unasked is a crash
//	health.go                            kestrel's health: reports, polling (Prober)
//	control.go, console.go, logs.go      pause, resume, counters, the console socket, the serial log
//	artifacts.go                         a plugin's artifacts: local ones checked, remote ones fetched
//	ports.go                             published ports: the ports table, the kernel's rules kept in line (Ports)
//	runtime.go                           Runtime, what the controller needs of lib/runner
//	admission/                           boot admission (a Gate of boot slots)
//	events/                              the event log, its replay and its bus
//
// # VMs as steps
//
// A VM's life is a few multi-step operations, each a list of named steps
// that measure before they act (flintlock's planner), so any of them can be
// re-run after a crash and does only what is missing:
//
//		create/start  lease → tap → volumes → stage → start → (wait healthy, in the background)
//		stop          stop
//		delete        stop → untap → release
//
//	  - lease: an address from lib/ipam, in the transaction that creates the
//	    vms row (an existing lease of the VM is reused);
//	  - tap: the VM's tap on the bridge (hostnet.AddTap, idempotent);
//	  - volumes: the VM's volumes claimed, unless another live VM holds
//	    one (VOLUME_IN_USE; see volumes.go);
//	  - stage: the VM's launch spec written to <data>/vms/<name>/spec.json;
//	  - start: a `volant-launch run` process for the VM (Runtime), unless a
//	    live run of the VM exists already, which is adopted; the step ends
//	    when the hypervisor answers on its control socket;
//	  - stop: the run stopped (ACPI power button, hard stop, kill);
//	  - untap, release: the tap deleted; the lease freed and the row deleted
//	    in one transaction.
//
// The step in progress is recorded in vms.step, what the user asked for in
// vms.desired; Reconcile (run at startup) resumes whatever was interrupted.
//
// # State
//
// A VM is "starting" until its health check passes, then "running"; its
// run ending without a stop makes it "crashed"; a stop makes it "stopped".
// Health comes from kestrel's reports (Report, which the agent endpoint
// calls) and from polling kestrel's /healthz on the guest, so the state is
// right even when reports are lost. A plugin with a health_check is healthy
// when kestrel says so; one without is healthy when its workload runs.
//
// # Events
//
// Every change appends an event to the store's events table in the same
// transaction as the change; the event log (Events, lib/controller/events)
// then fans the table out to subscribers in ID order and replays it to
// streams that resume from an ID.
package controller

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/controller/admission"
	"github.com/volantvm/volant/lib/controller/events"
	"github.com/volantvm/volant/lib/hostnet"
	"github.com/volantvm/volant/lib/ipam"
	"github.com/volantvm/volant/lib/layout"
	"github.com/volantvm/volant/lib/secretbox"
	"github.com/volantvm/volant/lib/signing"
	"github.com/volantvm/volant/lib/store"
	"github.com/volantvm/volant/lib/vmm/supervise"
)

// Config is what a Controller needs. Store is required; the rest has
// defaults.
type Config struct {
	Store *store.Store
	// Pool is the guest address pool (default ipam.DefaultPool()).
	Pool ipam.Pool
	// Bridge is the bridge taps attach to (default vbr0).
	Bridge string
	// DataDir holds plugins/<name>/ (fetched artifacts) and vms/<name>/
	// (spec.json, serial.log, launch.log); default /var/lib/volant. Its
	// secrets.key seals VMs' inputs in the database (secrets.go).
	DataDir string
	// InputsDir is where a VM's inputs are in clear while it runs, for
	// its volant-launch to read: a tmpfs directory (default
	// /run/volant/inputs, volantd's layout.Dirs.InputsDir).
	InputsDir string
	// ArtifactDirs are the directories besides DataDir/plugins that local
	// plugin artifacts may come from (volantd --artifact-dir).
	ArtifactDirs []string
	// MaxArtifactBytes bounds each plugin artifact, local or fetched
	// (default DefaultMaxArtifactBytes).
	MaxArtifactBytes int64
	// FetchStallTimeout ends an artifact download that received nothing
	// for this long (default fetch.DefaultStallTimeout).
	FetchStallTimeout time.Duration
	// TrustedKeys is a directory of minisign public keys (*.pub): a
	// plugin's signature must verify with one of them, at install and
	// before every boot (signatures.go). RequireSigned refuses plugins
	// without a signature; it needs TrustedKeys.
	TrustedKeys   string
	RequireSigned bool
	// Images configures plugin builds from container images (images.go).
	Images ImageConfig
	// Runtime runs the VMs; required (see LaunchRuntime).
	Runtime Runtime
	// Network makes the taps; nil means the calling thread's namespace
	// through lib/hostnet.
	Network Network
	// Ports publishes host ports (nftables); nil means Network when it
	// implements Ports, else the calling thread's namespace through
	// lib/hostnet.
	Ports Ports
	// Prober polls kestrel's /healthz; nil means HTTP on the guest address.
	Prober Prober
	// Launch fills the parts of each VM's launch spec that are host
	// settings: kernel, boot initramfs, kestrel, hypervisor, acceleration.
	Launch LaunchDefaults
	// AgentHost and AgentPort are the control-plane address kestrel reports
	// to (volant.api_host/api_port); default the pool's gateway and 7070.
	AgentHost string
	AgentPort int
	// Renetwork, when set, lets SetNetwork change the guest pool while no
	// VM exists (volantd makes the bridge's new address and kestrel's
	// endpoint).
	Renetwork Renetwork
	// DNS resolvers given to guests.
	DNS []string
	// HealthInterval is the /healthz poll interval of running VMs (default
	// 5 s; starting VMs are polled every second).
	HealthInterval time.Duration
	// StartTimeout bounds the wait for a hypervisor to answer (default 60 s).
	StartTimeout time.Duration
	// StopTimeout is how long a guest gets to power off before it is
	// stopped hard (default 10 s).
	StopTimeout time.Duration
	// ReconcileInterval is how often deployments are reconciled besides
	// on events (default 10 s).
	ReconcileInterval time.Duration
	// EventRetention is how many events the log keeps (default 100000).
	EventRetention int
	// ReplicaBackoff is how long the reconciler waits before it tries a
	// replica again after a failure (a create that failed, the replica
	// crashed or failed); it doubles with every failure in a row, up to
	// ReplicaBackoffMax, and starts over once the replica has run for
	// longer than ReplicaBackoffMax. Defaults 1 s and 5 min.
	ReplicaBackoff    time.Duration
	ReplicaBackoffMax time.Duration
	// LivenessGrace is how long a running replica may stay unhealthy
	// (its health check failing, or kestrel not answering) before the
	// reconciler replaces it, within the replica backoff (default
	// DefaultLivenessGrace; negative: never).
	LivenessGrace time.Duration
	// DrainDelay is how long a replica a rolling update removes keeps
	// serving the connections it has after it left its deployment's
	// published ports, before it is stopped (default 2 s).
	DrainDelay time.Duration
	// ReplicaParallelism bounds the replica creations being prepared at
	// once (row, lease, tap, spec; default 2). A create leaves the bound
	// when it reaches the boot gate, so replicas queue for boot slots.
	ReplicaParallelism int
	// MaxBooting bounds the VMs booting at once: a start waits for a slot
	// before its hypervisor starts and holds it until the guest is healthy,
	// its run ends, or StartTimeout passes. Default: CPUs + 1; negative:
	// unlimited. On a small host (and always under software emulation)
	// boots started all at once slow each other down until none finishes.
	MaxBooting int
	Logger     *slog.Logger
}

// LaunchDefaults are the host's settings for every VM's launch spec.
type LaunchDefaults struct {
	Kernel        string `json:"kernel,omitempty"`
	BootInitramfs string `json:"boot_initramfs,omitempty"`
	Kestrel       string `json:"kestrel,omitempty"`
	VMM           string `json:"vmm,omitempty"`
	Accel         string `json:"accel,omitempty"`
	Machine       string `json:"machine,omitempty"`
	Debug         bool   `json:"debug,omitempty"`
	// InsecureVMM runs every hypervisor as root without its jail
	// (volantd --insecure-vmm; launch.Spec.InsecureVMM).
	InsecureVMM bool `json:"insecure_vmm,omitempty"`
}

// Network is the part of lib/hostnet the controller uses; *hostnet.Host
// implements it.
type Network interface {
	AddTap(ctx context.Context, cfg hostnet.TapConfig) (*hostnet.TapResult, error)
	DelTap(ctx context.Context, ref hostnet.TapRef) (*hostnet.DelTapResult, error)
	GCTaps(ctx context.Context, keep []string) (*hostnet.GCResult, error)
}

// Prober asks kestrel on a guest for its status (GET /healthz) at the
// guest's address and the plugin's agent port (manifest.AgentPort).
type Prober interface {
	Probe(ctx context.Context, agent netip.AddrPort) (*agentapi.Status, error)
}

// Controller runs plugins, VMs and deployments. Create it with New, call
// Reconcile once, then Run in the background.
type Controller struct {
	cfg    Config
	st     *store.Store
	log    *slog.Logger
	events *events.Log

	locks keyLock
	// builds bounds concurrent image builds; imageLocks serializes the
	// builds of one plugin name.
	builds     chan struct{}
	imageLocks keyLock

	// netMu guards cfg.Pool and cfg.AgentHost (SetNetwork changes them).
	netMu sync.RWMutex

	mu       sync.Mutex
	watchers map[string]*watcher // by VM name
	boots    *admission.Gate
	changed  chan struct{} // closed and replaced on every VM change
	ready    bool

	wake    chan struct{} // deployment reconciler
	retries *retries      // replicas waiting to be tried again
	// passes and passErrors count deployment reconcile passes and the
	// errors they met (Stats).
	passes, passErrors atomic.Uint64
	live               *liveness // replicas seen unhealthy, since when

	ports portSync

	keyMu sync.Mutex
	key   *secretbox.Key // loaded on first use (secretsKey)

	// base is the controller's lifetime context, set by Run (watchers and
	// background work started before Run use the Reconcile context).
	base context.Context
}

// New checks cfg and returns a controller. It starts nothing.
func New(cfg Config) (*Controller, error) {
	if cfg.Store == nil {
		return nil, errors.New("controller: no store")
	}
	if cfg.Runtime == nil {
		return nil, errors.New("controller: no runtime")
	}
	if !cfg.Pool.Subnet.IsValid() {
		cfg.Pool = ipam.DefaultPool()
	}
	if err := cfg.Pool.Validate(); err != nil {
		return nil, err
	}
	if cfg.Bridge == "" {
		cfg.Bridge = hostnet.DefaultBridge
	}
	if cfg.DataDir == "" {
		cfg.DataDir = layout.DefaultDataDir
	}
	if cfg.InputsDir == "" {
		cfg.InputsDir = layout.Dirs{}.InputsDir()
	}
	if cfg.Network == nil {
		cfg.Network = &hostnet.Host{Log: cfg.Logger}
	}
	if cfg.Ports == nil {
		if p, ok := cfg.Network.(Ports); ok {
			cfg.Ports = p
		} else {
			cfg.Ports = &hostnet.Host{Log: cfg.Logger}
		}
	}
	if cfg.Prober == nil {
		cfg.Prober = HTTPProber{}
	}
	if cfg.AgentHost == "" {
		cfg.AgentHost = cfg.Pool.Gateway.String()
	}
	if cfg.AgentPort == 0 {
		cfg.AgentPort = 7070
	}
	if cfg.HealthInterval <= 0 {
		cfg.HealthInterval = 5 * time.Second
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 60 * time.Second
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = 10 * time.Second
	}
	if cfg.ReconcileInterval <= 0 {
		cfg.ReconcileInterval = 10 * time.Second
	}
	if cfg.EventRetention <= 0 {
		cfg.EventRetention = 100000
	}
	if cfg.ReplicaParallelism <= 0 {
		cfg.ReplicaParallelism = 2
	}
	if cfg.MaxBooting == 0 {
		cfg.MaxBooting = runtime.NumCPU() + 1
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.RequireSigned && cfg.TrustedKeys == "" {
		return nil, apierr.New(apierr.Usage, "requiring signed plugins needs trusted keys to check them with").
			With("hint", "give --trusted-keys DIR, a directory of minisign public keys")
	}
	if cfg.TrustedKeys != "" {
		if _, err := signing.LoadKeys(cfg.TrustedKeys); err != nil {
			return nil, err
		}
	}
	// Defaults before c takes its copy of cfg.
	if cfg.DrainDelay <= 0 {
		cfg.DrainDelay = 2 * time.Second
	}
	if cfg.LivenessGrace == 0 {
		cfg.LivenessGrace = DefaultLivenessGrace
	}
	c := &Controller{
		cfg:      cfg,
		st:       cfg.Store,
		log:      cfg.Logger,
		watchers: map[string]*watcher{},
		boots:    admission.New(cfg.MaxBooting, cfg.StartTimeout),
		changed:  make(chan struct{}),
		wake:     make(chan struct{}, 1),
		builds:   make(chan struct{}, cfg.Images.maxBuilds()),
		base:     context.Background(),
	}
	c.events = events.New(cfg.Store, cfg.Logger)
	c.retries = newRetries(cfg.ReplicaBackoff, cfg.ReplicaBackoffMax, c.kickDeployments)
	c.live = newLiveness(cfg.LivenessGrace, c.kickDeployments)
	return c, nil
}

// Events is the event log: what the server replays and follows.
func (c *Controller) Events() *events.Log { return c.events }

// Generation advances with every commit to the state (store.Generation):
// an answer read at one generation holds until it changes.
func (c *Controller) Generation() uint64 { return c.st.Generation() }

// Config returns the controller's configuration with defaults filled in.
func (c *Controller) Config() Config {
	c.netMu.RLock()
	defer c.netMu.RUnlock()
	return c.cfg
}

// Ready reports whether Reconcile has finished.
func (c *Controller) Ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ready
}

// Run runs the background work until ctx ends: the event bus, the
// deployment reconciler, published ports, event pruning. Watchers of
// running VMs stop with ctx too; the VMs themselves keep running.
func (c *Controller) Run(ctx context.Context) {
	c.mu.Lock()
	c.base = ctx
	c.mu.Unlock()
	c.cleanSnapshots()
	var wg sync.WaitGroup
	wg.Add(4)
	go func() { defer wg.Done(); c.runPorts(ctx) }()
	go func() { defer wg.Done(); c.events.Run(ctx) }()
	go func() { defer wg.Done(); c.runDeployments(ctx) }()
	go func() { defer wg.Done(); c.pruneEvents(ctx) }()
	wg.Wait()
	c.mu.Lock()
	ws := make([]*watcher, 0, len(c.watchers))
	for _, w := range c.watchers {
		ws = append(ws, w)
	}
	c.mu.Unlock()
	for _, w := range ws {
		w.cancel()
		<-w.done
	}
}

func (c *Controller) baseCtx() context.Context {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.base
}

// notify wakes waiters (WaitVM) and the event bus after a commit.
func (c *Controller) notify() {
	c.mu.Lock()
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	c.events.Kick()
}

func (c *Controller) changes() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// kickDeployments asks the deployment reconciler for a pass.
func (c *Controller) kickDeployments() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *Controller) pruneEvents(ctx context.Context) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		if err := c.events.Prune(ctx, c.cfg.EventRetention); err != nil && ctx.Err() == nil {
			c.log.Warn("pruning events", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// vmDir is a VM's data directory (spec, logs).
func (c *Controller) vmDir(name string) string { return filepath.Join(c.cfg.DataDir, "vms", name) }

// SpecPath is where a VM's launch spec is staged.
func (c *Controller) SpecPath(name string) string { return filepath.Join(c.vmDir(name), "spec.json") }

// SerialLog is where a VM's console is logged (lib/launch's default).
func (c *Controller) SerialLog(name string) string { return filepath.Join(c.vmDir(name), "serial.log") }

// keyLock is a mutex per key.
type keyLock struct {
	mu sync.Mutex
	m  map[string]*keyEntry
}

type keyEntry struct {
	ch   chan struct{}
	refs int
}

// lock takes the key's lock, waiting for ctx at most, and returns the
// unlock function.
func (k *keyLock) lock(ctx context.Context, key string) (func(), error) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyEntry{}
	}
	e := k.m[key]
	if e == nil {
		e = &keyEntry{ch: make(chan struct{}, 1)}
		k.m[key] = e
	}
	e.refs++
	k.mu.Unlock()
	release := func() {
		k.mu.Lock()
		e.refs--
		if e.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
	select {
	case e.ch <- struct{}{}:
	case <-ctx.Done():
		release()
		return nil, fmt.Errorf("waiting for another operation on %s: %w", key, ctx.Err())
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			<-e.ch
			release()
		})
	}, nil
}

// writeFileAtomic writes data to path (temp + fsync + rename), making its
// directory first.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return supervise.WriteFileAtomic(path, data, perm)
}

// internal wraps an unexpected failure with context.
func internal(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf(format+": %w", append(args, err)...)
}

var _ = apierr.Internal
