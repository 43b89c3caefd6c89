// Package systemd is the lib/runner Starter that runs each VM as the
// volant-vm@NAME systemd unit, over D-Bus. It is a package of its own so
// that `volant-launch`, which imports lib/runner for Foreground, does not
// link (and initialize, in every VM start) a D-Bus client.
package systemd

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
	"github.com/google/renameio/v2"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/runner"
)

// Starter runs each VM as the volant-vm@NAME unit through systemd's
// D-Bus API. The unit (contrib/systemd/volant-vm@.service) reads the spec
// from /var/lib/volant/vms/NAME/spec.json, so volantd's data directory
// must be /var/lib/volant in this mode. The unit is Type=notify: its start
// job finishes once the hypervisor answers.
//
// Before each start the unit gets, as runtime properties, the limits a
// detached run gives its hypervisor's own cgroup (launch.Limits: guest
// memory + the VMM's overhead, tasks, CPU weight and quota), plus room
// for volant-launch itself; the unit's hypervisor stays in the unit's
// cgroup (VOLANT_VMM_CGROUP=unit in the unit file) and is otherwise
// jailed the same way.
//
// The unit's volant-launch gets volantd's jail settings (--vmm-uids,
// --insecure-vmm, --vmm-overhead-mb) from runner.SystemdEnvFile, which Start
// writes before each start (the unit's EnvironmentFile=).
type Starter struct {
	// Options are the host's launch options, to plan the VM's limits.
	Options launch.Options
	// EnvFile is where Start writes the units' environment (default
	// runner.SystemdEnvFile, the path the unit names).
	EnvFile string
}

// writeEnvFile writes SystemdEnviron to the units' environment file.
func (s Starter) writeEnvFile() error {
	path := s.EnvFile
	if path == "" {
		path = runner.SystemdEnvFile
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("the units' environment file: %w", err)
	}
	body := "# Written by volantd before each start of a volant-vm@ unit: its jail settings.\n"
	for _, kv := range runner.SystemdEnviron(s.Options) {
		body += kv + "\n"
	}
	if err := renameio.WriteFile(path, []byte(body), 0o644); err != nil {
		return fmt.Errorf("the units' environment file: %w", err)
	}
	return nil
}

// The supervisor's own share of a unit's limits: volant-launch's memory
// and threads beside its hypervisor's.
const (
	SupervisorMemoryMB = 64
	SupervisorTasks    = 64
)

// UnitProperties are the runtime properties of the unit that runs spec:
// MemoryMax, TasksMax, CPUWeight and CPUQuotaPerSecUSec.
func (s Starter) UnitProperties(ctx context.Context, spec launch.Spec) ([]sddbus.Property, error) {
	p, err := launch.Prepare(ctx, spec, s.Options)
	if err != nil {
		return nil, err
	}
	l := launch.Limits(p, s.Options.Jail)
	return []sddbus.Property{
		{Name: "MemoryAccounting", Value: dbus.MakeVariant(true)},
		{Name: "MemoryMax", Value: dbus.MakeVariant(uint64(l.MemoryBytes) + SupervisorMemoryMB<<20)},
		{Name: "TasksAccounting", Value: dbus.MakeVariant(true)},
		{Name: "TasksMax", Value: dbus.MakeVariant(uint64(l.Pids) + SupervisorTasks)},
		{Name: "CPUWeight", Value: dbus.MakeVariant(l.CPUWeight)},
		{Name: "CPUQuotaPerSecUSec", Value: dbus.MakeVariant(uint64(l.CPUQuotaPercent) * 10000)},
	}, nil
}

// Name implements runner.Starter.
func (Starter) Name() string { return "systemd" }

func (Starter) conn(ctx context.Context) (*sddbus.Conn, error) {
	c, err := sddbus.NewSystemConnectionContext(ctx)
	if err != nil {
		return nil, apierr.Wrap(apierr.Unavailable, err, "connecting to systemd over D-Bus")
	}
	return c, nil
}

// Start implements runner.Starter: it starts the unit and waits for its start job.
// The returned channel is nil: the run directory tells when it ends.
func (s Starter) Start(ctx context.Context, name, specPath string) (<-chan struct{}, error) {
	c, err := s.conn(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	unit := runner.UnitName(name)
	_ = c.ResetFailedUnitContext(ctx, unit) // a unit that failed before must be startable again
	js, err := os.ReadFile(specPath)
	if err != nil {
		return nil, fmt.Errorf("reading the spec of %s: %w", name, err)
	}
	var spec launch.Spec
	if err := json.Unmarshal(js, &spec); err != nil {
		return nil, fmt.Errorf("the spec of %s: %w", name, err)
	}
	props, err := s.UnitProperties(ctx, spec)
	if err != nil {
		return nil, err
	}
	if err := s.writeEnvFile(); err != nil {
		return nil, err
	}
	if err := c.SetUnitPropertiesContext(ctx, unit, true, props...); err != nil {
		return nil, apierr.Wrap(apierr.Unavailable, err, "setting the limits of "+unit)
	}
	ch := make(chan string, 1)
	if _, err := c.StartUnitContext(ctx, unit, "replace", ch); err != nil {
		return nil, apierr.Wrap(apierr.Unavailable, err, "starting "+unit)
	}
	select {
	case res := <-ch:
		if res != "done" {
			return nil, apierr.New(apierr.Unavailable, "starting %s: job %s (see journalctl -u %s)", unit, res, unit).
				With("unit", unit).With("result", res)
		}
	case <-ctx.Done():
		return nil, fmt.Errorf("starting %s: %w", unit, ctx.Err())
	}
	return nil, nil
}

// Stop implements runner.Starter: stopping the unit stops the VM (volant-launch
// handles SIGTERM by powering the guest off) and keeps systemd from
// restarting it.
func (s Starter) Stop(ctx context.Context, name string) (bool, error) {
	c, err := s.conn(ctx)
	if err != nil {
		return false, err
	}
	defer c.Close()
	unit := runner.UnitName(name)
	ch := make(chan string, 1)
	if _, err := c.StopUnitContext(ctx, unit, "replace", ch); err != nil {
		return false, apierr.Wrap(apierr.Unavailable, err, "stopping "+unit)
	}
	select {
	case res := <-ch:
		if res != "done" {
			return false, apierr.New(apierr.Unavailable, "stopping %s: job %s", unit, res).With("unit", unit)
		}
	case <-ctx.Done():
		return false, fmt.Errorf("stopping %s: %w", unit, ctx.Err())
	}
	return true, nil
}
