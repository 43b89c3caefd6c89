// Package agent is kestrel's steady state, the same in a guest and outside
// one: it serves the HTTP API, obtains the manifest, supervises the
// workload, probes its health and reports every change to the control
// plane. The guest-only duties (mounts, modules, network, power) are done
// around it by lib/kestrel/boot.
package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/kestrel/api"
	"github.com/volantvm/volant/lib/kestrel/console"
	"github.com/volantvm/volant/lib/kestrel/health"
	"github.com/volantvm/volant/lib/kestrel/outlog"
	"github.com/volantvm/volant/lib/kestrel/reaper"
	"github.com/volantvm/volant/lib/kestrel/report"
	"github.com/volantvm/volant/lib/kestrel/ringbuf"
	"github.com/volantvm/volant/lib/kestrel/supervisor"
	"github.com/volantvm/volant/lib/manifest"
)

// Config is one agent run.
type Config struct {
	VM, Plugin string
	// Boot is what Status reports as boot: "initramfs", "rootfs", or
	// "none" outside a guest.
	Boot    string
	Version string
	// Listen is the API's address, e.g. ":8080".
	Listen string
	// ReportURL is where state changes are posted; "" disables reporting.
	ReportURL string
	// Console receives the workload's output (through a non-blocking
	// buffer) besides the log ring.
	Console io.Writer
	// RingSize is the log ring's size (ringbuf.DefaultSize if 0).
	RingSize int
	// OutputSize bounds the per-stream output store the host collects
	// over the agent channel (outlog.DefaultMax if 0).
	OutputSize int
	// StopGrace overrides the workload's SIGTERM-to-SIGKILL grace period.
	StopGrace time.Duration
	// Uptime returns the time since boot; nil means since New.
	Uptime func() time.Duration
	// BeforeStart runs once the manifest is known, before the workload
	// starts (the guest mounts data disks there). An error ends Run.
	BeforeStart func(ctx context.Context, m *manifest.Manifest) error
	// Env, when set, is called after BeforeStart: its variables are added
	// to the workload's environment (and to commands run over the agent
	// channel). They are the VM's inputs, which may be secret: they are
	// not part of the manifest the agent serves.
	Env func() map[string]string
	// AfterStart runs once, in its own goroutine, when the workload is up:
	// its health check first passed (the workload's first start had its
	// outcome when it has no health check), or AfterStartWait passed since
	// that outcome. The guest does the boot work that must not compete with
	// the workload's start for the CPU there.
	AfterStart func()
	// AfterStartWait bounds the wait for the first healthy check
	// (DefaultAfterStartWait if 0).
	AfterStartWait time.Duration
	// Manifest, when set, is the manifest, known before Run (it came with
	// the boot): Run does not call its load function, starts the workload
	// first, and begins serving the API and sending reports once the
	// workload is up, when AfterStart runs (or the workload's supervision
	// ended): under software emulation every step before the workload
	// answers competes with its start for the CPU, and new code is
	// translated before it runs. Meanwhile the API's listener is open, so
	// a request made early is answered once the API serves. Without it
	// the API serves first (kestrel may be fetching the manifest, and
	// /healthz answers meanwhile).
	Manifest *manifest.Manifest
	// Ready, when set, is called once the API serves.
	Ready func()
	Log   *slog.Logger
}

// DefaultAfterStartWait is Config.AfterStartWait's default.
const DefaultAfterStartWait = 3 * time.Second

// Agent is a running agent. Create it with New.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	ring    *ringbuf.Buffer
	output  *outlog.Store
	started time.Time

	mu       sync.Mutex
	vm       string
	m        *manifest.Manifest
	sup      *supervisor.Supervisor
	checker  *health.Checker
	reporter *report.Reporter
	loadErr  string
}

