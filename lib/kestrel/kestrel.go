// Package kestrel is the entry point of the kestrel binary: the in-guest
// PID 1 agent (see cmd/kestrel for its manual).
//
// Main decides what kestrel is allowed to be. As the init of a machine (PID
// 1 of the kernel's initial PID namespace, proven by guest.Claim) it is the
// guest's init: lib/kestrel/boot. Anywhere else (a shell, a test, PID 1 of a
// container or of `unshare --pid`) it only offers `kestrel run`, which
// supervises a workload with the same agent but never mounts, loads modules,
// configures the network or powers anything off: those need the Machine
// that Claim refuses to make outside a guest.
//
// lib/kestrel and lib/kestrel/boot are kestrel's program, called only by
// cmd/kestrel, not general libraries: as init, handling signals (SIGCHLD,
// SIGTERM, SIGINT, SIGPWR) is their job, so unlike other lib/ packages they
// install signal handlers.
package kestrel

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/bootargs"
	"github.com/volantvm/volant/lib/kestrel/agent"
	"github.com/volantvm/volant/lib/kestrel/boot"
	"github.com/volantvm/volant/lib/kestrel/console"
	"github.com/volantvm/volant/lib/kestrel/guest"
	"github.com/volantvm/volant/lib/kestrel/reaper"
	"github.com/volantvm/volant/lib/kestrel/report"
	"github.com/volantvm/volant/lib/manifest"
)

// Exit statuses of Main outside a guest.
const (
	ExitOK    = 0
	ExitError = 1 // the manifest could not be loaded, the API could not listen
	ExitUsage = 2 // bad arguments, or guest duties refused
)

// Env is the process's outside world.
type Env struct {
	Args   []string // after the program name
	Stdout io.Writer
	Stderr io.Writer
	Stdin  io.Reader
}

// Main runs kestrel and returns its exit status. In a guest it does not
// return: the guest powers off.
func Main(version string, env Env) int {
	if os.Getpid() == 1 {
		m, err := guest.Claim()
		if err == nil {
			boot.Init(m, boot.Options{Version: version, Console: env.Stdout})
		}
		if len(env.Args) == 0 {
			fmt.Fprintf(env.Stderr, "kestrel: %v\n"+
				"kestrel: refusing guest duties (mounts, modules, network, power-off): this is not a machine kestrel booted.\n"+
				"kestrel: to supervise a workload here, use `kestrel run --manifest FILE`.\n", err)
			return ExitUsage
		}
	}
	return cli(version, env)
}

const usage = `usage:
  kestrel                   (as a guest's init) boot the guest; refused anywhere else
  kestrel run [flags]       supervise a workload here: no mounts, no network setup, no power-off
  kestrel version           print the version

run flags:
`

func cli(version string, env Env) int {
	if len(env.Args) == 0 {
		fmt.Fprintf(env.Stderr, "kestrel: not the init of a guest (pid %d); nothing to do\n%s", os.Getpid(), usage)
		return ExitUsage
	}
	switch env.Args[0] {
	case "version", "--version", "-version":
		fmt.Fprintln(env.Stdout, version)
		return ExitOK
	case "run":
		return runCmd(version, env, env.Args[1:])
	case "help", "-h", "--help":
		fmt.Fprint(env.Stdout, usage)
		runFlags(env.Stdout, &runOptions{}).PrintDefaults()
		return ExitOK
	}
	fmt.Fprintf(env.Stderr, "kestrel: unknown command %q\n%s", env.Args[0], usage)
	return ExitUsage
}

type runOptions struct {
	manifest string
	cmdline  string
	listen   string
	grace    time.Duration
	debug    bool
}

func runFlags(out io.Writer, o *runOptions) *flag.FlagSet {
	fs := flag.NewFlagSet("kestrel run", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&o.manifest, "manifest", "", "manifest `FILE` (JSON; - for stdin)")
	fs.StringVar(&o.cmdline, "cmdline", "", "volant.* `KEYS` as on a kernel command line (volant.manifest, volant.vm, volant.plugin, volant.api_host, volant.api_port, volant.debug)")
	fs.StringVar(&o.listen, "listen", "127.0.0.1:8080", "agent API `ADDR`ess")
	fs.DurationVar(&o.grace, "grace", 0, "SIGTERM-to-SIGKILL grace period when stopping the workload (default 10s)")
	fs.BoolVar(&o.debug, "debug", false, "verbose logging")
	return fs
}

// guestOnly are command-line keys that mean nothing outside a guest.
var guestOnly = [...]string{"volant.ip", "volant.gw", "volant.dns", "volant.boot", "volant.rootfs_device", "volant.rootfs_fstype", "volant.modules", "ip"}

func runCmd(version string, env Env, argv []string) int {
	var o runOptions
	fs := runFlags(env.Stderr, &o)
	if err := fs.Parse(argv); err != nil {
		return ExitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(env.Stderr, "kestrel run: unexpected argument %q\n", fs.Arg(0))
		return ExitUsage
	}
	args, err := bootargs.Parse(o.cmdline)
	if err != nil {
		fmt.Fprintf(env.Stderr, "kestrel run: --cmdline: %v\n", err)
		return ExitUsage
	}
	level := slog.LevelInfo
	if o.debug || args.Debug {
		level = slog.LevelDebug
	}
	log := slog.New(console.NewHandler(console.NewWriter(env.Stderr), level))
	for _, w := range bootargs.Split(o.cmdline) {
		k, _, _ := strings.Cut(w, "=")
		for _, g := range guestOnly {
			if k == g {
				log.Warn("ignoring a guest-only setting outside a guest", "key", k)
			}
		}
	}
	if os.Getpid() != 1 {
		// Orphans of the workload come to kestrel, as they would to init.
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			log.Warn("cannot become a child subreaper; orphans go to the real init", "err", err)
		}
	}
	load := func(ctx context.Context) (*manifest.Manifest, error) {
		if o.manifest != "" {
			var data []byte
			var err error
			if o.manifest == "-" {
				data, err = io.ReadAll(io.LimitReader(env.Stdin, manifest.MaxBytes+1))
			} else {
				data, err = os.ReadFile(o.manifest)
			}
			if err != nil {
				return nil, fmt.Errorf("reading the manifest: %w", err)
			}
			m, err := manifest.Parse(data)
			if err != nil {
				return nil, fmt.Errorf("manifest %s: %w", o.manifest, err)
			}
			return m, nil
		}
		m, err := boot.LocalManifest(args)
		if err != nil || m != nil {
			return m, err
		}
		return boot.FetchManifest(ctx, args, boot.FetchBudget, log)
	}
	reportURL := ""
	if args.APIHost != "" && args.VM != "" {
		reportURL = report.URL(args.APIHost, args.APIPort, args.VM)
	}
	r := reaper.New(log)
	rctx, stopReaper := context.WithCancel(context.Background())
	defer stopReaper()
	go r.Run(rctx)

	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, unix.SIGTERM, unix.SIGINT, unix.SIGPWR)
	defer signal.Stop(sig)
	go func() {
		for s := range sig {
			log.Info("stopping", "signal", s.String())
			cancel(fmt.Errorf("received %s", s))
		}
	}()

	a := agent.New(agent.Config{
		VM: args.VM, Plugin: args.Plugin, Boot: "none", Version: version,
		Listen: o.listen, ReportURL: reportURL, Console: env.Stdout,
		StopGrace: o.grace, Log: log,
	})
	if err := a.Run(ctx, nil, r, load); err != nil {
		log.Error("kestrel run failed", "err", err)
		return ExitError
	}
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		log.Info("stopped", "reason", cause)
	}
	return ExitOK
}
