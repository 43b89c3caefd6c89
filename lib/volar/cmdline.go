package volar

import (
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/jessevdk/go-flags"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/buildinfo"
	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/hostnet"
	"github.com/volantvm/volant/lib/layout"
	"github.com/volantvm/volant/lib/portmap"
	"github.com/volantvm/volant/lib/workloadlog"
)

// Run is the whole of volar: it parses env.Args into a CommandLine, runs
// the command it names and returns the exit status (see cmd/volar).
func Run(ctx context.Context, env *cli.Env) int {
	var cl CommandLine
	cmd, rest, err := Parse(env, "volar", &cl)
	if errors.Is(err, ErrHelp) || errors.Is(err, ErrCompleted) {
		return ExitOK
	}
	if err == nil && len(rest) > 0 {
		err = apierr.New(apierr.Usage, "volar %s: unexpected argument %q", cmd, rest[0]).With("hint", "run volar "+cmd+" --help")
	}
	asJSON := cl.Output == string(JSON)
	if err != nil {
		return Report(env.Stderr, err, nil, asJSON)
	}
	out := &Output{Format: Format(cl.Output), Quiet: cl.Quiet, Stdout: env.Stdout, Stderr: env.Stderr}
	switch c := cli.CommandFor(&cl, cmd).(type) {
	case localCommand:
		return Report(env.Stderr, c.runLocal(ctx, env, out), nil, asJSON)
	case remoteCommand:
		target := ResolveTarget(cl.Host, cl.Token, env.Env)
		client, err := target.Client(0, buildinfo.String())
		if err != nil {
			return Report(env.Stderr, err, nil, asJSON)
		}
		s := &Session{Client: client, Out: out}
		return Report(env.Stderr, c.run(ctx, s, env), &target, asJSON)
	}
	return Report(env.Stderr, apierr.New(apierr.Usage, "no command given").With("hint", "run volar --help for the commands"), nil, asJSON)
}

// A remoteCommand talks to volantd through a Session.
type remoteCommand interface {
	run(ctx context.Context, s *Session, env *cli.Env) error
}

// A localCommand works on this host alone.
type localCommand interface {
	runLocal(ctx context.Context, env *cli.Env, out *Output) error
}

