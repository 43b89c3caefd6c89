package launch

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/bootargs"
	"github.com/volantvm/volant/lib/hostnet"
	"github.com/volantvm/volant/lib/kernel"
	"github.com/volantvm/volant/lib/layout"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/names"
	"github.com/volantvm/volant/lib/vmm"
	"github.com/volantvm/volant/lib/vmm/cloudhypervisor"
	"github.com/volantvm/volant/lib/vmm/qemu"
)

// Defaults of Options (lib/layout's).
const (
	DefaultRunRoot  = layout.DefaultRunRoot
	DefaultStateDir = layout.DefaultDataDir
)

// Run-directory entries. Short names keep socket paths under the limit.
const (
	SocketName  = "ctl.sock"     // CH API socket or QEMU QMP socket
	ConsoleName = "console.sock" // attachable serial console
	SerialName  = "serial.sock"  // the VMM's own serial socket, when relayed
	AgentName   = "agent.sock"   // the VMM's end of the agent channel (QEMU chardev, CH hybrid vsock)
	// GuestSocketName is where clients reach the guest's agent through
	// the VM's supervisor (lib/agenthub): exec, copy (lib/agentchan).
	GuestSocketName = "guest.sock"
	// VMMDirName is the run directory's subdirectory the VMM owns (its
	// jail's only writable directory): its sockets live there.
	VMMDirName = "vmm"
	// JailRootName is the mount point of the VMM's jail root (empty
	// outside the VMM's mount namespace).
	JailRootName  = "root"
	PidFileName   = "pid"
	PlanFileName  = "plan.json"
	InitrdName    = "initrd"
	ManifestInVM  = "/etc/volant/manifest.json"
	maxSocketPath = 107 // sun_path is 108 bytes with the NUL
)

