// Package boot is kestrel as the guest's init: stage 1 in the initramfs
// (mounts, modules, the root decision, the root switch) and stage 2 (network,
// supervision through lib/kestrel/agent, shutdown, power-off). Its entry
// point Init needs a *guest.Machine, so it cannot run on a host.
//
// Stage 1 runs when "/" is the initramfs (ramfs or tmpfs) and no handoff
// from an earlier stage 1 exists. It loads every module of the initramfs's
// index, decides where the root is (Decide), and either continues into
// stage 2 in the same process (initramfs path) or mounts the root disk,
// moves /dev, /proc, /sys and /run into it, deletes the initramfs's files
// (their memory goes back to the guest), switches root and executes kestrel
// from the disk (/bin/kestrel or /usr/local/bin/kestrel). A disk without
// kestrel gets the initramfs's kestrel carried over: it is executed from a
// descriptor opened before the switch, so the disk needs no copy of it.
// Stage 2 finds stage 1's decisions in HandoffPath.
//
// Nothing leaves the guest hung: a fatal error is printed on the console as
// "kestrel: FATAL: ..." and the guest powers off (after stopping what runs
// and making the disks clean), and kestrel sets kernel.panic=-1 when it is
// 0 and the command line has no panic=, so that even kestrel dying (a
// kernel panic for PID 1) ends the VM.
package boot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/bootargs"
	"github.com/volantvm/volant/lib/kestrel/access"
	"github.com/volantvm/volant/lib/kestrel/agent"
	"github.com/volantvm/volant/lib/kestrel/console"
	"github.com/volantvm/volant/lib/kestrel/consoleshell"
	"github.com/volantvm/volant/lib/kestrel/guest"
	"github.com/volantvm/volant/lib/kestrel/modules"
	"github.com/volantvm/volant/lib/kestrel/mounts"
	"github.com/volantvm/volant/lib/kestrel/network"
	"github.com/volantvm/volant/lib/kestrel/powerbutton"
	"github.com/volantvm/volant/lib/kestrel/reaper"
	"github.com/volantvm/volant/lib/kestrel/report"
	"github.com/volantvm/volant/lib/manifest"
)

// NewRoot is where stage 1 mounts the root disk before switching to it.
const NewRoot = "/newroot"

// Options are Init's settings.
type Options struct {
	Version string
	// Console is where kestrel writes: its stdout, which the kernel opened
	// on /dev/console.
	Console io.Writer
}

type booter struct {
	gcOn    func() // restores the garbage collector (pauseGC)
	m       *guest.Machine
	con     *console.Writer
	log     *slog.Logger
	level   *slog.LevelVar
	version string
}

// Init runs the guest. It never returns: the guest powers off at the end.
func Init(m *guest.Machine, o Options) {
	m.Check()
	if o.Console == nil {
		o.Console = os.Stdout
	}
	con := console.NewWriter(o.Console)
	level := new(slog.LevelVar)
	b := &booter{m: m, con: con, level: level, version: o.Version, log: slog.New(console.NewHandler(con, level).WithClock(guest.Uptime))}
	b.gcOn = pauseGC(BootMemoryLimit)
	defer func() {
		if r := recover(); r != nil {
			b.fatal(fmt.Errorf("panic: %v\n%s", r, debug.Stack()))
		}
	}()
	b.fatal(b.run())
}

func (b *booter) run() error {
	if err := mounts.Apply(b.m, mounts.Early(), b.log); err != nil {
		return err
	}
	ensureConsole()
	raw, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return fmt.Errorf("reading the kernel command line: %w", err)
	}
	if err := panicReboots("/proc/sys/kernel/panic", string(raw)); err != nil {
		b.log.Debug("cannot set kernel.panic", "err", err)
	}
	if err := b.m.DisableCtrlAltDel(); err != nil {
		b.log.Debug("cannot disable ctrl-alt-del reboot", "err", err)
	}
	args, err := bootargs.Parse(string(raw))
	if err != nil {
		return fmt.Errorf("kernel command line: %w", err)
	}
	if args.Debug {
		b.level.Set(slog.LevelDebug)
	}
	h, fromStage1, err := readHandoff()
	if err != nil {
		return err
	}
	if !fromStage1 {
		if !rootIsInitramfs() {
			// Booted straight from a disk (root=, no initramfs): stage 2.
			h = Handoff{Boot: ModeRootfs, ModulesPending: args.Modules}
		} else if h, err = b.stage1(args); err != nil {
			return err
		}
	} else if h.CarriedFD > 0 {
		unix.Close(h.CarriedFD)
	}
	return b.stage2(args, h)
}

