// Package runner runs VMs by name on a host, each as its own `volant-launch
// run` process, so VMs outlive whoever started them. It is the one layer
// between lib/launch (one VM, from a spec to a supervised hypervisor,
// acted on through its run directory) and its two users:
//
//   - volantd's controller starts, adopts, inspects, waits for, pauses,
//     resumes, reads the counters of and stops VMs through a Runner;
//   - the `volant-launch` command runs one VM in the foreground with
//     Foreground, and finds its options in the environment with
//     OptionsFromEnv.
//
// A Runner starts the process with a Starter: Detached (a child of the
// caller in its own session, its output in the VM's launch.log) or systemd.Starter
// (the volant-vm@NAME unit, over D-Bus). Everything after the start goes
// through the VM's run directory (lib/launch), so it works the same for a
// run this process started, one an earlier volantd started, or one systemd
// runs.
//
// The caller and the run talk through files, not logs: the spec the run
// reads (<data>/vms/<name>/spec.json), the environment (Environ and
// OptionsFromEnv are each other's inverse), and the error a run ended with,
// which Foreground writes to <data>/vms/<name>/last-error.json (temp file,
// fsync, rename) and LastError reads. launch.log stays, for people.
package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/vmm/supervise"
)

// Starter starts and stops the `volant-launch run` process of a VM: as a
// detached child (Detached) or as the volant-vm@NAME systemd unit
// (lib/runner/systemd).
type Starter interface {
	// Start starts the run of name reading its spec from specPath; it
	// returns once the process is started (not ready). exited is closed
	// when the process ends, if the starter can tell (nil otherwise).
	Start(ctx context.Context, name, specPath string) (exited <-chan struct{}, err error)
	// Stop stops the run of name, if the starter has its own way to
	// (systemd: stop the unit, so it is not restarted); ok false means
	// the caller should stop it through the run directory.
	Stop(ctx context.Context, name string) (ok bool, err error)
	// Name is "detached" or "systemd".
	Name() string
}

// Runner runs VMs: one run per VM name, started by Starter, inspected and
// stopped through its run directory with lib/launch.
type Runner struct {
	// Options are lib/launch's host options; a detached run gets them
	// through its environment (Environ).
	Options launch.Options
	// Starter starts the processes.
	Starter Starter
	// PollInterval is how often Start looks for the hypervisor (default 50 ms).
	PollInterval time.Duration
	// StartTimeout bounds Start (default 60 s).
	StartTimeout time.Duration
}

// Check plans the VM without starting anything and fails as a start
// would: manifest, checksums, kernel, hypervisor, command line.
func (r *Runner) Check(ctx context.Context, spec launch.Spec) error {
	_, err := launch.Prepare(ctx, spec, r.Options)
	return err
}

func (r *Runner) runDir(name string) string { return launch.RunDirFor(name, r.Options) }

// Inspect reports the VM's run; NOT_FOUND when it has none.
func (r *Runner) Inspect(ctx context.Context, name string) (*launch.Status, error) {
	st, err := launch.Inspect(ctx, r.runDir(name), r.Options)
	if err != nil {
		return nil, err
	}
	st.Name = name
	return st, nil
}