// Options are the host-side settings a launcher runs with: directories,
// defaults and the backends. The zero value uses the documented defaults.
type Options struct {
	// KernelDir is the default guest kernel directory (VOLANT_KERNEL_DIR).
	KernelDir string
	// Kestrel is the default kestrel binary for built boot initramfs images.
	Kestrel string
	// RunRoot holds the per-VM run directories (default /run/volant/vms).
	RunRoot string
	// StateDir is the data directory: per-VM serial logs and disk copies
	// under vms/<name>/ (default /var/lib/volant).
	StateDir string
	// CacheDir caches built boot initramfs images, archive scans and
	// verified file versions (default <StateDir>/cache).
	CacheDir string
	// Backends are the hypervisors to choose from, in order of preference
	// for "auto"; nil means Cloud Hypervisor, then QEMU, found on PATH.
	Backends []vmm.Backend
	// HostRoot is the host's root for KVM detection; nil means "/".
	HostRoot fs.FS
	// Jail confines each VMM (lib/vmm/jail).
	Jail   JailOptions
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	d := layout.Dirs{Data: o.StateDir, RunRoot: o.RunRoot, Cache: o.CacheDir, Kernel: o.KernelDir}.WithDefaults()
	o.KernelDir, o.RunRoot, o.StateDir, o.CacheDir = d.Kernel, d.RunRoot, d.Data, d.Cache
	if o.Backends == nil {
		o.Backends = DefaultBackends(o.HostRoot)
	}
	if o.HostRoot == nil {
		o.HostRoot = os.DirFS("/")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// VMMDir is the directory of a run directory that the VMM owns.
func VMMDir(runDir string) string { return filepath.Join(runDir, VMMDirName) }

// DefaultBackends are Cloud Hypervisor and QEMU, in that order of preference.
func DefaultBackends(hostRoot fs.FS) []vmm.Backend {
	return []vmm.Backend{
		&cloudhypervisor.Backend{HostRoot: hostRoot},
		&qemu.Backend{HostRoot: hostRoot},
	}
}

// Plan is everything decided before a VM starts: the resolved inputs, the
// VMM's command line and the files it needs. Prepare makes it without
// starting anything; Run carries it out. It is also written to the run
// directory as plan.json.
type Plan struct {
	Name      string      `json:"name"`
	VMM       string      `json:"vmm"`
	Accel     vmm.Accel   `json:"accel"`
	Argv      []string    `json:"argv"`
	Cmdline   string      `json:"cmdline"`
	Config    vmm.Config  `json:"config"`
	RunDir    string      `json:"run_dir"`
	Initrd    *InitrdPlan `json:"initrd,omitempty"`
	Artifacts []Artifact  `json:"artifacts"`
	Network   *network    `json:"network,omitempty"`
	Console   string      `json:"console_socket,omitempty"`
	// SerialRelay is the VMM's serial socket when the VMM cannot both log
	// and serve its console (Cloud Hypervisor): Run relays it to the
	// serial log and the console socket.
	SerialRelay string `json:"serial_relay,omitempty"`
	SerialLog   string `json:"serial_log"`
	// Agent is the host's side of the agent channel to kestrel.
	Agent *AgentPlan `json:"agent,omitempty"`
	// Restore, when set, runs the VM from a saved state (RestoreSpec).
	Restore *RestorePlan `json:"restore,omitempty"`
	// DiskRoles name Config.Disks, in order: rootfs, disk:<name> (the
	// manifest's), extra:<i> (the spec's Disks), volume:<i>.
	DiskRoles []string `json:"disk_roles,omitempty"`
	// DiskCopies are the VM's own copies of writable disks (DiskMode
	// "copy"); Run makes the missing ones before the VMM starts.
	DiskCopies []DiskCopy `json:"disk_copies,omitempty"`
	StopAfter  Duration   `json:"stop_timeout"`
	// InsecureVMM: the VMM runs as root without a jail (Spec.InsecureVMM).
	InsecureVMM bool     `json:"insecure_vmm,omitempty"`
	Notes       []string `json:"notes,omitempty"`
	// Warnings say why the plan could not run on this host; only DryRun
	// plans have them (Prepare fails instead).
	Warnings []string     `json:"warnings,omitempty"`
	Manifest manifestInfo `json:"manifest"`

	manifestJSON []byte
}

// AgentPlan is where the agent channel's host side lives. Run owns the
// channel (lib/agenthub): it connects to VMMSocket and serves clients on
// Socket.
type AgentPlan struct {
	// VMMSocket is the VMM's end (vmm.Config.AgentSocket).
	VMMSocket string `json:"vmm_socket"`
	// Transport is vmm.AgentVirtioSerial or vmm.AgentVsock.
	Transport string `json:"transport"`
	// Socket is where clients connect: <run dir>/guest.sock.
	Socket string `json:"socket"`
	// WorkloadLog is where the workload's output is kept.
	WorkloadLog string `json:"workload_log"`
	// Inputs is the VM's inputs file (Spec.InputsFile), sent to kestrel
	// at every boot.
	Inputs string `json:"inputs,omitempty"`
}

type manifestInfo struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Boot    string `json:"boot"` // initramfs or rootfs
	// InInitrd is set when the manifest was too long for the command line
	// and travels as /etc/volant/manifest.json in the initrd.
	InInitrd bool `json:"in_initrd,omitempty"`
}

// Artifact is a file the VM boots from, with its checksum verification.
type Artifact struct {
	Role     string `json:"role"` // initramfs, rootfs, disk:<name>
	Path     string `json:"path"`
	SHA256   string `json:"sha256,omitempty"`
	Verified bool   `json:"verified"`
	// Cached says the verification came from the cache of file versions
	// this host already hashed (see VerifyCached).
	Cached bool `json:"cached,omitempty"`
}

// DiskCopy is a VM's own copy of a writable artifact.
type DiskCopy struct {
	Role string `json:"role"` // rootfs or disk:<name>
	From string `json:"from"` // the verified artifact
	To   string `json:"to"`   // the VM's copy, booted instead
	// Exists says the copy was there at Prepare: it is reused, with the
	// guest's earlier writes.
	Exists bool `json:"exists"`
}

// Duration marshals as milliseconds.
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) {
	return []byte(strconv.FormatInt(time.Duration(d).Milliseconds(), 10)), nil
}

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	ms, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return err
	}
	*d = Duration(time.Duration(ms) * time.Millisecond)
	return nil
}

// Prepare checks a spec and plans the VM. It starts nothing and writes
// only caches (an extracted vmlinux, a built boot initramfs, verified file
// versions). It works in named phases, cheapest first, so a mistake costs
// nothing and no slow step runs for a spec a cheap check refuses:
//
//  1. check: the manifest parses and validates; the name, lease and tap
//     agree; verify, disk_mode and boot_layer are known words; cpus and
//     memory are within the manifest's bounds; the MAC is unicast; the
//     network resolves; every artifact and the kernel exist (NOT_FOUND).
//  2. backend: the backend and acceleration can run here (NOT_SUPPORTED
//     or UNAVAILABLE), it can boot this kernel, and the run directory's
//     socket paths fit.
//  3. hash: every artifact's sha256 is computed in the background from
//     here on, honouring ctx (a cancelled Prepare stops reading at once).
//  4. kernel: a kernel directory's vmlinux (extracted once, then cached).
//  5. cmdline: the guest kernel command line; the manifest moves into the
//     initrd when the line would exceed bootargs.MaxCmdline.
//  6. verified: the hashes are in (CHECKSUM_MISMATCH on a difference); no
//     later phase reads an unverified artifact.
//  7. initrd: its layers (may build and cache a boot initramfs).
//  8. disks: the root disk, the manifest's, the spec's, then the volumes
//     (with their serials); writable ones of the manifest boot from the
//     VM's own copy unless disk_mode is "direct".
//  9. argv: the VMM's command line.
func Prepare(ctx context.Context, s Spec, o Options) (*Plan, error) {
	return prepare(ctx, s, o, false)
}