// New prepares an agent.
func New(cfg Config) *Agent {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Console == nil {
		cfg.Console = io.Discard
	}
	a := &Agent{cfg: cfg, log: log, ring: ringbuf.New(cfg.RingSize), output: outlog.New(cfg.OutputSize), started: time.Now(), vm: cfg.VM}
	if cfg.ReportURL != "" {
		a.reporter = report.New(cfg.ReportURL, log)
	}
	return a
}

// SetIdentity makes the agent the agent of VM vm (a guest restored from a
// snapshot is another VM than the one saved): its status names vm, and its
// reports go to reportURL ("" keeps the URL). The first report as vm is
// Announce's: the VM's network may not be let out yet.
func (a *Agent) SetIdentity(vm, reportURL string) {
	a.mu.Lock()
	a.vm = vm
	a.mu.Unlock()
	if a.reporter != nil && reportURL != "" {
		a.reporter.SetURL(reportURL)
	}
}

// Announce reports the agent's status now (after SetIdentity, once the
// VM's network is out).
func (a *Agent) Announce() {
	if a.reporter != nil {
		a.reporter.Resume()
	}
	a.changed()
}

// Logs implements api.Backend.
func (a *Agent) Logs() *ringbuf.Buffer { return a.ring }

// Output is the workload's output per stream, for the agent channel.
func (a *Agent) Output() *outlog.Store { return a.output }

// WorkloadEnv returns the environment and working directory the workload
// runs with (nil and "" until the manifest is known): what a command run
// over the agent channel starts from.
func (a *Agent) WorkloadEnv() (env []string, dir string) {
	a.mu.Lock()
	m := a.m
	a.mu.Unlock()
	if m == nil {
		return nil, ""
	}
	spec, err := supervisor.SpecFromManifest(m.Workload)
	if err != nil {
		return nil, ""
	}
	a.addEnv(&spec)
	return spec.Env, spec.Dir
}

// addEnv adds Config.Env's variables to spec, replacing the manifest's of
// the same name.
func (a *Agent) addEnv(spec *supervisor.Spec) {
	if a.cfg.Env == nil {
		return
	}
	extra := a.cfg.Env()
	if len(extra) == 0 {
		return
	}
	env := spec.Env[:0:0]
	for _, kv := range spec.Env {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := extra[k]; !ok {
			env = append(env, kv)
		}
	}
	for k, v := range extra {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)
	spec.Env = env
}

// Manifest implements api.Backend.
func (a *Agent) Manifest() *manifest.Manifest {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.m
}

// Status implements api.Backend.
func (a *Agent) Status() agentapi.Status {
	a.mu.Lock()
	sup, checker, loadErr, vm := a.sup, a.checker, a.loadErr, a.vm
	a.mu.Unlock()
	up := time.Since(a.started)
	if a.cfg.Uptime != nil {
		up = a.cfg.Uptime()
	}
	st := agentapi.Status{
		VM: vm, Plugin: a.cfg.Plugin, Agent: a.cfg.Version, Boot: a.cfg.Boot,
		UptimeMS: up.Milliseconds(),
		Workload: agentapi.WorkloadStatus{State: agentapi.WorkloadStarting, Error: loadErr},
		Health:   agentapi.HealthStatus{State: agentapi.HealthUnknown},
		Memory:   ReadMemory(),
		Time:     time.Now().UTC(),
	}
	if sup != nil {
		st.Workload = sup.Status()
	}
	if checker != nil {
		st.Health = checker.Status()
	}
	return st
}

func (a *Agent) changed() {
	if a.reporter != nil {
		a.reporter.Send(a.Status())
	}
}