// stage1 returns the handoff for the initramfs path, and does not return
// (it executes stage 2 from the new root) on the rootfs path.
func (b *booter) stage1(args bootargs.Args) (Handoff, error) {
	b.log.Info("stage 1", "version", b.version, "uptime", guest.Uptime().Round(time.Millisecond))
	if b.level.Level() <= slog.LevelDebug {
		b.log.Debug("init executed", "uptime", guest.Executed().Round(time.Millisecond))
	}
	m, err := LocalManifest(args)
	if err != nil {
		return Handoff{}, err
	}
	plan := Decide(args, m)
	b.log.Info("boot plan", "mode", string(plan.Mode), "device", plan.Device, "why", plan.Why)
	var later []string
	if plan.Mode == ModeInitramfs {
		later = LateModules(m, len(args.Volumes))
		if m != nil {
			later = append(later, PowerButtonModules[:]...)
		}
	}
	// The vsock transport serves only a guest with a vsock device (Cloud
	// Hypervisor's agent channel); the bus knows once virtio is loaded.
	later = append(later, access.VsockModule)
	pending, held, err := modules.Load(b.m, modules.Dir("/"), true, args.Modules, later, b.log)
	if err != nil {
		return Handoff{}, err
	}
	held = slices.DeleteFunc(held, func(n string) bool { return n == access.VsockModule })
	if access.HasVsockDevice("/sys") {
		if err := modules.LoadLater(b.m, modules.Dir("/"), []string{access.VsockModule}, b.log); err != nil {
			b.log.Warn("loading the vsock transport: no agent channel", "err", err)
		}
	}
	h := Handoff{Boot: ModeInitramfs, Manifest: m, ModulesPending: pending, ModulesLater: held}
	switch plan.Mode {
	case ModeInitramfs:
		return h, nil
	case ModeProbe:
		// The disk's driver bound it while the modules loaded, so sysfs
		// knows at once whether it exists; only its /dev node may lag.
		if !mounts.BlockDeviceKnown(plan.Device, 250*time.Millisecond) {
			b.log.Info("no disk: staying in the initramfs", "device", plan.Device)
			return h, nil
		}
		if isVolume("/sys/block", plan.Device) {
			b.log.Info("the disk is a volume, not the root: staying in the initramfs", "device", plan.Device)
			return h, nil
		}
		if err := mounts.WaitForDevice(plan.Device, time.Second); err != nil {
			b.log.Info("no root disk: staying in the initramfs", "device", plan.Device, "err", err)
			return h, nil
		}
		fstype, err := b.mountDevice(plan.Device, NewRoot, plan.FSType, true)
		if err != nil {
			b.log.Info("disk is not a mountable root: staying in the initramfs", "device", plan.Device, "err", err)
			return h, nil
		}
		if KestrelOn(NewRoot) == "" {
			b.log.Info("disk carries no kestrel, so it is not the root: staying in the initramfs", "device", plan.Device)
			if err := mounts.Unmount(b.m, NewRoot); err != nil {
				return h, fmt.Errorf("unmounting %s after probing it: %w", plan.Device, err)
			}
			return h, nil
		}
		if err := mounts.Remount(b.m, NewRoot, false); err != nil {
			return h, err
		}
		plan.FSType = fstype
	case ModeRootfs:
		if err := mounts.WaitForDevice(plan.Device, DiskWait); err != nil {
			return h, fmt.Errorf("root disk: %w", err)
		}
		if isVolume("/sys/block", plan.Device) {
			return h, fmt.Errorf("refusing %s as the root filesystem: it is a volume (serial %s); the root disk must be attached first, or named by volant.rootfs_device", plan.Device, diskSerial("/sys/block", plan.Device))
		}
		fstype, err := b.mountDevice(plan.Device, NewRoot, plan.FSType, false)
		if err != nil {
			return h, fmt.Errorf("root disk: %w", err)
		}
		plan.FSType = fstype
		if ok, why := LooksLikeRoot(NewRoot, m); !ok {
			return h, fmt.Errorf("refusing %s as the root filesystem: %s (is it a data disk? the root disk must be attached first, or named by volant.rootfs_device)", plan.Device, why)
		}
	}
	return h, b.switchRoot(plan, h)
}

