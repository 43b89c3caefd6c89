// Command volant-launch builds, runs and controls one microVM.
//
// Synopsis:
//
//	volant-launch argv     [SPEC FLAGS]            print the VMM command line; start nothing
//	volant-launch run      [SPEC FLAGS] [--stop-timeout D] [--ready-timeout D] [--restore SNAPSHOT]
//	volant-launch snapshot --dir RUNDIR | --name NAME --to SNAPSHOT
//	volant-launch stop     --dir RUNDIR | --name NAME [--timeout D]
//	volant-launch status   --dir RUNDIR | --name NAME
//	volant-launch pause    --dir RUNDIR | --name NAME
//	volant-launch resume   --dir RUNDIR | --name NAME
//	volant-launch counters --dir RUNDIR | --name NAME
//	volant-launch exec     --dir RUNDIR | --name NAME [-i] [-t] [-e K=V]... [-w DIR] [-u UID[:GID]]
//	                       [--timeout D] [--max-output BYTES] -- CMD [ARGS...]
//	volant-launch cp       --dir RUNDIR | --name NAME SRC DST   (one of them :PATH or NAME:PATH in the guest)
//	volant-launch logs     --dir RUNDIR | --name NAME [-f] [--since T] [--tail N] [--timestamps] [--stream stdout|stderr] [--json]
//	volant-launch backends
//	volant-launch version
//
// --dir RUNDIR may also be spelt --run-dir RUNDIR, as run spells it.
//
// SPEC FLAGS: --name NAME --manifest FILE --kernel DIR|VMLINUX|BZIMAGE
// --vmm auto|cloud-hypervisor|qemu --accel auto|kvm|tcg --machine microvm|pc
// --cpus N --memory MIB --run-dir DIR --tap TAP --mac MAC --serial-log FILE
// --boot-initramfs FILE --kestrel FILE --boot-layer auto|always|never
// --api-host HOST --api-port N --dns IP (repeatable) --kernel-arg WORD
// (repeatable) --debug --verify cached|always --disk-mode copy|direct
// --volume FILE:/PATH[:ro] (repeatable).
//
// Writable disks (a rootfs plugin's root, manifest disks not marked
// readonly) boot from the VM's own copy in <state>/vms/<name>/disks/, made
// from the verified artifact on the first start and kept across restarts,
// so replicas of one plugin never share an image and the guest's writes
// persist; --disk-mode direct boots the artifact itself.
//
// --volume FILE:/PATH attaches a disk image holding a filesystem (ext4,
// xfs, btrfs, squashfs; make one with mkfs.ext4) after every other disk,
// and kestrel mounts it at PATH before the workload starts (:ro
// read-only). The guest finds it by its disk serial, volant-vol<i>, so it
// is never taken for the root or a manifest disk. The image is used in
// place: one VM at a time should write to it (volantd's volumes enforce
// that; a pipeline must).
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
//	 "kernel_args":[".."],"debug":false,"verify":"cached","disk_mode":"copy","stop_timeout_ms":10000,
//	 "volumes":[{"file":"data.img","format":"raw","path":"/data","readonly":false}]}
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
//	          planned anyway, for a host where it can, and "warnings" says why `run` would refuse here;
//	          it writes no cache the plan does not name (the host's TSC rate is read, not remembered),
//	          and warns when the command line carries this host's TSC rate (TCG microvm: right only here)
//	run       {"kind":"launch.run","name","vmm","pid","started_at","ended_at","ended":"poweroff|stopped","stop_method"}
//	          printed when the VM has ended; the VMM runs in the foreground meanwhile
//	stop      {"kind":"launch.stop","name","run_dir","method":"power_button|hard_stop|kill|already_exited|not_running","elapsed_ms"}
//	status    {"kind":"launch.status","name","run_dir","running","state","vmm","supervisor":{pid,start_time,boot_id,alive},
//	           "vmm_process":{...},"socket","console_socket","serial_log","started_at"}
//	pause, resume   the status after the change (kinds launch.pause, launch.resume)
//	snapshot  {"kind":"launch.snapshot","vm","vmm","accel","machine","cpus","memory_mb","kernel",
//	           "disks":[{"role","serial","readonly","file","artifact","method","source","mount_path","allocated_bytes"}],
//	           "state_bytes","disk_bytes","paused_ms","created_at"}  (also written as SNAPSHOT/snapshot.json)
//	counters  {"kind":"launch.counters","name","run_dir","vmm","counters":{"<device>":{"<counter>":N,..},..}}
//	          the hypervisor's own per device (Cloud Hypervisor: GET /vm.counters; QEMU: per drive
//	          read_bytes, write_bytes, read_ops, write_ops), plus "tap:<tap>" per NIC whose tap is
//	          visible in this network namespace: rx_bytes, rx_frames, tx_bytes, tx_frames as the
//	          guest sees them
//	exec      {"kind":"launch.exec","exit_code","signal","stdout","stderr","stdout_truncated","stderr_truncated","duration_ms"}
//	          without -i/-t: the command ran to its end (each stream capped at --max-output, 1 MiB);
//	          with -i or -t the command's streams are ours and so is its exit status (125: it could
//	          not run, 126: not executable, 127: not found; the error object is on stderr).
//	          Without -t, SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are forwarded to
//	          the command's process group in the guest once it runs, and its resulting status is
//	          the result (130 after an untrapped SIGINT); the third SIGINT/SIGTERM gives up
//	          (CANCELED: the command is hung up, then killed). With -t Ctrl-C is a key.
//	cp        {"kind":"launch.cp","direction":"in|out","files","bytes","skipped"}
//	logs      the workload's output as it was written (not JSON; --json: one entry per line),
//	          from <data dir>/vms/<name>/workload.log, kept after the VM stopped
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
// `snapshot` waits (up to 30 s) for a running guest's agent to answer over
// the agent channel — a guest whose agent is not up is still booting, and
// every VM restored from it would finish that boot first — then pauses the
// VM, copies each of its writable disks and
// volumes as they are into SNAPSHOT/disks/ (a reflink where the filesystem
// shares blocks, else the disk's data with its holes kept: "method" says
// which), saves its memory and device state into SNAPSHOT/state/ (QEMU:
// migration to a file; Cloud Hypervisor: vm.snapshot), and resumes it. The
// VM runs on. `run --restore SNAPSHOT` starts a VM from it instead of
// booting: give the same manifest, kernel, CPUs and memory, and this VM's
// own name, tap and lease. The VM's disks are its own images of the
// snapshot's (reflinks, else qcow2 overlays on them, in
// <data dir>/vms/<name>/disks/), so the snapshot is never written and can
// start any number of VMs. Its taps stay down until kestrel, told over the
// agent channel, took the new VM's identity: name, MAC, address, clock,
// fresh randomness (docs/snapshots.md says what the workload sees).
//
// Environment (lib/layout): VOLANT_KERNEL_DIR (default /var/lib/volant/kernel),
// VOLANT_KESTREL (default: a kestrel next to this binary), VOLANT_RUN_ROOT
// (default /run/volant/vms), VOLANT_DATA_DIR (default /var/lib/volant; the
// old name VOLANT_STATE_DIR is still read when it is unset),
// VOLANT_CACHE_DIR (default <data dir>/cache), NOTIFY_SOCKET (systemd).
// The VMM's jail (lib/vmm/jail; docs/volant-launch.md "The jail"):
// VOLANT_VMM_UIDS (FIRST-LAST or FIRST+COUNT, default 1073741824+65536),
// VOLANT_VMM_CGROUP (parent cgroup, default volant; "unit": the
// supervisor's own, whose limits systemd holds), VOLANT_VMM_OVERHEAD_MB
// (memory beyond the guest's, default 160 under TCG, 96 otherwise),
// VOLANT_INSECURE_VMM=1 (as --insecure-vmm: the VMM runs as root, without
// a jail; logged, and the status says "jail":{"insecure":true}).
//
// Errors (stderr, one JSON object {"code","message","details"}; exit status):
//
//	USAGE              2  bad flags, no manifest, no name
//	INVALID_INPUT      3  malformed spec, bad lease, run dir too long for its sockets, a multicast MAC,
//	                      a MAC or DNS for a VM without a network (no tap, no lease, or network mode none),
//	                      cpus or memory outside the manifest's bounds (1-64, 64-262144 MiB)
//	INVALID_MANIFEST   3  the manifest failed validation
//	CMDLINE_TOO_LONG   3  the kernel command line cannot fit even without the manifest
//	NOT_FOUND          4  kernel, artifact or tap missing; status of a VM that is not there
//	CONFLICT           5  the VM already runs (its run dir is locked); pause, counters or snapshot of a stopped VM;
//	                      snapshot --to that exists
//	NOT_SUPPORTED      7  the backend or host cannot do it (TCG on Cloud Hypervisor, KVM on a PVM host, remote artifacts)
//	CHECKSUM_MISMATCH  8  an artifact's sha256 differs from the manifest's; nothing was started
//	                      (artifacts are hashed unless this host already verified the same file
//	                      version — device, inode, size, mtime, ctime; --verify always hashes every time)
//	UNAVAILABLE        9  no usable hypervisor; the VMM exited early or unexpectedly; the guest panicked;
//	                      the VMM was killed at its memory limit (details "reason":"oom")
//	ISOLATION_UNAVAILABLE 9  the VMM's jail cannot be set up here (no cgroup controller, a kernel or
//	                      artifact others cannot read, every uid in use); nothing was started
//	TIMEOUT           11  the VMM never answered on its control socket
//	CANCELED          12  interrupted (SIGINT, SIGTERM) while preparing (hashing stops at once)
package main

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/layout"
	"github.com/volantvm/volant/lib/runner"
	"github.com/volantvm/volant/lib/vmm"
)