// CommandLine is volar's command line: the global flags and one struct per
// command, as go-flags reads them.
type CommandLine struct {
	Host   string `short:"H" long:"host" value-name:"ADDR" description:"volantd address: socket path, unix:///path or http(s)://host:port (default $VOLANT_HOST, else /run/volant/volantd.sock)"`
	Token  string `long:"token" value-name:"TOKEN" description:"bearer token for volantd on TCP (default $VOLANT_TOKEN)"`
	Output string `short:"o" long:"output" value-name:"FORMAT" choice:"table" choice:"json" description:"output format: table or json" default:"table"`
	Quiet  bool   `short:"q" long:"quiet" description:"print only names"`

	Setup setupCmd `command:"setup" description:"Prepare this host for volantd (directories, bridge, NAT, kernel); needs root" long-description:"Prepare this host for volantd: data and run directories, the guest bridge with its address and IP forwarding (and with --nat, masquerading), the guest kernel (checked; the uncompressed vmlinux extracted once), and the hypervisor volantd would pick. Only what differs is changed, and the summary says what. --dry-run changes nothing. Works on the host directly, not through volantd."`

	Plugins struct {
		List    pluginsListCmd    `command:"list" alias:"ls" description:"List installed plugins"`
		Install pluginsInstallCmd `command:"install" description:"Install a plugin from its manifest, or build one from a container image" long-description:"Install a plugin from its manifest (--manifest): volantd validates it (every problem is listed), fetches remote artifacts and checks their sha256. Or build one from a container image (--image): volantd fetches the image (registry credentials from its usual auth file), unpacks it into an ext4 root disk with kestrel added (fledge's oci_rootfs) and installs it; a plugin already built from the same image digest is used as it is."`
		Show    pluginShowCmd     `command:"show" description:"Show a plugin"`
		Enable  pluginEnableCmd   `command:"enable" description:"Allow VMs to be created from a plugin"`
		Disable pluginDisableCmd  `command:"disable" description:"Stop new VMs from being created from a plugin (running VMs stay)"`
		Remove  pluginRemoveCmd   `command:"remove" alias:"rm" description:"Remove a plugin (refused while VMs or deployments use it)"`
	} `command:"plugins" alias:"plugin" description:"Manage plugins (what VMs boot)"`

	VMs struct {
		Create   vmCreateCmd   `command:"create" description:"Create and start a VM" long-description:"Create and start a VM from a plugin. volantd leases an address, makes the tap and starts the hypervisor, then answers; the VM is 'starting' until its health check passes. --wait waits until it is 'running', printing progress on stderr."`
		List     vmListCmd     `command:"list" alias:"ls" description:"List VMs"`
		Show     vmShowCmd     `command:"show" description:"Show a VM"`
		Start    vmStartCmd    `command:"start" description:"Start a stopped, crashed or failed VM"`
		Stop     vmStopCmd     `command:"stop" description:"Stop a VM (power button, then hard stop); it keeps its address"`
		Restart  vmRestartCmd  `command:"restart" description:"Stop and start a VM"`
		Pause    vmPauseCmd    `command:"pause" description:"Pause a running VM's vCPUs (no health checks, no published-port traffic)"`
		Resume   vmResumeCmd   `command:"resume" description:"Resume a paused VM"`
		Delete   vmDeleteCmd   `command:"delete" alias:"rm" description:"Stop a VM, free its address and forget it"`
		Logs     vmLogsCmd     `command:"logs" description:"Print what a VM's workload wrote (stdout and stderr), or its serial console with --console"`
		Exec     vmExecCmd     `command:"exec" description:"Run a command in a running VM (over the host-only agent channel)" long-description:"Run a command in a running VM over the agent channel, which only the host reaches (never the guest network). The command runs directly (no shell unless you name one) with the workload's environment; its output streams to yours and volar exits with its status. -i attaches stdin; -t allocates a terminal in the guest (with -i, your terminal goes raw and its size follows). Without -t, the signals volar receives (Ctrl-C, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2) are sent to the command, whose own status volar then exits with (130 after an untrapped SIGINT); the third Ctrl-C or SIGTERM gives up, hanging the command up (status 125). With -t and -i, Ctrl-C is a key for the guest's terminal. Exit statuses: the command's; 125 when Volant could not run it (VM not running, daemon unreachable; the error is printed), 126 when it cannot be executed, 127 when it does not exist. With -o json the command runs to its end (or --timeout) and its exit code, stdout and stderr (1 MiB of each at most) are printed as one JSON object; signals are forwarded there too, and -i sends at most 1 MiB of stdin."`
		Cp       vmCpCmd       `command:"cp" description:"Copy files into or out of a running VM (NAME:PATH on one side)" long-description:"Copy a file or directory between this host and a running VM, as a tar stream over the agent channel: one of SRC and DST is NAME:PATH. A destination that is a directory receives the source inside it; otherwise the source is written under the destination's name (its parent must exist). Modes and times are kept; files belong to the user who writes them. Entries that would leave the destination (.., absolute names, symlinks pointing out) are refused. - as the local side is a tar stream on stdin or stdout."`
		Console  vmConsoleCmd  `command:"console" description:"Attach the terminal to a VM's serial console (Ctrl-] detaches)" long-description:"Attach the terminal to a VM's serial console through volantd. The terminal is put in raw mode, so every key (Ctrl-C too) goes to the guest; type the detach key (Ctrl-] unless --escape says otherwise) to return. The terminal is restored however the session ends."`
		Wait     vmWaitCmd     `command:"wait" description:"Wait until a VM is in a state"`
		Snapshot vmSnapshotCmd `command:"snapshot" description:"Save a running VM (memory, devices, disks) as a snapshot; the VM runs on"`
		Restore  vmRestoreCmd  `command:"restore" description:"Roll a VM back to a snapshot (what it wrote since is lost)"`
	} `command:"vms" alias:"vm" description:"Manage VMs"`

	Snapshots struct {
		List   snapshotListCmd   `command:"list" alias:"ls" description:"List snapshots"`
		Show   snapshotShowCmd   `command:"show" description:"Show a snapshot: sizes, how its disks were copied, who uses it"`
		Delete snapshotDeleteCmd `command:"delete" alias:"rm" description:"Delete a snapshot (refused while a VM or deployment uses it)"`
	} `command:"snapshots" alias:"snapshot" alias:"snap" description:"Manage snapshots (saved VMs that start without booting)"`

	Deployments struct {
		Create  deploymentCreateCmd `command:"create" description:"Create a deployment: N replicas NAME-1..NAME-N kept running" long-description:"Create a deployment. volantd creates the replicas NAME-1..NAME-N in the background and keeps them running: a crashed replica is recreated."`
		Scale   deploymentScaleCmd  `command:"scale" description:"Change a deployment's replica count (scale-down removes the highest indexes)"`
		Update  deploymentUpdateCmd `command:"update" description:"Roll a deployment's replicas to another plugin version, a batch at a time" long-description:"Start a rolling update: volantd replaces the replicas with ones of --plugin (NAME@VERSION, or NAME for its last installed version) in the background. Each pass creates new replicas while there are fewer than the count plus --max-surge, and removes old ones while at least the count minus --max-unavailable stay healthy; so with --max-unavailable 0 (the default) an old replica goes only once a new one is healthy, and it leaves the published ports before it stops. A new replica that is not healthy within --deadline (or crashes) rolls the update back. Follow it with deployments rollout status."`
		List    deploymentListCmd   `command:"list" alias:"ls" description:"List deployments"`
		Show    deploymentShowCmd   `command:"show" description:"Show a deployment"`
		Delete  deploymentDeleteCmd `command:"delete" alias:"rm" description:"Delete a deployment and its VMs"`
		Rollout struct {
			Status  rolloutStatusCmd  `command:"status" description:"Show a deployment's latest rolling update and its progress"`
			Undo    rolloutUndoCmd    `command:"undo" description:"Roll back the update under way, or go back to the version before the last complete update"`
			History rolloutHistoryCmd `command:"history" description:"List a deployment's rolling updates, newest first"`
		} `command:"rollout" description:"Follow, undo and list a deployment's rolling updates"`
	} `command:"deployments" alias:"deployment" alias:"deploy" description:"Manage deployments (replicated VMs)"`

	Volumes struct {
		Create volumeCreateCmd `command:"create" description:"Create a volume: an empty filesystem that outlives the VMs using it" long-description:"Create a volume: a sparse disk image with an empty filesystem (ext4), owned by volantd. VMs mount it with vms create -v NAME:/PATH; it outlives them, and one VM at a time may write to it."`
		List   volumeListCmd   `command:"list" alias:"ls" description:"List volumes"`
		Show   volumeShowCmd   `command:"show" description:"Show a volume and the VMs using it"`
		Resize volumeResizeCmd `command:"resize" description:"Grow a volume and its filesystem (stop the VMs using it first)"`
		Delete volumeDeleteCmd `command:"delete" alias:"rm" description:"Delete a volume and its data (refused while a VM is attached to it)"`
	} `command:"volumes" alias:"volume" alias:"vol" description:"Manage volumes (data that outlives VMs)"`

	Tokens struct {
		Create tokenCreateCmd `command:"create" description:"Create a named API token with a role; its secret is printed once" long-description:"Create a named bearer token for volantd's API with a role: viewer (read, events, logs), operator (also the VM lifecycle, exec, console, files, snapshots, volumes) or admin (also plugins, deployments, tokens). The secret is printed once (alone with -q) and volantd keeps only its hash. Admin only."`
		List   tokenListCmd   `command:"list" alias:"ls" description:"List the named tokens (never their secrets)"`
		Revoke tokenRevokeCmd `command:"revoke" alias:"rm" description:"Revoke a token: the next request with it is refused"`
	} `command:"tokens" alias:"token" description:"Manage API tokens and their roles (admin only)"`

	Run        runCmd        `command:"run" description:"Run a container image as a VM: build (or reuse) its plugin, create the VM, wait until it runs" long-description:"Run a container image as a VM in one step: volantd builds the plugin from the image (or reuses the one built from the same image: --pull if-not-present by default), creates a VM from it with the arguments after -- as the image's Cmd, and volar waits until it is running, printing progress on stderr."`
	Events     eventsCmd     `command:"events" description:"Follow volantd's event stream (Ctrl-C ends)"`
	Completion completionCmd `command:"completion" description:"Print a shell completion script (bash or zsh)"`
	Version    versionCmd    `command:"version" description:"Print volar's and volantd's versions"`
}

