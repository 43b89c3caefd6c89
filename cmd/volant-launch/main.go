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
// every VM restored from it would finish that boot first — then has the
// VM's supervisor hold the agent channel still (no frame begins, the one
// under way is finished and read by the guest; up to 2 s, then it goes on
// and logs it, until the VM runs again), so that the VM is not saved with
// a frame of the channel half received; then pauses the
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

	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/launch/launchcli"
)

func main() { cli.Main(run) }

// run is volant-launch's whole run: lib/launch/launchcli holds its verbs.
func run(ctx context.Context, env *cli.Env) error { return launchcli.Command(ctx, env) }
