// Package launch runs one microVM: from a Spec (a plugin manifest, a
// kernel, a lease and tap) to a supervised hypervisor process, and acts on
// it afterwards from any process through its run directory.
//
// It is the library under `volant-launch`. volantd reaches it through
// lib/runner, which runs each VM as its own `volant-launch run` process (a
// detached child or the volant-vm@NAME systemd unit, so VMs outlive a
// daemon restart) and acts on it by name with the functions below:
//
//	plan, err := launch.Prepare(ctx, spec, opts) // checks, argv, nothing started
//	plan, err = launch.DryRun(ctx, spec, opts)   // the same, for a host where the backend runs
//	res, err := launch.Run(ctx, plan, opts, launch.RunOptions{Notify: sdNotify})
//	st, err := launch.Inspect(ctx, runDir, opts) // pid + start time + VMM state
//	rep, err := launch.Stop(ctx, runDir, grace, opts)
//	st, err = launch.Pause(ctx, runDir, opts) / launch.Resume(...)
//	c, err := launch.Counters(ctx, runDir, opts) // per-device I/O counters
//	reports, def := launch.Backends(ctx, opts)
//
// # Prepare
//
// Prepare first makes every cheap check (the manifest, the name, lease and
// tap, the spec's words, cpus and memory within the manifest's bounds, a
// unicast MAC, that every artifact and the kernel exist), then verifies each
// artifact's sha256 (hashed in parallel with the rest, stopping when ctx
// ends; CHECKSUM_MISMATCH and nothing started on a difference), picks the
// backend ("auto": Cloud Hypervisor where usable,
// else QEMU) and the acceleration ("auto": KVM where it can run a stock
// kernel, else TCG with a note), resolves the kernel (a kernel directory
// gives the cached uncompressed vmlinux and the modules), and builds the
// guest kernel command line:
//
//	console=ttyS0 panic=-1 quiet [tsc_early_khz=<host TSC> under TCG microvm]
//	tsc=reliable no_timer_check 8250.nr_uarts=1
//	random.trust_cpu=on cryptomgr.notests volant.vm=… volant.ip=… volant.gw=…
//	volant.dns=… volant.api_host=… volant.api_port=… volant.plugin=…
//	volant.runtime=… [volant.boot=rootfs volant.rootfs_fstype=…]
//	volant.manifest=<b64url(gzip(json))> [kernel_args…]
//
// When that exceeds the kernel's 2047 bytes, the manifest moves into the
// initrd as /etc/volant/manifest.json and the line carries
// volant.manifest_file=/etc/volant/manifest.json instead (CMDLINE_TOO_LONG
// only if even that does not fit).
//
// # The initrd
//
// The VMM gets one initrd file. When it needs more than one archive, Run
// concatenates them (each padded to 4 bytes) into <run dir>/initrd; the
// kernel unpacks them in order, later files winning:
//
//   - boot-image: kestrel as /init plus the kernel modules a distribution
//     kernel needs (lib/bootimage). Rootfs plugins always get it (kestrel
//     stage 1 mounts the disk). Initramfs plugins get it underneath their
//     own archive when Spec.BootLayer is "always", or "auto" (the default)
//     and their archive has no lib/modules/<release>/modules.dep for the
//     kernel being booted (the answer is cached by the archive's sha256).
//     It is Spec.BootInitramfs when given, else built from Spec.Kestrel and
//     the kernel directory's modules this VM needs and cached under
//     Options.CacheDir: bootimage.BaseModules, DiskModules with a disk or
//     volume, VsockModules when the agent channel is vsock.
//   - plugin: the plugin's initramfs.
//   - modules: when the plugin has modules for the kernel booted but lacks
//     some the VM needs (fledge's plugins carry the base set only), those
//     with an index of the plugin's modules and them, which replaces the
//     plugin's; cached by the plugin's module list and what is added.
//   - manifest: generated when the manifest travels in the initrd.
//
// # Run and the run directory
//
// Run takes an exclusive flock on the run directory (default
// /run/volant/vms/<name>, mode 0700; a second run of the same VM is
// CONFLICT), which holds:
//
//	vmm/          the VMM's own directory (its uid's, 0700), holding:
//	  ctl.sock      the VMM's control socket (CH REST API or QEMU QMP)
//	  console.sock  QEMU's attachable serial console (one client at a time)
//	  serial.sock   Cloud Hypervisor's serial socket, relayed by Run to the
//	                serial log and to console.sock in the run directory (CH
//	                cannot do both itself)
//	  agent.sock    the VMM's end of the agent channel
//	root/         the mount point of the VMM's jail (empty outside it)
//	guest.sock    the agent channel's clients (lib/agenthub)
//	pid           {"supervisor":{pid,start_time,boot_id},"vmm":{...},...}
//	plan.json     the resolved plan
//	initrd        the layered initrd, when one is needed
//
// The serial log lives outside it (default
// /var/lib/volant/vms/<name>/serial.log, rotated to .1 past 8 MiB) and is
// kept; the run directory is removed when the run ends. Unix socket paths
// must fit in 107 bytes: a run dir too long for that is refused up front.
//
// CPU vulnerability mitigations stay on in the guest unless kernel_args
// say mitigations=off.
//
// # The jail
//
// Unless the operator asks for --insecure-vmm (Options.Jail.Insecure or
// Spec.InsecureVMM; logged, and shown in the status as "jail":{"insecure":
// true}), the VMM runs in a jail (lib/vmm/jail): a uid and gid of its own
// from Options.Jail.UIDs, no_new_privs, a mount namespace whose read-only
// root holds only the system's read-only directories, its own /dev, its
// kernel, initrd and disks and the run directory's vmm/ (its sockets: the
// only directory it may write, with its serial log and writable disks,
// which are its uid's for the run), and a cgroup of its own (Limits: guest
// memory + overhead, pids, CPU weight and quota) under Options.Jail.Cgroup,
// or its supervisor's when that is CgroupUnit (the systemd unit's). The tap
// is its uid's for the run. A VMM killed at its memory limit ends the run
// with UNAVAILABLE and details reason "oom". A jail that cannot be set up
// fails the run with ISOLATION_UNAVAILABLE. The status (and pid file) say
// which uid and cgroup.
//
// The VMM runs under lib/vmm/supervise: it dies with its supervisor (so a
// kill -9 of `volant-launch run` leaves no orphan), its readiness is its
// control socket answering, and Run reports READY=1 to systemd then. When
// Run's context ends (SIGTERM) it stops the VM: ACPI power button, after
// the plan's stop timeout (default 10 s) a hard stop, then SIGKILL.
//
// QEMU's QMP socket serves one client at a time, so nothing holds it: Run,
// Inspect, Stop, Pause and Resume each connect, act and disconnect.
package launch