// The positional NAME of commands about one VM, plugin or deployment; the
// name types complete from volantd's objects.
type (
	vmArg struct {
		Name VMName `positional-arg-name:"NAME" description:"the VM's name"`
	}
	pluginArg struct {
		Name PluginName `positional-arg-name:"NAME" description:"the plugin's name"`
	}
	deploymentArg struct {
		Name DeploymentName `positional-arg-name:"NAME" description:"the deployment's name"`
	}
	volumeArg struct {
		Name VolumeName `positional-arg-name:"NAME" description:"the volume's name"`
	}
	volumeCmd struct {
		Args volumeArg `positional-args:"yes" required:"yes"`
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

func (f waitFlags) options() WaitOptions { return WaitOptions{Wait: f.Wait, Timeout: f.Timeout} }

// --- setup, completion, version ---

type setupCmd struct {
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
	TLS        bool           `long:"tls" description:"make a self-signed certificate for volantd's TCP API in <data dir>/tls (an existing one is kept)"`
	TLSHosts   []string       `long:"tls-host" value-name:"NAME" description:"a name or address the certificate is for (repeatable; default this host's name, localhost, 127.0.0.1, ::1)"`
}

func (f *setupCmd) runLocal(ctx context.Context, env *cli.Env, out *Output) error {
	dirs := layout.FromEnv(env.Env)
	cli.Override(&dirs.Data, string(f.DataDir))
	cli.Override(&dirs.RunRoot, string(f.RunRoot))
	cli.Override(&dirs.Kernel, string(f.KernelDir))
	req := SetupRequest{
		Network: hostnet.Config{Bridge: f.Bridge, CIDR: f.CIDR, NAT: f.NAT, Uplink: f.Uplink, Adopt: f.Adopt},
		DataDir: dirs.Data, RunRoot: dirs.RunRoot, KernelDir: dirs.WithDefaults().Kernel,
		Systemd: f.Systemd, SystemdDir: string(f.SystemdDir), DryRun: f.DryRun,
		TLS: f.TLS, TLSHosts: f.TLSHosts,
	}
	res, err := Setup(ctx, req, nil)
	if res != nil {
		if perr := out.SetupSummary(res); perr != nil && err == nil {
			err = perr
		}
	}
	return err
}

type completionCmd struct {
	Args struct {
		Shell string `positional-arg-name:"SHELL" choice:"bash" choice:"zsh" description:"bash or zsh"`
	} `positional-args:"yes" required:"yes"`
}

func (c *completionCmd) runLocal(_ context.Context, env *cli.Env, _ *Output) error {
	s, err := CompletionScript(c.Args.Shell, "volar")
	if err != nil {
		return err
	}
	_, err = io.WriteString(env.Stdout, s)
	return err
}

type versionCmd struct{}

func (versionCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.Version(ctx, buildinfo.String())
}

// --- plugins ---

type pluginsListCmd struct{}

func (pluginsListCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.ListPlugins(ctx)
}

type pluginsInstallCmd struct {
	Manifest flags.Filename `long:"manifest" short:"m" value-name:"FILE" description:"plugin manifest (JSON; - for stdin); FILE.minisig, when there, is sent as its signature"`
	Sig      flags.Filename `long:"signature" value-name:"FILE" description:"the manifest's minisign signature (default FILE.minisig when it exists)"`
	Image    string         `long:"image" short:"i" value-name:"REF" description:"build the plugin from this container image (docker://REPO:TAG, REPO:TAG, oci:DIR:TAG, ...)"`
	Name     string         `long:"name" value-name:"NAME" description:"with --image: the plugin's name (default REPOSITORY-DIGEST)"`
	Pull     string         `long:"pull" value-name:"POLICY" description:"with --image: when to ask the registry: always (default), if-not-present or never"`
	Insecure bool           `long:"insecure" description:"with --image: the registry speaks plain HTTP or has an unverified certificate"`
	Replace  bool           `long:"replace" description:"replace an installed plugin of the same name"`
}

func (c *pluginsInstallCmd) run(ctx context.Context, s *Session, env *cli.Env) error {
	switch {
	case (c.Manifest == "") == (c.Image == ""):
		return usage("volar plugins install --manifest FILE | --image REF", "give one of --manifest and --image")
	case c.Image != "" && c.Sig != "":
		return usage("volar plugins install --manifest FILE [--signature SIG]", "--signature goes with --manifest")
	case c.Manifest != "" && (c.Name != "" || c.Pull != "" || c.Insecure):
		return usage("volar plugins install --image REF [--name NAME]", "--name, --pull and --insecure go with --image")
	case c.Image != "":
		p, built, err := s.InstallImage(ctx, api.InstallImageRequest{Image: c.Image, Name: c.Name, Pull: c.Pull, Insecure: c.Insecure, Replace: c.Replace})
		if err != nil {
			return err
		}
		verb := "installed (built from " + p.Image + ")"
		if !built {
			verb = "already built from " + p.Image
		}
		return s.Out.PluginAction(p, verb)
	}
	m, err := ReadManifest(string(c.Manifest), env.Stdin)
	if err != nil {
		return err
	}
	sig, err := ReadSignature(string(c.Manifest), string(c.Sig))
	if err != nil {
		return err
	}
	return s.InstallPlugin(ctx, m, sig, c.Replace)
}

type (
	pluginShowCmd    struct{ pluginCmd }
	pluginEnableCmd  struct{ pluginCmd }
	pluginDisableCmd struct{ pluginCmd }
	pluginRemoveCmd  struct{ pluginCmd }
)

func (c *pluginShowCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.ShowPlugin(ctx, string(c.Args.Name))
}

func (c *pluginEnableCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.EnablePlugin(ctx, string(c.Args.Name), true)
}

func (c *pluginDisableCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.EnablePlugin(ctx, string(c.Args.Name), false)
}

func (c *pluginRemoveCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.RemovePlugin(ctx, string(c.Args.Name))
}

// --- vms ---

type vmCreateCmd struct {
	Plugin     PluginName `long:"plugin" value-name:"PLUGIN" description:"plugin to boot (required unless --from-snapshot)"`
	FromSnap   string     `long:"from-snapshot" value-name:"SNAPSHOT" description:"start the VM from a snapshot instead of booting it (plugin, CPUs, memory and volumes are the snapshot's)"`
	Publish    []string   `long:"publish" short:"p" value-name:"SPEC" description:"publish a host port to the VM: HOSTPORT:GUESTPORT, with HOSTIP: before and /tcp or /udp after if need be (repeatable)"`
	CPU        int        `long:"cpu" value-name:"N" description:"vCPUs (default: the plugin's)"`
	Memory     int        `long:"memory" value-name:"MB" description:"memory in MiB (default: the plugin's)"`
	KernelArgs []string   `long:"kernel-arg" value-name:"ARG" description:"extra guest kernel command-line word (repeatable)"`
	Volumes    []string   `long:"volume" short:"v" value-name:"NAME:/PATH[:ro]" description:"mount volume NAME at PATH before the workload starts, read-only with :ro (repeatable)"`
	SecretEnv  []string   `long:"secret-env" value-name:"NAME=@FILE" description:"add NAME to the workload's environment, its value read from FILE (NAME=-: stdin), over the agent channel only (repeatable)"`
	SecretFile []string   `long:"secret-file" value-name:"PATH=FILE" description:"write the local FILE to the guest's PATH (mode 0600) before the workload starts, over the agent channel only (repeatable)"`
	waitFlags
	Args struct {
		Name string `positional-arg-name:"NAME" description:"the new VM's name (lowercase letters, digits, - and _)"`
	} `positional-args:"yes" required:"yes"`
}

func (c *vmCreateCmd) run(ctx context.Context, s *Session, env *cli.Env) error {
	ports, err := parsePublish(c.Publish)
	if err != nil {
		return err
	}
	req := api.CreateVMRequest{Name: c.Args.Name, Plugin: string(c.Plugin), CPUCores: c.CPU, MemoryMB: c.Memory, KernelArgs: c.KernelArgs, Ports: ports,
		FromSnapshot: c.FromSnap}
	for _, v := range c.Volumes {
		m, err := ParseVolumeMount(v)
		if err != nil {
			return err
		}
		req.Volumes = append(req.Volumes, m)
	}
	if req.Inputs, err = ParseSecrets(c.SecretEnv, c.SecretFile, env.Stdin); err != nil {
		return err
	}
	return s.CreateVM(ctx, req, c.options())
}

type runCmd struct {
	Name     string        `long:"name" value-name:"NAME" description:"the VM's name (default REPOSITORY-XXXXXX)"`
	Publish  []string      `long:"publish" short:"p" value-name:"SPEC" description:"publish a host port to the VM: HOSTPORT:GUESTPORT, with HOSTIP: before and /tcp or /udp after if need be (repeatable)"`
	Env      []string      `long:"env" short:"e" value-name:"KEY=VALUE" description:"add to the workload's environment (repeatable; it travels on the kernel command line: nothing secret)"`
	CPU      int           `long:"cpu" value-name:"N" description:"vCPUs (default: the plugin's)"`
	Memory   int           `long:"memory" value-name:"MB" description:"memory in MiB (default: the plugin's)"`
	Pull     string        `long:"pull" value-name:"POLICY" default:"if-not-present" description:"when to ask the registry: always, if-not-present or never"`
	Insecure bool          `long:"insecure" description:"the registry speaks plain HTTP or has an unverified certificate"`
	Timeout  time.Duration `long:"timeout" value-name:"DURATION" default:"5m" description:"how long to wait for the VM to run (the build not counted)"`
	Args     struct {
		Image string   `positional-arg-name:"IMAGE" description:"the image: docker://REPO:TAG or REPO:TAG"`
		Args  []string `positional-arg-name:"ARG" description:"after --: the arguments, replacing the image's Cmd"`
	} `positional-args:"yes" required:"1"`
}

func (c *runCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	ports, err := parsePublish(c.Publish)
	if err != nil {
		return err
	}
	env := map[string]string{}
	for _, kv := range c.Env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return usage("-e KEY=VALUE", "-e %q: use KEY=VALUE", kv)
		}
		env[k] = v
	}
	return s.RunImage(ctx, RunRequest{
		Image: api.InstallImageRequest{Image: c.Args.Image, Pull: c.Pull, Insecure: c.Insecure},
		VM: api.CreateVMRequest{Name: c.Name, CPUCores: c.CPU, MemoryMB: c.Memory, Ports: ports,
			Workload: workloadOf(c.Args.Args, env)},
		Wait: WaitOptions{Wait: true, Timeout: c.Timeout},
	})
}