// DryRun plans a VM as Prepare does, for a command line that is not meant
// to run here (`volant-launch argv`: a unit file written on a build host):
// a backend that cannot run on this host (its binary is missing, or its
// acceleration is not available) is planned anyway, and why it could not
// run here goes into Plan.Warnings instead of failing. Everything else
// fails as in Prepare.
func DryRun(ctx context.Context, s Spec, o Options) (*Plan, error) {
	return prepare(ctx, s, o, true)
}

// prep is one Prepare in progress: its inputs and what the phases decided.
type prep struct {
	s   Spec
	o   Options
	dry bool
	p   *Plan

	m          *manifest.Manifest
	lease      *Lease
	arts       []Artifact
	kernelPath string // located by check; kern is filled by the kernel phase
	kernelDir  *kernel.Kernel
	kern       kernelInfo
	b          vmm.Backend
	caps       vmm.Capabilities
	machine    string
	cpus, mem  int
	copyDisks  bool
}

func prepare(ctx context.Context, s Spec, o Options, dry bool) (*Plan, error) {
	r := &prep{s: s, o: o.withDefaults(), dry: dry}
	if err := r.check(); err != nil {
		return nil, err
	}
	if err := r.backend(ctx); err != nil {
		return nil, err
	}
	h := startHashing(ctx, r.arts, r.o.CacheDir, s.Verify)
	defer h.stop()
	for _, phase := range []func(context.Context) error{
		r.kernel,
		r.cmdline,
		func(context.Context) error { return r.verified(h) },
		r.initrd,
		r.disks,
		r.argv,
	} {
		if err := phase(ctx); err != nil {
			return nil, err
		}
	}
	return r.p, nil
}

func (r *prep) note(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.p.Notes = append(r.p.Notes, msg)
	r.o.Logger.Info(msg)
}

func (r *prep) warn(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.p.Warnings = append(r.p.Warnings, msg)
	r.o.Logger.Warn(msg)
}

