package volantd

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/buildinfo"
	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/fledge/fledgecmd"
	"github.com/volantvm/volant/lib/hostnet"
	"github.com/volantvm/volant/lib/ipam"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/layout"
	"github.com/volantvm/volant/lib/server"
	"github.com/volantvm/volant/lib/store"
	"github.com/volantvm/volant/lib/vmm/jail"
)

// Command is the whole of the volantd command (cmd/volantd documents it):
// serve, the default verb, turns its flags (each also read from its
// environment variable) into a Config and calls Serve; mcp, openapi and
// check are the daemon's tools that need no daemon.
func Command(ctx context.Context, env *cli.Env) error {
	// serve is the verb when none is given: `volantd --socket S`.
	return cli.Run(ctx, cli.DefaultVerb(env, "serve"), "volantd", &volantdCommand{Serve: serveCmd{
		Socket: layout.DefaultSocket, DataDir: layout.DefaultDataDir, RunRoot: layout.DefaultRunRoot,
		Kernel: layout.DefaultKernelDir, Bridge: hostnet.DefaultBridge, Subnet: ipam.DefaultSubnet,
	}})
}

type volantdCommand struct {
	Serve   serveCmd           `command:"serve" description:"Run the daemon (the default verb)"`
	MCP     mcpCmd             `command:"mcp" description:"Model Context Protocol on stdio, talking to the running daemon"`
	OpenAPI openAPICmd         `command:"openapi" description:"Print the OpenAPI document"`
	Check   checkCmd           `command:"check" description:"Check the state database offline (quick_check; --full: integrity_check)"`
	Version cli.VersionCommand `command:"version" description:"Print the build version"`
}

