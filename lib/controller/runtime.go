package controller

import (
	"context"
	"time"

	"github.com/volantvm/volant/lib/launch"
)

// Runtime runs the VMs, one run per VM name: what the controller needs of
// lib/runner (whose *runner.Runner is the real one: a `volant-launch run`
// process per VM, so VMs outlive volantd). controllertest.Runtime is an
// in-memory one for tests.
type Runtime interface {
	// Check plans the VM without starting anything and fails as a start
	// would: manifest, checksums, kernel, hypervisor, command line.
	Check(ctx context.Context, spec launch.Spec) error
	// Start starts the VM from the spec staged at specPath and returns once
	// its hypervisor answers, or with the error that ended the run. A VM
	// that already has a live run is adopted, not started twice (adopted
	// is then true).
	Start(ctx context.Context, name, specPath string) (st *launch.Status, adopted bool, err error)
	// Inspect reports the VM's run; NOT_FOUND when it has none.
	Inspect(ctx context.Context, name string) (*launch.Status, error)
	// Stop stops the VM's run (power button, after grace a hard stop, then
	// a kill) and waits until it has ended. No run is success
	// ("not_running").
	Stop(ctx context.Context, name string, grace time.Duration) (method string, err error)
	// Wait blocks until the run st describes has ended, or ctx ends.
	Wait(ctx context.Context, st *launch.Status) error
	// Runs lists the names of the VMs that have a run (live or stale).
	Runs(ctx context.Context) ([]string, error)
	// LastError is the error a VM's last run ended with, if it recorded one.
	LastError(name string) error
	// Pause and Resume pause and resume the VM's vCPUs and return the
	// run's status after the change (CONFLICT when it does not run).
	Pause(ctx context.Context, name string) (*launch.Status, error)
	Resume(ctx context.Context, name string) (*launch.Status, error)
	// Snapshot saves the running VM (memory, devices, point-in-time disk
	// copies) into dir, which it makes, with its snapshot.json
	// (launch.Snapshot); the VM runs on.
	Snapshot(ctx context.Context, name, dir string) (*launch.SnapshotInfo, error)
	// Counters reads the VM's I/O counters.
	Counters(ctx context.Context, name string) (*launch.CountersReport, error)
}
