package controller

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/ipam"
)

// ReconcileReport says what Reconcile found and did.
type ReconcileReport struct {
	// Adopted are VMs whose run was alive and is now watched again.
	Adopted []string `json:"adopted"`
	// Resumed are VMs whose interrupted create or start was completed.
	Resumed []string `json:"resumed"`
	// Crashed are VMs that should have been running but whose run was gone.
	Crashed []string `json:"crashed"`
	// Deleted are VMs whose interrupted delete was completed.
	Deleted []string `json:"deleted"`
	// Stopped are VMs whose interrupted stop was completed.
	Stopped []string `json:"stopped"`
	// Undone are VMs whose interrupted create failed when it was resumed:
	// undone (deleted, lease and tap freed), as a create that fails is.
	Undone []string `json:"undone"`
	// Failed are VMs whose resumed operation failed (state failed).
	Failed []string `json:"failed"`
	// RemovedPartials are partial downloads of interrupted plugin installs
	// (and empty directories of plugins never recorded) that were removed.
	RemovedPartials []string `json:"removed_partials"`
	// FreedLeases are the leases of names with no VM (ipam gc).
	FreedLeases []string `json:"freed_leases"`
	// RemovedTaps are taps of VMs that do not exist (hostnet gc).
	RemovedTaps []string `json:"removed_taps"`
	// OrphanRuns are runs of VMs that do not exist, which were stopped.
	OrphanRuns []string `json:"orphan_runs"`
	// SealedInputs are VMs whose inputs an earlier volantd kept in clear
	// (<data>/vms/<name>/inputs.json), now sealed in the database.
	SealedInputs []string `json:"sealed_inputs,omitempty"`
	// Volumes are the volume operations that were finished or undone.
	Volumes *VolumeReconcileReport `json:"volumes,omitempty"`
}

// Reconcile brings the recorded state and the host in line, once, at
// startup: it adopts the live runs of VMs that should run, resumes
// interrupted creates, starts, stops and deletes, marks VMs whose run died
// while volantd was away as crashed, frees leases of names without a VM
// (ipam gc), removes taps of VMs that do not exist (hostnet gc) and stops
// runs of VMs that do not exist. Afterwards the controller is Ready.
func (c *Controller) Reconcile(ctx context.Context) (*ReconcileReport, error) {
	rep := &ReconcileReport{}
	// Volumes first: resumed VM starts may need them.
	vrep, err := c.ReconcileVolumes(ctx)
	rep.Volumes = vrep
	if err != nil {
		return rep, fmt.Errorf("reconcile: %w", err)
	}
	var rows []vmRow
	installed := map[string]bool{}
	err = c.st.Read(ctx, func(tx *sql.Tx) error {
		var err error
		if rows, err = listVMs(ctx, tx, api.VMFilter{}); err != nil {
			return err
		}
		ps, err := tx.QueryContext(ctx, `SELECT name FROM plugins`)
		if err != nil {
			return err
		}
		defer ps.Close()
		for ps.Next() {
			var n string
			if err := ps.Scan(&n); err != nil {
				return err
			}
			installed[n] = true
		}
		return ps.Err()
	})
	if err != nil {
		return nil, err
	}
	// Inputs an earlier volantd kept in clear are sealed before any start.
	if rep.SealedInputs, err = c.sealLegacyInputs(ctx, rows); err != nil {
		return rep, fmt.Errorf("reconcile: %w", err)
	}
	// No install runs yet: whatever is partial is left from a crash.
	rep.RemovedPartials = append(c.cleanBuilds(), c.cleanArtifacts(installed)...)
	var mu sync.Mutex
	note := func(list *[]string, name string) {
		mu.Lock()
		*list = append(*list, name)
		mu.Unlock()
	}
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for _, v := range rows {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c.reconcileVM(ctx, v, rep, note)
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return rep, err
	}

	// Everything recorded is now settled; what the host has beyond it is
	// left over from crashes.
	err = c.st.Read(ctx, func(tx *sql.Tx) error {
		var err error
		rows, err = listVMs(ctx, tx, api.VMFilter{})
		return err
	})
	if err != nil {
		return rep, err
	}
	c.gcRunInputs(rows)
	keep := make([]string, 0, len(rows))
	known := map[string]bool{}
	for _, v := range rows {
		keep = append(keep, v.Name)
		known[v.Name] = true
	}
	gc, err := ipam.GC(ctx, c.st, keep, false)
	if err != nil {
		return rep, fmt.Errorf("reconcile: %w", err)
	}
	for _, l := range gc.Freed {
		rep.FreedLeases = append(rep.FreedLeases, l.VM)
	}
	if len(gc.Freed) > 0 {
		c.notify()
	}
	runs, err := c.cfg.Runtime.Runs(ctx)
	if err != nil {
		c.log.Warn("reconcile: listing runs", "err", err)
	}
	for _, name := range runs {
		if known[name] {
			continue
		}
		if _, err := c.cfg.Runtime.Stop(ctx, name, c.cfg.StopTimeout); err != nil {
			c.log.Warn("reconcile: stopping an orphan run", "vm", name, "err", err)
			continue
		}
		rep.OrphanRuns = append(rep.OrphanRuns, name)
	}
	taps, err := c.cfg.Network.GCTaps(ctx, keep)
	if err != nil {
		// No bridge or no privilege to list links: report, don't refuse to start.
		c.log.Warn("reconcile: removing orphan taps", "err", err)
	} else {
		for _, t := range taps.Removed {
			rep.RemovedTaps = append(rep.RemovedTaps, t.Name)
		}
	}
	// Published ports: rebuilt from the database (a crash may have left
	// them stale or a reboot removed them), those of gone owners removed.
	if err := c.syncPorts(ctx, true, true); err != nil {
		c.log.Warn("reconcile: published ports", "err", err)
	}
	c.mu.Lock()
	c.ready = true
	c.mu.Unlock()
	c.kickDeployments()
	c.log.Info("reconciled", "vms", len(rows), "adopted", len(rep.Adopted), "resumed", len(rep.Resumed),
		"crashed", len(rep.Crashed), "deleted", len(rep.Deleted), "freed_leases", len(rep.FreedLeases),
		"undone", len(rep.Undone), "failed", len(rep.Failed), "stopped", len(rep.Stopped),
		"removed_taps", len(rep.RemovedTaps), "orphan_runs", len(rep.OrphanRuns), "removed_partials", len(rep.RemovedPartials))
	return rep, nil
}

