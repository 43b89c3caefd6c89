// Package volantd wires the daemon together: state database, host
// network, VM runtime, controller, HTTP listeners. Its Command is the
// volantd command: serve parses the flags into a Config and calls Serve;
// tests call Serve in-process.
//
// Startup order, so that nothing is served on a state that is not true:
//
//  1. open the database: check it (quick_check, or integrity_check with
//     Config.IntegrityCheck) and refuse a damaged one (DATA_CORRUPT with the
//     recovery steps), then migrate it;
//  2. make the bridge (hostnet.Setup, idempotent) unless told not to;
//  3. reconcile: adopt live VMs, resume interrupted steps, mark dead VMs
//     crashed, free leases and taps of VMs that do not exist;
//  4. listen: the API on the unix socket and/or TCP (or the sockets systemd
//     passed), the agent endpoint on the bridge's gateway address;
//  5. tell systemd READY=1 (Config.Notify);
//  6. run: event bus, deployment reconciler, health watchers.
//
// On ctx's end it stops serving (streams end), stops the background work
// and closes the database. VMs keep running: each is its own
// `volant-launch run` process, adopted by the next volantd.
package volantd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/hostnet"
	"github.com/volantvm/volant/lib/ipam"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/layout"
	"github.com/volantvm/volant/lib/runner"
	"github.com/volantvm/volant/lib/runner/systemd"
	"github.com/volantvm/volant/lib/server"
	"github.com/volantvm/volant/lib/signing"
	"github.com/volantvm/volant/lib/store"
)

// Defaults.
const (
	DefaultSocket  = layout.DefaultSocket
	DefaultDataDir = layout.DefaultDataDir
	DefaultRunRoot = layout.DefaultRunRoot
	// DefaultAgentPort is the port of the agent endpoint on the gateway.
	DefaultAgentPort = 7070
)

// Config is everything Serve needs.
type Config struct {
	// Socket is the unix socket of the API ("" for none). Mode 0660.
	Socket string
	// Listen is a TCP address for the API as well ("" for none); Token is
	// then required.
	Listen string
	Token  string
	// TLS serves the TCP listeners over TLS; without it TCP is refused
	// unless InsecureTCP (the token then crosses the network in clear).
	TLS         TLS
	InsecureTCP bool
	// Listeners are sockets passed by systemd (socket activation); when
	// any are given, Socket and Listen are not opened. TCP ones need Token.
	Listeners []net.Listener
	// MetricsListen is a TCP address serving only GET /metrics ("" for
	// none; the API's listeners serve it too). It needs Token unless
	// MetricsNoAuth says the operator wants it open.
	MetricsListen string
	MetricsNoAuth bool

	DB string
	// IntegrityCheck runs SQLite's full integrity_check on the database at
	// start; otherwise the quicker quick_check. A damaged database is not
	// served (DATA_CORRUPT, with the recovery steps).
	IntegrityCheck bool

	DataDir string
	RunRoot string
	// CacheDir caches boot images (default DataDir/cache).
	CacheDir string
	// ArtifactDirs are the directories besides DataDir/plugins that local
	// plugin artifacts may come from; anything else is refused.
	ArtifactDirs []string
	// MaxArtifactBytes bounds each plugin artifact, local or fetched
	// (default controller.DefaultMaxArtifactBytes).
	MaxArtifactBytes int64
	// TrustedKeys is a directory of minisign public keys plugin signatures
	// must verify with; RequireSigned refuses unsigned plugins (both at
	// install and before every boot; controller.Config).
	TrustedKeys   string
	RequireSigned bool

	// Bridge and Subnet are the guest network; the gateway is the
	// subnet's first address.
	Bridge string
	Subnet string
	// SetupNetwork makes the bridge at startup. NAT is "on" (masquerade
	// the guest subnet), "off" (remove Volant's NAT) or "" (leave it as an
	// earlier `volant-net setup` or `volar setup` made it).
	SetupNetwork bool
	NAT          string
	// AgentListen is where kestrel reports: default <gateway>:7070;
	// "off" disables it (health then comes from polling only).
	AgentListen string
	DNS         []string

	// Launch: kernel, boot initramfs, kestrel, hypervisor, acceleration.
	Launch controller.LaunchDefaults
	// KernelDir is lib/launch's kernel directory (default for Launch.Kernel).
	KernelDir string
	// Launcher is the volant-launch binary (runner.FindLauncher).
	Launcher string
	// VMMJail confines each hypervisor (lib/vmm/jail): its uid range,
	// memory overhead; Insecure runs them as root without a jail (logged,
	// shown in each VM's "jail").
	VMMJail launch.JailOptions
	// VMRunner is auto (systemd units where systemd is PID 1, else
	// detached children), systemd or detached.
	VMRunner string

	HealthInterval time.Duration
	// LivenessGrace: a replica unhealthy for longer is replaced (0: the
	// controller's default; negative: never).
	LivenessGrace time.Duration
	StopTimeout   time.Duration
	StartTimeout  time.Duration
	// MaxBooting bounds VMs booting at once (controller.Config.MaxBooting).
	MaxBooting int
	// Images configures plugin builds from container images.
	Images controller.ImageConfig

	// Notify receives sd_notify states (READY=1, STOPPING=1, STATUS=...).
	Notify func(state string)
	// Ready, when set, is called with the addresses served once serving.
	Ready  func(Addrs)
	Logger *slog.Logger
}

