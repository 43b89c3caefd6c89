// Package vmm is the hypervisor layer: a small Backend interface that Cloud
// Hypervisor (lib/vmm/cloudhypervisor) and QEMU (lib/vmm/qemu) implement,
// and the VM configuration they both take.
//
// A backend has a name, capabilities, a pure argv builder (it opens no file
// descriptors and starts nothing; the same Config always gives the same
// argv), and a control client over the VMM's socket (CH's REST API, QEMU's
// QMP). Operations a backend cannot do fail with an apierr NOT_SUPPORTED
// error (see ErrNotSupported), early, before anything is started.
package vmm

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/volantvm/volant/lib/apierr"
)

// Accel is how guest code runs.
type Accel string

const (
	AccelAuto Accel = "auto" // KVM when it can run a stock guest kernel, else TCG
	AccelKVM  Accel = "kvm"
	AccelTCG  Accel = "tcg" // software emulation (QEMU only)
)

// Config is one VM as a backend sees it: paths and values only.
type Config struct {
	Name     string `json:"name"`
	CPUs     int    `json:"cpus"`
	MemoryMB int    `json:"memory_mb"`
	// Kernel is an uncompressed vmlinux (PVH entry) or a bzImage.
	Kernel string `json:"kernel"`
	// Initramfs is one file; layering several archives is the launcher's
	// job (the kernel accepts them concatenated).
	Initramfs string `json:"initramfs,omitempty"`
	Cmdline   string `json:"cmdline"`
	Disks     []Disk `json:"disks,omitempty"`
	Nets      []Net  `json:"nets,omitempty"`
	Serial    Serial `json:"serial"`
	// APISocket is the control socket: CH's --api-socket, QEMU's QMP.
	APISocket string `json:"api_socket"`
	// AgentSocket, when set, is the host's end of the agent channel to
	// kestrel (lib/agentchan), a unix socket the VMM serves: QEMU's
	// chardev for a virtio-serial port named agentchan.PortName, Cloud
	// Hypervisor's hybrid vsock socket (Capabilities.AgentTransport says
	// which).
	AgentSocket string `json:"agent_socket,omitempty"`
	// Machine is the machine type: QEMU "microvm" (default) or "pc".
	Machine string `json:"machine,omitempty"`
	// Accel must be resolved (kvm or tcg) before building argv.
	Accel Accel `json:"accel"`
	// RestoreFrom, when set, is a directory Control.SaveState wrote: the
	// VMM starts to receive that state instead of booting (QEMU waits for
	// an incoming migration; Cloud Hypervisor starts with its API alone),
	// and Control.Restore loads it. Everything else in the config must
	// describe the same machine as the one saved (CPUs, memory, the same
	// devices in the same order); paths, taps and MACs may differ.
	RestoreFrom string `json:"restore_from,omitempty"`
}

// Disk is a block device, attached in order (the first is /dev/vda).
type Disk struct {
	Path     string `json:"path"`
	Format   string `json:"format,omitempty"` // raw (default) or qcow2
	ReadOnly bool   `json:"readonly,omitempty"`
	// Serial is the disk's virtio-blk serial (/sys/block/vdX/serial in
	// the guest): at most 20 bytes of letters, digits, '.', '_' and '-'.
	// Volumes are found by it (lib/bootargs.VolumeSerial).
	Serial string `json:"serial,omitempty"`
}

// MaxSerial is the longest disk serial virtio-blk carries.
const MaxSerial = 20

// Net is a NIC backed by an existing tap device.
type Net struct {
	Tap string `json:"tap"`
	MAC string `json:"mac"` // the guest's MAC
}

// Serial says where the guest's first serial port goes. With Socket set the
// console is attachable (a unix socket server) and also appended to LogFile.
type Serial struct {
	LogFile string `json:"log_file,omitempty"`
	Socket  string `json:"socket,omitempty"`
}

// Capabilities describe what a backend can do.
type Capabilities struct {
	Machines     []string `json:"machines"`
	Accels       []Accel  `json:"accels"`
	Pause        bool     `json:"pause"`
	PowerButton  bool     `json:"power_button"`
	Counters     bool     `json:"counters"`
	SerialSocket bool     `json:"serial_socket"`
	AgentChannel bool     `json:"agent_channel"`
	// AgentTransport is how AgentSocket reaches the guest:
	// AgentVirtioSerial or AgentVsock.
	AgentTransport string   `json:"agent_transport,omitempty"`
	DiskFormats    []string `json:"disk_formats"`
	InitramfsBoot  bool     `json:"initramfs_boot"`
	// Snapshot: Control.SaveState saves a paused VM's memory and device
	// state, and a VMM started with Config.RestoreFrom runs it again
	// (Control.Restore).
	Snapshot bool `json:"snapshot"`
}