// check is phase 1: everything that costs no more than a stat or reading
// a small file.
func (r *prep) check() error {
	s := r.s
	m, mjson, err := loadManifest(s)
	if err != nil {
		return err
	}
	r.m = m
	name, lease := s.VMName(), s.lease()
	if name == "" {
		return apierr.New(apierr.Usage, "the VM needs a name: --name, \"name\", or a piped lease")
	}
	if err := names.Check("VM name", name); err != nil {
		return err
	}
	if lease != nil && lease.VM != "" && lease.VM != name {
		return badInput("the lease is for VM %q, not %q", lease.VM, name).With("field", "lease.vm")
	}
	if s.NetTap != nil && s.NetTap.VM != "" && s.NetTap.VM != name {
		return badInput("the tap is for VM %q, not %q", s.NetTap.VM, name).With("field", "net_tap.vm")
	}
	r.lease = lease
	r.p = &Plan{Name: name, manifestJSON: mjson, InsecureVMM: s.InsecureVMM}
	r.p.Manifest = manifestInfo{Name: m.Name, Version: m.Version, Boot: "initramfs"}
	if m.Rootfs != nil {
		r.p.Manifest.Boot = "rootfs"
	}

	if err := checkVolumes(s.Volumes, m); err != nil {
		return err
	}
	if err := checkOwnDisks(s.OwnDisks, m); err != nil {
		return err
	}

	// The words of the spec.
	switch s.Verify {
	case "", VerifyCached, VerifyAlways:
	default:
		return badInput("verify %q: want cached or always", s.Verify).With("field", "verify")
	}
	switch s.DiskMode {
	case "", "copy":
		r.copyDisks = true
	case "direct":
	default:
		return badInput("disk_mode must be copy or direct, got %q", s.DiskMode).With("field", "disk_mode")
	}
	switch s.BootLayer {
	case "", BootLayerAuto, BootLayerAlways, BootLayerNever:
	default:
		return badInput("boot_layer %q: want auto, always or never", s.BootLayer).With("field", "boot_layer")
	}
	if m.Rootfs != nil && s.BootLayer == BootLayerNever {
		return badInput("a rootfs plugin boots through the boot initramfs (kestrel stage 1); boot_layer never cannot apply").With("field", "boot_layer")
	}

	// Resources: the spec's override the manifest's, within its bounds.
	r.cpus, r.mem = s.CPUs, s.MemoryMB
	if r.cpus == 0 {
		r.cpus = m.Resources.CPUCores
	}
	if r.mem == 0 {
		r.mem = m.Resources.MemoryMB
	}
	if r.cpus < 1 || r.cpus > manifest.MaxCPUCores {
		return badInput("cpus must be between 1 and %d, got %d", manifest.MaxCPUCores, r.cpus).With("field", "cpus")
	}
	if r.mem < manifest.MinMemoryMB || r.mem > manifest.MaxMemoryMB {
		return badInput("memory_mb must be between %d and %d MiB, got %d", manifest.MinMemoryMB, manifest.MaxMemoryMB, r.mem).With("field", "memory_mb")
	}
	if s.StopTimeoutMS < 0 {
		return badInput("stop_timeout_ms must not be negative, got %d", s.StopTimeoutMS).With("field", "stop_timeout_ms")
	}

	// Network: the tap's name, the MAC, the lease's addresses.
	nw, err := resolveNetwork(s, name, lease, m, r.note)
	if err != nil {
		return err
	}
	r.p.Network = nw

	// Files: every artifact and the kernel must be there.
	if r.arts, err = artifacts(m); err != nil {
		return err
	}
	for _, a := range r.arts {
		st, err := os.Stat(a.Path)
		if err != nil {
			return fmt.Errorf("%s artifact: %w", a.Role, err)
		}
		if !st.Mode().IsRegular() {
			return badInput("%s artifact %s is not a regular file", a.Role, a.Path).With("path", a.Path)
		}
	}
	return r.locateKernel()
}

// locateKernel finds the kernel: a kernel directory (opened: its release
// and modules), or an image file. The vmlinux of a directory is extracted
// later, by the kernel phase.
func (r *prep) locateKernel() error {
	k := r.s.Kernel
	if k == "" {
		k = r.o.KernelDir
	}
	st, err := os.Stat(k)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && k == r.o.KernelDir {
			_, oerr := kernel.Open(k) // its error says how to fetch one
			return oerr
		}
		return fmt.Errorf("kernel: %w", err)
	}
	r.kernelPath = k
	if st.IsDir() {
		kd, err := kernel.Open(k)
		if err != nil {
			return err
		}
		r.kernelDir = kd
		r.kern = kernelInfo{pvh: true, release: kd.Release, modulesDir: kd.ModulesDir}
		return nil
	}
	r.kern = kernelInfo{path: k, pvh: isELF(k)}
	// A vmlinux or vmlinuz inside a kernel directory still has its modules.
	if kd, err := kernel.Open(filepath.Dir(k)); err == nil {
		r.kern.release, r.kern.modulesDir = kd.Release, kd.ModulesDir
	}
	return nil
}

