// Command volant-launch builds, runs and controls one microVM.
//
// Synopsis:
//
//	volant-launch argv     [SPEC FLAGS]            print the VMM command line; start nothing
//	volant-launch run      [SPEC FLAGS] [--stop-timeout D] [--ready-timeout D]
//	volant-launch stop     --dir RUNDIR | --name NAME [--timeout D]
//	volant-launch status   --dir RUNDIR | --name NAME
//	volant-launch pause    --dir RUNDIR | --name NAME
//	volant-launch resume   --dir RUNDIR | --name NAME
//	volant-launch counters --dir RUNDIR | --name NAME
//	volant-launch backends
//	volant-launch version
//
// SPEC FLAGS: --name NAME --manifest FILE --kernel DIR|VMLINUX|BZIMAGE
// --vmm auto|cloud-hypervisor|qemu --accel auto|kvm|tcg --machine microvm|pc
// --cpus N --memory MIB --run-dir DIR --tap TAP --mac MAC --serial-log FILE
// --boot-initramfs FILE --kestrel FILE --boot-layer auto|always|never
// --api-host HOST --api-port N --dns IP (repeatable) --kernel-arg WORD
// (repeatable) --debug --verify cached|always --disk-mode copy|direct.
//
// Writable disks (a rootfs plugin's root, manifest disks not marked
// readonly) boot from the VM's own copy in <state>/vms/<name>/disks/, made
// from the verified artifact on the first start and kept across restarts,
// so replicas of one plugin never share an image and the guest's writes
// persist; --disk-mode direct boots the artifact itself.
//
// Stdin (argv, run): one JSON request, the VM spec (lib/launch.Spec; flags
// override its fields):
//
//	{"name":"web1","manifest":{...} | "manifest_path":"m.json","kernel":"/var/lib/volant/kernel",
//	 "vmm":"auto","accel":"auto","machine":"microvm","cpus":1,"memory_mb":128,
//	 "disks":[{"path":..,"format":"raw","readonly":false}],"tap":"vt-web1","mac":"02:..",
//	 "lease":{"vm","ip","prefix","gateway","mac"},"net_tap":{"tap","lease":{...}},
//	 "dns":["1.1.1.1"],"api_host":"192.168.127.1","api_port":8080,
//	 "serial_log":"..","run_dir":"..","boot_initramfs":"..","kestrel":"..","boot_layer":"auto",
//	 "kernel_args":[".."],"debug":false,"verify":"cached","disk_mode":"copy","stop_timeout_ms":10000}
//
// or the output of another command: `volant-ipam lease` (kind ipam.lease,
// becomes "lease") or `volant-net tap add` (kind net.tap, becomes "net_tap"):
//
//	volant-ipam lease --vm web1 | volant-launch argv --manifest m.json --kernel K
//
// Stdout: one JSON object.
//
//	argv      {"kind":"launch.argv","vmm","accel","argv":[..],"cmdline","run_dir","initrd":{"path","layers"},
//	           "artifacts":[{"role","path","sha256","verified"}],"notes":[..],"warnings":[..]}
//	          a dry run: a backend that cannot run on this host (its binary missing, no KVM) is
//	          planned anyway, for a host where it can, and "warnings" says why `run` would refuse here
//	run       {"kind":"launch.run","name","vmm","pid","started_at","ended_at","ended":"poweroff|stopped","stop_method"}
//	          printed when the VM has ended; the VMM runs in the foreground meanwhile
//	stop      {"kind":"launch.stop","name","run_dir","method":"power_button|hard_stop|kill|already_exited|not_running","elapsed_ms"}
//	status    {"kind":"launch.status","name","run_dir","running","state","vmm","supervisor":{pid,start_time,boot_id,alive},
//	           "vmm_process":{...},"socket","console_socket","serial_log","started_at"}
//	pause, resume   the status after the change (kinds launch.pause, launch.resume)
//	counters  {"kind":"launch.counters","name","run_dir","vmm","counters":{"<device>":{"<counter>":N,..},..}}
//	          the hypervisor's own per device (Cloud Hypervisor: GET /vm.counters; QEMU: per drive
//	          read_bytes, write_bytes, read_ops, write_ops), plus "tap:<tap>" per NIC whose tap is
//	          visible in this network namespace: rx_bytes, rx_frames, tx_bytes, tx_frames as the
//	          guest sees them
//	backends  {"kind":"launch.backends","default":"qemu","backends":[{"name","usable","binary","accel","reason","capabilities"}]}
//
// `run` is for systemd (Type=notify: READY=1 once the VMM answers on its
// control socket) and for volantd, which starts one `run` per VM. It writes
// the guest console to the serial log and serves it on <run dir>/console.sock
// (for Cloud Hypervisor by relaying CH's serial socket), logs to stderr, and on SIGTERM or SIGINT stops
// the VM: ACPI power button, then after --stop-timeout (default 10s) a hard
// stop, then SIGKILL. It exits when the VM does; the VMM never outlives it
// (also not a kill -9). `stop` does the same escalation from another process
// and succeeds when the VM is already gone. When `run` fails, the error
// object it prints is also written to <data dir>/vms/<name>/last-error.json
// ({"at","error":{"code","message","details"}}; temp file, fsync, rename),
// where volantd reads why a VM's run ended; a run that ends well removes
// it. A run refused because the VM already runs (CONFLICT) leaves it alone.
//
// Environment (lib/layout): VOLANT_KERNEL_DIR (default /var/lib/volant/kernel),
// VOLANT_KESTREL (default: a kestrel next to this binary), VOLANT_RUN_ROOT
// (default /run/volant/vms), VOLANT_DATA_DIR (default /var/lib/volant; the
// old name VOLANT_STATE_DIR is still read when it is unset),
// VOLANT_CACHE_DIR (default <data dir>/cache), NOTIFY_SOCKET (systemd).
//
// Errors (stderr, one JSON object {"code","message","details"}; exit status):
//
//	USAGE              2  bad flags, no manifest, no name
//	INVALID_INPUT      3  malformed spec, bad lease, run dir too long for its sockets, a multicast MAC,
//	                      cpus or memory outside the manifest's bounds (1-64, 64-262144 MiB)
//	INVALID_MANIFEST   3  the manifest failed validation
//	CMDLINE_TOO_LONG   3  the kernel command line cannot fit even without the manifest
//	NOT_FOUND          4  kernel, artifact or tap missing; status of a VM that is not there
//	CONFLICT           5  the VM already runs (its run dir is locked); pause or counters of a stopped VM
//	NOT_SUPPORTED      7  the backend or host cannot do it (TCG on Cloud Hypervisor, KVM on a PVM host, remote artifacts)
//	CHECKSUM_MISMATCH  8  an artifact's sha256 differs from the manifest's; nothing was started
//	                      (artifacts are hashed unless this host already verified the same file
//	                      version — device, inode, size, mtime, ctime; --verify always hashes every time)
//	UNAVAILABLE        9  no usable hypervisor; the VMM exited early or unexpectedly; the guest panicked
//	TIMEOUT           11  the VMM never answered on its control socket
//	CANCELED          12  interrupted (SIGINT, SIGTERM) while preparing (hashing stops at once)
package main

