package controller

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/vmm"
)

// PauseVM pauses a running (or starting) VM's vCPUs through its
// hypervisor and records it "paused" (event vm.paused): a paused VM keeps
// its run, memory and address, is not health-polled or counted unhealthy,
// takes no published-port traffic, gives back its boot slot and is not
// replaced by its deployment. Pausing a paused VM returns it as it is;
// CONFLICT when the VM does not run.
func (c *Controller) PauseVM(ctx context.Context, name string) (*api.VM, error) {
	v, unlock, err := c.lockedVM(ctx, name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if v.State == api.VMPaused {
		return c.VM(ctx, name)
	}
	if (v.State != api.VMRunning && v.State != api.VMStarting) || v.Desired != desireRunning || v.Step != "" {
		return nil, notRunning(name, v)
	}
	ctx = context.WithoutCancel(ctx)
	if _, err := c.cfg.Runtime.Pause(ctx, name); err != nil {
		return nil, fmt.Errorf("pausing VM %s: %w", name, err)
	}
	if _, err := c.updateVM(ctx, name, func(tx *sql.Tx, v *vmRow) error {
		v.State = api.VMPaused
		return appendVMEvent(ctx, tx, api.EventVMPaused, v, vmEvent{})
	}); err != nil {
		return nil, err
	}
	c.boots.Release(name)
	c.publishNow(ctx)
	return c.VM(ctx, name)
}

// ResumeVM resumes a paused VM (event vm.resumed): running again if it
// had passed its health check, else starting; health polling goes on.
// Resuming a VM that runs returns it as it is; CONFLICT when it does not.
func (c *Controller) ResumeVM(ctx context.Context, name string) (*api.VM, error) {
	v, unlock, err := c.lockedVM(ctx, name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if v.State == api.VMRunning || v.State == api.VMStarting {
		return c.VM(ctx, name)
	}
	if v.State != api.VMPaused {
		return nil, notRunning(name, v)
	}
	ctx = context.WithoutCancel(ctx)
	if _, err := c.cfg.Runtime.Resume(ctx, name); err != nil {
		return nil, fmt.Errorf("resuming VM %s: %w", name, err)
	}
	if _, err := c.updateVM(ctx, name, func(tx *sql.Tx, v *vmRow) error {
		v.State = api.VMStarting
		if v.Health == string(agentapi.HealthHealthy) {
			v.State = api.VMRunning
		}
		return appendVMEvent(ctx, tx, api.EventVMResumed, v, vmEvent{})
	}); err != nil {
		return nil, err
	}
	c.publishNow(ctx)
	return c.VM(ctx, name)
}

// lockedVM starts a verb that changes one VM: it checks the name, takes
// the VM's lock and reads its row. The caller calls unlock when done.
func (c *Controller) lockedVM(ctx context.Context, name string) (v vmRow, unlock func(), err error) {
	if err := checkName("VM name", name); err != nil {
		return vmRow{}, nil, err
	}
	unlock, err = c.locks.lock(ctx, name)
	if err != nil {
		return vmRow{}, nil, err
	}
	if v, err = c.readVM(ctx, name); err != nil {
		unlock()
		return vmRow{}, nil, err
	}
	return v, unlock, nil
}

func notRunning(name string, v vmRow) error {
	return apierr.New(apierr.Conflict, "VM %s is %s, not running", name, v.State).
		With("vm", name).With("state", string(v.State))
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
	v, unlock, err := c.lockedVM(ctx, name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if v.State != api.VMRunning && v.State != api.VMStarting && v.State != api.VMPaused {
		return nil, notRunning(name, v)
	}
	return op(ctx, name)
}

// resumeToStop resumes a paused run before a stop, so the guest can take
// the power button instead of waiting out the stop timeout.
func (c *Controller) resumeToStop(ctx context.Context, name string) {
	st, err := c.cfg.Runtime.Inspect(ctx, name)
	if err != nil || st.State != vmm.StatePaused {
		return
	}
	if _, err := c.cfg.Runtime.Resume(ctx, name); err != nil {
		c.log.Warn("resuming a paused VM to stop it", "vm", name, "err", err)
	}
}