// backend is phase 2: the hypervisor and acceleration, what the kernel
// needs of them, and the run directory's paths.
func (r *prep) backend(ctx context.Context) error {
	s, o, p := r.s, r.o, r.p
	b, _, err := pickBackend(ctx, s.VMM, o)
	usable := err == nil
	if err != nil {
		if !r.dry || apierr.Is(err, apierr.InvalidInput) {
			return err
		}
		// A dry run plans for a host where the backend runs.
		if b = dryRunBackend(s.VMM, o); b == nil {
			return err
		}
		r.warn("%s; planned for a host where %s can run", apierr.From(err).Message, b.Name())
	}
	r.b, r.caps = b, b.Capabilities()
	p.VMM = b.Name()
	if err := checkRestore(s, r.caps, b.Name()); err != nil {
		return err
	}
	want := s.Accel
	if want == "" {
		want = vmm.AccelAuto
	}
	tcgOK := slices.Contains(r.caps.Accels, vmm.AccelTCG)
	accel, why, err := vmm.ResolveAccel(want, o.HostRoot, tcgOK)
	switch {
	case err == nil:
		if why != "" {
			r.note("%s", why)
		}
	case !usable && want == vmm.AccelAuto && len(r.caps.Accels) > 0:
		accel = r.caps.Accels[0] // the backend's first choice, on the host it is meant for
	case !usable && slices.Contains(r.caps.Accels, want):
		accel = want
	case r.dry && slices.Contains(r.caps.Accels, want):
		accel = want
		r.warn("%s: %v; planned for a host where it can", b.Name(), err)
	default:
		return &apierr.Error{Code: apierr.NotSupported, Message: fmt.Sprintf("%s: %v", b.Name(), err),
			Details: map[string]any{"backend": b.Name(), "accel": string(want)}, Err: vmm.ErrNotSupported}
	}
	p.Accel = accel
	r.machine = s.Machine
	if r.machine == "" && slices.Contains(r.caps.Machines, qemu.MachineMicrovm) {
		r.machine = qemu.MachineMicrovm
	}
	if !r.kern.pvh {
		if p.VMM == cloudhypervisor.Name {
			return vmm.NotSupported(p.VMM, "a compressed bzImage kernel (give the uncompressed vmlinux or the kernel directory)")
		}
		if accel == vmm.AccelTCG {
			r.note("booting the compressed kernel %s: about 5 s slower under TCG than its vmlinux (give the kernel directory to use the extracted vmlinux)", r.kernelPath)
		}
	}

	// Paths.
	p.RunDir = s.RunDir
	if p.RunDir == "" {
		p.RunDir = filepath.Join(o.RunRoot, p.Name)
	}
	if p.RunDir, err = filepath.Abs(p.RunDir); err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	// The VMM's sockets are in the directory it owns; what the supervisor
	// serves (the relayed console, the guest socket) is root's.
	vmmDir := VMMDir(p.RunDir)
	p.Console = filepath.Join(vmmDir, ConsoleName)
	if !r.caps.SerialSocket {
		p.Console = filepath.Join(p.RunDir, ConsoleName)
		p.SerialRelay = filepath.Join(vmmDir, SerialName)
	}
	if r.caps.AgentChannel {
		p.Agent = &AgentPlan{
			VMMSocket: filepath.Join(vmmDir, AgentName), Transport: r.caps.AgentTransport,
			Socket:      filepath.Join(p.RunDir, GuestSocketName),
			WorkloadLog: WorkloadLogPath(r.o, p.Name),
		}
	}
	if s.InputsFile != "" {
		if p.Agent == nil {
			return vmm.NotSupported(p.VMM, "inputs (they travel over the agent channel, which this hypervisor lacks)")
		}
		if p.Agent.Inputs, err = filepath.Abs(s.InputsFile); err != nil {
			return fmt.Errorf("inputs file: %w", err)
		}
		if st, err := os.Stat(p.Agent.Inputs); err != nil || !st.Mode().IsRegular() {
			if !r.dry {
				return badInput("inputs_file %s is not a readable file", s.InputsFile).With("field", "inputs_file")
			}
			r.warn("inputs_file %s is not a readable file here", s.InputsFile)
		}
	}
	for _, sp := range []string{filepath.Join(vmmDir, SocketName), p.Console, p.SerialRelay, filepath.Join(vmmDir, AgentName), filepath.Join(p.RunDir, GuestSocketName)} {
		if len(sp) > maxSocketPath {
			return badInput("socket path %s is %d bytes; unix sockets allow %d: choose a shorter run dir", sp, len(sp), maxSocketPath).
				With("field", "run_dir").With("bytes", len(sp))
		}
	}
	p.SerialLog = s.SerialLog
	if p.SerialLog == "" {
		p.SerialLog = filepath.Join(o.StateDir, "vms", p.Name, "serial.log")
	}
	if p.SerialLog, err = filepath.Abs(p.SerialLog); err != nil {
		return fmt.Errorf("serial log: %w", err)
	}
	p.StopAfter = Duration(10 * time.Second)
	if s.StopTimeoutMS > 0 {
		p.StopAfter = Duration(time.Duration(s.StopTimeoutMS) * time.Millisecond)
	}
	return nil
}

// kernel is phase 4: the image booted (a kernel directory's vmlinux,
// extracted on first use).
func (r *prep) kernel(ctx context.Context) error {
	if r.kernelDir == nil {
		return nil
	}
	vml, err := r.kernelDir.Vmlinux(ctx)
	if err != nil {
		return err
	}
	r.kern.path = vml
	return nil
}

// cmdline is phase 5.
func (r *prep) cmdline(context.Context) error {
	var err error
	p := r.p
	p.Cmdline, p.Manifest.InInitrd, err = buildCmdline(r.s, r.m, p.Name, p.Network, p.Accel, r.machine, r.tscCache())
	if err != nil {
		return err
	}
	r.warnHostTSC()
	if p.Manifest.InInitrd {
		r.note("the manifest does not fit the %d-byte kernel command line: it travels in the initrd as %s", bootargs.MaxCmdline, ManifestInVM)
	}
	return nil
}