func workloadOf(args []string, env map[string]string) *api.WorkloadOverride {
	if len(args) == 0 && len(env) == 0 {
		return nil
	}
	w := &api.WorkloadOverride{Args: args}
	if len(env) > 0 {
		w.Env = env
	}
	return w
}

// parsePublish reads -p flags; a bad one is a usage error (nothing is sent).
func parsePublish(specs []string) ([]portmap.Mapping, error) {
	ms, err := portmap.ParseAll(specs)
	if err != nil {
		e := apierr.From(err)
		return nil, &apierr.Error{Code: apierr.Usage, Message: "-p: " + e.Message, Details: e.Details, Err: err}
	}
	return ms, nil
}

type vmListCmd struct {
	Plugin     PluginName     `long:"plugin" value-name:"PLUGIN" description:"only VMs of this plugin"`
	Deployment DeploymentName `long:"deployment" value-name:"NAME" description:"only replicas of this deployment"`
	State      string         `long:"state" value-name:"STATE" description:"only VMs in this state (starting, running, paused, stopping, stopped, crashed, failed, deleting)"`
}

func (c *vmListCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.ListVMs(ctx, api.VMFilter{Plugin: string(c.Plugin), Deployment: string(c.Deployment), State: api.VMState(c.State)})
}

type vmShowCmd struct{ vmCmd }