import (
	"context"
	"path/filepath"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/buildinfo"
	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/runner"
	"github.com/volantvm/volant/lib/vmm"
)

func main() { cli.Main(run) }

type specFlags struct {
	Name          string        `long:"name" description:"VM name (default: the piped lease's vm)"`
	Manifest      string        `long:"manifest" description:"plugin manifest file"`
	Kernel        string        `long:"kernel" description:"kernel directory, vmlinux or bzImage (default $VOLANT_KERNEL_DIR)"`
	VMM           string        `long:"vmm" description:"auto, cloud-hypervisor or qemu"`
	Accel         string        `long:"accel" description:"auto, kvm or tcg"`
	Machine       string        `long:"machine" description:"QEMU machine: microvm or pc"`
	CPUs          int           `long:"cpus" description:"vCPUs (default: the manifest's)"`
	Memory        int           `long:"memory" description:"memory in MiB (default: the manifest's)"`
	RunDir        string        `long:"run-dir" description:"run directory (default $VOLANT_RUN_ROOT/NAME)"`
	Tap           string        `long:"tap" description:"host tap device of the NIC"`
	MAC           string        `long:"mac" description:"guest MAC address"`
	SerialLog     string        `long:"serial-log" description:"guest console log file"`
	BootInitramfs string        `long:"boot-initramfs" description:"prebuilt boot initramfs (kestrel + modules)"`
	Kestrel       string        `long:"kestrel" description:"kestrel binary for a built boot initramfs"`
	BootLayer     string        `long:"boot-layer" description:"auto, always or never: the boot image under an initramfs plugin"`
	APIHost       string        `long:"api-host" description:"control-plane host kestrel reports to"`
	APIPort       int           `long:"api-port" description:"control-plane port"`
	DNS           []string      `long:"dns" description:"guest resolver (repeatable)"`
	KernelArgs    []string      `long:"kernel-arg" description:"extra kernel command-line word (repeatable)"`
	Debug         bool          `long:"debug" description:"verbose guest boot and agent"`
	Verify        string        `long:"verify" description:"cached (default: hash unless this file version was verified here) or always"`
	DiskMode      string        `long:"disk-mode" description:"copy (default: the VM boots its own copy of writable disks, kept across restarts) or direct"`
	StopTimeout   time.Duration `long:"stop-timeout" description:"run: time the guest gets to power off after the power button (default 10s)"`
}

