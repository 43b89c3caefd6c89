// Command volar is the command line of Volant: it drives volantd's REST API
// (plugins, VMs, deployments, events, logs, the serial console) and
// prepares the host for it (setup).
//
// Synopsis:
//
//	volar [GLOBAL FLAGS] COMMAND ...
//
//	volar setup [--dry-run] [--bridge vbr0] [--cidr 192.168.127.1/24] [--nat] [--uplink IFACE] [--adopt]
//	            [--data-dir DIR] [--run-root DIR] [--kernel DIR] [--systemd [--systemd-dir DIR]]
//	volar plugins list
//	volar plugins install --manifest FILE [--replace]
//	volar plugins show|enable|disable|remove NAME
//	volar vms create NAME --plugin P [--cpu N] [--memory MB] [--kernel-arg ARG]... [--wait [--timeout D]]
//	volar vms list [--plugin P] [--deployment D] [--state S]
//	volar vms show|stop|delete NAME
//	volar vms start|restart NAME [--wait [--timeout D]]
//	volar vms logs NAME [-f|--follow] [--tail N]
//	volar vms console NAME [--escape ^]]
//	volar vms wait NAME [--state running] [--timeout D]
//	volar deployments create NAME --plugin P --replicas N [--cpu N] [--memory MB] [--config FILE]
//	volar deployments scale NAME --replicas M
//	volar deployments list
//	volar deployments show|delete NAME
//	volar events [--since ID] [--type T]...
//	volar completion bash|zsh
//	volar version
//
// Global flags (before or after the command):
//
//	-H, --host ADDR     volantd's address: a unix socket path (/run/volant/volantd.sock,
//	                    the default), unix:///path, or http(s)://host:port (VOLANT_HOST)
//	    --token TOKEN   bearer token for TCP (VOLANT_TOKEN)
//	-o, --output FMT    table (default) or json
//	-q, --quiet         print only names
//
// # Output
//
// By default results are printed for people: lists as aligned tables,
// `show` as "Key: value" lines, actions as one sentence
// (`VM nginx-demo created with IP 192.168.127.100`). The layout may change
// between releases; scripts use -o json or -q.
//
// With -o json, stdout carries the API objects exactly as volantd sends
// them (docs/api.md, GET /openapi.json), indented:
//
//	plugins list, vms list, deployments list    a JSON array of Plugin / VM / Deployment (never null)
//	plugins show|install|enable|disable|remove  one Plugin object
//	vms create|show|start|stop|restart|delete|wait  one VM object (create --wait: the VM once running)
//	deployments create|scale|show|delete        one Deployment object
//	events                                      one compact Event object per line (NDJSON)
//	setup                                       one object {"dry_run","changed","ready","items":[...],...}
//	version                                     {"client","server","addr"}
//
// `vms logs` prints the serial log as it is in every format. With -q,
// stdout carries the names of the objects listed or acted on, one per
// line (events: the resource of each event). Progress (create --wait)
// goes to stderr.
//
// # Exit status and errors
//
//	0    success
//	1    volantd (or, for setup, the host) answered with an error
//	2    usage: bad flags or arguments; nothing was sent
//	3    volantd cannot be reached (the message says where volar looked and how to start it)
//	130  interrupted (SIGINT/SIGTERM); `events` and `logs --follow` exit 0 when interrupted
//
// Errors go to stderr as "volar: CODE: message" plus a hint; with -o json
// as one JSON object {"code","message","details"} (the codes of
// docs/stdio-contract.md, as volantd sends them).
//
// # Setup
//
// `volar setup` prepares the host directly (not through volantd) and
// needs root: the data directories (/var/lib/volant with plugins/, vms/,
// cache/; /run/volant/vms), the bridge network through the same library as
// `volant-net setup` (bridge vbr0 with 192.168.127.1/24, IP forwarding,
// with --nat masquerading), a check of the guest kernel (`make kernel`)
// with the uncompressed vmlinux extracted once, and the hypervisor volantd
// would use; with --systemd also volantd's units (volantd.socket,
// volantd.service, volant-vm@.service, embedded from contrib/systemd) in
// /etc/systemd/system, followed by `systemctl daemon-reload` where systemd
// runs (nothing is enabled: `systemctl enable --now volantd.socket`). It
// prints what it changed; running it again changes nothing.
// --dry-run changes nothing and prints what would change. Start volantd
// with the same --bridge/--nat choices (volantd sets the bridge up itself
// at start and follows its own --nat).
//
// # Console
//
// `volar vms console NAME` attaches the terminal to the VM's serial
// console through volantd (GET /api/v1/vms/NAME/console upgraded to a raw
// stream, so it works over the unix socket and over TCP with a token). The
// terminal is in raw mode: every key, Ctrl-C included, goes to the guest.
// Ctrl-] detaches (change it with --escape ^X, or --escape none); the
// terminal is restored however the session ends. When stdin is not a
// terminal, its bytes are sent and the session ends once stdin ends and the
// guest has been quiet for a second. QEMU and Cloud Hypervisor VMs both
// have a console (volant-launch relays CH's); a run without a console
// socket answers NOT_SUPPORTED: use `vms logs --follow`.
//
// # Events
//
// `volar events` follows volantd's event stream until interrupted,
// resuming by itself (Last-Event-ID) when the connection drops, so no
// event is lost or repeated. --since ID starts after event ID (--since 0:
// the whole retained log); without it only new events are shown. --type
// filters by type; "vm.*" matches a prefix (repeat or comma-separate).
//
// # Completion
//
// `volar completion bash` and `volar completion zsh` print scripts that
// complete commands, flags, file names, and the names of VMs, plugins and
// deployments (asked from volantd with a 0.5 s timeout):
//
//	source <(volar completion bash)                       # this shell
//	volar completion bash > /etc/bash_completion.d/volar  # every shell
//	volar completion zsh > "${fpath[1]}/_volar"
//
// They run `GO_FLAGS_COMPLETION=1 volar WORDS...`, which prints the
// candidates for the last word instead of running a command.
package main