func (c *vmShowCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.ShowVM(ctx, string(c.Args.Name))
}

type vmStartCmd struct {
	waitFlags
	Args vmArg `positional-args:"yes" required:"yes"`
}

func (c *vmStartCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.VMAction(ctx, "start", string(c.Args.Name), c.options())
}

type vmRestartCmd vmStartCmd

func (c *vmRestartCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.VMAction(ctx, "restart", string(c.Args.Name), c.options())
}

type vmStopCmd struct{ vmCmd }

func (c *vmStopCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.VMAction(ctx, "stop", string(c.Args.Name), WaitOptions{})
}

type vmPauseCmd struct{ vmCmd }

func (c *vmPauseCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.VMAction(ctx, "pause", string(c.Args.Name), WaitOptions{})
}

type vmResumeCmd struct{ vmCmd }

func (c *vmResumeCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.VMAction(ctx, "resume", string(c.Args.Name), WaitOptions{})
}

type vmDeleteCmd struct{ vmCmd }

func (c *vmDeleteCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.VMAction(ctx, "delete", string(c.Args.Name), WaitOptions{})
}

type vmLogsCmd struct {
	Follow     bool   `long:"follow" short:"f" description:"keep printing what the guest writes (Ctrl-C ends)"`
	Tail       int    `long:"tail" value-name:"N" description:"start with the last N lines"`
	Since      string `long:"since" value-name:"TIME" description:"workload output from this time on: RFC 3339, or a duration before now (10m)"`
	Timestamps bool   `long:"timestamps" short:"t" description:"prefix each workload line with the time kestrel read it"`
	Stream     string `long:"stream" value-name:"STREAM" choice:"stdout" choice:"stderr" description:"only the workload's stdout or stderr"`
	Console    bool   `long:"console" description:"the serial console instead (kernel, kestrel and workload, as the guest printed them)"`
	Args       vmArg  `positional-args:"yes" required:"yes"`
}