// BootMemoryLimit bounds kestrel's heap while its garbage collector is
// paused for the boot: past it the collector runs anyway.
const BootMemoryLimit = 32 << 20

// pauseGC turns the garbage collector off, except past limit bytes of
// memory, and returns the function that turns it back on as it was. The
// boot turns it off until ButtonDelay after the workload is up
// (agent.Config's AfterStart): its garbage is a few megabytes, and a
// collection during the boot is
// CPU (and, under software emulation, translated code) spent before the
// workload's start.
func pauseGC(limit int64) (restore func()) {
	percent := debug.SetGCPercent(-1)
	old := debug.SetMemoryLimit(limit)
	var once sync.Once
	return func() {
		once.Do(func() {
			debug.SetGCPercent(percent)
			debug.SetMemoryLimit(old)
		})
	}
}

// LateModulesDelay is how long after the workload is up (agent.Config's
// AfterStart) the late modules load and the agent channel opens: loading
// a module holds the guest's CPU for tens of milliseconds at a time under
// software emulation, and the first requests to the new workload, the
// host's health poll and kestrel's report of the workload's health should
// not wait behind them.
const LateModulesDelay = 2 * time.Second

// LateModules are the modules the initramfs path loads only once the
// workload is up (each costs tens of milliseconds under software
// emulation): the virtio console's, and virtio_blk when the plugin has no
// disks and the VM no volumes. The rootfs path loads everything in stage
// 1, from the initramfs it then leaves.
func LateModules(m *manifest.Manifest, volumes int) []string {
	late := []string{"virtio_console"}
	if (m == nil || len(m.Disks) == 0) && volumes == 0 {
		late = append(late, "virtio_blk")
	}
	return late
}

// PowerButtonModules are the power button's modules: the ACPI button
// driver, and evdev, through which kestrel reads its key. On the initramfs
// path with the manifest known at boot they load ButtonDelay after the
// workload is up (agent.Config's AfterStart: its health check first
// passed), not before it starts: they are a fifth of the boot's module
// loading under software emulation. A press the kernel sees before the button driver is
// loaded is lost, so launchers press again until the guest is down
// (lib/vmm/supervise.Stop); a VM that waits for its inputs loads them
// before it waits.
var PowerButtonModules = [...]string{"button", "evdev"}

// ButtonDelay is how long after the workload is up the power button's
// modules load (and the garbage collector, paused for the boot, is turned
// back on): the workload's first requests, the host's first health poll
// and kestrel's report come first. A stop requested meanwhile is not
// slower for it: its first press is lost either way (the button is not
// loaded yet at the moment the workload is up), and launchers press again
// after 1 s.
const ButtonDelay = 500 * time.Millisecond

// splitPowerButton separates the power button's modules from the other
// held-back ones.
func splitPowerButton(held []string) (button, rest []string) {
	for _, n := range held {
		if slices.Contains(PowerButtonModules[:], n) {
			button = append(button, n)
		} else {
			rest = append(rest, n)
		}
	}
	return button, rest
}

func (b *booter) switchRoot(plan Plan, h Handoff) error {
	h.Boot, h.Device, h.FSType = ModeRootfs, plan.Device, plan.FSType
	exe := KestrelOn(NewRoot)
	carried := -1
	if exe == "" {
		// Carry this binary over: it stays reachable through the
		// descriptor after the initramfs's files are deleted.
		fd, err := unix.Open("/proc/self/exe", unix.O_RDONLY, 0)
		if err != nil {
			return fmt.Errorf("opening kestrel to carry it into the new root: %w", err)
		}
		carried = fd
		h.Kestrel, h.CarriedFD = "initramfs", fd
	} else {
		h.Kestrel = exe
	}
	h.Stage1UptimeMS = guest.Uptime().Milliseconds()
	if err := writeHandoff(h); err != nil {
		return err
	}
	b.log.Info("switching root", "device", plan.Device, "fstype", plan.FSType, "kestrel", h.Kestrel)
	if err := mounts.SwitchRoot(b.m, NewRoot, b.log); err != nil {
		return err
	}
	path := exe
	if carried >= 0 {
		path = "/proc/self/fd/" + strconv.Itoa(carried)
	}
	err := syscall.Exec(path, []string{"/bin/kestrel"}, os.Environ())
	return fmt.Errorf("executing stage 2 (%s): %w", path, err)
}