import (
	"context"
	"errors"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/jessevdk/go-flags"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/buildinfo"
	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/hostnet"
	"github.com/volantvm/volant/lib/kernel"
	"github.com/volantvm/volant/lib/volar"
)

func main() {
	// SIGHUP too: a console session restores the terminal on every way out.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	env := cli.OSEnv()
	code := run(ctx, env)
	stop()
	os.Exit(code)
}

// The positional NAME of commands about one VM, plugin or deployment. The
// name types complete from volantd's objects.
type (
	vmArg struct {
		Name volar.VMName `positional-arg-name:"NAME" description:"the VM's name"`
	}
	pluginArg struct {
		Name volar.PluginName `positional-arg-name:"NAME" description:"the plugin's name"`
	}
	deploymentArg struct {
		Name volar.DeploymentName `positional-arg-name:"NAME" description:"the deployment's name"`
	}
	vmCmd struct {
		Args vmArg `positional-args:"yes" required:"yes"`
	}
	pluginCmd struct {
		Args pluginArg `positional-args:"yes" required:"yes"`
	}
	deploymentCmd struct {
		Args deploymentArg `positional-args:"yes" required:"yes"`
	}
)

type waitFlags struct {
	Wait    bool          `long:"wait" description:"wait until the VM is running, printing progress on stderr"`
	Timeout time.Duration `long:"timeout" value-name:"DURATION" default:"2m" description:"how long --wait waits"`
}