func (c *vmLogsCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	if c.Tail < 0 {
		return apierr.New(apierr.Usage, "--tail must be positive")
	}
	o := api.LogOptions{Follow: c.Follow, Tail: c.Tail, Stream: api.LogWorkload, Timestamps: c.Timestamps}
	if c.Stream != "" {
		o.Stream = c.Stream
	}
	if c.Console {
		if c.Stream != "" || c.Since != "" || c.Timestamps {
			return apierr.New(apierr.Usage, "--console shows the serial console as it is: --stream, --since and --timestamps apply to the workload's output")
		}
		o.Stream = api.LogConsole
	}
	since, err := workloadlog.ParseSince(c.Since, time.Now())
	if err != nil {
		return apierr.New(apierr.Usage, "%s", apierr.From(err).Message)
	}
	o.Since = since
	return s.Logs(ctx, string(c.Args.Name), o)
}

type vmConsoleCmd struct {
	Escape string        `long:"escape" short:"e" value-name:"KEY" default:"^]" description:"detach key: ^X for Ctrl-X, or none"`
	Linger time.Duration `long:"linger" value-name:"DURATION" default:"1s" description:"stdin not a terminal: once it ends, print the guest's output until it is quiet this long (at most 10 times this)"`
	Args   vmArg         `positional-args:"yes" required:"yes"`
}

func (c *vmConsoleCmd) run(ctx context.Context, s *Session, env *cli.Env) error {
	key, on, err := ParseEscape(c.Escape)
	if err != nil {
		return err
	}
	if c.Linger <= 0 {
		return apierr.New(apierr.Usage, "--linger must be positive")
	}
	conn, err := s.Client.Console(ctx, string(c.Args.Name))
	if err != nil {
		return err
	}
	return Console(ctx, conn, env.Stdin, env.Stdout, env.Stderr,
		ConsoleOptions{Name: string(c.Args.Name), Escape: key, NoEscape: !on, Quiet: s.Out.Quiet, Linger: c.Linger})
}