func (b *booter) stage2(args bootargs.Args, h Handoff) error {
	if err := mounts.Apply(b.m, mounts.Late(), b.log); err != nil {
		return err
	}
	if h.Boot == ModeRootfs {
		b.log.Info("stage 2", "version", b.version, "root", h.Device, "kestrel", h.Kestrel, "uptime", guest.Uptime().Round(time.Millisecond))
		if len(h.ModulesPending) > 0 {
			unknown, _, err := modules.Load(b.m, modules.Dir("/"), false, h.ModulesPending, nil, b.log)
			if err != nil {
				return err
			}
			if len(unknown) > 0 {
				b.log.Warn("volant.modules names modules neither the initramfs nor the root has", "modules", strings.Join(unknown, ","))
			}
		}
	} else if len(h.ModulesPending) > 0 {
		b.log.Warn("volant.modules names modules the initramfs lacks", "modules", strings.Join(h.ModulesPending, ","))
	}
	netCfg := network.FromArgs(args)
	netCfg.Volatile = h.Boot == ModeInitramfs
	if _, err := network.Configure(b.m, netCfg, b.log); err != nil {
		return err
	}

	r := reaper.New(b.log)
	ctx, cancel := context.WithCancelCause(context.Background())
	go r.Run(context.Background()) // PID 1 reaps until power-off
	b.watchSignals(cancel)
	// The power button is watched from here on, or, when stage 1 held its
	// modules back (PowerButtonModules), once they are loaded.
	buttonLater, channelLater := splitPowerButton(h.ModulesLater)
	var buttonOnce sync.Once
	armButton := func() {
		buttonOnce.Do(func() {
			if len(buttonLater) > 0 {
				if err := modules.LoadLater(b.m, modules.Dir("/"), buttonLater, b.log); err != nil {
					b.log.Warn("loading the power button's kernel modules", "err", err)
				}
			}
			go func() {
				if err := powerbutton.Watch(ctx, 5*time.Second, b.log, func() { cancel(errors.New("ACPI power button pressed")) }); err != nil && ctx.Err() == nil {
					b.log.Warn("power button unavailable: an ACPI shutdown request will not reach kestrel", "err", err)
				}
			}()
		})
	}
	if len(buttonLater) == 0 {
		armButton()
	}
	// The agent channel (exec, copy, workload logs) is served once its
	// device's driver is loaded: with the late modules, after the
	// workload started; or before it starts when the VM has inputs, which
	// come over the channel.
	var serveAccess func()
	var channelOnce sync.Once
	openChannel := func() {
		channelOnce.Do(func() {
			if len(channelLater) > 0 {
				if err := modules.LoadLater(b.m, modules.Dir("/"), channelLater, b.log); err != nil {
					b.log.Warn("loading the late kernel modules", "err", err)
				}
			}
			serveAccess()
		})
	}
	afterStart := func() {
		time.Sleep(ButtonDelay)
		b.gcOn()
		armButton()
		time.Sleep(LateModulesDelay - ButtonDelay)
		openChannel()
	}
	var inputs *access.Inputs
	var inputsEnv func() map[string]string
	if args.Inputs {
		inputs = access.NewInputs("/")
		inputs.SetHostname = b.m.SetHostname
		inputsEnv = inputs.Env
	}

	reportURL := ""
	if args.APIHost != "" && args.VM != "" {
		reportURL = report.URL(args.APIHost, args.APIPort, args.VM)
	}
	plugin := args.Plugin
	if plugin == "" && h.Manifest != nil {
		plugin = h.Manifest.Name
	}
	a := agent.New(agent.Config{
		VM: args.VM, Plugin: plugin, Boot: string(h.Boot), Version: b.version,
		Listen:    listenAddr(args, agentPort(args, h)),
		ReportURL: reportURL,
		Console:   b.con,
		Uptime:    guest.Uptime,
		Log:       b.log,
		BeforeStart: func(ctx context.Context, m *manifest.Manifest) error {
			if err := b.mountDisks(ctx, m, h, len(args.Volumes)); err != nil {
				return err
			}
			if err := b.mountVolumes(ctx, args.Volumes); err != nil {
				return err
			}
			if sh := consoleshell.Choose(args, m); sh != "" {
				go consoleshell.Run(ctx, r, sh, consoleshell.Device("/"), b.log)
			}
			if inputs != nil {
				armButton() // the inputs may never come: the VM must still stop cleanly
				openChannel()
				b.log.Info("waiting for the VM's inputs over the agent channel")
				if err := inputs.Wait(ctx); err != nil {
					return fmt.Errorf("the VM's inputs: %w", err)
				}
			}
			return nil
		},
		Env:        inputsEnv,
		AfterStart: afterStart,
		// A manifest that came with the boot lets the workload start, and
		// come up, before the API serves: "agent ready" is printed when it
		// does.
		Manifest: h.Manifest,
		Ready:    func() { b.ready(args, h) },
	})
	id := &identity{b: b, agent: a, apiHost: args.APIHost, apiPort: args.APIPort, net: netCfg}
	acc := access.New(access.Config{VM: args.VM, Version: b.version, Reaper: r, Output: a.Output(), WorkloadEnv: a.WorkloadEnv,
		Identity: id.apply, NetworkUp: a.Announce, Inputs: inputs, Log: b.log})
	serveAccess = func() {
		go func() {
			if err := acc.Serve(ctx, access.Channels{}); err != nil {
				b.log.Warn("no agent channel", "err", err)
			}
		}()
	}
	ln, err := a.Listen()
	if err != nil {
		return err
	}
	err = a.Run(ctx, ln, r, func(ctx context.Context) (*manifest.Manifest, error) {
		m, err := LocalManifest(args)
		if err != nil || m != nil {
			return m, err
		}
		return FetchManifest(ctx, args, FetchBudget, b.log)
	})
	if err != nil {
		return err
	}
	b.shutdown(context.Cause(ctx))
	return nil // not reached
}