type options struct {
	Host   string `short:"H" long:"host" value-name:"ADDR" description:"volantd address: socket path, unix:///path or http(s)://host:port (default $VOLANT_HOST, else /run/volant/volantd.sock)"`
	Token  string `long:"token" value-name:"TOKEN" description:"bearer token for volantd on TCP (default $VOLANT_TOKEN)"`
	Output string `short:"o" long:"output" value-name:"FORMAT" choice:"table" choice:"json" description:"output format: table or json" default:"table"`
	Quiet  bool   `short:"q" long:"quiet" description:"print only names"`

	Setup struct {
		DryRun     bool           `long:"dry-run" description:"change nothing; report what would change"`
		Bridge     string         `long:"bridge" value-name:"NAME" description:"guest bridge (default vbr0)"`
		CIDR       string         `long:"cidr" value-name:"ADDR/LEN" description:"bridge address with prefix length, the guests' gateway (default 192.168.127.1/24)"`
		NAT        bool           `long:"nat" description:"masquerade the guests' traffic to other networks (start volantd with --nat too)"`
		Uplink     string         `long:"uplink" value-name:"IFACE" description:"masquerade only traffic leaving through IFACE"`
		Adopt      bool           `long:"adopt" description:"manage an existing bridge Volant did not create"`
		DataDir    flags.Filename `long:"data-dir" value-name:"DIR" description:"volantd's data directory (default $VOLANT_DATA_DIR, else /var/lib/volant)"`
		RunRoot    flags.Filename `long:"run-root" value-name:"DIR" description:"VM run directories (default $VOLANT_RUN_ROOT, else /run/volant/vms)"`
		KernelDir  flags.Filename `long:"kernel" value-name:"DIR" description:"guest kernel directory (default $VOLANT_KERNEL_DIR, else /var/lib/volant/kernel)"`
		Systemd    bool           `long:"systemd" description:"install volantd.socket, volantd.service and volant-vm@.service and reload systemd (nothing is enabled)"`
		SystemdDir flags.Filename `long:"systemd-dir" value-name:"DIR" description:"where --systemd installs the units (default /etc/systemd/system)"`
	} `command:"setup" description:"Prepare this host for volantd (directories, bridge, NAT, kernel); needs root" long-description:"Prepare this host for volantd: data and run directories, the guest bridge with its address and IP forwarding (and with --nat, masquerading), the guest kernel (checked; the uncompressed vmlinux extracted once), and the hypervisor volantd would pick. Only what differs is changed, and the summary says what. --dry-run changes nothing. Works on the host directly, not through volantd."`

	Plugins struct {
		List    struct{} `command:"list" alias:"ls" description:"List installed plugins"`
		Install struct {
			Manifest flags.Filename `long:"manifest" short:"m" value-name:"FILE" required:"yes" description:"plugin manifest (JSON; - for stdin)"`
			Replace  bool           `long:"replace" description:"replace an installed plugin of the same name"`
		} `command:"install" description:"Install a plugin from its manifest" long-description:"Install a plugin from its manifest. volantd validates it (every problem is listed), fetches remote artifacts and checks their sha256."`
		Show    pluginCmd `command:"show" description:"Show a plugin"`
		Enable  pluginCmd `command:"enable" description:"Allow VMs to be created from a plugin"`
		Disable pluginCmd `command:"disable" description:"Stop new VMs from being created from a plugin (running VMs stay)"`
		Remove  pluginCmd `command:"remove" alias:"rm" description:"Remove a plugin (refused while VMs or deployments use it)"`
	} `command:"plugins" alias:"plugin" description:"Manage plugins (what VMs boot)"`

	VMs struct {
		Create struct {
			Plugin     volar.PluginName `long:"plugin" short:"p" value-name:"PLUGIN" required:"yes" description:"plugin to boot"`
			CPU        int              `long:"cpu" value-name:"N" description:"vCPUs (default: the plugin's)"`
			Memory     int              `long:"memory" value-name:"MB" description:"memory in MiB (default: the plugin's)"`
			KernelArgs []string         `long:"kernel-arg" value-name:"ARG" description:"extra guest kernel command-line word (repeatable)"`
			waitFlags
			Args struct {
				Name string `positional-arg-name:"NAME" description:"the new VM's name (lowercase letters, digits, - and _)"`
			} `positional-args:"yes" required:"yes"`
		} `command:"create" description:"Create and start a VM" long-description:"Create and start a VM from a plugin. volantd leases an address, makes the tap and starts the hypervisor, then answers; the VM is 'starting' until its health check passes. --wait waits until it is 'running', printing progress on stderr."`
		List struct {
			Plugin     volar.PluginName     `long:"plugin" value-name:"PLUGIN" description:"only VMs of this plugin"`
			Deployment volar.DeploymentName `long:"deployment" value-name:"NAME" description:"only replicas of this deployment"`
			State      string               `long:"state" value-name:"STATE" description:"only VMs in this state (starting, running, stopping, stopped, crashed, failed, deleting)"`
		} `command:"list" alias:"ls" description:"List VMs"`
		Show  vmCmd `command:"show" description:"Show a VM"`
		Start struct {
			waitFlags
			Args vmArg `positional-args:"yes" required:"yes"`
		} `command:"start" description:"Start a stopped, crashed or failed VM"`
		Stop    vmCmd `command:"stop" description:"Stop a VM (power button, then hard stop); it keeps its address"`
		Restart struct {
			waitFlags
			Args vmArg `positional-args:"yes" required:"yes"`
		} `command:"restart" description:"Stop and start a VM"`
		Delete vmCmd `command:"delete" alias:"rm" description:"Stop a VM, free its address and forget it"`
		Logs   struct {
			Follow bool  `long:"follow" short:"f" description:"keep printing what the guest writes (Ctrl-C ends)"`
			Tail   int   `long:"tail" value-name:"N" description:"start with the last N lines"`
			Args   vmArg `positional-args:"yes" required:"yes"`
		} `command:"logs" description:"Print a VM's serial console log"`
		Console struct {
			Escape string `long:"escape" short:"e" value-name:"KEY" default:"^]" description:"detach key: ^X for Ctrl-X, or none"`
			Args   vmArg  `positional-args:"yes" required:"yes"`
		} `command:"console" description:"Attach the terminal to a VM's serial console (Ctrl-] detaches)" long-description:"Attach the terminal to a VM's serial console through volantd. The terminal is put in raw mode, so every key (Ctrl-C too) goes to the guest; type the detach key (Ctrl-] unless --escape says otherwise) to return. The terminal is restored however the session ends."`
		Wait struct {
			State   string        `long:"state" value-name:"STATE" default:"running" description:"state to wait for"`
			Timeout time.Duration `long:"timeout" value-name:"DURATION" default:"2m" description:"give up after this long (TIMEOUT)"`
			Args    vmArg         `positional-args:"yes" required:"yes"`
		} `command:"wait" description:"Wait until a VM is in a state"`
	} `command:"vms" alias:"vm" description:"Manage VMs"`

	Deployments struct {
		Create struct {
			Plugin   volar.PluginName `long:"plugin" short:"p" value-name:"PLUGIN" description:"plugin of the replicas"`
			Replicas *int             `long:"replicas" short:"r" value-name:"N" description:"number of VMs to keep running"`
			CPU      int              `long:"cpu" value-name:"N" description:"vCPUs per replica (default: the plugin's)"`
			Memory   int              `long:"memory" value-name:"MB" description:"memory per replica in MiB (default: the plugin's)"`
			Config   flags.Filename   `long:"config" short:"c" value-name:"FILE" description:"JSON with any of name, plugin, replicas, resources {cpu_cores, memory_mb}; flags override it"`
			Args     struct {
				Name string `positional-arg-name:"NAME" description:"the deployment's name; its VMs are NAME-1..NAME-N (or \"name\" in --config)"`
			} `positional-args:"yes"`
		} `command:"create" description:"Create a deployment: N replicas NAME-1..NAME-N kept running" long-description:"Create a deployment. volantd creates the replicas NAME-1..NAME-N in the background and keeps them running: a crashed replica is recreated."`
		Scale struct {
			Replicas *int          `long:"replicas" short:"r" value-name:"M" required:"yes" description:"new number of replicas"`
			Args     deploymentArg `positional-args:"yes" required:"yes"`
		} `command:"scale" description:"Change a deployment's replica count (scale-down removes the highest indexes)"`
		List   struct{}      `command:"list" alias:"ls" description:"List deployments"`
		Show   deploymentCmd `command:"show" description:"Show a deployment"`
		Delete deploymentCmd `command:"delete" alias:"rm" description:"Delete a deployment and its VMs"`
	} `command:"deployments" alias:"deployment" alias:"deploy" description:"Manage deployments (replicated VMs)"`

	Events struct {
		Since *int64   `long:"since" value-name:"ID" description:"start after event ID (0: the whole retained log); default: new events only"`
		Types []string `long:"type" short:"t" value-name:"TYPE" description:"only events of this type; vm.* matches a prefix (repeatable)"`
	} `command:"events" description:"Follow volantd's event stream (Ctrl-C ends)"`

	Completion struct {
		Args struct {
			Shell string `positional-arg-name:"SHELL" choice:"bash" choice:"zsh" description:"bash or zsh"`
		} `positional-args:"yes" required:"yes"`
	} `command:"completion" description:"Print a shell completion script (bash or zsh)"`

	Version struct{} `command:"version" description:"Print volar's and volantd's versions"`
}

