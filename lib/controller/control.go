package controller

import (
	"context"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/launch"
)

// PauseVM pauses a running VM's vCPUs through its hypervisor and returns
// its run's status after the change (state "paused"). The VM's row does
// not change: it still runs, and health polling goes on, so a VM paused
// for longer than three health polls is reported unhealthy until it is
// resumed. CONFLICT when the VM does not run.
func (c *Controller) PauseVM(ctx context.Context, name string) (*launch.Status, error) {
	return c.control(ctx, name, c.cfg.Runtime.Pause)
}

// ResumeVM resumes a paused VM and returns its run's status after the
// change.
func (c *Controller) ResumeVM(ctx context.Context, name string) (*launch.Status, error) {
	return c.control(ctx, name, c.cfg.Runtime.Resume)
}

// VMCounters reads a running VM's I/O counters from its hypervisor (see
// launch.CountersReport).
func (c *Controller) VMCounters(ctx context.Context, name string) (*launch.CountersReport, error) {
	var rep *launch.CountersReport
	_, err := c.control(ctx, name, func(ctx context.Context, name string) (*launch.Status, error) {
		var err error
		rep, err = c.cfg.Runtime.Counters(ctx, name)
		return nil, err
	})
	return rep, err
}

// control runs op on a VM that runs, under the VM's lock (no stop or
// delete in between).
func (c *Controller) control(ctx context.Context, name string, op func(context.Context, string) (*launch.Status, error)) (*launch.Status, error) {
	if err := checkName("VM name", name); err != nil {
		return nil, err
	}
	unlock, err := c.locks.lock(ctx, name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	v, err := c.readVM(ctx, name)
	if err != nil {
		return nil, err
	}
	if v.State != api.VMRunning && v.State != api.VMStarting {
		return nil, apierr.New(apierr.Conflict, "VM %s is %s, not running", name, v.State).
			With("vm", name).With("state", string(v.State))
	}
	return op(ctx, name)
}