type vmWaitCmd struct {
	State   string        `long:"state" value-name:"STATE" default:"running" description:"state to wait for"`
	Timeout time.Duration `long:"timeout" value-name:"DURATION" default:"2m" description:"give up after this long (TIMEOUT)"`
	Args    vmArg         `positional-args:"yes" required:"yes"`
}

func (c *vmWaitCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.WaitVM(ctx, string(c.Args.Name), WaitOptions{State: api.VMState(c.State), Timeout: c.Timeout})
}

// --- deployments ---

type deploymentCreateCmd struct {
	Plugin     PluginName     `long:"plugin" value-name:"PLUGIN" description:"plugin of the replicas"`
	Publish    []string       `long:"publish" short:"p" value-name:"SPEC" description:"publish a host port, balanced across the healthy replicas: HOSTPORT:GUESTPORT, with HOSTIP: before and /tcp or /udp after if need be (repeatable)"`
	Replicas   *int           `long:"replicas" short:"r" value-name:"N" description:"number of VMs to keep running"`
	CPU        int            `long:"cpu" value-name:"N" description:"vCPUs per replica (default: the plugin's)"`
	Memory     int            `long:"memory" value-name:"MB" description:"memory per replica in MiB (default: the plugin's)"`
	Templates  []string       `long:"volume-template" value-name:"NAME:SIZE:/PATH" description:"give replica i its own volume NAME-i of SIZE mounted at PATH, kept on scale-down and reused on scale-up (repeatable)"`
	FromSnap   string         `long:"from-snapshot" value-name:"SNAPSHOT" description:"start every replica from a snapshot instead of booting it (scale-up restores)"`
	SecretEnv  []string       `long:"secret-env" value-name:"NAME=@FILE" description:"add NAME to every replica's environment, its value read from FILE (NAME=-: stdin), over the agent channel only (repeatable)"`
	SecretFile []string       `long:"secret-file" value-name:"PATH=FILE" description:"write the local FILE to every replica's PATH (mode 0600) before the workload starts, over the agent channel only (repeatable)"`
	Config     flags.Filename `long:"config" short:"c" value-name:"FILE" description:"JSON with any of name, plugin, replicas, resources {cpu_cores, memory_mb}, volume_templates [{name, size, path}], ports, from_snapshot; flags override it"`
	Args       struct {
		Name string `positional-arg-name:"NAME" description:"the deployment's name; its VMs are NAME-1..NAME-N (or \"name\" in --config)"`
	} `positional-args:"yes"`
}

func (c *deploymentCreateCmd) run(ctx context.Context, s *Session, env *cli.Env) error {
	var cfg *DeploymentConfig
	if c.Config != "" {
		var err error
		if cfg, err = ReadDeploymentConfig(string(c.Config), env.Stdin); err != nil {
			return err
		}
	}
	ports, err := parsePublish(c.Publish)
	if err != nil {
		return err
	}
	req, err := DeploymentRequest(cfg, DeploymentFlags{Name: c.Args.Name, Plugin: string(c.Plugin),
		Replicas: c.Replicas, CPU: c.CPU, Memory: c.Memory, VolumeTemplates: c.Templates, Ports: ports, FromSnapshot: c.FromSnap})
	if err != nil {
		return err
	}
	if c.Config == "-" && slices.ContainsFunc(c.SecretEnv, func(s string) bool { return strings.HasSuffix(s, "=-") }) {
		return usage("volar deployments create NAME --config FILE --secret-env NAME=@FILE", "stdin cannot hold both --config and a --secret-env value")
	}
	if req.Inputs, err = ParseSecrets(c.SecretEnv, c.SecretFile, env.Stdin); err != nil {
		return err
	}
	return s.CreateDeployment(ctx, req)
}

type deploymentScaleCmd struct {
	Replicas *int          `long:"replicas" short:"r" value-name:"M" required:"yes" description:"new number of replicas"`
	Args     deploymentArg `positional-args:"yes" required:"yes"`
}

func (c *deploymentScaleCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.ScaleDeployment(ctx, string(c.Args.Name), *c.Replicas)
}

type deploymentUpdateCmd struct {
	Plugin         PluginName    `long:"plugin" value-name:"PLUGIN[@VERSION]" required:"yes" description:"the plugin version to move the replicas to (NAME: its last installed version)"`
	MaxSurge       *int          `long:"max-surge" value-name:"N" description:"replicas allowed above the count during the update (default 1; 0 with volume templates)"`
	MaxUnavailable *int          `long:"max-unavailable" value-name:"N" description:"replicas of the count allowed out of service (default 0, or 1 with --max-surge 0)"`
	Deadline       time.Duration `long:"deadline" value-name:"DURATION" description:"how long a new replica may take to become healthy before the update rolls back (default 5m)"`
	Args           deploymentArg `positional-args:"yes" required:"yes"`
}