func (c *Controller) reconcileVM(ctx context.Context, v vmRow, rep *ReconcileReport, note func(*[]string, string)) {
	unlock, err := c.locks.lock(ctx, v.Name)
	if err != nil {
		return
	}
	defer unlock()
	log := c.log.With("vm", v.Name)
	switch v.Desired {
	case desireDeleted:
		if err := c.destroy(ctx, v.Name, "delete resumed after a restart"); err != nil {
			log.Warn("reconcile: resuming a delete", "err", err)
			return
		}
		note(&rep.Deleted, v.Name)
		return
	case desireStopped:
		if v.State == api.VMStopped && v.Step == "" {
			if info, err := c.cfg.Runtime.Inspect(ctx, v.Name); err != nil || !info.Live() {
				return
			}
		}
		if err := c.stop(ctx, v.Name, desireStopped); err != nil {
			log.Warn("reconcile: resuming a stop", "err", err)
			return
		}
		note(&rep.Stopped, v.Name)
		return
	}

	// desired running
	info, err := c.cfg.Runtime.Inspect(ctx, v.Name)
	live := err == nil && info.Live()
	if err != nil && !apierr.Is(err, apierr.NotFound) {
		log.Warn("reconcile: inspecting the run", "err", err)
	}
	switch {
	case v.Step != "":
		// An interrupted create or start: finish it. The steps measure
		// before they act, so all of them run again (a reboot since may
		// have removed the tap), unless the hypervisor runs already: then
		// the steps before the recorded one completed, and it goes on
		// from there (its start step adopts the run), since running them
		// again could fail for reasons the operation without the crash
		// never met (a bridge deleted since) and undo a VM that runs.
		// When it fails, the outcome is the one it would have had without
		// the crash: a create (the VM never ran) is undone, a start
		// leaves the VM failed.
		steps := c.upSteps(v.Name)
		if live {
			steps = resumeAt(steps, v.Step)
		}
		if err := c.runSteps(ctx, v.Name, steps); err != nil {
			if v.StartedAt == nil {
				log.Warn("reconcile: a resumed create failed; undoing it", "err", err)
				if derr := c.destroy(ctx, v.Name, "create failed after a volantd restart: "+err.Error()); derr != nil {
					log.Error("reconcile: undoing a failed create", "err", derr)
					c.markFailed(ctx, v.Name, err)
					note(&rep.Failed, v.Name)
					return
				}
				note(&rep.Undone, v.Name)
				return
			}
			log.Warn("reconcile: resuming a start", "err", err)
			c.markFailed(ctx, v.Name, err)
			note(&rep.Failed, v.Name)
			return
		}
		note(&rep.Resumed, v.Name)
	case live:
		ri, _, err := c.cfg.Runtime.Start(ctx, v.Name, c.SpecPath(v.Name)) // adopts; waits if it is still coming up
		if err != nil {
			log.Warn("reconcile: adopting a run", "err", err)
			c.markCrashed(ctx, v.Name, "its run did not come up after a volantd restart: "+err.Error())
			note(&rep.Crashed, v.Name)
			return
		}
		c.recordRun(ctx, v.Name, ri, true)
		note(&rep.Adopted, v.Name)
	case v.State == api.VMStarting || v.State == api.VMRunning || v.State == api.VMPaused || v.State == api.VMStopping:
		// It should run, but its run is gone: it died while volantd was away.
		if _, err := c.cfg.Runtime.Stop(ctx, v.Name, c.cfg.StopTimeout); err != nil {
			log.Warn("reconcile: clearing a dead run", "err", err)
		}
		msg := "its run ended while volantd was not running"
		if cause := c.cfg.Runtime.LastError(v.Name); cause != nil {
			msg += ": " + cause.Error()
		}
		c.markCrashed(ctx, v.Name, msg)
		note(&rep.Crashed, v.Name)
	}
}

func (c *Controller) markCrashed(ctx context.Context, name, msg string) {
	_, err := c.updateVM(ctx, name, func(tx *sql.Tx, v *vmRow) error {
		v.State, v.PID, v.Supervisor, v.VMM, v.Health, v.Error, v.Step = api.VMCrashed, 0, nil, nil, "", msg, ""
		return appendVMEvent(ctx, tx, api.EventVMCrashed, v, vmEvent{Error: msg})
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		c.log.Warn("recording a crash", "vm", name, "err", err)
	}
}

// resumeAt returns steps from the one named at on (all of them when no
// step has that name). Each step is recorded before it runs, so the one
// named ran partly or not at all and runs again (steps are idempotent);
// those before it completed.
func resumeAt(steps []step, at string) []step {
	for i, s := range steps {
		if s.name == at {
			return steps[i:]
		}
	}
	return steps
}