type dirFlags struct {
	Dir  string `long:"dir" description:"the VM's run directory"`
	Name string `long:"name" description:"the VM's name (run directory $VOLANT_RUN_ROOT/NAME)"`
}

type options struct {
	Argv specFlags `command:"argv" description:"Print the VMM command line for a VM; start nothing"`
	Run  struct {
		specFlags
		ReadyTimeout time.Duration `long:"ready-timeout" default:"30s" description:"how long the VMM gets to answer on its socket"`
	} `command:"run" description:"Run a VM in the foreground until it ends"`
	Stop struct {
		dirFlags
		Timeout time.Duration `long:"timeout" default:"10s" description:"time the guest gets to power off before a hard stop"`
	} `command:"stop" description:"Stop a VM (power button, hard stop, kill); succeeds if it is not running"`
	Status   dirFlags `command:"status" description:"Report a VM's processes and state"`
	Pause    dirFlags `command:"pause" description:"Pause a VM's vCPUs"`
	Resume   dirFlags `command:"resume" description:"Resume a paused VM"`
	Counters dirFlags `command:"counters" description:"Report a VM's I/O counters"`
	Backends struct{} `command:"backends" description:"List the hypervisor backends, usable here or not, and their capabilities"`
	Version  struct{} `command:"version" description:"Print the build version"`
}

func run(ctx context.Context, env *cli.Env) error {
	var o options
	verb, args, err := cli.Parse(env, "volant-launch", &o)
	if err != nil {
		return err
	}
	if len(args) > 0 {
		return apierr.New(apierr.Usage, "unexpected argument %q", args[0])
	}
	lo := libOptions(env, false)
	switch verb {
	case "argv":
		s, err := readSpec(env, o.Argv)
		if err != nil {
			return err
		}
		p, err := launch.DryRun(ctx, s, lo)
		if err != nil {
			return err
		}
		return cli.WriteResult(env, "launch.argv", argvResult{
			VMM: p.VMM, Accel: p.Accel, Argv: p.Argv, Cmdline: p.Cmdline, RunDir: p.RunDir,
			Initrd: p.Initrd, Artifacts: p.Artifacts, Notes: p.Notes, Warnings: p.Warnings,
		})
	case "run":
		lo = libOptions(env, true)
		s, err := readSpec(env, o.Run.specFlags)
		if err != nil {
			return err
		}
		res, err := runner.Foreground(ctx, s, lo, launch.RunOptions{
			Notify:       func(state string) { daemon.SdNotify(false, state) },
			VMMOutput:    env.Stderr,
			ReadyTimeout: o.Run.ReadyTimeout,
		})
		if err != nil {
			return err
		}
		return cli.WriteResult(env, "launch.run", res)
	case "stop":
		dir, err := runDir(o.Stop.dirFlags, lo)
		if err != nil {
			return err
		}
		rep, err := launch.Stop(ctx, dir, o.Stop.Timeout, libOptions(env, true))
		if err != nil {
			return err
		}
		return cli.WriteResult(env, "launch.stop", rep)
	case "status", "pause", "resume":
		f := map[string]dirFlags{"status": o.Status, "pause": o.Pause, "resume": o.Resume}[verb]
		dir, err := runDir(f, lo)
		if err != nil {
			return err
		}
		op := map[string]func(context.Context, string, launch.Options) (*launch.Status, error){
			"status": launch.Inspect, "pause": launch.Pause, "resume": launch.Resume,
		}[verb]
		st, err := op(ctx, dir, lo)
		if err != nil {
			return err
		}
		return cli.WriteResult(env, "launch."+verb, st)
	case "counters":
		dir, err := runDir(o.Counters, lo)
		if err != nil {
			return err
		}
		rep, err := launch.Counters(ctx, dir, lo)
		if err != nil {
			return err
		}
		return cli.WriteResult(env, "launch.counters", rep)
	case "backends":
		reports, def := launch.Backends(ctx, lo)
		return cli.WriteResult(env, "launch.backends", backendsResult{Default: def, Backends: reports})
	case "version":
		return cli.WriteResult(env, "launch.version", struct {
			Build string `json:"build"`
		}{buildinfo.String()})
	}
	return apierr.New(apierr.Usage, "missing verb; run volant-launch --help")
}