func (c *deploymentUpdateCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.UpdateDeployment(ctx, string(c.Args.Name), api.UpdateDeploymentRequest{Plugin: string(c.Plugin),
		MaxSurge: c.MaxSurge, MaxUnavailable: c.MaxUnavailable, DeadlineMS: c.Deadline.Milliseconds()}, c.Deadline)
}

type rolloutStatusCmd struct{ deploymentCmd }

func (c *rolloutStatusCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.RolloutStatus(ctx, string(c.Args.Name))
}

type rolloutUndoCmd struct{ deploymentCmd }

func (c *rolloutUndoCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.UndoRollout(ctx, string(c.Args.Name))
}

type rolloutHistoryCmd struct{ deploymentCmd }

func (c *rolloutHistoryCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.RolloutHistory(ctx, string(c.Args.Name))
}

type deploymentListCmd struct{}

func (deploymentListCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.ListDeployments(ctx)
}

type deploymentShowCmd struct{ deploymentCmd }

func (c *deploymentShowCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.ShowDeployment(ctx, string(c.Args.Name))
}

type deploymentDeleteCmd struct{ deploymentCmd }

func (c *deploymentDeleteCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.DeleteDeployment(ctx, string(c.Args.Name))
}

// --- volumes ---

type volumeCreateCmd struct {
	Size string `long:"size" short:"s" value-name:"SIZE" required:"yes" description:"size: 1GiB, 512MiB, 10G, ... (16MiB at least)"`
	FS   string `long:"fs" value-name:"FS" default:"ext4" description:"filesystem: ext4"`
	Args struct {
		Name string `positional-arg-name:"NAME" description:"the new volume's name (lowercase letters, digits, - and _)"`
	} `positional-args:"yes" required:"yes"`
}

func (c *volumeCreateCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.CreateVolume(ctx, c.Args.Name, c.Size, c.FS)
}

type volumeListCmd struct{}

func (volumeListCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.ListVolumes(ctx)
}

type volumeShowCmd struct{ volumeCmd }

func (c *volumeShowCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.ShowVolume(ctx, string(c.Args.Name))
}

type volumeResizeCmd struct {
	Size string    `long:"size" short:"s" value-name:"SIZE" required:"yes" description:"the new, larger size"`
	Args volumeArg `positional-args:"yes" required:"yes"`
}

func (c *volumeResizeCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.ResizeVolume(ctx, string(c.Args.Name), c.Size)
}

type volumeDeleteCmd struct{ volumeCmd }

func (c *volumeDeleteCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.DeleteVolume(ctx, string(c.Args.Name))
}

// --- tokens ---

type tokenCreateCmd struct {
	Role      string `long:"role" short:"r" value-name:"ROLE" required:"yes" choice:"viewer" choice:"operator" choice:"admin" description:"what the token may do"`
	ExpiresIn string `long:"expires-in" value-name:"DURATION" description:"the token stops working after this long: 90m, 24h, 30d (default: until revoked)"`
	Args      struct {
		Name string `positional-arg-name:"NAME" description:"the token's name, recorded in the audit trail (lowercase letters, digits, - and _)"`
	} `positional-args:"yes" required:"yes"`
}

func (c *tokenCreateCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.CreateToken(ctx, c.Args.Name, c.Role, c.ExpiresIn)
}

type tokenListCmd struct{}

func (tokenListCmd) run(ctx context.Context, s *Session, _ *cli.Env) error { return s.ListTokens(ctx) }

type tokenRevokeCmd struct {
	Args struct {
		Name string `positional-arg-name:"NAME" description:"the token's name"`
	} `positional-args:"yes" required:"yes"`
}

func (c *tokenRevokeCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.RevokeToken(ctx, c.Args.Name)
}

// --- events ---

type eventsCmd struct {
	Since *int64   `long:"since" value-name:"ID" description:"start after event ID (0: the whole retained log); default: new events only"`
	Types []string `long:"type" short:"t" value-name:"TYPE" description:"only events of this type; vm.* matches a prefix (repeatable)"`
}

func (c *eventsCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	since := int64(-1)
	if c.Since != nil {
		if *c.Since < 0 {
			return apierr.New(apierr.Usage, "--since must be an event ID (0 or more)")
		}
		since = *c.Since
	}
	var types []string
	for _, t := range c.Types {
		for _, p := range strings.Split(t, ",") {
			if p = strings.TrimSpace(p); p != "" {
				types = append(types, p)
			}
		}
	}
	return s.Events(ctx, since, types)
}
