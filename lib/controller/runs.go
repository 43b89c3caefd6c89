package controller

import (
	"context"
	"database/sql"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/launch"
)

// This file watches the VMs' runs (the Runtime's, lib/runner's): a run
// that ends without being asked to is a crash. health.go polls the guests
// of the runs watched here.

// watcher follows one run of a VM: it notices the run ending (crash
// detection) and polls kestrel's health.
type watcher struct {
	run    *launch.Status
	cancel context.CancelFunc
	done   chan struct{}
}

// watch starts watching a run, replacing a watcher of an older run.
func (c *Controller) watch(name string, info *launch.Status) {
	c.mu.Lock()
	if old := c.watchers[name]; old != nil {
		if old.run.SupervisorID() == info.SupervisorID() {
			c.mu.Unlock()
			return
		}
		old.cancel()
	}
	ctx, cancel := context.WithCancel(c.base)
	w := &watcher{run: info, cancel: cancel, done: make(chan struct{})}
	c.watchers[name] = w
	c.mu.Unlock()
	c.log.Debug("watching a run", "vm", name, "supervisor", info.SupervisorID().String())

	ended := make(chan struct{})
	go func() {
		err := c.cfg.Runtime.Wait(ctx, info)
		stopped := ctx.Err() != nil // unwatched (a stop, a delete, shutdown), not ended
		c.log.Debug("run ended", "vm", name, "supervisor", info.SupervisorID().String(), "unwatched", stopped, "err", err)
		close(ended)
		if !stopped {
			if err != nil {
				c.log.Warn("waiting for a VM's run", "vm", name, "err", err)
			}
			c.runEnded(ctx, name, info)
		}
	}()
	go func() {
		defer close(w.done)
		c.pollHealth(ctx, name, ended)
		c.mu.Lock()
		if c.watchers[name] == w {
			delete(c.watchers, name)
		}
		c.mu.Unlock()
		cancel()
	}()
}

// unwatch stops watching a VM and waits for its watcher to finish.
func (c *Controller) unwatch(name string) {
	c.boots.Release(name)
	c.mu.Lock()
	w := c.watchers[name]
	delete(c.watchers, name)
	c.mu.Unlock()
	if w != nil {
		w.cancel()
		<-w.done
	}
}

// Watching reports whether a VM's run is being watched (for tests and
// diagnostics).
func (c *Controller) Watching(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.watchers[name] != nil
}

// runEnded handles a run that ended: unless a stop or delete ended it (the
// VM no longer wants to run, or records another run), the VM crashed.
func (c *Controller) runEnded(ctx context.Context, name string, info *launch.Status) {
	c.boots.Release(name)
	// The watcher's context ends as this runs; the record must not.
	ctx = context.WithoutCancel(ctx)
	cause := c.cfg.Runtime.LastError(name)
	msg := "the VM's hypervisor ended without being asked to"
	if cause != nil {
		msg += ": " + cause.Error()
	}
	v, err := c.updateVM(ctx, name, func(tx *sql.Tx, v *vmRow) error {
		if v.Supervisor == nil || *v.Supervisor != info.SupervisorID() || v.Desired != desireRunning {
			return errSkip
		}
		if v.State != api.VMStarting && v.State != api.VMRunning && v.State != api.VMPaused {
			return errSkip
		}
		v.State, v.PID, v.Supervisor, v.VMM, v.Health, v.Error = api.VMCrashed, 0, nil, nil, "", msg
		return appendVMEvent(ctx, tx, api.EventVMCrashed, v, vmEvent{Error: msg})
	})
	if err != nil {
		if !apierr.Is(err, apierr.NotFound) {
			c.log.Warn("recording a crash", "vm", name, "err", err)
		}
		return
	}
	if v.State == api.VMCrashed {
		c.log.Warn("VM crashed", "vm", name, "err", msg)
		c.kickDeployments()
	}
}