type argvResult struct {
	VMM       string             `json:"vmm"`
	Accel     vmm.Accel          `json:"accel"`
	Argv      []string           `json:"argv"`
	Cmdline   string             `json:"cmdline"`
	RunDir    string             `json:"run_dir"`
	Initrd    *launch.InitrdPlan `json:"initrd,omitempty"`
	Artifacts []launch.Artifact  `json:"artifacts"`
	Notes     []string           `json:"notes,omitempty"`
	Warnings  []string           `json:"warnings,omitempty"`
}

type backendsResult struct {
	Default  string                 `json:"default"`
	Backends []launch.BackendReport `json:"backends"`
}

// libOptions maps the environment onto the library's options; logs go to
// stderr for the verbs that run things.
func libOptions(env *cli.Env, logs bool) launch.Options {
	o := runner.OptionsFromEnv(env.Getenv)
	if logs {
		o.Logger = env.Logger(false)
	}
	return o
}

func runDir(f dirFlags, o launch.Options) (string, error) {
	switch {
	case f.Dir != "" && f.Name != "":
		return "", apierr.New(apierr.Usage, "give --dir or --name, not both")
	case f.Dir != "":
		return filepath.Abs(f.Dir)
	case f.Name != "":
		if !launch.ValidName(f.Name) {
			return "", apierr.New(apierr.InvalidInput, "VM name %q is not valid", f.Name)
		}
		return launch.RunDirFor(f.Name, o), nil
	}
	return "", apierr.New(apierr.Usage, "which VM? give --dir RUNDIR or --name NAME")
}

// readSpec reads the JSON spec from stdin (if any) and lets flags override it.
func readSpec(env *cli.Env, f specFlags) (launch.Spec, error) {
	var s launch.Spec
	if _, err := cli.ReadRequest(env, &s); err != nil {
		return s, err
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&s.Name, f.Name)
	if f.Manifest != "" {
		s.ManifestPath, s.Manifest = f.Manifest, nil
	}
	set(&s.Kernel, f.Kernel)
	set(&s.VMM, f.VMM)
	if f.Accel != "" {
		s.Accel = vmm.Accel(f.Accel)
	}
	set(&s.Machine, f.Machine)
	if f.CPUs != 0 {
		s.CPUs = f.CPUs
	}
	if f.Memory != 0 {
		s.MemoryMB = f.Memory
	}
	set(&s.RunDir, f.RunDir)
	set(&s.Tap, f.Tap)
	set(&s.MAC, f.MAC)
	set(&s.SerialLog, f.SerialLog)
	set(&s.BootInitramfs, f.BootInitramfs)
	set(&s.Kestrel, f.Kestrel)
	set(&s.BootLayer, f.BootLayer)
	set(&s.Verify, f.Verify)
	set(&s.DiskMode, f.DiskMode)
	set(&s.APIHost, f.APIHost)
	if f.APIPort != 0 {
		s.APIPort = f.APIPort
	}
	if len(f.DNS) > 0 {
		s.DNS = f.DNS
	}
	s.KernelArgs = append(s.KernelArgs, f.KernelArgs...)
	s.Debug = s.Debug || f.Debug
	if f.StopTimeout > 0 {
		s.StopTimeoutMS = int(f.StopTimeout / time.Millisecond)
	}
	if f.CPUs < 0 || f.Memory < 0 || f.APIPort < 0 {
		return s, apierr.New(apierr.Usage, "--cpus, --memory and --api-port must be positive")
	}
	return s, nil
}