// Addrs are where a running daemon serves.
type Addrs struct {
	API     []net.Addr
	Agent   net.Addr
	Metrics net.Addr
}

func (c *Config) defaults() {
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	d := layout.Dirs{Data: c.DataDir, DB: c.DB, RunRoot: c.RunRoot, Cache: c.CacheDir}.WithDefaults()
	c.DB, c.RunRoot, c.CacheDir = d.DB, d.RunRoot, d.Cache
	if c.Bridge == "" {
		c.Bridge = hostnet.DefaultBridge
	}
	if c.VMRunner == "" {
		c.VMRunner = "auto"
	}
	if c.Notify == nil {
		c.Notify = func(string) {}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate checks a config before anything is opened.
func (c *Config) Validate() error {
	c.defaults()
	tcp := c.Listen != ""
	for _, l := range c.Listeners {
		if l.Addr().Network() == "tcp" {
			tcp = true
		}
	}
	if tcp && c.Token == "" {
		return apierr.New(apierr.Usage, "refusing to serve the API on TCP without a token: give --token-file (or VOLANT_TOKEN), or use the unix socket").
			With("listen", c.Listen)
	}
	if c.Token != "" {
		if err := CheckToken(c.Token); err != nil {
			return err
		}
	}
	if c.MetricsListen != "" && c.Token == "" && !c.MetricsNoAuth {
		return apierr.New(apierr.Usage, "refusing to serve metrics on TCP without a token: give --token-file, or --metrics-no-auth to serve them to anyone who can reach %s", c.MetricsListen).
			With("metrics_listen", c.MetricsListen)
	}
	if c.MetricsNoAuth && c.MetricsListen == "" {
		return apierr.New(apierr.Usage, "--metrics-no-auth applies only to --metrics-listen, which is not given (the API's listeners always keep their token)")
	}
	if c.TLS.Enabled() || c.TLS.ClientCA != "" {
		if _, err := c.TLS.serverConfig(); err != nil {
			return err
		}
	} else if tcp && !c.InsecureTCP {
		return apierr.New(apierr.Usage, "refusing to serve the API on plain TCP: give --tls-cert and --tls-key (volar setup --tls makes a self-signed pair), or --insecure-tcp to send the token in clear text").
			With("listen", c.Listen)
	}
	if c.MetricsListen != "" && !c.TLS.Enabled() && !c.InsecureTCP {
		return apierr.New(apierr.Usage, "refusing to serve metrics on plain TCP: give --tls-cert and --tls-key (the metrics are then served over the API's TLS), or --insecure-tcp to serve them in clear text").
			With("metrics_listen", c.MetricsListen)
	}
	if c.Socket == "" && c.Listen == "" && len(c.Listeners) == 0 {
		return apierr.New(apierr.Usage, "nothing to listen on: give --socket and/or --listen")
	}
	switch c.VMRunner {
	case "auto", "systemd", "detached":
	default:
		return apierr.New(apierr.Usage, "--vm-runner %q: use auto, systemd or detached", c.VMRunner)
	}
	if _, err := (ipam.PoolConfig{Subnet: c.Subnet}).Pool(); err != nil {
		return err
	}
	for i, d := range c.ArtifactDirs {
		if !filepath.IsAbs(d) {
			return apierr.New(apierr.Usage, "--artifact-dir %q must be an absolute path", d).With("artifact_dir", d)
		}
		c.ArtifactDirs[i] = filepath.Clean(d)
	}
	if c.RequireSigned && c.TrustedKeys == "" {
		return apierr.New(apierr.Usage, "--require-signed needs --trusted-keys DIR, the minisign public keys to check signatures with")
	}
	if c.TrustedKeys != "" {
		if _, err := signing.LoadKeys(c.TrustedKeys); err != nil {
			return err
		}
	}
	return nil
}

// MinTokenBits is the least strength CheckToken accepts.
const MinTokenBits = 128

// CheckToken refuses a bearer token that is weaker than MinTokenBits, as
// estimated from its length and the kinds of characters it uses (a token
// of hex digits needs 32 of them, one of letters, digits and punctuation
// 20), or that has fewer than 8 distinct characters, or characters other
// than printable ASCII.
func CheckToken(tok string) error {
	lower, upper, digit, punct, hex := false, false, false, false, true
	distinct := map[rune]bool{}
	for _, r := range tok {
		switch {
		case r <= ' ' || r > '~':
			return apierr.New(apierr.Usage, "the token may hold only printable ASCII characters, no spaces or control characters")
		case r >= 'a' && r <= 'z':
			lower, hex = true, hex && r <= 'f'
		case r >= 'A' && r <= 'Z':
			upper, hex = true, hex && r <= 'F'
		case r >= '0' && r <= '9':
			digit = true
		default:
			punct, hex = true, false
		}
		distinct[r] = true
	}
	alphabet := 0
	switch {
	case hex && !(lower && upper):
		alphabet = 16
	default:
		for _, k := range []struct {
			has bool
			n   int
		}{{lower, 26}, {upper, 26}, {digit, 10}, {punct, 32}} {
			if k.has {
				alphabet += k.n
			}
		}
	}
	bits := 0.0
	if alphabet > 1 {
		bits = float64(len(tok)) * math.Log2(float64(alphabet))
	}
	if bits < MinTokenBits || len(distinct) < 8 {
		return apierr.New(apierr.Usage, "the token is too weak (about %d bits, %d distinct characters); it needs %d bits of randomness: "+
			"make one with `head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n' >TOKENFILE` and give --token-file TOKENFILE",
			int(bits), len(distinct), MinTokenBits).With("min_bits", MinTokenBits)
	}
	return nil
}

// Serve runs the daemon until ctx ends.
func Serve(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := cfg.Logger
	pool, _ := ipam.PoolConfig{Subnet: cfg.Subnet}.Pool()

	// One daemon per database: a second one would reconcile (and free)
	// what the first runs.
	unlock, err := lockDB(cfg.DB)
	if err != nil {
		return err
	}
	defer unlock()
	// Listen before anything else: a taken socket fails fast, and clients
	// that connect during reconciliation wait in the backlog.
	lns, closeLns, err := apiListeners(cfg)
	if err != nil {
		return err
	}
	defer closeLns()

	check := store.QuickCheck
	if cfg.IntegrityCheck {
		check = store.FullCheck
	}
	cfg.Notify("STATUS=checking the database (" + string(check) + ")")
	st, err := store.Open(ctx, cfg.DB, store.Options{Logger: log, Check: check})
	if err != nil {
		return err
	}
	defer st.Close()

	// A subnet set through the API (PUT /api/v1/network: volant-kubelet's
	// podCIDR) wins over --subnet: the VMs' leases are in it.
	var set controller.NetworkSetting
	if found, err := st.Setting(ctx, store.SettingNetwork, &set); err != nil {
		return err
	} else if found {
		p, err := ipam.PoolConfig{Subnet: set.Subnet}.Pool()
		if err != nil {
			return fmt.Errorf("the stored guest network: %w", err)
		}
		if p != pool {
			log.Info("guest subnet set through the API wins over --subnet", "subnet", p.Subnet.String(), "flag", pool.Subnet.String())
		}
		pool = p
	}

	hn := &hostnet.Host{Log: log}
	setupBridge := func(ctx context.Context, pool ipam.Pool) error {
		if !cfg.SetupNetwork {
			return nil
		}
		res, err := hn.Setup(ctx, hostnet.Config{Bridge: cfg.Bridge, CIDR: netip.PrefixFrom(pool.Gateway, pool.Subnet.Bits()).String(),
			NAT: cfg.NAT == "on", KeepNAT: cfg.NAT == ""})
		if err != nil {
			return fmt.Errorf("setting up the bridge %s: %w", cfg.Bridge, err)
		}
		if res.Changed {
			log.Info("host network set up", "bridge", res.Bridge, "address", res.Address, "nat", res.NAT)
		}
		return nil
	}
	if err := setupBridge(ctx, pool); err != nil {
		return err
	}

	lo := launch.Options{KernelDir: cfg.KernelDir, Kestrel: cfg.Launch.Kestrel, RunRoot: cfg.RunRoot, StateDir: cfg.DataDir, CacheDir: cfg.CacheDir,
		Jail: cfg.VMMJail, Logger: log}
	if cfg.VMMJail.Insecure {
		// In every VM's spec too: a systemd unit's run reads only that.
		cfg.Launch.InsecureVMM = true
		log.Warn("hypervisors run as root without a jail (--insecure-vmm): a guest that escapes its VMM owns the host")
	}
	starter, err := pickStarter(cfg, lo, log)
	if err != nil {
		return err
	}
	rt := &runner.Runner{Options: lo, Starter: starter, StartTimeout: cfg.StartTimeout}

	agentHost, agentPort := pool.Gateway.String(), DefaultAgentPort
	agentFixed := false // --agent-listen names the host: it stays when the subnet changes
	if cfg.AgentListen != "" && cfg.AgentListen != "off" {
		h, p, err := splitHostPort(cfg.AgentListen)
		if err != nil {
			return apierr.New(apierr.Usage, "--agent-listen %q: %v", cfg.AgentListen, err)
		}
		if h != "" && h != "0.0.0.0" {
			agentHost, agentFixed = h, true
		}
		agentPort = p
	}
	// moveAgent is set once serving starts: it moves kestrel's endpoint to
	// a new gateway.
	var moveAgent func(ctx context.Context, host string) error
	ctl, err := controller.New(controller.Config{
		Store: st, Pool: pool, Bridge: cfg.Bridge, DataDir: cfg.DataDir, Runtime: rt, Network: hn,
		InputsDir: layout.Dirs{RunRoot: cfg.RunRoot}.InputsDir(),
		Launch:    cfg.Launch, AgentHost: agentHost, AgentPort: agentPort, DNS: cfg.DNS,
		HealthInterval: cfg.HealthInterval, StopTimeout: cfg.StopTimeout, StartTimeout: cfg.StartTimeout, Logger: log,
		LivenessGrace: cfg.LivenessGrace,
		MaxBooting:    cfg.MaxBooting, ArtifactDirs: cfg.ArtifactDirs, MaxArtifactBytes: cfg.MaxArtifactBytes,
		Images: cfg.Images, TrustedKeys: cfg.TrustedKeys, RequireSigned: cfg.RequireSigned,
		Renetwork: func(ctx context.Context, p ipam.Pool) (string, error) {
			if !cfg.SetupNetwork {
				return "", apierr.New(apierr.NotSupported, "volantd does not manage the bridge (--no-network-setup): give %s the address %s/%d and restart volantd with --subnet %s",
					cfg.Bridge, p.Gateway, p.Subnet.Bits(), p.Subnet)
			}
			if err := setupBridge(ctx, p); err != nil {
				return "", err
			}
			if agentFixed || cfg.AgentListen == "off" {
				return agentHost, nil
			}
			if err := moveAgent(ctx, p.Gateway.String()); err != nil {
				return "", err
			}
			return p.Gateway.String(), nil
		},
	})
	if err != nil {
		return err
	}

	for _, d := range ctl.ArtifactDirs() {
		if d == "/" {
			log.Warn("local plugin artifacts may come from anywhere on this host (--artifact-dir /): any file volantd can read can become a guest disk")
		}
	}
	log.Info("local plugin artifacts come only from", "dirs", ctl.ArtifactDirs())
	// What supervisors killed while this daemon was away left for their
	// hypervisors' uids (disk owners, ACL entries, tap owners, cgroups).
	if uids, err := launch.ReclaimJails(lo); err != nil {
		log.Warn("undoing what killed VM runs left (their uids stay out of use until it works)", "reclaimed_uids", uids, "err", err)
	} else if len(uids) > 0 {
		log.Info("undid what killed VM runs left", "reclaimed_uids", uids)
	}
	if cfg.TrustedKeys != "" {
		log.Info("plugin signatures are checked", "trusted_keys", cfg.TrustedKeys, "require_signed", cfg.RequireSigned)
	}
	cfg.Notify("STATUS=reconciling VMs")
	rep, err := ctl.Reconcile(ctx)
	if err != nil {
		return fmt.Errorf("reconciling state at startup: %w", err)
	}
	log.Info("startup reconciliation", "adopted", rep.Adopted, "resumed", rep.Resumed, "undone", rep.Undone, "failed", rep.Failed,
		"crashed", rep.Crashed, "stopped", rep.Stopped, "deleted", rep.Deleted,
		"freed_leases", rep.FreedLeases, "removed_taps", rep.RemovedTaps, "orphan_runs", rep.OrphanRuns, "removed_partials", rep.RemovedPartials)

	srv := server.New(ctl, server.Options{Token: cfg.Token, Logger: log})

	// Streams (events, log follows) end when serving stops.
	serveCtx, stopServing := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServing()
	var (
		serversMu sync.Mutex
		servers   []*http.Server
	)
	addrs := Addrs{}
	// Every listener and the controller run in one group: the first
	// listener that fails ends serving, and Serve returns its error.
	g, gctx := errgroup.WithContext(ctx)
	serve := func(l net.Listener, h http.Handler) *http.Server {
		// Header, body and idle timeouts and a connection cap per
		// listener (lib/server); streams keep their own keep-alives.
		hs := srv.HTTPServer(h, func(net.Listener) context.Context { return serveCtx })
		serversMu.Lock()
		servers = append(servers, hs)
		serversMu.Unlock()
		g.Go(func() error {
			if err := hs.Serve(srv.LimitListener(l)); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serving on %s: %w", l.Addr(), err)
			}
			return nil
		})
		return hs
	}
	if cfg.TLS.Enabled() {
		tc, err := cfg.TLS.serverConfig()
		if err != nil {
			return err
		}
		lns = wrapTCP(lns, tc)
	} else if cfg.InsecureTCP {
		log.Warn("serving the API on plain TCP (--insecure-tcp): the bearer token crosses the network in clear text")
	}
	for _, l := range lns {
		serve(l, srv.Handler(l.Addr().Network() != "unix"))
		addrs.API = append(addrs.API, l.Addr())
		log.Info("serving the API", "addr", l.Addr().String(), "network", l.Addr().Network())
	}
	if cfg.AgentListen != "off" {
		addr := net.JoinHostPort(agentHost, strconv.Itoa(agentPort))
		if cfg.AgentListen != "" {
			addr = cfg.AgentListen
		}
		var agentMu sync.Mutex
		var agentHS *http.Server
		listenAgent := func(ctx context.Context, addr string) (net.Addr, error) {
			al, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
			if err != nil {
				return nil, err
			}
			agentMu.Lock()
			defer agentMu.Unlock()
			if agentHS != nil {
				agentHS.Close() // its Serve returns ErrServerClosed
			}
			agentHS = serve(al, srv.AgentHandler())
			log.Info("serving the agent endpoint", "addr", al.Addr().String())
			return al.Addr(), nil
		}
		moveAgent = func(ctx context.Context, host string) error {
			if _, err := listenAgent(ctx, net.JoinHostPort(host, strconv.Itoa(agentPort))); err != nil {
				return apierr.Wrap(apierr.Unavailable, err, "listening for kestrel's reports on the new gateway")
			}
			return nil
		}
		al, err := listenAgent(ctx, addr)
		if err != nil {
			// Without it kestrel's reports are lost, but health still comes
			// from polling: degrade, say so, keep going.
			log.Warn("cannot listen for kestrel's reports; health comes from polling only", "addr", addr, "err", err)
		} else {
			addrs.Agent = al
		}
	}
	if moveAgent == nil {
		moveAgent = func(context.Context, string) error { return nil }
	}

	if cfg.MetricsListen != "" {
		ml, err := (&net.ListenConfig{}).Listen(ctx, "tcp", cfg.MetricsListen)
		if err != nil {
			return apierr.Wrap(apierr.Unavailable, err, "listening for metrics on "+cfg.MetricsListen)
		}
		defer ml.Close()
		// Over the API's TLS (and client CA) when it has one; plain only
		// with --insecure-tcp (Validate).
		if cfg.TLS.Enabled() {
			tc, err := cfg.TLS.serverConfig()
			if err != nil {
				return err
			}
			ml = tls.NewListener(ml, tc)
		} else {
			log.Warn("serving metrics on plain TCP (--insecure-tcp)", "addr", ml.Addr().String())
		}
		serve(ml, srv.MetricsHandler(!cfg.MetricsNoAuth))
		addrs.Metrics = ml.Addr()
		log.Info("serving metrics", "addr", ml.Addr().String(), "token", !cfg.MetricsNoAuth, "tls", cfg.TLS.Enabled())
	}

	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	g.Go(func() error { ctl.Run(runCtx); return nil })
	g.Go(func() error { srv.Run(runCtx); return nil })

	cfg.Notify(fmt.Sprintf("READY=1\nSTATUS=serving; %d VMs adopted, %d resumed, %d crashed", len(rep.Adopted), len(rep.Resumed), len(rep.Crashed)))
	if cfg.Ready != nil {
		cfg.Ready(addrs)
	}

	<-gctx.Done() // ctx ended, or a listener failed
	cfg.Notify("STOPPING=1")
	log.Info("shutting down; VMs keep running")
	stopServing()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	serversMu.Lock()
	all := servers
	serversMu.Unlock()
	for _, hs := range all {
		_ = hs.Shutdown(sctx)
	}
	cancel()
	stopRun()
	return g.Wait()
}

func splitHostPort(s string) (string, int, error) {
	h, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.Atoi(p)
	if err != nil || n <= 0 || n > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	return h, n, nil
}

func pickStarter(cfg Config, lo launch.Options, log *slog.Logger) (runner.Starter, error) {
	mode := cfg.VMRunner
	if mode == "auto" {
		mode = "detached"
		if runner.SystemdRunning() && cfg.DataDir == DefaultDataDir && cfg.RunRoot == DefaultRunRoot {
			mode = "systemd"
		}
	}
	if mode == "systemd" {
		if cfg.DataDir != DefaultDataDir || cfg.RunRoot != DefaultRunRoot {
			return nil, apierr.New(apierr.Usage, "--vm-runner systemd needs the default --data-dir and --run-root (volant-vm@.service reads %s)",
				layout.Dirs{}.VMFile("NAME", layout.SpecName))
		}
		log.Info("VMs run as systemd units volant-vm@NAME")
		return systemd.Starter{Options: lo}, nil
	}
	launcher, err := runner.FindLauncher(cfg.Launcher)
	if err != nil {
		return nil, err
	}
	log.Info("VMs run as detached volant-launch processes", "launcher", launcher)
	return &runner.Detached{Launcher: launcher, Options: lo, Logger: log}, nil
}

// apiListeners returns the API's listeners: systemd's, or the unix socket
// and the TCP address of the config.
func apiListeners(cfg Config) ([]net.Listener, func(), error) {
	if len(cfg.Listeners) > 0 {
		return cfg.Listeners, func() {}, nil
	}
	var lns []net.Listener
	closeAll := func() {
		for _, l := range lns {
			l.Close()
		}
	}
	if cfg.Socket != "" {
		l, err := listenUnix(cfg.Socket)
		if err != nil {
			return nil, nil, err
		}
		lns = append(lns, l)
	}
	if cfg.Listen != "" {
		l, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			closeAll()
			return nil, nil, apierr.Wrap(apierr.Unavailable, err, "listening on "+cfg.Listen)
		}
		lns = append(lns, l)
	}
	return lns, closeAll, nil
}

// listenUnix listens on path with mode 0660, replacing a stale socket
// file but refusing one another daemon still serves.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, apierr.Wrap(apierr.Unavailable, err, "creating the socket's directory")
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, apierr.New(apierr.Conflict, "%s exists and is not a socket", path).With("socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, apierr.New(apierr.Conflict, "another volantd is serving on %s", path).With("socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, apierr.Wrap(apierr.Unavailable, err, "removing the stale socket "+path)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, apierr.Wrap(apierr.Unavailable, err, "listening on "+path)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, apierr.Wrap(apierr.Unavailable, err, "setting the mode of "+path)
	}
	return l, nil
}

// lockDB takes an exclusive lock next to the database for the daemon's
// life (CONFLICT when another volantd holds it).
func lockDB(db string) (func(), error) {
	path := db + ".volantd-lock"
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, apierr.Wrap(apierr.Unavailable, err, "creating the database directory")
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, apierr.Wrap(apierr.Unavailable, err, "opening "+path)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, apierr.New(apierr.Conflict, "another volantd uses the database %s", db).With("db", db).With("lock", path)
		}
		return nil, apierr.Wrap(apierr.Unavailable, err, "locking "+path)
	}
	return func() { f.Close() }, nil
}