// serveCmd's defaults are filled in by Command (go-flags shows them in --help);
// each flag also reads its environment variable.
type serveCmd struct {
	Socket         string        `long:"socket" env:"VOLANT_SOCKET" description:"unix socket of the API (\"\" for none)"`
	Listen         string        `long:"listen" env:"VOLANT_LISTEN" description:"also serve the API on this TCP address (requires --token-file)"`
	Token          string        `long:"token" env:"VOLANT_TOKEN" description:"volantd's own bearer token, an admin's (named tokens: volar tokens create)"`
	TokenFile      string        `long:"token-file" env:"VOLANT_TOKEN_FILE" description:"file holding the token"`
	MetricsListen  string        `long:"metrics-listen" env:"VOLANT_METRICS_LISTEN" description:"also serve GET /metrics alone on this TCP address (requires the token unless --metrics-no-auth; over the API's TLS, plain only with --insecure-tcp)"`
	MetricsNoAuth  bool          `long:"metrics-no-auth" env:"VOLANT_METRICS_NO_AUTH" description:"serve --metrics-listen without a token"`
	TLSCert        string        `long:"tls-cert" env:"VOLANT_TLS_CERT" description:"serve TCP over TLS with this certificate (PEM; volar setup --tls makes a self-signed one)"`
	TLSKey         string        `long:"tls-key" env:"VOLANT_TLS_KEY" description:"the certificate's private key (PEM)"`
	TLSClientCA    string        `long:"tls-client-ca" env:"VOLANT_TLS_CLIENT_CA" description:"require TCP clients to present a certificate this CA (PEM) signed"`
	InsecureTCP    bool          `long:"insecure-tcp" env:"VOLANT_INSECURE_TCP" description:"serve TCP (--listen, --metrics-listen) without TLS (the token crosses the network in clear text)"`
	DB             string        `long:"db" env:"VOLANT_DB" description:"state database (default <data-dir>/volant.db)"`
	DataDir        string        `long:"data-dir" env:"VOLANT_DATA_DIR" description:"data directory"`
	RunRoot        string        `long:"run-root" env:"VOLANT_RUN_ROOT" description:"per-VM run directories"`
	CacheDir       string        `long:"cache-dir" env:"VOLANT_CACHE_DIR" description:"boot image cache (default <data-dir>/cache)"`
	ArtifactDirs   []string      `long:"artifact-dir" env:"VOLANT_ARTIFACT_DIRS" env-delim:":" description:"also take local plugin artifacts from this directory (repeatable; default only <data-dir>/plugins)"`
	TrustedKeys    string        `long:"trusted-keys" env:"VOLANT_TRUSTED_KEYS" value-name:"DIR" description:"minisign public keys (*.pub) plugin signatures must verify with"`
	RequireSigned  bool          `long:"require-signed" env:"VOLANT_REQUIRE_SIGNED" description:"refuse unsigned plugins at install and before each boot (needs --trusted-keys)"`
	MaxArtifactGiB int64         `long:"max-artifact-gib" env:"VOLANT_MAX_ARTIFACT_GIB" default:"64" description:"largest plugin artifact, local or downloaded, in GiB"`
	Kernel         string        `long:"kernel" env:"VOLANT_KERNEL_DIR" description:"guest kernel directory or vmlinux"`
	Kestrel        string        `long:"kestrel" env:"VOLANT_KESTREL" description:"kestrel binary (default: next to volantd)"`
	BootInitramfs  string        `long:"boot-initramfs" env:"VOLANT_BOOT_INITRAMFS" description:"prebuilt boot initramfs"`
	VMM            string        `long:"vmm" env:"VOLANT_VMM" default:"auto" description:"auto, cloud-hypervisor or qemu"`
	Accel          string        `long:"accel" env:"VOLANT_ACCEL" default:"auto" description:"auto, kvm or tcg"`
	Bridge         string        `long:"bridge" env:"VOLANT_BRIDGE" description:"guest bridge"`
	Subnet         string        `long:"subnet" env:"VOLANT_SUBNET" description:"guest subnet"`
	NoNetSetup     bool          `long:"no-network-setup" env:"VOLANT_NO_NETWORK_SETUP" description:"do not create the bridge"`
	NAT            bool          `long:"nat" env:"VOLANT_NAT" description:"masquerade the guest subnet"`
	NoNAT          bool          `long:"no-nat" env:"VOLANT_NO_NAT" description:"remove Volant's masquerading (neither flag: leave NAT as it is)"`
	DNS            []string      `long:"dns" env:"VOLANT_DNS" env-delim:"," description:"guest resolver (repeatable)"`
	AgentListen    string        `long:"agent-listen" env:"VOLANT_AGENT_LISTEN" description:"kestrel's report endpoint (default <gateway>:7070; off)"`
	Launcher       string        `long:"launcher" env:"VOLANT_LAUNCHER" description:"volant-launch binary"`
	Fledge         string        `long:"fledge" env:"VOLANT_FLEDGE" description:"fledge binary, for plugin builds from images"`
	InsecureVMM    bool          `long:"insecure-vmm" env:"VOLANT_INSECURE_VMM" description:"run hypervisors as root without their jail (own uid, mount namespace, cgroup, seccomp); logged, and shown in each VM's jail"`
	VMMUIDs        string        `long:"vmm-uids" env:"VOLANT_VMM_UIDS" description:"uids for the hypervisors, one per running VM: FIRST-LAST or FIRST+COUNT, owned by no user (default 1073741824+65536)"`
	VMMOverheadMB  int           `long:"vmm-overhead-mb" env:"VOLANT_VMM_OVERHEAD_MB" description:"memory a hypervisor may use beyond its guest's before the kernel stops it (default 160 under TCG, 96 otherwise)"`
	VMRunner       string        `long:"vm-runner" env:"VOLANT_VM_RUNNER" default:"auto" choice:"auto" choice:"systemd" choice:"detached" description:"how VMs run"`
	HealthInterval time.Duration `long:"health-interval" env:"VOLANT_HEALTH_INTERVAL" default:"5s" description:"kestrel poll interval"`
	LivenessGrace  time.Duration `long:"liveness-grace" env:"VOLANT_LIVENESS_GRACE" default:"2m" description:"replace a deployment's replica unhealthy for longer (0: never)"`
	StopTimeout    time.Duration `long:"stop-timeout" env:"VOLANT_STOP_TIMEOUT" default:"10s" description:"time a guest gets to power off"`
	StartTimeout   time.Duration `long:"start-timeout" env:"VOLANT_START_TIMEOUT" default:"60s" description:"time a hypervisor gets to answer"`
	MaxBooting     int           `long:"max-booting" env:"VOLANT_MAX_BOOTING" description:"VMs booting at once; more starts queue until one is healthy (default CPUs+1; -1 unlimited)"`
	MaxBuilds      int           `long:"max-builds" env:"VOLANT_MAX_BUILDS" default:"2" description:"plugin builds from images running at once"`
	RegistryAuth   string        `long:"registry-auth-file" env:"REGISTRY_AUTH_FILE" description:"registry credentials for image builds (containers-auth.json; default the usual places, e.g. ~/.docker/config.json)"`
	Insecure       []string      `long:"insecure-registry" env:"VOLANT_INSECURE_REGISTRIES" env-delim:"," description:"registry (host[:port]) reached over plain HTTP or unverified TLS by image builds (repeatable)"`
	IntegrityCheck bool          `long:"integrity-check" env:"VOLANT_INTEGRITY_CHECK" description:"run SQLite's full integrity_check on the database at start (default quick_check)"`
	GuestDebug     bool          `long:"guest-debug" env:"VOLANT_GUEST_DEBUG" description:"verbose guest boot"`
	Verbose        bool          `long:"verbose" short:"v" env:"VOLANT_VERBOSE" description:"debug logs"`
}

