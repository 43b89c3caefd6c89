package launch

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/hostnet"
	"github.com/volantvm/volant/lib/names"
	"github.com/volantvm/volant/lib/vmm"
)

// Spec is one VM as its caller describes it: the JSON request of
// `volant-launch argv` and `run` (flags fill the same fields), and what
// volantd passes to Prepare. Everything but the name and the manifest has a
// default.
type Spec struct {
	// Name is the VM's name (also its hostname); defaults to the lease's vm.
	Name string `json:"name,omitempty"`
	// Manifest is the plugin manifest itself; ManifestPath names a file
	// holding it. Exactly one is required.
	Manifest     json.RawMessage `json:"manifest,omitempty"`
	ManifestPath string          `json:"manifest_path,omitempty"`
	// Kernel is a kernel directory (lib/kernel layout, default
	// Options.KernelDir), an uncompressed vmlinux, or a bzImage.
	Kernel string `json:"kernel,omitempty"`
	// BootInitramfs is a prebuilt boot initramfs (kestrel + modules, from
	// `fledge boot-initramfs`); without it one is built from Kestrel and the
	// kernel's modules and cached.
	BootInitramfs string `json:"boot_initramfs,omitempty"`
	// Kestrel is the kestrel binary for a built boot initramfs (default
	// Options.Kestrel).
	Kestrel string `json:"kestrel,omitempty"`
	// BootLayer says whether an initramfs plugin gets the boot layout
	// (kestrel + modules) layered underneath: "auto" (default: when its
	// archive has no modules for this kernel), "always" or "never".
	BootLayer string `json:"boot_layer,omitempty"`
	// VMM is "auto" (default: Cloud Hypervisor where usable, else QEMU),
	// "cloud-hypervisor" or "qemu".
	VMM string `json:"vmm,omitempty"`
	// Accel is auto (default), kvm or tcg.
	Accel vmm.Accel `json:"accel,omitempty"`
	// Machine is QEMU's machine type: microvm (default) or pc.
	Machine string `json:"machine,omitempty"`
	// CPUs and MemoryMB override the manifest's resources.
	CPUs     int `json:"cpus,omitempty"`
	MemoryMB int `json:"memory_mb,omitempty"`
	// Disks are attached after the manifest's root and extra disks.
	Disks []vmm.Disk `json:"disks,omitempty"`
	// Volumes are attached after Disks and mounted by kestrel before the
	// workload starts (see Volume).
	Volumes []Volume `json:"volumes,omitempty"`
	// OwnDisks give the VM's own copy of writable manifest disks, by role
	// (rootfs, disk:<name>), as files the caller made (volantd derives
	// them from a snapshot's disks: reflinks, or qcow2 overlays): they
	// are booted as they are, instead of a copy of the artifact.
	OwnDisks map[string]vmm.Disk `json:"own_disks,omitempty"`
	// Restore runs the VM from a saved state instead of booting it.
	Restore *RestoreSpec `json:"restore,omitempty"`
	// Tap is the host tap device of the VM's NIC (default: the net_tap
	// result's, else derived from the name, see DefaultTapName).
	Tap string `json:"tap,omitempty"`
	// MAC is the guest's MAC (default: the lease's, else derived from the name).
	MAC string `json:"mac,omitempty"`
	// Lease is `volant-ipam lease` output (kind ipam.lease), piped in.
	Lease *Lease `json:"lease,omitempty"`
	// NetTap is `volant-net tap add` output (kind net.tap), piped in.
	NetTap *NetTap `json:"net_tap,omitempty"`
	// DNS resolvers for the guest.
	DNS []string `json:"dns,omitempty"`
	// APIHost and APIPort are the control plane kestrel reports to.
	APIHost string `json:"api_host,omitempty"`
	APIPort int    `json:"api_port,omitempty"`
	// SerialLog receives the guest's console (default
	// <Options.StateDir>/vms/<name>/serial.log).
	SerialLog string `json:"serial_log,omitempty"`
	// RunDir holds the sockets, pid file and resolved plan (default
	// <Options.RunRoot>/<name>); it is removed when the VM stops.
	RunDir string `json:"run_dir,omitempty"`
	// KernelArgs are extra words for the kernel command line.
	KernelArgs []string `json:"kernel_args,omitempty"`
	// Debug drops "quiet" and sets volant.debug=1.
	Debug bool `json:"debug,omitempty"`
	// Verify is how artifacts are checked against their sha256: "cached"
	// (default: hashed unless this host already verified this file version,
	// see VerifyCached) or "always".
	Verify string `json:"verify,omitempty"`
	// DiskMode says what writable disks of the manifest (the rootfs and
	// disks not marked readonly) boot from: "copy" (default) gives the VM
	// its own copy under <Options.StateDir>/vms/<name>/disks/, made from the
	// verified artifact on first start and kept across restarts, so the
	// guest's writes persist and never touch the plugin's image; "direct"
	// boots the artifact itself (one VM at a time; its writes change it and
	// its next checksum verification fails).
	DiskMode string `json:"disk_mode,omitempty"`
	// InsecureVMM runs the VMM as root without a jail (lib/vmm/jail), as
	// Options.Jail.Insecure does for every VM of a host.
	InsecureVMM bool `json:"insecure_vmm,omitempty"`
	// StopTimeoutMS is how long `run` gives the guest to power off after the
	// ACPI power button before stopping it hard (default 10000).
	StopTimeoutMS int `json:"stop_timeout_ms,omitempty"`
	// InputsFile holds the VM's inputs (agentchan.Inputs as JSON: env and
	// files, secrets among them; keep it 0600): kestrel holds the
	// workload until `run` has sent them over the agent channel, at every
	// boot. Needs a hypervisor with an agent channel.
	InputsFile string `json:"inputs_file,omitempty"`
}

