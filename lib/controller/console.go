package controller

import (
	"context"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
)

// ConsoleSocket returns the unix socket of the VM's serial console: the
// VM must have a live run whose hypervisor serves one.
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
		return "", apierr.New(apierr.NotSupported, "the hypervisor of VM %s serves no console socket (it only logs the console)", name).
			With("vm", name).With("hint", "volar vms logs --console "+name+" --follow")
	}
	return info.Console, nil
}