func main() { cli.Main(run) }

func run(ctx context.Context, env *cli.Env) error {
	return cli.Run(ctx, env, "volant-launch", &options{})
}

type options struct {
	Argv     argvCmd            `command:"argv" description:"Print the VMM command line for a VM; start nothing"`
	Run      runCmd             `command:"run" description:"Run a VM in the foreground until it ends"`
	Stop     stopCmd            `command:"stop" description:"Stop a VM (power button, hard stop, kill); succeeds if it is not running"`
	Status   statusCmd          `command:"status" description:"Report a VM's processes and state"`
	Pause    pauseCmd           `command:"pause" description:"Pause a VM's vCPUs"`
	Resume   resumeCmd          `command:"resume" description:"Resume a paused VM"`
	Counters countersCmd        `command:"counters" description:"Report a VM's I/O counters"`
	Snapshot snapshotCmd        `command:"snapshot" description:"Save a running VM (memory, devices, disks) into a directory; the VM runs on"`
	Exec     execCmd            `command:"exec" description:"Run a command in a running VM over its agent channel"`
	Cp       cpCmd              `command:"cp" description:"Copy files into or out of a running VM (tar over the agent channel)"`
	Logs     logsCmd            `command:"logs" description:"Print a VM's workload output (stdout and stderr, kept on the host)"`
	Backends backendsCmd        `command:"backends" description:"List the hypervisor backends, usable here or not, and their capabilities"`
	Version  cli.VersionCommand `command:"version" description:"Print the build version"`
}