func (f *serveCmd) Execute(ctx context.Context, env *cli.Env) error {
	if f.MaxArtifactGiB < 1 {
		return apierr.New(apierr.Usage, "--max-artifact-gib %d must be at least 1", f.MaxArtifactGiB)
	}
	if f.NAT && f.NoNAT {
		return apierr.New(apierr.Usage, "--nat and --no-nat contradict each other; give one, or neither to leave NAT as it is")
	}
	log := env.Logger(f.Verbose)
	token, err := f.readToken(env, log)
	if err != nil {
		return err
	}
	// Sockets systemd passed. Listeners clears LISTEN_* so the VMs'
	// processes do not inherit them: call it once.
	lns, err := activation.Listeners()
	if err != nil {
		return apierr.Wrap(apierr.Unavailable, err, "reading the sockets systemd passed")
	}
	var passed = lns[:0]
	for _, l := range lns {
		if l != nil {
			passed = append(passed, l)
		}
	}
	kestrel := f.Kestrel
	if kestrel == "" {
		kestrel = layout.Sibling("kestrel")
	}
	fledge := ""
	if f.Fledge != "" {
		if fledge, err = fledgecmd.Find(f.Fledge); err != nil {
			return err
		}
	} else if _, err := fledgecmd.Find(""); err != nil {
		log.Warn("plugin builds from images are unavailable until fledge is installed", "err", err)
	}
	nat := "" // neither flag: leave NAT as it is
	switch {
	case f.NAT:
		nat = "on"
	case f.NoNAT:
		nat = "off"
	}
	vmmJail := launch.JailOptions{Insecure: f.InsecureVMM, OverheadMB: f.VMMOverheadMB}
	if f.VMMUIDs != "" {
		if vmmJail.UIDs, err = jail.ParseRange(f.VMMUIDs); err != nil {
			return err
		}
	}
	return Serve(ctx, Config{
		Socket: f.Socket, Listen: f.Listen, Token: token, Listeners: passed,
		MetricsListen: f.MetricsListen, MetricsNoAuth: f.MetricsNoAuth,
		TLS: TLS{Cert: f.TLSCert, Key: f.TLSKey, ClientCA: f.TLSClientCA}, InsecureTCP: f.InsecureTCP,
		DB: f.DB, IntegrityCheck: f.IntegrityCheck, DataDir: f.DataDir, RunRoot: f.RunRoot, CacheDir: f.CacheDir,
		ArtifactDirs: f.ArtifactDirs, MaxArtifactBytes: f.MaxArtifactGiB << 30,
		TrustedKeys: f.TrustedKeys, RequireSigned: f.RequireSigned,
		Bridge: f.Bridge, Subnet: f.Subnet, SetupNetwork: !f.NoNetSetup, NAT: nat, AgentListen: f.AgentListen, DNS: f.DNS,
		Launch: controller.LaunchDefaults{
			Kernel: f.Kernel, BootInitramfs: f.BootInitramfs, Kestrel: kestrel, VMM: f.VMM, Accel: f.Accel, Debug: f.GuestDebug,
		},
		KernelDir: f.Kernel, Launcher: f.Launcher, VMRunner: f.VMRunner, VMMJail: vmmJail,
		HealthInterval: f.HealthInterval, StopTimeout: f.StopTimeout, StartTimeout: f.StartTimeout,
		LivenessGrace: livenessGrace(f.LivenessGrace),
		MaxBooting:    f.MaxBooting,
		Images:        controller.ImageConfig{Fledge: fledge, MaxBuilds: f.MaxBuilds, AuthFile: f.RegistryAuth, InsecureRegistries: f.Insecure},
		Notify:        func(state string) { _, _ = daemon.SdNotify(false, state) },
		Logger:        log,
	})
}

