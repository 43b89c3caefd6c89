package launch

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/vmm"
	"github.com/volantvm/volant/lib/vmm/cloudhypervisor"
	"github.com/volantvm/volant/lib/vmm/qemu"
)

// BackendReport describes one backend on this host.
type BackendReport struct {
	Name         string           `json:"name"`
	Usable       bool             `json:"usable"`
	Binary       string           `json:"binary,omitempty"`
	Accel        vmm.Accel        `json:"accel,omitempty"` // what "auto" resolves to
	Reason       string           `json:"reason,omitempty"`
	Capabilities vmm.Capabilities `json:"capabilities"`
}

// Backends reports every backend: usable here or not (and why), its
// capabilities, and what "auto" acceleration resolves to. Default is the
// backend "auto" picks ("" when none is usable).
func Backends(ctx context.Context, o Options) (reports []BackendReport, def string) {
	o = o.withDefaults()
	for _, b := range o.Backends {
		a := b.Probe(ctx)
		reports = append(reports, BackendReport{
			Name: b.Name(), Usable: a.Usable, Binary: a.Binary, Accel: a.Accel, Reason: a.Reason,
			Capabilities: b.Capabilities(),
		})
		if a.Usable && def == "" {
			def = b.Name()
		}
	}
	return reports, def
}

// pickBackend resolves "auto" or a backend name to a usable backend whose
// argv[0] is the binary found on PATH.
func pickBackend(ctx context.Context, name string, o Options) (vmm.Backend, vmm.Availability, error) {
	var names, why []string
	for _, b := range o.Backends {
		names = append(names, b.Name())
	}
	if name != "" && name != "auto" && !slices.Contains(names, name) {
		return nil, vmm.Availability{}, badInput("unknown vmm %q: want auto or one of %s", name, strings.Join(names, ", ")).With("field", "vmm")
	}
	for _, b := range o.Backends {
		if name != "" && name != "auto" && b.Name() != name {
			continue
		}
		a := b.Probe(ctx)
		if a.Usable {
			return withBinary(b, a.Binary), a, nil
		}
		why = append(why, b.Name()+": "+a.Reason)
		if name == b.Name() {
			code := apierr.Unavailable
			if a.Binary != "" {
				code = apierr.NotSupported // present, but this host cannot run it
			}
			return nil, a, apierr.New(code, "%s cannot run VMs here: %s", b.Name(), a.Reason).With("backend", b.Name())
		}
	}
	return nil, vmm.Availability{}, apierr.New(apierr.Unavailable, "no hypervisor backend is usable here (%s)", strings.Join(why, "; ")).
		With("hint", "apt-get install qemu-system-x86")
}

// dryRunBackend is the backend a dry run plans for when none is usable
// here: the one named, or for "auto" the first in order of preference;
// nil for a name no backend has.
func dryRunBackend(name string, o Options) vmm.Backend {
	for _, b := range o.Backends {
		if name == "" || name == "auto" || b.Name() == name {
			return b
		}
	}
	return nil
}

// backendNamed returns the configured backend called name.
func backendNamed(name string, o Options) (vmm.Backend, error) {
	for _, b := range o.Backends {
		if b.Name() == name {
			return b, nil
		}
	}
	return nil, fmt.Errorf("unknown backend %q", name)
}

// withBinary pins a known backend's argv[0] to the probed absolute path, so
// the plan records exactly what runs.
func withBinary(b vmm.Backend, path string) vmm.Backend {
	switch v := b.(type) {
	case *qemu.Backend:
		c := *v
		c.Binary = path
		return &c
	case *cloudhypervisor.Backend:
		c := *v
		c.Binary = path
		return &c
	}
	return b
}