// libOptions are the launcher's options from the environment (lib/runner,
// the inverse of what volantd passes a detached run); logs go to stderr
// for the verbs that run things.
func libOptions(env *cli.Env, logs bool) launch.Options {
	o := runner.OptionsFromEnv(env.Env)
	if logs {
		o.Logger = env.Logger(false)
	}
	return o
}

type argvCmd struct{ specFlags }

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

func (c *argvCmd) Execute(ctx context.Context, env *cli.Env) error {
	s, err := c.spec(env)
	if err != nil {
		return err
	}
	p, err := launch.DryRun(ctx, s, libOptions(env, false))
	if err != nil {
		return err
	}
	return cli.WriteResult(env, "launch.argv", argvResult{
		VMM: p.VMM, Accel: p.Accel, Argv: p.Argv, Cmdline: p.Cmdline, RunDir: p.RunDir,
		Initrd: p.Initrd, Artifacts: p.Artifacts, Notes: p.Notes, Warnings: p.Warnings,
	})
}

type runCmd struct {
	specFlags
	ReadyTimeout time.Duration `long:"ready-timeout" default:"30s" description:"how long the VMM gets to answer on its socket"`
	Restore      string        `long:"restore" value-name:"SNAPSHOT" description:"run the VM from a snapshot directory (volant-launch snapshot) instead of booting it"`
	InsecureVMM  bool          `long:"insecure-vmm" description:"run the hypervisor as root without its jail (own uid, mount namespace, cgroup); logged and shown in status"`
}