// Agent channel transports.
const (
	AgentVirtioSerial = "virtio-serial" // a byte stream to the guest's port
	AgentVsock        = "vsock"         // CH's hybrid vsock: CONNECT <port> first
)

// AgentVsockCID is the guest CID given to a VM's vsock device. Each VM's
// device has a host side of its own (a unix socket), so every guest can
// use the first CID guests may have.
const AgentVsockCID = 3

// Availability says whether a backend can run VMs on this host, and why not.
type Availability struct {
	Usable bool   `json:"usable"`
	Binary string `json:"binary,omitempty"`
	// Accel is the acceleration AccelAuto resolves to here.
	Accel  Accel  `json:"accel,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// State is a VM's state as its VMM reports it.
type State string

const (
	StateCreated  State = "created"
	StateRunning  State = "running"
	StatePaused   State = "paused"
	StateShutdown State = "shutdown"
)

// Backend is one hypervisor.
type Backend interface {
	Name() string
	Capabilities() Capabilities
	// Probe checks the host: binary present, acceleration usable.
	Probe(ctx context.Context) Availability
	// Argv returns the full command line (argv[0] is the binary) for cfg.
	// It validates cfg against Capabilities and has no side effects.
	Argv(cfg Config) ([]string, error)
	// Dial connects to the control socket of a started VMM.
	Dial(ctx context.Context, socket string) (Control, error)
}

// Control drives a running VMM.
type Control interface {
	// Ping succeeds once the VMM answers on its socket.
	Ping(ctx context.Context) error
	State(ctx context.Context) (State, error)
	// PowerButton asks the guest to shut down (ACPI power button).
	PowerButton(ctx context.Context) error
	// Shutdown stops the guest now (no guest cooperation).
	Shutdown(ctx context.Context) error
	// Quit ends the VMM process.
	Quit(ctx context.Context) error
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	// Counters returns per-device I/O counters where the backend has them.
	Counters(ctx context.Context) (map[string]map[string]int64, error)
	// SaveState writes the memory and device state of a paused VM into
	// dir (an empty directory; the files are the backend's), and leaves
	// the VM paused. The disks are not saved: the caller copies them
	// while the VM is paused.
	SaveState(ctx context.Context, dir string) error
	// Restore loads the state in cfg.RestoreFrom into a VMM started with
	// cfg, and runs the VM.
	Restore(ctx context.Context, cfg Config) error
	Close() error
}

// ErrNotSupported is wrapped by every "cannot do that" error of a backend;
// its apierr code is NOT_SUPPORTED.
var ErrNotSupported = errors.New("not supported")

// NotSupported returns a NOT_SUPPORTED error naming the backend and operation.
func NotSupported(backend, op string) error {
	return &apierr.Error{
		Code:    apierr.NotSupported,
		Message: fmt.Sprintf("%s backend does not support %s", backend, op),
		Details: map[string]any{"backend": backend, "operation": op},
		Err:     ErrNotSupported,
	}
}

// Problems lists what no backend accepts in a config: missing name, kernel
// or control socket, CPUs outside 1..maxCPUs, too little memory, disks
// without a path or with an unknown format, NICs without a tap or with a
// malformed MAC. Backends add their own checks to the list.
func (c Config) Problems(maxCPUs int) []string {
	var probs []string
	bad := func(format string, args ...any) { probs = append(probs, fmt.Sprintf(format, args...)) }
	if c.Name == "" {
		bad("name is required")
	}
	if c.CPUs < 1 || c.CPUs > maxCPUs {
		bad("cpus must be 1-%d, got %d", maxCPUs, c.CPUs)
	}
	if c.MemoryMB < 64 {
		bad("memory_mb must be at least 64, got %d", c.MemoryMB)
	}
	if c.Kernel == "" {
		bad("kernel is required")
	}
	if c.APISocket == "" {
		bad("api_socket is required")
	}
	for i, d := range c.Disks {
		if d.Path == "" {
			bad("disks[%d].path is required", i)
		}
		switch d.Format {
		case "", "raw", "qcow2":
		default:
			bad("disks[%d].format must be raw or qcow2, got %q", i, d.Format)
		}
		if !validSerial(d.Serial) {
			bad("disks[%d].serial %q must be at most %d letters, digits, '.', '_' or '-'", i, d.Serial, MaxSerial)
		}
	}
	for i, n := range c.Nets {
		if n.Tap == "" {
			bad("nets[%d].tap is required", i)
		}
		if _, err := net.ParseMAC(n.MAC); err != nil || len(n.MAC) != 17 {
			bad("nets[%d].mac %q is not a MAC address like 02:00:00:00:00:01", i, n.MAC)
		}
	}
	return probs
}

func validSerial(s string) bool {
	if len(s) > MaxSerial {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