// verified is phase 6: every artifact must match its checksum before
// anything is decided about the initrd, which reads them.
func (r *prep) verified(h *hashing) error {
	if err := h.wait(); err != nil {
		return err
	}
	for _, a := range r.arts {
		if !a.Verified {
			r.note("%s %s has no checksum in the manifest: not verified", a.Role, a.Path)
		}
	}
	r.p.Artifacts = r.arts
	return nil
}

// initrd is phase 7.
func (r *prep) initrd(ctx context.Context) error {
	var err error
	r.p.Initrd, err = planInitrd(ctx, r.s, r.m, r.arts, r.kern, r.p, r.o, r.note)
	return err
}

// disks is phase 8: the root disk first (/dev/vda), then the manifest's,
// then the spec's. Writable ones boot from the VM's own copy unless
// DiskMode is "direct".
func (r *prep) disks(context.Context) error {
	p, m := r.p, r.m
	diskDir := filepath.Join(r.o.StateDir, "vms", p.Name, "disks")
	own := func(a Artifact, file string) string {
		if d, ok := r.s.OwnDisks[a.Role]; ok {
			r.note("%s: booting the VM's own image %s (%s)", a.Role, d.Path, or(d.Format, "raw"))
			return d.Path
		}
		if !r.copyDisks {
			return a.Path
		}
		c := DiskCopy{Role: a.Role, From: a.Path, To: filepath.Join(diskDir, file)}
		if _, err := os.Stat(c.To); err == nil {
			c.Exists = true
			r.note("%s: reusing this VM's copy %s (earlier writes persist)", a.Role, c.To)
		}
		p.DiskCopies = append(p.DiskCopies, c)
		return c.To
	}
	var disks []vmm.Disk
	var roles []string
	for _, a := range r.arts {
		switch {
		case a.Role == "rootfs":
			roles = append(roles, a.Role)
			disks = append(disks, vmm.Disk{Path: own(a, "rootfs.img"), Format: ownFormat(r.s, a.Role, m.Rootfs.Format)})
		case strings.HasPrefix(a.Role, "disk:"):
			d := m.Disks[slices.IndexFunc(m.Disks, func(d manifest.Disk) bool { return "disk:"+d.Name == a.Role })]
			path, format := a.Path, d.Format
			if !d.ReadOnly {
				path, format = own(a, "disk-"+d.Name+".img"), ownFormat(r.s, a.Role, d.Format)
			}
			roles = append(roles, a.Role)
			disks = append(disks, vmm.Disk{Path: path, Format: format, ReadOnly: d.ReadOnly})
		}
	}
	for i := range r.s.Disks {
		roles = append(roles, fmt.Sprintf("extra:%d", i))
	}
	for i := range r.s.Volumes {
		roles = append(roles, fmt.Sprintf("volume:%d", i))
	}
	p.Config.Disks = append(append(disks, r.s.Disks...), volumeDisks(r.s.Volumes)...)
	p.DiskRoles = roles
	return nil
}

// argv is phase 9.
func (r *prep) argv(context.Context) error {
	p := r.p
	p.Config = vmm.Config{
		Name: p.Name, CPUs: r.cpus, MemoryMB: r.mem,
		Kernel: r.kern.path, Cmdline: p.Cmdline,
		Disks: p.Config.Disks, APISocket: filepath.Join(VMMDir(p.RunDir), SocketName),
		Serial:  vmm.Serial{LogFile: p.SerialLog, Socket: p.Console},
		Machine: r.machine, Accel: p.Accel,
	}
	if p.SerialRelay != "" {
		p.Config.Serial = vmm.Serial{Socket: p.SerialRelay}
	}
	if p.Agent != nil {
		p.Config.AgentSocket = p.Agent.VMMSocket
	}
	if p.Initrd != nil {
		p.Config.Initramfs = p.Initrd.Path
	}
	if nw := p.Network; nw != nil {
		p.Config.Nets = []vmm.Net{{Tap: nw.Tap, MAC: nw.MAC}}
	}
	if r.s.Restore != nil {
		dir, err := stateDir(r.s.Restore)
		if err != nil {
			return err
		}
		p.Restore = &RestorePlan{State: dir}
		p.Config.RestoreFrom = dir
	}
	var err error
	p.Argv, err = r.b.Argv(p.Config)
	return err
}