// ready prints the line boot measurements key on: the agent API is up.
// When the manifest came with the boot the workload is up by then (its
// health check passed, or agent.DefaultAfterStartWait after its start);
// otherwise it is starting (or its manifest is being fetched).
// kestrel's memory is in /healthz (agentapi.Status.Memory); reading /proc
// for it here would be boot time.
func (b *booter) ready(args bootargs.Args, h Handoff) {
	size := int64(0)
	if st, err := os.Stat("/proc/self/exe"); err == nil {
		size = st.Size()
	}
	b.log.Info("agent ready", "boot", string(h.Boot), "uptime", guest.Uptime().Round(time.Millisecond),
		"binary_bytes", size, "api_port", agentPort(args, h))
}

// listenAddr is the API's address: every IPv4 address of the guest
// (an IPv4 socket, cheaper to open than a dual-stack one) unless the
// guest's address is IPv6.
func listenAddr(args bootargs.Args, port int) string {
	if args.IP.IsValid() && args.IP.Addr().Is6() {
		return ":" + strconv.Itoa(port)
	}
	return "0.0.0.0:" + strconv.Itoa(port)
}

// agentPort is where the API listens: volant.agent_port, else the port the
// manifest names (known at boot when it came on the command line or in the
// initramfs), else the default.
func agentPort(args bootargs.Args, h Handoff) int {
	if args.AgentPort != 0 {
		return args.AgentPort
	}
	if h.Manifest != nil {
		return h.Manifest.AgentPort()
	}
	return agentapi.Port
}

func (b *booter) watchSignals(cancel context.CancelCauseFunc) {
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, unix.SIGTERM, unix.SIGINT, unix.SIGPWR)
	go func() {
		for s := range sig {
			cancel(fmt.Errorf("received %s", unix.SignalName(s.(syscall.Signal))))
		}
	}()
}

func (b *booter) mountDisks(ctx context.Context, m *manifest.Manifest, h Handoff, volumes int) error {
	want := 0
	for _, d := range m.Disks {
		if d.Target != "" {
			want = len(m.Disks)
		}
	}
	if want == 0 {
		return nil
	}
	root := ""
	if h.Boot == ModeRootfs {
		root = h.Device
		want++
	}
	devs := withoutVolumes("/sys/block", waitDisks(ctx, want+volumes))
	pairs, err := DataDisks(devs, root, m.Disks)
	if err != nil {
		return err
	}
	for _, d := range m.Disks {
		if d.Target == "" {
			continue
		}
		dev, target := pairs[d.Name], diskTarget(d.Target)
		fstype, err := b.mountDevice(dev, target, "", d.ReadOnly)
		if err != nil {
			return fmt.Errorf("data disk %s: %w", d.Name, err)
		}
		b.log.Info("data disk mounted", "disk", d.Name, "device", dev, "target", target, "fstype", fstype, "readonly", d.ReadOnly)
	}
	return nil
}