// readToken returns the token of --token, VOLANT_TOKEN or --token-file
// (one of them). A token on the command line is in every user's ps: that
// gets a warning, as does a token file others may read.
func (f *serveCmd) readToken(env *cli.Env, log *slog.Logger) (string, error) {
	if f.Token != "" && f.TokenFile != "" {
		return "", apierr.New(apierr.Usage, "give the token once: --token-file, or --token (VOLANT_TOKEN), not both")
	}
	for _, a := range env.Args {
		if a == "--token" || strings.HasPrefix(a, "--token=") {
			log.Warn("the --token value is visible to every user of this host (ps, /proc/*/cmdline); give it with --token-file (or VOLANT_TOKEN) instead")
			break
		}
	}
	if f.TokenFile == "" {
		return f.Token, nil
	}
	st, err := os.Stat(f.TokenFile)
	if err != nil {
		return "", apierr.Wrap(apierr.Usage, err, "reading --token-file")
	}
	if st.Mode().Perm()&0o077 != 0 {
		log.Warn("the token file may be read by other users; chmod 600 it", "file", f.TokenFile, "mode", st.Mode().Perm().String())
	}
	return readTokenFile(f.TokenFile)
}

func readTokenFile(p string) (string, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return "", apierr.Wrap(apierr.Usage, err, "reading --token-file")
	}
	return strings.TrimSpace(string(b)), nil
}

type mcpCmd struct {
	Host      string `long:"host" env:"VOLANT_HOST" description:"volantd's address: unix socket path or URL (default the unix socket)"`
	Token     string `long:"token" env:"VOLANT_TOKEN" description:"bearer token for TCP"`
	TokenFile string `long:"token-file" env:"VOLANT_TOKEN_FILE" description:"file holding the bearer token"`
}

func (f *mcpCmd) Execute(ctx context.Context, env *cli.Env) error {
	token := f.Token
	if f.TokenFile != "" {
		var err error
		if token, err = readTokenFile(f.TokenFile); err != nil {
			return err
		}
	}
	c, err := client.New(f.Host, client.Options{Token: token, UserAgent: "volantd-mcp/" + buildinfo.String()})
	if err != nil {
		return err
	}
	if _, err := c.Health(ctx); err != nil {
		return err
	}
	// The transport gets env's streams; closing them closes nothing of
	// the process's.
	return server.ServeMCP(ctx, c, io.NopCloser(env.Stdin), nopWriteCloser{env.Stdout}, env.Logger(false))
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// checkCmd is `volantd check`: SQLite's check of the database, offline
// (nothing is migrated or written), for after a crash or before putting a
// restored copy in place.
type checkCmd struct {
	DB   string `long:"db" env:"VOLANT_DB" description:"the database (default <data-dir>/volant.db)"`
	Data string `long:"data-dir" env:"VOLANT_DATA_DIR" description:"data directory"`
	Full bool   `long:"full" description:"integrity_check and foreign_key_check instead of quick_check"`
}

func (f *checkCmd) Execute(ctx context.Context, env *cli.Env) error {
	db := f.DB
	if db == "" {
		data := f.Data
		if data == "" {
			data = layout.DefaultDataDir
		}
		db = filepath.Join(data, layout.DBName)
	}
	check := store.QuickCheck
	if f.Full {
		check = store.FullCheck
	}
	abs, err := filepath.Abs(db)
	if err != nil {
		return err
	}
	if err := store.Verify(ctx, abs, check); err != nil {
		return err
	}
	return cli.WriteResult(env, "volantd.check", struct {
		DB    string `json:"db"`
		Check string `json:"check"`
		OK    bool   `json:"ok"`
	}{abs, string(check), true})
}

type openAPICmd struct{}

func (openAPICmd) Execute(_ context.Context, env *cli.Env) error {
	doc, err := server.New(nil, server.Options{}).OpenAPI()
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(env.Stdout, "%s\n", doc)
	return err
}

// livenessGrace maps the flag (0: never) to the controller's setting
// (negative: never).
func livenessGrace(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}