// hashing is phase 3: the artifacts' checksums, verified in the
// background while the other phases run.
type hashing struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	errs   []error
}

func startHashing(ctx context.Context, arts []Artifact, cacheDir, mode string) *hashing {
	ctx, cancel := context.WithCancel(ctx)
	h := &hashing{cancel: cancel, errs: make([]error, len(arts))}
	for i := range arts {
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			h.errs[i] = verify(ctx, &arts[i], cacheDir, mode)
		}()
	}
	return h
}

// wait returns the first artifact's error, once every hash is done.
func (h *hashing) wait() error {
	h.wg.Wait()
	for _, err := range h.errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// stop ends the hashes still running (Prepare failed in another phase)
// and waits for them.
func (h *hashing) stop() {
	h.cancel()
	h.wg.Wait()
}

func loadManifest(s Spec) (*manifest.Manifest, []byte, error) {
	data := []byte(s.Manifest)
	switch {
	case len(data) > 0 && s.ManifestPath != "":
		return nil, nil, apierr.New(apierr.Usage, "give the manifest or its path (--manifest), not both")
	case len(data) == 0 && s.ManifestPath == "":
		return nil, nil, apierr.New(apierr.Usage, "a plugin manifest is required: --manifest FILE or \"manifest\" in the request")
	case s.ManifestPath != "":
		b, err := os.ReadFile(s.ManifestPath)
		if err != nil {
			return nil, nil, fmt.Errorf("reading manifest: %w", err)
		}
		data = b
	}
	m, err := manifest.Parse(data)
	if err != nil {
		return nil, nil, err
	}
	if !m.IsEnabled() {
		return nil, nil, apierr.New(apierr.Conflict, "plugin %s is disabled", m.Name).With("plugin", m.Name)
	}
	js, err := m.JSON()
	if err != nil {
		return nil, nil, err
	}
	return m, js, nil
}

// localPath turns an artifact URL into a path; remote URLs must be staged
// first (fetching is fledge's and volantd's job, not the launcher's).
func localPath(role, u string) (string, error) {
	if strings.HasPrefix(u, "/") {
		return u, nil
	}
	pu, err := url.Parse(u)
	if err == nil && pu.Scheme == "file" {
		return pu.Path, nil
	}
	return "", vmm.NotSupported("launch", fmt.Sprintf("booting %s from %s: fetch it to a local file first", role, u))
}

func artifacts(m *manifest.Manifest) ([]Artifact, error) {
	var out []Artifact
	add := func(role, u, sum string) error {
		p, err := localPath(role, u)
		if err != nil {
			return err
		}
		out = append(out, Artifact{Role: role, Path: p, SHA256: strings.TrimPrefix(sum, "sha256:")})
		return nil
	}
	if m.Initramfs != nil {
		if err := add("initramfs", m.Initramfs.URL, m.Initramfs.Checksum); err != nil {
			return nil, err
		}
	}
	if m.Rootfs != nil {
		if err := add("rootfs", m.Rootfs.URL, m.Rootfs.Checksum); err != nil {
			return nil, err
		}
	}
	for _, d := range m.Disks {
		if err := add("disk:"+d.Name, d.Source, d.Checksum); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// kernelInfo is the resolved kernel.
type kernelInfo struct {
	path       string // the image booted
	pvh        bool   // an ELF vmlinux (PVH entry); else a bzImage
	release    string
	modulesDir string // "" when not known (a bare image file)
}

func isELF(p string) bool {
	f, err := elf.Open(p)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

func resolveNetwork(s Spec, name string, lease *Lease, m *manifest.Manifest, note func(string, ...any)) (*network, error) {
	mode := "bridged"
	if m.Network != nil && m.Network.Mode != "" {
		mode = m.Network.Mode
	}
	tap := s.Tap
	if tap == "" && s.NetTap != nil {
		tap = s.NetTap.Tap
	}
	if mode == "none" {
		if lease != nil || tap != "" {
			return nil, badInput("plugin %s has network mode none, but a lease or tap was given", m.Name)
		}
		return nil, unusedNetwork(s, "plugin "+m.Name+" has network mode none")
	}
	if lease == nil && tap == "" {
		note("no lease and no tap given: the VM has no network")
		return nil, unusedNetwork(s, "no lease and no tap were given")
	}
	nw := &network{Tap: tap, MAC: s.MAC}
	if nw.Tap == "" {
		nw.Tap = DefaultTapName(name)
		note("no tap named: using %s (create it with volant-net, or pipe volant-net tap add output)", nw.Tap)
	}
	if len(nw.Tap) > 15 {
		return nil, badInput("tap name %q is longer than 15 characters", nw.Tap).With("field", "tap")
	}
	if nw.MAC == "" && s.NetTap != nil {
		nw.MAC = s.NetTap.MAC
	}
	if lease != nil {
		if nw.MAC == "" {
			nw.MAC = lease.MAC
		}
		ip, err := netip.ParseAddr(lease.IP)
		if err != nil || !ip.Is4() {
			return nil, badInput("lease ip %q is not an IPv4 address", lease.IP).With("field", "lease.ip")
		}
		if lease.Prefix < 1 || lease.Prefix > 32 {
			return nil, badInput("lease prefix %d is not a prefix length 1-32", lease.Prefix).With("field", "lease.prefix")
		}
		nw.IP = netip.PrefixFrom(ip, lease.Prefix)
		if lease.Gateway != "" {
			gw, err := netip.ParseAddr(lease.Gateway)
			if err != nil {
				return nil, badInput("lease gateway %q is not an IP address", lease.Gateway).With("field", "lease.gateway")
			}
			nw.Gateway = gw
		}
	}
	if nw.MAC == "" {
		nw.MAC = DefaultMAC(name)
	}
	if _, err := hostnet.ParseGuestMAC(nw.MAC); err != nil {
		return nil, apierr.From(err).With("field", "mac")
	}
	dns := s.DNS
	if len(dns) == 0 && lease != nil {
		dns = lease.DNS
	}
	for _, d := range dns {
		a, err := netip.ParseAddr(d)
		if err != nil {
			return nil, badInput("dns %q is not an IP address", d).With("field", "dns")
		}
		nw.DNS = append(nw.DNS, a)
	}
	return nw, nil
}

// buildCmdline composes the guest kernel command line: console and timer
// settings, the volant.* keys, then the caller's extra words. When it does
// not fit bootargs.MaxCmdline with the encoded manifest, the manifest is
// replaced by volant.manifest_file (inInitrd); if it still does not fit,
// CMDLINE_TOO_LONG.
func buildCmdline(s Spec, m *manifest.Manifest, name string, nw *network, accel vmm.Accel, machine, cacheDir string) (line string, inInitrd bool, err error) {
	base := []string{"console=ttyS0", "panic=-1"}
	if !s.Debug {
		base = append(base, "quiet")
	}
	if accel == vmm.AccelTCG && machine == qemu.MachineMicrovm {
		// microvm has no PIT-backed calibration path the kernel trusts under
		// TCG; the guest TSC is the host's, so give its rate.
		khz, err := hostTSCkHz(cacheDir)
		if err != nil {
			return "", false, fmt.Errorf("reading the host TSC rate for tsc_early_khz: %w", err)
		}
		base = append(base, "tsc_early_khz="+strconv.Itoa(khz))
	}
	// The guest kernel keeps its CPU vulnerability mitigations (a hostile
	// guest process must not read its neighbours' memory inside the
	// guest): mitigations=off only when the caller asks, in kernel_args
	// (bench/boot measures what they cost).
	base = append(base, "tsc=reliable", "no_timer_check", "8250.nr_uarts=1",
		"random.trust_cpu=on", "cryptomgr.notests")
	enc, err := encodeManifest(m, cacheDir)
	if err != nil {
		return "", false, err
	}
	a := m.BootArgsEncoded(enc)
	a.VM = name
	if nw != nil {
		a.IP, a.Gateway, a.DNS = nw.IP, nw.Gateway, nw.DNS
	}
	a.APIHost, a.APIPort = s.APIHost, s.APIPort
	a.Debug = s.Debug
	a.Volumes = volumeArgs(s.Volumes)
	a.Inputs = s.InputsFile != ""
	compose := func(a bootargs.Args) string {
		words := append(append([]string{}, base...), a.Fields()...)
		return strings.Join(append(words, s.KernelArgs...), " ")
	}
	line = compose(a)
	if len(line) <= bootargs.MaxCmdline {
		return line, false, nil
	}
	full := len(line)
	a.Manifest, a.ManifestFile = "", ManifestInVM
	line = compose(a)
	if len(line) <= bootargs.MaxCmdline {
		return line, true, nil
	}
	return "", false, apierr.New(apierr.CmdlineTooLong,
		"the kernel command line is %d bytes even without the manifest (%d with it); the kernel keeps %d", len(line), full, bootargs.MaxCmdline).
		With("bytes", len(line)).With("budget", bootargs.MaxCmdline).
		With("hint", "shorten kernel_args")
}
