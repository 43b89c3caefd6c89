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
	SocketName    = "ctl.sock"     // CH API socket or QEMU QMP socket
	ConsoleName   = "console.sock" // attachable serial console
	SerialName    = "serial.sock"  // the VMM's own serial socket, when relayed
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
	Logger   *slog.Logger
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
	// DiskCopies are the VM's own copies of writable disks (DiskMode
	// "copy"); Run makes the missing ones before the VMM starts.
	DiskCopies []DiskCopy   `json:"disk_copies,omitempty"`
	StopAfter  Duration     `json:"stop_timeout"`
	Notes      []string     `json:"notes,omitempty"`
	Manifest   manifestInfo `json:"manifest"`

	manifestJSON []byte
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

// Prepare checks a spec and plans the VM: it parses the manifest, verifies
// every artifact's sha256 (CHECKSUM_MISMATCH on a difference), picks the
// backend and acceleration (NOT_SUPPORTED or UNAVAILABLE when the host or
// backend cannot), resolves the kernel, builds the kernel command line (the
// manifest moves into the initrd when the line would exceed
// bootargs.MaxCmdline), plans the initrd layers and builds the argv. It
// starts nothing and writes only caches (an extracted vmlinux, a built boot
// initramfs).
func Prepare(ctx context.Context, s Spec, o Options) (*Plan, error) {
	o = o.withDefaults()
	m, mjson, err := loadManifest(s)
	if err != nil {
		return nil, err
	}
	name, lease := s.VMName(), s.lease()
	if name == "" {
		return nil, apierr.New(apierr.Usage, "the VM needs a name: --name, \"name\", or a piped lease")
	}
	if err := names.Check("VM name", name); err != nil {
		return nil, err
	}
	if lease != nil && lease.VM != "" && lease.VM != name {
		return nil, badInput("the lease is for VM %q, not %q", lease.VM, name).With("field", "lease.vm")
	}
	if s.NetTap != nil && s.NetTap.VM != "" && s.NetTap.VM != name {
		return nil, badInput("the tap is for VM %q, not %q", s.NetTap.VM, name).With("field", "net_tap.vm")
	}
	p := &Plan{Name: name, manifestJSON: mjson}
	p.Manifest = manifestInfo{Name: m.Name, Version: m.Version, Boot: "initramfs"}
	if m.Rootfs != nil {
		p.Manifest.Boot = "rootfs"
	}
	note := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		p.Notes = append(p.Notes, msg)
		o.Logger.Info(msg)
	}

	// Artifacts: hashed in the background while the rest is planned.
	arts, err := artifacts(m)
	if err != nil {
		return nil, err
	}
	switch s.Verify {
	case "", VerifyCached, VerifyAlways:
	default:
		return nil, badInput("verify %q: want cached or always", s.Verify).With("field", "verify")
	}
	var hashWG sync.WaitGroup
	hashErr := make([]error, len(arts))
	for i := range arts {
		hashWG.Add(1)
		go func() {
			defer hashWG.Done()
			hashErr[i] = verify(&arts[i], o.CacheDir, s.Verify)
		}()
	}
	defer hashWG.Wait()

	// Backend and acceleration.
	b, _, err := pickBackend(ctx, s.VMM, o)
	if err != nil {
		return nil, err
	}
	p.VMM = b.Name()
	caps := b.Capabilities()
	want := s.Accel
	if want == "" {
		want = vmm.AccelAuto
	}
	tcgOK := slices.Contains(caps.Accels, vmm.AccelTCG)
	accel, why, err := vmm.ResolveAccel(want, o.HostRoot, tcgOK)
	if err != nil {
		return nil, &apierr.Error{Code: apierr.NotSupported, Message: fmt.Sprintf("%s: %v", b.Name(), err),
			Details: map[string]any{"backend": b.Name(), "accel": string(want)}, Err: vmm.ErrNotSupported}
	}
	if why != "" {
		note("%s", why)
	}
	p.Accel = accel
	machine := s.Machine
	if machine == "" && slices.Contains(caps.Machines, qemu.MachineMicrovm) {
		machine = qemu.MachineMicrovm
	}

	// Kernel.
	kern, err := resolveKernel(ctx, s.Kernel, o)
	if err != nil {
		return nil, err
	}
	if !kern.pvh {
		if p.VMM == cloudhypervisor.Name {
			return nil, vmm.NotSupported(p.VMM, "a compressed bzImage kernel (give the uncompressed vmlinux or the kernel directory)")
		}
		if accel == vmm.AccelTCG {
			note("booting the compressed kernel %s: about 5 s slower under TCG than its vmlinux (give the kernel directory to use the extracted vmlinux)", kern.path)
		}
	}

	// Resources.
	cpus, mem := s.CPUs, s.MemoryMB
	if cpus == 0 {
		cpus = m.Resources.CPUCores
	}
	if mem == 0 {
		mem = m.Resources.MemoryMB
	}

	// Network.
	nw, err := resolveNetwork(s, name, lease, m, note)
	if err != nil {
		return nil, err
	}
	p.Network = nw

	// Paths.
	p.RunDir = s.RunDir
	if p.RunDir == "" {
		p.RunDir = filepath.Join(o.RunRoot, name)
	}
	if p.RunDir, err = filepath.Abs(p.RunDir); err != nil {
		return nil, fmt.Errorf("run dir: %w", err)
	}
	sock := filepath.Join(p.RunDir, SocketName)
	p.Console = filepath.Join(p.RunDir, ConsoleName)
	if !caps.SerialSocket {
		p.SerialRelay = filepath.Join(p.RunDir, SerialName)
	}
	for _, sp := range []string{sock, p.Console, p.SerialRelay} {
		if len(sp) > maxSocketPath {
			return nil, badInput("socket path %s is %d bytes; unix sockets allow %d: choose a shorter run dir", sp, len(sp), maxSocketPath).
				With("field", "run_dir").With("bytes", len(sp))
		}
	}
	p.SerialLog = s.SerialLog
	if p.SerialLog == "" {
		p.SerialLog = filepath.Join(o.StateDir, "vms", name, "serial.log")
	}
	if p.SerialLog, err = filepath.Abs(p.SerialLog); err != nil {
		return nil, fmt.Errorf("serial log: %w", err)
	}
	p.StopAfter = Duration(10 * time.Second)
	if s.StopTimeoutMS > 0 {
		p.StopAfter = Duration(time.Duration(s.StopTimeoutMS) * time.Millisecond)
	}

	// Kernel command line (the manifest may have to move into the initrd).
	p.Cmdline, p.Manifest.InInitrd, err = buildCmdline(s, m, name, nw, accel, machine, o.CacheDir)
	if err != nil {
		return nil, err
	}
	if p.Manifest.InInitrd {
		note("the manifest does not fit the %d-byte kernel command line: it travels in the initrd as %s", bootargs.MaxCmdline, ManifestInVM)
	}

	// Every artifact must match its checksum before anything is decided
	// about the initrd, which reads them.
	hashWG.Wait()
	for i, err := range hashErr {
		if err != nil {
			return nil, err
		}
		if !arts[i].Verified {
			note("%s %s has no checksum in the manifest: not verified", arts[i].Role, arts[i].Path)
		}
	}
	p.Artifacts = arts

	// Initrd layers.
	p.Initrd, err = planInitrd(ctx, s, m, arts, kern, p, o, note)
	if err != nil {
		return nil, err
	}

	// Disks: the root disk first (/dev/vda), then the manifest's, then the
	// spec's. Writable ones boot from the VM's own copy unless DiskMode is
	// "direct".
	copyDisks := true
	switch s.DiskMode {
	case "", "copy":
	case "direct":
		copyDisks = false
	default:
		return nil, badInput("disk_mode must be copy or direct, got %q", s.DiskMode).With("field", "disk_mode")
	}
	diskDir := filepath.Join(o.StateDir, "vms", name, "disks")
	own := func(a Artifact, file string) string {
		if !copyDisks {
			return a.Path
		}
		c := DiskCopy{Role: a.Role, From: a.Path, To: filepath.Join(diskDir, file)}
		if _, err := os.Stat(c.To); err == nil {
			c.Exists = true
			note("%s: reusing this VM's copy %s (earlier writes persist)", a.Role, c.To)
		}
		p.DiskCopies = append(p.DiskCopies, c)
		return c.To
	}
	var disks []vmm.Disk
	for _, a := range arts {
		switch {
		case a.Role == "rootfs":
			disks = append(disks, vmm.Disk{Path: own(a, "rootfs.img"), Format: m.Rootfs.Format})
		case strings.HasPrefix(a.Role, "disk:"):
			d := m.Disks[slices.IndexFunc(m.Disks, func(d manifest.Disk) bool { return "disk:"+d.Name == a.Role })]
			path := a.Path
			if !d.ReadOnly {
				path = own(a, "disk-"+d.Name+".img")
			}
			disks = append(disks, vmm.Disk{Path: path, Format: d.Format, ReadOnly: d.ReadOnly})
		}
	}
	disks = append(disks, s.Disks...)

	p.Config = vmm.Config{
		Name: name, CPUs: cpus, MemoryMB: mem,
		Kernel: kern.path, Cmdline: p.Cmdline,
		Disks: disks, APISocket: sock,
		Serial:  vmm.Serial{LogFile: p.SerialLog, Socket: p.Console},
		Machine: machine, Accel: accel,
	}
	if p.SerialRelay != "" {
		p.Config.Serial = vmm.Serial{Socket: p.SerialRelay}
	}
	if p.Initrd != nil {
		p.Config.Initramfs = p.Initrd.Path
	}
	if nw != nil {
		p.Config.Nets = []vmm.Net{{Tap: nw.Tap, MAC: nw.MAC}}
	}
	if p.Argv, err = b.Argv(p.Config); err != nil {
		return nil, err
	}
	return p, nil
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

