package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"

	"github.com/volantvm/volant/lib/vmm"
)

// Name is the backend's name.
const Name = "qemu"

// Backend is QEMU as a vmm.Backend.
type Backend struct {
	// Binary is argv[0]: a path, or a name looked up on PATH by Probe
	// (default qemu-system-x86_64).
	Binary string
	// HostRoot is the host's root directory for the KVM checks (/dev/kvm,
	// /sys/module); nil means the real root.
	HostRoot fs.FS
}

var _ vmm.Backend = (*Backend)(nil)

func (b *Backend) binary() string {
	if b.Binary == "" {
		return DefaultBinary
	}
	return b.Binary
}

func (b *Backend) root() fs.FS {
	if b.HostRoot == nil {
		return os.DirFS("/")
	}
	return b.HostRoot
}

// Name implements vmm.Backend.
func (b *Backend) Name() string { return Name }

// Capabilities implements vmm.Backend. Counters are block-device counters
// only (query-blockstats): QEMU 7.2's QMP has no network statistics.
func (b *Backend) Capabilities() vmm.Capabilities {
	return vmm.Capabilities{
		Machines:       []string{MachineMicrovm, MachinePC},
		Accels:         []vmm.Accel{vmm.AccelKVM, vmm.AccelTCG},
		Pause:          true,
		PowerButton:    true,
		Counters:       true,
		SerialSocket:   true,
		AgentChannel:   true,
		AgentTransport: vmm.AgentVirtioSerial,
		DiskFormats:    []string{"raw", "qcow2"},
		InitramfsBoot:  true,
		Snapshot:       true,
	}
}

// Probe implements vmm.Backend: the binary must be on PATH (or at Binary),
// and "auto" acceleration resolves to KVM where it can run a stock kernel,
// else to TCG (the reason is in Reason).
func (b *Backend) Probe(ctx context.Context) vmm.Availability {
	path, err := exec.LookPath(b.binary())
	if err != nil {
		return vmm.Availability{Reason: b.binary() + " not found (Debian package qemu-system-x86)"}
	}
	accel, why, err := vmm.ResolveAccel(vmm.AccelAuto, b.root(), true)
	if err != nil {
		return vmm.Availability{Binary: path, Reason: err.Error()}
	}
	return vmm.Availability{Usable: true, Binary: path, Accel: accel, Reason: why}
}

// Argv implements vmm.Backend.
func (b *Backend) Argv(cfg vmm.Config) ([]string, error) { return Argv(b.binary(), cfg) }

// Dial implements vmm.Backend: it connects to the QMP socket. The
// connection is exclusive (QMP serves one client at a time): Close it soon.
func (b *Backend) Dial(ctx context.Context, socket string) (vmm.Control, error) {
	q, err := DialQMP(ctx, socket)
	if err != nil {
		return nil, err
	}
	return &control{q: q}, nil
}

type control struct{ q *QMP }

func (c *control) Ping(ctx context.Context) error {
	_, err := c.State(ctx)
	return err
}

func (c *control) State(ctx context.Context) (vmm.State, error) {
	var st struct {
		Status string `json:"status"`
	}
	if err := c.q.Execute(ctx, "query-status", nil, &st); err != nil {
		return "", err
	}
	switch st.Status {
	case "running":
		return vmm.StateRunning, nil
	case "paused", "suspended":
		return vmm.StatePaused, nil
	case "prelaunch":
		return vmm.StateCreated, nil
	case "shutdown":
		return vmm.StateShutdown, nil
	}
	return vmm.State(st.Status), nil // internal-error, guest-panicked, ...
}

// PowerButton presses the ACPI power button (system_powerdown). The guest
// ignores it unless it loaded the button driver (and evdev for PID 1 to read
// KEY_POWER); kestrel does.
func (c *control) PowerButton(ctx context.Context) error {
	return c.q.Execute(ctx, "system_powerdown", nil, nil)
}

// Shutdown stops the guest without its cooperation. QEMU has no "VM off,
// VMM alive" state worth keeping, so this ends the process like Quit.
func (c *control) Shutdown(ctx context.Context) error { return c.Quit(ctx) }

// Quit ends QEMU. A connection that closes before the reply arrives means
// QEMU is already exiting, which is what was asked.
func (c *control) Quit(ctx context.Context) error {
	err := c.q.Execute(ctx, "quit", nil, nil)
	if errors.Is(err, ErrClosed) {
		return nil
	}
	return err
}

func (c *control) Pause(ctx context.Context) error  { return c.q.Execute(ctx, "stop", nil, nil) }
func (c *control) Resume(ctx context.Context) error { return c.q.Execute(ctx, "cont", nil, nil) }

// Counters returns per-drive block counters named like Cloud Hypervisor's
// (read_bytes, write_bytes, read_ops, write_ops), keyed by drive id.
func (c *control) Counters(ctx context.Context) (map[string]map[string]int64, error) {
	var stats []struct {
		Device string `json:"device"`
		QDev   string `json:"qdev"`
		Stats  struct {
			RdBytes int64 `json:"rd_bytes"`
			WrBytes int64 `json:"wr_bytes"`
			RdOps   int64 `json:"rd_operations"`
			WrOps   int64 `json:"wr_operations"`
		} `json:"stats"`
	}
	if err := c.q.Execute(ctx, "query-blockstats", nil, &stats); err != nil {
		return nil, err
	}
	out := map[string]map[string]int64{}
	for _, s := range stats {
		name := s.Device
		if name == "" {
			name = s.QDev
		}
		out[name] = map[string]int64{
			"read_bytes": s.Stats.RdBytes, "write_bytes": s.Stats.WrBytes,
			"read_ops": s.Stats.RdOps, "write_ops": s.Stats.WrOps,
		}
	}
	return out, nil
}

func (c *control) Close() error { return c.q.Close() }

// Events exposes QMP events to callers holding the concrete control (the
// conformance suite and tests); the vmm.Control interface does not need them.
func (c *control) Events() <-chan Event { return c.q.Events() }

// ShutdownReason decodes a SHUTDOWN event's reason ("guest-shutdown",
// "host-qmp-quit", "guest-panic", ...).
func ShutdownReason(ev Event) string {
	var d struct {
		Reason string `json:"reason"`
	}
	if ev.Name != "SHUTDOWN" || json.Unmarshal(ev.Data, &d) != nil {
		return ""
	}
	return d.Reason
}

func (c *control) String() string { return fmt.Sprintf("qmp %s", c.q.conn.RemoteAddr()) }