// mountDevice mounts a disk, probing its filesystem when fstype is empty
// and loading the filesystem's module first if the kernel lacks it.
func (b *booter) mountDevice(dev, target, fstype string, readonly bool) (string, error) {
	if fstype == "" {
		t, err := mounts.ProbeFSType(dev)
		if err != nil {
			return "", err
		}
		if t == "" {
			return "", fmt.Errorf("%s holds no filesystem kestrel recognizes (ext4, xfs, btrfs, squashfs)", dev)
		}
		fstype = t
	}
	if err := modules.EnsureFS(b.m, modules.Dir("/"), fstype, b.log); err != nil {
		return "", fmt.Errorf("mounting %s: %w", dev, err)
	}
	return mounts.MountDevice(b.m, dev, target, fstype, readonly)
}

// shutdown ends the guest after the workload was stopped: every remaining
// process gets SIGTERM, then SIGKILL; the disks are made clean; power off.
func (b *booter) shutdown(reason error) {
	b.log.Info("shutting down", "reason", reason)
	b.stopEverything()
	b.log.Info("powering off", "uptime", guest.Uptime().Round(time.Millisecond))
	b.m.PowerOff()
}

func (b *booter) stopEverything() {
	if err := b.m.KillAll(unix.SIGTERM); err != nil {
		b.log.Debug("kill(-1, SIGTERM)", "err", err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) && len(userProcesses()) > 0 {
		time.Sleep(20 * time.Millisecond)
	}
	if left := userProcesses(); len(left) > 0 {
		b.log.Warn("processes ignored SIGTERM; killing them", "pids", fmt.Sprint(left))
		_ = b.m.KillAll(unix.SIGKILL)
		time.Sleep(100 * time.Millisecond)
	}
	if err := mounts.Quiesce(b.m, b.log); err != nil {
		b.log.Warn("disks not cleanly unmounted", "err", err)
	}
}

// fatal reports err on the console and powers off. It never returns.
func (b *booter) fatal(err error) {
	if err == nil {
		err = errors.New("kestrel's boot ended without a reason")
	}
	console.Fatalf(b.con, "%v", err)
	console.Fatalf(b.con, "stopping everything and powering off")
	b.stopEverything()
	b.m.PowerOff()
}

// panicReboots makes a kernel panic (which is what kestrel exiting would
// cause) reboot at once, and so end the VM, by setting path
// (/proc/sys/kernel/panic) from 0 to -1, unless the kernel command line
// chose with panic= (launchers pass panic=-1): then the setting is not
// read at all.
func panicReboots(path, cmdline string) error {
	for _, w := range strings.Fields(cmdline) {
		if strings.HasPrefix(w, "panic=") {
			return nil
		}
	}
	cur, err := os.ReadFile(path)
	if err != nil || strings.TrimSpace(string(cur)) != "0" {
		return err
	}
	return os.WriteFile(path, []byte("-1\n"), 0o644)
}

// userProcesses lists pids other than 1 that are not kernel threads.
func userProcesses() []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == 1 {
			continue
		}
		// Kernel threads have an empty cmdline; zombies too (the reaper
		// collects those).
		cmd, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && len(cmd) > 0 {
			out = append(out, pid)
		}
	}
	return out
}

// rootIsInitramfs reports whether "/" is the initramfs.
func rootIsInitramfs() bool {
	var fs unix.Statfs_t
	if err := unix.Statfs("/", &fs); err != nil {
		return false
	}
	return fs.Type == unix.RAMFS_MAGIC || fs.Type == unix.TMPFS_MAGIC
}

// ensureConsole gives kestrel stdio on /dev/console when the kernel could
// not (an initramfs without /dev/console leaves init with no descriptors).
func ensureConsole() {
	var st unix.Stat_t
	if unix.Fstat(1, &st) == nil {
		return
	}
	fd, err := unix.Open("/dev/console", unix.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return
	}
	for i := 0; i < 3; i++ {
		_ = unix.Dup3(fd, i, 0)
	}
	if fd > 2 {
		unix.Close(fd)
	}
}