func (c *runCmd) Execute(ctx context.Context, env *cli.Env) error {
	s, err := c.spec(env)
	if err != nil {
		return err
	}
	if c.Restore != "" {
		if err := restoreSpec(ctx, env, &s, c.Restore); err != nil {
			return err
		}
	}
	cli.Override(&s.InsecureVMM, c.InsecureVMM)
	res, err := runner.Foreground(ctx, s, libOptions(env, true), launch.RunOptions{
		Notify:       func(state string) { daemon.SdNotify(false, state) },
		VMMOutput:    env.Stderr,
		ReadyTimeout: c.ReadyTimeout,
	})
	if err != nil {
		return err
	}
	return cli.WriteResult(env, "launch.run", res)
}

// restoreSpec makes s run from the snapshot in dir (launch.FromSnapshot),
// with its own images of the snapshot's disks in its data directory.
func restoreSpec(ctx context.Context, env *cli.Env, s *launch.Spec, dir string) error {
	name := s.VMName()
	if name == "" {
		return apierr.New(apierr.Usage, "--restore needs the VM's name: --name, \"name\", or a piped lease")
	}
	o := libOptions(env, false)
	return launch.FromSnapshot(ctx, s, dir, filepath.Join(layout.Dirs{Data: o.StateDir}.VMDir(name), layout.DisksName))
}

type snapshotCmd struct {
	dirFlags
	To string `long:"to" value-name:"DIR" required:"yes" description:"the new snapshot's directory (must not exist)"`
}

func (c *snapshotCmd) Execute(ctx context.Context, env *cli.Env) error {
	o := libOptions(env, true)
	dir, err := c.dirFlags.runDir(o)
	if err != nil {
		return err
	}
	if _, err := os.Stat(c.To); err == nil {
		return apierr.New(apierr.Conflict, "%s exists already", c.To).With("to", c.To)
	}
	info, err := launch.Snapshot(ctx, dir, c.To, o)
	if err == nil {
		err = launch.WriteSnapshotInfo(c.To, info)
	}
	if err != nil {
		os.RemoveAll(c.To)
		return err
	}
	return cli.WriteResult(env, "launch.snapshot", info)
}

type stopCmd struct {
	dirFlags
	Timeout time.Duration `long:"timeout" default:"10s" description:"time the guest gets to power off before a hard stop"`
}

func (c *stopCmd) Execute(ctx context.Context, env *cli.Env) error {
	o := libOptions(env, true)
	return act(ctx, env, o, c.dirFlags, "launch.stop", func(ctx context.Context, dir string, o launch.Options) (*launch.StopReport, error) {
		return launch.Stop(ctx, dir, c.Timeout, o)
	})
}

type statusCmd struct{ dirFlags }

func (c *statusCmd) Execute(ctx context.Context, env *cli.Env) error {
	return act(ctx, env, libOptions(env, false), c.dirFlags, "launch.status", launch.Inspect)
}

type pauseCmd struct{ dirFlags }

func (c *pauseCmd) Execute(ctx context.Context, env *cli.Env) error {
	return act(ctx, env, libOptions(env, false), c.dirFlags, "launch.pause", launch.Pause)
}

type resumeCmd struct{ dirFlags }

func (c *resumeCmd) Execute(ctx context.Context, env *cli.Env) error {
	return act(ctx, env, libOptions(env, false), c.dirFlags, "launch.resume", launch.Resume)
}

type countersCmd struct{ dirFlags }

func (c *countersCmd) Execute(ctx context.Context, env *cli.Env) error {
	return act(ctx, env, libOptions(env, false), c.dirFlags, "launch.counters", launch.Counters)
}

// act runs op on the run directory the flags name and writes its answer.
func act[T any](ctx context.Context, env *cli.Env, o launch.Options, f dirFlags, kind string, op func(context.Context, string, launch.Options) (T, error)) error {
	dir, err := f.runDir(o)
	if err != nil {
		return err
	}
	res, err := op(ctx, dir, o)
	if err != nil {
		return err
	}
	return cli.WriteResult(env, kind, res)
}