func resolveKernel(ctx context.Context, k string, o Options) (kernelInfo, error) {
	if k == "" {
		k = o.KernelDir
	}
	st, err := os.Stat(k)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && k == o.KernelDir {
			_, oerr := kernel.Open(k) // its error says how to fetch one
			return kernelInfo{}, oerr
		}
		return kernelInfo{}, fmt.Errorf("kernel: %w", err)
	}
	if st.IsDir() {
		kd, err := kernel.Open(k)
		if err != nil {
			return kernelInfo{}, err
		}
		vml, err := kd.Vmlinux(ctx)
		if err != nil {
			return kernelInfo{}, err
		}
		return kernelInfo{path: vml, pvh: true, release: kd.Release, modulesDir: kd.ModulesDir}, nil
	}
	ki := kernelInfo{path: k, pvh: isELF(k)}
	// A vmlinux or vmlinuz inside a kernel directory still has its modules.
	if kd, err := kernel.Open(filepath.Dir(k)); err == nil {
		ki.release, ki.modulesDir = kd.Release, kd.ModulesDir
	}
	return ki, nil
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
		return nil, nil
	}
	if lease == nil && tap == "" {
		note("no lease and no tap given: the VM has no network")
		return nil, nil
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
	base = append(base, "tsc=reliable", "no_timer_check", "8250.nr_uarts=1", "mitigations=off",
		"random.trust_cpu=on", "cryptomgr.notests")
	a, err := m.BootArgs()
	if err != nil {
		return "", false, err
	}
	a.VM = name
	if nw != nil {
		a.IP, a.Gateway, a.DNS = nw.IP, nw.Gateway, nw.DNS
	}
	a.APIHost, a.APIPort = s.APIHost, s.APIPort
	a.Debug = s.Debug
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