// Listen opens the API's listener. Run calls it unless given one; callers
// that must know the port before Run (tests, ":0") call it first. An
// IPv4 address in Config.Listen ("0.0.0.0:8080") gets an IPv4 socket
// opened with system calls alone (socketListener), which becomes a
// net.Listener when the API first accepts: the standard library would
// otherwise resolve the address, read the kernel's somaxconn and probe
// the IPv6 stack for a dual stack socket, which costs boot time under
// software emulation. Other addresses go through net.ListenConfig. The
// socket is plain TCP either way, chosen here rather than by the
// multipathtcp GODEBUG: Go's listeners default to Multipath TCP, whose
// kernel paths a microVM's boot would pay for, and consulting a
// non-default GODEBUG setting makes the runtime build its whole metrics
// table (~350 blocks of translated code at boot under TCG).
func (a *Agent) Listen() (net.Listener, error) {
	var ln net.Listener
	var err error
	if ap, perr := netip.ParseAddrPort(a.cfg.Listen); perr == nil && ap.Addr().Is4() {
		ln, err = listenTCP4(ap)
	} else {
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		ln, err = lc.Listen(context.Background(), "tcp", a.cfg.Listen)
	}
	if err != nil {
		return nil, fmt.Errorf("listening for the agent API on %s: %w", a.cfg.Listen, err)
	}
	return ln, nil
}