type dirFlags struct {
	Dir    string `long:"dir" description:"the VM's run directory"`
	RunDir string `long:"run-dir" description:"the same as --dir (as volant-launch run names it)"`
	Name   string `long:"name" description:"the VM's name (run directory $VOLANT_RUN_ROOT/NAME)"`
}

// runDir is the run directory the flags name: --dir, or --run-dir (the
// name run gives the same directory), or $VOLANT_RUN_ROOT/NAME.
func (f dirFlags) runDir(o launch.Options) (string, error) {
	dir := f.Dir
	if f.RunDir != "" {
		if dir != "" && dir != f.RunDir {
			return "", apierr.New(apierr.Usage, "--dir and --run-dir name the same thing: give one")
		}
		dir = f.RunDir
	}
	return launch.RunDirOf(dir, f.Name, o)
}

type backendsCmd struct{}

type backendsResult struct {
	Default  string                 `json:"default"`
	Backends []launch.BackendReport `json:"backends"`
}

func (backendsCmd) Execute(ctx context.Context, env *cli.Env) error {
	reports, def := launch.Backends(ctx, libOptions(env, false))
	return cli.WriteResult(env, "launch.backends", backendsResult{Default: def, Backends: reports})
}

// specFlags fill or override the fields of the spec read from stdin.
type specFlags struct {
	Name          string        `long:"name" description:"VM name (default: the piped lease's vm)"`
	Manifest      string        `long:"manifest" description:"plugin manifest file"`
	Kernel        string        `long:"kernel" description:"kernel directory, vmlinux or bzImage (default $VOLANT_KERNEL_DIR)"`
	VMM           string        `long:"vmm" description:"auto, cloud-hypervisor or qemu"`
	Accel         vmm.Accel     `long:"accel" description:"auto, kvm or tcg"`
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
	Volumes       []string      `long:"volume" value-name:"FILE:/PATH[:ro]" description:"disk image holding a filesystem, mounted by kestrel at PATH before the workload starts (repeatable)"`
}

// spec reads the JSON spec from stdin (if any) and lets the flags override it.
func (f *specFlags) spec(env *cli.Env) (launch.Spec, error) {
	var s launch.Spec
	if _, err := cli.ReadRequest(env, &s); err != nil {
		return s, err
	}
	if f.CPUs < 0 || f.Memory < 0 || f.APIPort < 0 {
		return s, apierr.New(apierr.Usage, "--cpus, --memory and --api-port must be positive")
	}
	if f.Manifest != "" {
		s.ManifestPath, s.Manifest = f.Manifest, nil
	}
	for dst, flag := range map[*string]string{
		&s.Name: f.Name, &s.Kernel: f.Kernel, &s.VMM: f.VMM, &s.Machine: f.Machine, &s.RunDir: f.RunDir,
		&s.Tap: f.Tap, &s.MAC: f.MAC, &s.SerialLog: f.SerialLog, &s.BootInitramfs: f.BootInitramfs,
		&s.Kestrel: f.Kestrel, &s.BootLayer: f.BootLayer, &s.Verify: f.Verify, &s.DiskMode: f.DiskMode, &s.APIHost: f.APIHost,
	} {
		cli.Override(dst, flag)
	}
	cli.Override(&s.Accel, f.Accel)
	cli.Override(&s.CPUs, f.CPUs)
	cli.Override(&s.MemoryMB, f.Memory)
	cli.Override(&s.APIPort, f.APIPort)
	cli.Override(&s.StopTimeoutMS, int(f.StopTimeout/time.Millisecond))
	cli.Override(&s.Debug, f.Debug)
	if len(f.DNS) > 0 {
		s.DNS = f.DNS
	}
	s.KernelArgs = append(s.KernelArgs, f.KernelArgs...)
	for _, v := range f.Volumes {
		vol, err := launch.ParseVolumeFlag(v)
		if err != nil {
			return s, err
		}
		if vol.File, err = filepath.Abs(vol.File); err != nil {
			return s, err
		}
		s.Volumes = append(s.Volumes, vol)
	}
	return s, nil
}
