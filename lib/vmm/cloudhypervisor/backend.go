package cloudhypervisor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"

	"github.com/volantvm/volant/lib/vmm"
)

// Backend is Cloud Hypervisor as a vmm.Backend.
type Backend struct {
	// Binary is argv[0]: a path, or a name looked up on PATH by Probe
	// (default cloud-hypervisor).
	Binary string
	// HostRoot is the host's root directory for the KVM checks; nil means
	// the real root.
	HostRoot fs.FS
}

var _ vmm.Backend = (*Backend)(nil)

func (b *Backend) binary() string {
	if b.Binary == "" {
		return DefaultBinary
	}
	return b.Binary
}

// Name implements vmm.Backend.
func (b *Backend) Name() string { return Name }

// Capabilities implements vmm.Backend.
func (b *Backend) Capabilities() vmm.Capabilities {
	return vmm.Capabilities{
		Machines:       []string{}, // one machine type, not selectable
		Accels:         []vmm.Accel{vmm.AccelKVM},
		Pause:          true,
		PowerButton:    true,
		Counters:       true,
		SerialSocket:   false,
		AgentChannel:   true,
		AgentTransport: vmm.AgentVsock,
		DiskFormats:    []string{"raw", "qcow2"},
		InitramfsBoot:  true,
		Snapshot:       true,
	}
}

// Probe implements vmm.Backend: the binary must exist and KVM must be able
// to run a stock guest kernel (Cloud Hypervisor cannot emulate).
func (b *Backend) Probe(ctx context.Context) vmm.Availability {
	path, err := exec.LookPath(b.binary())
	if err != nil {
		return vmm.Availability{Reason: b.binary() + " not found on PATH (https://github.com/cloud-hypervisor/cloud-hypervisor/releases)"}
	}
	root := b.HostRoot
	if root == nil {
		root = os.DirFS("/")
	}
	accel, _, err := vmm.ResolveAccel(vmm.AccelAuto, root, false)
	if err != nil {
		return vmm.Availability{Binary: path, Reason: err.Error()}
	}
	return vmm.Availability{Usable: true, Binary: path, Accel: accel}
}

// Argv implements vmm.Backend.
func (b *Backend) Argv(cfg vmm.Config) ([]string, error) { return Argv(b.binary(), cfg) }

// Dial implements vmm.Backend: it returns once the VMM answers vmm.ping.
func (b *Backend) Dial(ctx context.Context, socket string) (vmm.Control, error) {
	c := NewClient(socket)
	if _, err := c.Ping(ctx); err != nil {
		return nil, err
	}
	return &control{c: c}, nil
}

type control struct{ c *Client }

func (c *control) Ping(ctx context.Context) error {
	_, err := c.c.Ping(ctx)
	return err
}

func (c *control) State(ctx context.Context) (vmm.State, error) {
	info, err := c.c.Info(ctx)
	if err != nil {
		var ae *APIError
		if errors.As(err, &ae) && ae.Status == 404 {
			return vmm.StateCreated, nil // no VM created yet
		}
		return "", err
	}
	switch info.State {
	case "Created":
		return vmm.StateCreated, nil
	case "Running":
		return vmm.StateRunning, nil
	case "Paused":
		return vmm.StatePaused, nil
	case "Shutdown":
		return vmm.StateShutdown, nil
	}
	return vmm.State(info.State), nil
}

func (c *control) PowerButton(ctx context.Context) error { return c.c.PowerButton(ctx) }

// Shutdown stops the guest (vm.shutdown); the VMM stays and reports
// StateShutdown until Quit.
func (c *control) Shutdown(ctx context.Context) error { return c.c.ShutdownVM(ctx) }

// Quit ends the VMM (vmm.shutdown).
func (c *control) Quit(ctx context.Context) error { return c.c.ShutdownVMM(ctx) }

func (c *control) Pause(ctx context.Context) error  { return c.c.Pause(ctx) }
func (c *control) Resume(ctx context.Context) error { return c.c.Resume(ctx) }

func (c *control) Counters(ctx context.Context) (map[string]map[string]int64, error) {
	return c.c.Counters(ctx)
}

func (c *control) Close() error { return c.c.Close() }

func (c *control) String() string { return fmt.Sprintf("cloud-hypervisor api %s", c.c.socket) }