// Start starts the VM from the spec staged at specPath and returns once
// its hypervisor answers, or with the error that ended the run (its last
// error, see LastError). A VM that already has a live run is adopted, not
// started twice: adopted is then true.
func (r *Runner) Start(ctx context.Context, name, specPath string) (st *launch.Status, adopted bool, err error) {
	timeout := r.StartTimeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	poll := r.PollInterval
	if poll <= 0 {
		poll = 50 * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	// Measure first: a live run of this VM (started before a volantd
	// crash, or by systemd) is adopted, not started a second time.
	var exited <-chan struct{}
	st, err = r.Inspect(ctx, name)
	switch {
	case err == nil && st.Live():
		adopted = true
	case err == nil || apierr.Is(err, apierr.NotFound):
		if err == nil && !st.Live() {
			// A run that died left its directory: clear it.
			if _, err := launch.Stop(ctx, r.runDir(name), time.Second, r.Options); err != nil {
				return nil, false, fmt.Errorf("clearing the stale run of %s: %w", name, err)
			}
		}
		exited, err = r.Starter.Start(ctx, name, specPath)
		if err != nil {
			return nil, false, err
		}
	default:
		return nil, false, err
	}
	seenLive := false
	ended := func() bool {
		if exited == nil {
			return false
		}
		select {
		case <-exited:
			return true
		default:
			return false
		}
	}
	for {
		st, err := r.Inspect(ctx, name)
		switch {
		case err == nil && st.Answering():
			// Adopted too when the process we started has ended already:
			// it lost the race for the run directory to this run.
			return st, adopted || ended(), nil
		case err == nil && st.Live():
			seenLive = true
		case err != nil && !apierr.Is(err, apierr.NotFound):
			return nil, false, err
		default:
			// No live run. The process we started may have lost the race
			// for the run dir to another run of the VM (adopt that one),
			// or failed; a run we adopted may have ended.
			if ended() || exited == nil {
				if lerr := r.LastError(name); lerr != nil {
					return nil, false, lerr
				}
				log := r.launchLog(name)
				return nil, false, apierr.New(apierr.Unavailable, "volant-launch for %s ended before its hypervisor answered (see %s)",
					name, log).With("vm", name).With("log", log)
			}
		}
		select {
		case <-ctx.Done():
			if seenLive {
				return nil, false, apierr.New(apierr.Timeout, "the hypervisor of %s did not answer within %s", name, timeout).With("vm", name)
			}
			log := r.launchLog(name)
			return nil, false, apierr.New(apierr.Timeout, "volant-launch for %s did not start its VM within %s (see %s)", name, timeout, log).
				With("vm", name).With("log", log)
		case <-time.After(poll):
		}
	}
}

// Stop stops the VM's run (power button, after grace a hard stop, then
// a kill) and waits until it has ended. No run is success: method
// "not_running" ("unit_stopped" when systemd stopped a unit whose run
// was already gone).
func (r *Runner) Stop(ctx context.Context, name string, grace time.Duration) (method string, err error) {
	ok, err := r.Starter.Stop(ctx, name)
	if err != nil {
		return "", err
	}
	// Also after the starter's own stop: it clears what a dead run left.
	rep, err := launch.Stop(ctx, r.runDir(name), grace, r.Options)
	if err != nil {
		return "", err
	}
	if ok && rep.Method == "not_running" {
		return "unit_stopped", nil
	}
	return rep.Method, nil
}

// Wait blocks until the run st describes has ended, or ctx ends: it waits
// for the supervisor (volant-launch run); the hypervisor never outlives it.
func (r *Runner) Wait(ctx context.Context, st *launch.Status) error {
	id := st.SupervisorID()
	if id.Pid == 0 {
		id = st.VMMID()
	}
	h, err := id.Open()
	if errors.Is(err, supervise.ErrGone) {
		return nil
	}
	if err != nil {
		return err
	}
	defer h.Close()
	return h.Wait(ctx)
}

// Runs lists the names of the VMs that have a run directory (live or
// stale).
func (r *Runner) Runs(ctx context.Context) ([]string, error) {
	root := filepath.Dir(r.runDir("x"))
	ents, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Pause pauses the VM's vCPUs and returns its status after the change
// (CONFLICT when it does not run).
func (r *Runner) Pause(ctx context.Context, name string) (*launch.Status, error) {
	st, err := launch.Pause(ctx, r.runDir(name), r.Options)
	if err != nil {
		return nil, err
	}
	st.Name = name
	return st, nil
}

// Resume resumes a paused VM.
func (r *Runner) Resume(ctx context.Context, name string) (*launch.Status, error) {
	st, err := launch.Resume(ctx, r.runDir(name), r.Options)
	if err != nil {
		return nil, err
	}
	st.Name = name
	return st, nil
}

// Snapshot saves the running VM into dir, which must not exist
// (launch.Snapshot), with its snapshot.json; the VM runs on. A failed
// snapshot leaves no dir behind.
func (r *Runner) Snapshot(ctx context.Context, name, dir string) (*launch.SnapshotInfo, error) {
	info, err := launch.Snapshot(ctx, r.runDir(name), dir, r.Options)
	if err == nil {
		err = launch.WriteSnapshotInfo(dir, info)
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return info, nil
}

// Counters reads the VM's I/O counters (launch.Counters).
func (r *Runner) Counters(ctx context.Context, name string) (*launch.CountersReport, error) {
	rep, err := launch.Counters(ctx, r.runDir(name), r.Options)
	if err != nil {
		return nil, err
	}
	rep.Name = name
	return rep, nil
}

// LastError is the error the VM's last run ended with, nil when it ended
// well (or recorded nothing). See Foreground.
func (r *Runner) LastError(name string) error {
	return ReadLastError(r.Options, name)
}

func (r *Runner) launchLog(name string) string { return LaunchLogPath(r.Options, name) }