func run(ctx context.Context, env *cli.Env) int {
	var o options
	cmd, rest, err := volar.Parse(env, "volar", &o)
	if errors.Is(err, volar.ErrHelp) || errors.Is(err, volar.ErrCompleted) {
		return volar.ExitOK
	}
	if err == nil && len(rest) > 0 {
		err = apierr.New(apierr.Usage, "volar %s: unexpected argument %q", cmd, rest[0]).With("hint", "run volar "+cmd+" --help")
	}
	asJSON := o.Output == string(volar.JSON)
	if err != nil {
		return volar.Report(env.Stderr, err, nil, asJSON)
	}
	out := &volar.Output{Format: volar.Format(o.Output), Quiet: o.Quiet, Stdout: env.Stdout, Stderr: env.Stderr}

	// Commands that do not talk to volantd.
	switch cmd {
	case "setup":
		return volar.Report(env.Stderr, setup(ctx, env, &o, out), nil, asJSON)
	case "completion":
		s, err := volar.CompletionScript(o.Completion.Args.Shell, "volar")
		if err == nil {
			_, err = io.WriteString(env.Stdout, s)
		}
		return volar.Report(env.Stderr, err, nil, asJSON)
	}

	target := volar.ResolveTarget(o.Host, o.Token, env.Env)
	c, err := target.Client(0, buildinfo.String())
	if err != nil {
		return volar.Report(env.Stderr, err, nil, asJSON)
	}
	s := &volar.Session{Client: c, Out: out}
	return volar.Report(env.Stderr, dispatch(ctx, env, cmd, &o, s), &target, asJSON)
}