// Run serves the API on ln (a.Listen() when nil), calls load for the
// manifest (kestrel may be fetching it: /healthz answers meanwhile), then
// supervises and probes the workload until ctx is done, when it stops the
// workload gracefully, posts a last report and returns nil. With
// Config.Manifest set it does not call load and starts the workload first:
// the health checks begin once the workload's first start had its
// outcome, the API and the reports once the workload is up (see
// Config.Manifest). It returns an error when the API cannot
// listen, the manifest cannot be loaded or BeforeStart fails.
func (a *Agent) Run(ctx context.Context, ln net.Listener, r *reaper.Reaper, load func(context.Context) (*manifest.Manifest, error)) error {
	if ln == nil {
		var err error
		if ln, err = a.Listen(); err != nil {
			return err
		}
	}
	// The handler is made when the API begins to serve: with a manifest
	// known at boot, after the workload is up.
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second}
	srvDone := make(chan struct{})
	rctx, stopReporter := context.WithCancel(context.Background())
	defer stopReporter()
	serving := false
	serve := func() {
		serving = true
		srv.Handler = api.Handler(a, a.log)
		go func() {
			defer close(srvDone)
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.log.Error("agent API stopped", "err", err)
			}
		}()
		a.log.Info("agent API listening", "addr", ln.Addr().String())
		if a.cfg.Ready != nil {
			a.cfg.Ready()
		}
		if a.reporter != nil {
			go a.reporter.Run(rctx)
			a.changed()
		}
	}
	defer func() {
		a.ring.Close() // ends log followers
		a.output.Close()
		if !serving {
			ln.Close()
			return
		}
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-srvDone
	}()

	m := a.cfg.Manifest
	if m == nil {
		serve()
		var err error
		if m, err = load(ctx); err != nil {
			a.mu.Lock()
			a.loadErr = err.Error()
			a.mu.Unlock()
			a.changed()
			a.flushReports()
			return err
		}
	}
	a.mu.Lock()
	a.m = m
	a.mu.Unlock()
	if port := a.cfg.Listen[strings.LastIndexByte(a.cfg.Listen, ':')+1:]; port != strconv.Itoa(m.AgentPort()) {
		a.log.Warn("kestrel's API listens on another port than the manifest's network.agent_port (fetched after boot?); the host will look for it there",
			"listen", a.cfg.Listen, "agent_port", m.AgentPort())
	}
	fail := func(err error) error {
		a.mu.Lock()
		a.loadErr = err.Error()
		a.mu.Unlock()
		if !serving {
			serve() // the host learns why from /healthz and the report
		}
		a.changed()
		a.flushReports()
		return err
	}
	if a.cfg.BeforeStart != nil {
		if err := a.cfg.BeforeStart(ctx, m); err != nil {
			return fail(err)
		}
	}
	spec, err := supervisor.SpecFromManifest(m.Workload)
	if err != nil {
		return fail(fmt.Errorf("workload of plugin %s: %w", m.Name, err))
	}
	a.addEnv(&spec)
	if a.cfg.StopGrace > 0 {
		spec.StopGrace = a.cfg.StopGrace
	}
	out := console.NewAsync(a.cfg.Console, 64<<10)
	defer out.Close()
	hasCheck := m.HealthCheck != nil && m.Workload.BaseURL != ""
	var afterStart, started sync.Once
	startedCh := make(chan struct{})
	upCh := make(chan struct{}) // closed when the workload is up
	runAfterStart := func() {
		afterStart.Do(func() {
			close(upCh)
			if a.cfg.AfterStart != nil {
				go a.cfg.AfterStart()
			}
		})
	}
	output := supervisor.Output{
		Stdout: io.MultiWriter(a.ring, out, a.output.Writer(agentchan.Stdout)),
		Stderr: io.MultiWriter(a.ring, out, a.output.Writer(agentchan.Stderr)),
	}
	sup := supervisor.New(spec, r, output, a.log, func(st agentapi.WorkloadStatus) {
		if st.State != agentapi.WorkloadStarting {
			started.Do(func() {
				close(startedCh)
				if !hasCheck {
					runAfterStart()
					return
				}
				wait := a.cfg.AfterStartWait
				if wait <= 0 {
					wait = DefaultAfterStartWait
				}
				time.AfterFunc(wait, runAfterStart)
			})
		}
		a.changed()
	})
	var checker *health.Checker
	if hasCheck {
		checker = health.NewChecker(m.Workload.BaseURL, *m.HealthCheck, a.log, func(h agentapi.HealthStatus) {
			if h.State == agentapi.HealthHealthy {
				runAfterStart()
			}
			a.changed()
		})
	}
	a.mu.Lock()
	a.sup, a.checker = sup, checker
	a.mu.Unlock()

	supDone := make(chan struct{})
	go func() {
		defer close(supDone)
		sup.Run(ctx) // returns at ctx's end (workload stopped) or when the workload is done for good
	}()
	if !serving {
		// The workload's first start had its outcome (or ctx ended): now
		// the health checks.
		select {
		case <-startedCh:
		case <-supDone:
		case <-ctx.Done():
		}
	}
	var wg sync.WaitGroup
	hctx, stopHealth := context.WithCancel(ctx)
	if checker != nil {
		wg.Add(1)
		go func() { defer wg.Done(); checker.Run(hctx) }()
	}
	if !serving {
		// Once the workload is up (or its supervision ended, or ctx):
		// the API and the reports.
		select {
		case <-upCh:
		case <-supDone:
		case <-ctx.Done():
		}
		serve()
	}
	<-supDone
	<-ctx.Done()
	stopHealth()
	wg.Wait()
	a.changed()
	a.flushReports()
	return nil
}

// flushReports gives queued reports a moment to reach the control plane
// before the agent (and likely the VM) goes away.
func (a *Agent) flushReports() {
	if a.reporter == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	a.reporter.Flush(ctx)
}

// ReadMemory reads kestrel's RSS and the guest's memory from /proc; nil when
// /proc is not there.
func ReadMemory() *agentapi.MemoryStatus {
	self, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil
	}
	m := &agentapi.MemoryStatus{AgentRSSKiB: procKiB(self, "VmRSS:")}
	if mi, err := os.ReadFile("/proc/meminfo"); err == nil {
		m.GuestTotalKiB = procKiB(mi, "MemTotal:")
		m.GuestAvailableKiB = procKiB(mi, "MemAvailable:")
	}
	return m
}

func procKiB(data []byte, key string) int64 {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Bytes()
		if rest, ok := bytes.CutPrefix(line, []byte(key)); ok {
			f := bytes.Fields(rest)
			if len(f) > 0 {
				n, _ := strconv.ParseInt(string(f[0]), 10, 64)
				return n
			}
		}
	}
	return 0
}
