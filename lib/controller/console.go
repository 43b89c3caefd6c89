package controller

import (
	"context"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
)

// ConsoleSocket returns the unix socket of the VM's serial console: the
// VM must have a live run. Every backend has one (QEMU serves it, and
// volant-launch relays Cloud Hypervisor's serial port); a run reports it
// once its plan is written, just after the hypervisor started, so a run
// still starting without it is UNAVAILABLE (try again), not unsupported.
func (c *Controller) ConsoleSocket(ctx context.Context, name string) (string, error) {
	v, err := c.VM(ctx, name)
	if err != nil {
		return "", err
	}
	if v.State != api.VMStarting && v.State != api.VMRunning {
		return "", apierr.New(apierr.Conflict, "VM %s is %s: its console is not live", name, v.State).
			With("vm", name).With("state", string(v.State)).With("hint", "volar vms logs --console "+name+" shows what it printed")
	}
	info, err := c.cfg.Runtime.Inspect(ctx, name)
	if err != nil {
		return "", err
	}
	if !info.Live() {
		return "", apierr.New(apierr.Conflict, "VM %s has no live run", name).With("vm", name)
	}
	if info.Console == "" {
		return "", apierr.New(apierr.Unavailable, "the console of VM %s is not up yet: its run is still starting", name).
			With("vm", name).With("hint", "try again in a moment; volar vms logs --console "+name+" --follow shows what it prints meanwhile")
	}
	return info.Console, nil
}