func dispatch(ctx context.Context, env *cli.Env, cmd string, o *options, s *volar.Session) error {
	vms, ps, ds := &o.VMs, &o.Plugins, &o.Deployments
	wait := func(f waitFlags) volar.WaitOptions {
		return volar.WaitOptions{Wait: f.Wait, Timeout: f.Timeout}
	}
	switch cmd {
	case "version":
		return s.Version(ctx, buildinfo.String())

	case "plugins list":
		return s.ListPlugins(ctx)
	case "plugins install":
		m, err := volar.ReadManifest(string(ps.Install.Manifest), env.Stdin)
		if err != nil {
			return err
		}
		return s.InstallPlugin(ctx, m, ps.Install.Replace)
	case "plugins show":
		return s.ShowPlugin(ctx, string(ps.Show.Args.Name))
	case "plugins enable":
		return s.EnablePlugin(ctx, string(ps.Enable.Args.Name), true)
	case "plugins disable":
		return s.EnablePlugin(ctx, string(ps.Disable.Args.Name), false)
	case "plugins remove":
		return s.RemovePlugin(ctx, string(ps.Remove.Args.Name))

	case "vms create":
		f := &vms.Create
		return s.CreateVM(ctx, api.CreateVMRequest{Name: f.Args.Name, Plugin: string(f.Plugin), CPUCores: f.CPU,
			MemoryMB: f.Memory, KernelArgs: f.KernelArgs}, wait(f.waitFlags))
	case "vms list":
		f := &vms.List
		return s.ListVMs(ctx, api.VMFilter{Plugin: string(f.Plugin), Deployment: string(f.Deployment), State: api.VMState(f.State)})
	case "vms show":
		return s.ShowVM(ctx, string(vms.Show.Args.Name))
	case "vms start":
		return s.VMAction(ctx, "start", string(vms.Start.Args.Name), wait(vms.Start.waitFlags))
	case "vms restart":
		return s.VMAction(ctx, "restart", string(vms.Restart.Args.Name), wait(vms.Restart.waitFlags))
	case "vms stop":
		return s.VMAction(ctx, "stop", string(vms.Stop.Args.Name), volar.WaitOptions{})
	case "vms delete":
		return s.VMAction(ctx, "delete", string(vms.Delete.Args.Name), volar.WaitOptions{})
	case "vms logs":
		f := &vms.Logs
		if f.Tail < 0 {
			return apierr.New(apierr.Usage, "--tail must be positive")
		}
		return s.Logs(ctx, string(f.Args.Name), api.LogOptions{Follow: f.Follow, Tail: f.Tail})
	case "vms wait":
		f := &vms.Wait
		return s.WaitVM(ctx, string(f.Args.Name), volar.WaitOptions{State: api.VMState(f.State), Timeout: f.Timeout})
	case "vms console":
		f := &vms.Console
		key, on, err := volar.ParseEscape(f.Escape)
		if err != nil {
			return err
		}
		conn, err := s.Client.Console(ctx, string(f.Args.Name))
		if err != nil {
			return err
		}
		return volar.Console(ctx, conn, env.Stdin, env.Stdout, env.Stderr,
			volar.ConsoleOptions{Name: string(f.Args.Name), Escape: key, NoEscape: !on, Quiet: o.Quiet})

	case "deployments create":
		f := &ds.Create
		var cfg *volar.DeploymentConfig
		if f.Config != "" {
			var err error
			if cfg, err = volar.ReadDeploymentConfig(string(f.Config), env.Stdin); err != nil {
				return err
			}
		}
		req, err := volar.DeploymentRequest(cfg, volar.DeploymentFlags{Name: f.Args.Name, Plugin: string(f.Plugin),
			Replicas: f.Replicas, CPU: f.CPU, Memory: f.Memory})
		if err != nil {
			return err
		}
		return s.CreateDeployment(ctx, req)
	case "deployments scale":
		return s.ScaleDeployment(ctx, string(ds.Scale.Args.Name), *ds.Scale.Replicas)
	case "deployments list":
		return s.ListDeployments(ctx)
	case "deployments show":
		return s.ShowDeployment(ctx, string(ds.Show.Args.Name))
	case "deployments delete":
		return s.DeleteDeployment(ctx, string(ds.Delete.Args.Name))

	case "events":
		since := int64(-1)
		if o.Events.Since != nil {
			if *o.Events.Since < 0 {
				return apierr.New(apierr.Usage, "--since must be an event ID (0 or more)")
			}
			since = *o.Events.Since
		}
		var types []string
		for _, t := range o.Events.Types {
			for _, p := range strings.Split(t, ",") {
				if p = strings.TrimSpace(p); p != "" {
					types = append(types, p)
				}
			}
		}
		return s.Events(ctx, since, types)
	}
	return apierr.New(apierr.Usage, "no command given").With("hint", "run volar --help for the commands")
}

func setup(ctx context.Context, env *cli.Env, o *options, out *volar.Output) error {
	f := &o.Setup
	req := volar.SetupRequest{
		Network: hostnet.Config{Bridge: f.Bridge, CIDR: f.CIDR, NAT: f.NAT, Uplink: f.Uplink, Adopt: f.Adopt},
		DataDir: firstOf(string(f.DataDir), env.Env("VOLANT_DATA_DIR")),
		RunRoot: firstOf(string(f.RunRoot), env.Env("VOLANT_RUN_ROOT")),
		// lib/kernel's variable, also volantd's.
		KernelDir:  firstOf(string(f.KernelDir), env.Env("VOLANT_KERNEL_DIR"), kernel.DefaultDir),
		Systemd:    f.Systemd,
		SystemdDir: string(f.SystemdDir),
		DryRun:     f.DryRun,
	}
	res, err := volar.Setup(ctx, req, nil)
	if res != nil {
		if perr := out.SetupSummary(res); perr != nil && err == nil {
			err = perr
		}
	}
	return err
}

func firstOf(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}