// VMName is the VM's name: Name, else the piped lease's vm, else the piped
// tap's; "" when none says.
func (s *Spec) VMName() string {
	switch l := s.lease(); {
	case s.Name != "":
		return s.Name
	case l != nil && l.VM != "":
		return l.VM
	case s.NetTap != nil:
		return s.NetTap.VM
	}
	return ""
}

// lease is the spec's lease: its own, else the one the piped tap carries.
func (s *Spec) lease() *Lease {
	if s.Lease == nil && s.NetTap != nil {
		return s.NetTap.Lease
	}
	return s.Lease
}

// Accepts implements cli.Chainer: the output of `volant-ipam lease` and of
// `volant-net tap add` can be piped into argv and run.
func (*Spec) Accepts() map[string]string {
	return map[string]string{"ipam.lease": "lease", "net.tap": "net_tap"}
}

// Lease is the part of a `volant-ipam lease` result the launcher reads. It
// decodes leniently: the result belongs to another command and may grow.
type Lease struct {
	VM      string   `json:"vm"`
	IP      string   `json:"ip"`
	Prefix  int      `json:"prefix"`
	Gateway string   `json:"gateway,omitempty"`
	MAC     string   `json:"mac,omitempty"`
	DNS     []string `json:"dns,omitempty"`
}

// UnmarshalJSON accepts "prefix" as a number (24) or a string ("24", "/24"
// or "192.168.127.0/24"), "ip" with or without "/NN", and ignores fields it
// does not know.
func (l *Lease) UnmarshalJSON(b []byte) error {
	var raw struct {
		VM      string          `json:"vm"`
		Name    string          `json:"name"`
		IP      string          `json:"ip"`
		Prefix  json.RawMessage `json:"prefix"`
		Gateway string          `json:"gateway"`
		MAC     string          `json:"mac"`
		DNS     []string        `json:"dns"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	*l = Lease{VM: raw.VM, IP: raw.IP, Gateway: raw.Gateway, MAC: raw.MAC, DNS: raw.DNS}
	if l.VM == "" {
		l.VM = raw.Name
	}
	if ip, bits, ok := strings.Cut(l.IP, "/"); ok {
		l.IP = ip
		n, err := strconv.Atoi(bits)
		if err != nil {
			return fmt.Errorf("lease: ip %q has a bad prefix length", raw.IP)
		}
		l.Prefix = n
	}
	p := bytes.TrimSpace(raw.Prefix)
	if len(p) == 0 || string(p) == "null" {
		return nil
	}
	var n int
	if json.Unmarshal(p, &n) == nil {
		l.Prefix = n
		return nil
	}
	var s string
	if err := json.Unmarshal(p, &s); err != nil {
		return fmt.Errorf("lease: prefix must be a number or a string, got %s", p)
	}
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		s = s[i+1:]
	}
	v, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("lease: prefix %q is not a prefix length", s)
	}
	l.Prefix = v
	return nil
}

// NetTap is the part of a `volant-net tap add` result the launcher reads:
// the tap's name and the lease it was made for. Lenient, like Lease.
type NetTap struct {
	Tap   string `json:"tap"`
	VM    string `json:"vm,omitempty"`
	MAC   string `json:"mac,omitempty"` // the guest's MAC
	Lease *Lease `json:"lease,omitempty"`
}

// UnmarshalJSON reads "tap" (or "name"), "vm", "mac" and "lease", ignoring
// other fields.
func (n *NetTap) UnmarshalJSON(b []byte) error {
	var raw struct {
		Tap   string `json:"tap"`
		Name  string `json:"name"`
		VM    string `json:"vm"`
		MAC   string `json:"mac"`
		Lease *Lease `json:"lease"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("net_tap: %w", err)
	}
	*n = NetTap{Tap: raw.Tap, VM: raw.VM, MAC: raw.MAC, Lease: raw.Lease}
	if n.Tap == "" {
		n.Tap = raw.Name
	}
	return nil
}

// ValidName reports whether s can name a VM: lib/names' rule, shared with
// volant-ipam and volantd (the name becomes a directory, a hostname and
// part of a tap name).
func ValidName(s string) bool { return names.Valid(s) }

// DefaultTapName is the tap name volant-net derives for a VM
// (hostnet.TapName: "vt-" + the name when it fits, else a hashed form). It
// is used only when neither the spec nor piped `volant-net tap add` output
// names the tap.
func DefaultTapName(vm string) string { return hostnet.TapName(vm) }

// DefaultMAC is the MAC of a VM without a lease that carries one: the
// lease's own rule (names.MAC), so a VM has one address either way.
func DefaultMAC(vm string) string { return names.MAC(vm, 0) }

// network is the resolved NIC and guest address.
type network struct {
	Tap     string       `json:"tap"`
	MAC     string       `json:"mac"`
	IP      netip.Prefix `json:"ip,omitzero"`
	Gateway netip.Addr   `json:"gateway,omitzero"`
	DNS     []netip.Addr `json:"dns,omitempty"`
}

func badInput(format string, args ...any) *apierr.Error {
	return apierr.New(apierr.InvalidInput, format, args...)
}
