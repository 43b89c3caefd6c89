// Package launchcli is the volant-launch command (cmd/volant-launch
// documents it): one go-flags struct per verb, each with an Execute that
// reads the spec (flags over stdin over the environment) or the run
// directory, calls lib/runner, lib/launch, lib/agentchan or
// lib/workloadlog, and writes the result.
//
// It is a package of its own, not part of lib/launch: lib/launch is the
// one-VM library both volantd and volant-launch use, and lib/runner,
// which the run verb calls, imports it. What it links is what
// volant-launch links: cmd/volant-launch's deps_test.go keeps net/http,
// TLS and the cgroup libraries out, since every VM start pays for them.
package launchcli

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

// Command is the whole of volant-launch.
func Command(ctx context.Context, env *cli.Env) error {
	return cli.Run(ctx, env, "volant-launch", &launchCommand{})
}

type launchCommand struct {
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

// BackendsResult is the result of `volant-launch backends`.
type BackendsResult struct {
	Default  string                 `json:"default"`
	Backends []launch.BackendReport `json:"backends"`
}

func (backendsCmd) Execute(ctx context.Context, env *cli.Env) error {
	reports, def := launch.Backends(ctx, libOptions(env, false))
	return cli.WriteResult(env, "launch.backends", BackendsResult{Default: def, Backends: reports})
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
