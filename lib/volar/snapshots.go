package volar

import (
	"context"
	"strconv"
	"strings"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/volume"
)

// --- snapshots ---

type vmSnapshotCmd struct {
	Name string `long:"name" value-name:"SNAPSHOT" description:"the snapshot's name (default: NAME-<UTC time>)"`
	vmCmd
}

func (c *vmSnapshotCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.SnapshotVM(ctx, string(c.Args.Name), c.Name)
}

type vmRestoreCmd struct {
	Args struct {
		Name     VMName `positional-arg-name:"NAME" description:"the VM to roll back"`
		Snapshot string `positional-arg-name:"SNAPSHOT" description:"the snapshot to roll it back to"`
	} `positional-args:"yes" required:"yes"`
}

func (c *vmRestoreCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	return s.RestoreVM(ctx, string(c.Args.Name), c.Args.Snapshot)
}

type snapshotCmd struct {
	Args struct {
		Name string `positional-arg-name:"NAME" description:"the snapshot's name"`
	} `positional-args:"yes" required:"yes"`
}

type snapshotListCmd struct{}

func (snapshotListCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	ss, err := s.Client.ListSnapshots(ctx)
	if err != nil {
		return err
	}
	return s.Out.SnapshotList(ss)
}

type snapshotShowCmd struct{ snapshotCmd }

func (c *snapshotShowCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	snap, err := s.Client.Snapshot(ctx, c.Args.Name)
	if err != nil {
		return err
	}
	return s.Out.Snapshot(snap)
}

type snapshotDeleteCmd struct{ snapshotCmd }

func (c *snapshotDeleteCmd) run(ctx context.Context, s *Session, _ *cli.Env) error {
	snap, err := s.Client.DeleteSnapshot(ctx, c.Args.Name)
	if err != nil {
		return err
	}
	return s.Out.SnapshotAction(snap, "deleted")
}

// SnapshotVM is `volar vms snapshot NAME [--name SNAPSHOT]`.
func (s *Session) SnapshotVM(ctx context.Context, vm, name string) error {
	if err := checkName("VM", vm); err != nil {
		return err
	}
	if name != "" {
		if err := checkName("snapshot", name); err != nil {
			return err
		}
	}
	snap, err := s.Client.SnapshotVM(ctx, vm, api.CreateSnapshotRequest{Name: name})
	if err != nil {
		return err
	}
	return s.Out.SnapshotAction(snap, "created")
}

// RestoreVM is `volar vms restore NAME SNAPSHOT`.
func (s *Session) RestoreVM(ctx context.Context, vm, snapshot string) error {
	if err := checkName("VM", vm); err != nil {
		return err
	}
	if err := checkName("snapshot", snapshot); err != nil {
		return err
	}
	v, err := s.Client.RestoreVM(ctx, vm, api.RestoreVMRequest{Snapshot: snapshot})
	if err != nil {
		return err
	}
	switch {
	case s.Out.Quiet:
		return s.Out.names(v.Name)
	case s.Out.Format == JSON:
		return s.Out.JSONValue(v)
	}
	return s.Out.line("VM %s restored from snapshot %s (%s)", v.Name, snapshot, v.State)
}

// SnapshotList prints snapshots.
func (o *Output) SnapshotList(ss []api.Snapshot) error {
	if ss == nil {
		ss = []api.Snapshot{}
	}
	switch {
	case o.Quiet:
		for _, s := range ss {
			if err := o.names(s.Name); err != nil {
				return err
			}
		}
		return nil
	case o.Format == JSON:
		return o.JSONValue(ss)
	}
	rows := make([][]string, 0, len(ss))
	for _, s := range ss {
		rows = append(rows, []string{s.Name, s.VM, s.Plugin, volume.FormatSize(s.StateBytes), volume.FormatSize(s.DiskBytes),
			strings.Join(s.UsedBy, ","), Age(o.now(), s.CreatedAt)})
	}
	return o.table([]string{"NAME", "VM", "PLUGIN", "STATE", "DISKS", "USED BY", "AGE"}, rows)
}

// Snapshot prints one snapshot in full ("snapshots show").
func (o *Output) Snapshot(s *api.Snapshot) error {
	switch {
	case o.Quiet:
		return o.names(s.Name)
	case o.Format == JSON:
		return o.JSONValue(s)
	}
	var disks []string
	for _, d := range s.Disks {
		w := d.Role
		if d.Method != "" {
			w += " " + d.Method + " " + volume.FormatSize(d.AllocatedBytes)
		}
		if d.MountPath != "" {
			w += " at " + d.MountPath
		}
		disks = append(disks, w)
	}
	return o.fields([][2]string{
		{"Name", s.Name},
		{"VM", s.VM},
		{"Plugin", s.Plugin},
		{"Hypervisor", s.VMM},
		{"Resources", itoa(s.CPUCores) + " CPU, " + itoa(s.MemoryMB) + " MiB"},
		{"State size", volume.FormatSize(s.StateBytes)},
		{"Disk copies", volume.FormatSize(s.DiskBytes)},
		{"Disks", strings.Join(disks, "; ")},
		{"Paused", strconv.FormatInt(s.PausedMS, 10) + " ms"},
		{"Used by", strings.Join(s.UsedBy, ", ")},
		{"Path", s.Path},
		{"Created", o.timestamp(s.CreatedAt)},
	})
}

// SnapshotAction prints the answer of snapshot or delete.
func (o *Output) SnapshotAction(s *api.Snapshot, verb string) error {
	switch {
	case o.Quiet:
		return o.names(s.Name)
	case o.Format == JSON:
		return o.JSONValue(s)
	}
	if verb == "deleted" {
		return o.line("Snapshot %s deleted", s.Name)
	}
	return o.line("Snapshot %s of VM %s %s: state %s, disks %s, VM paused %d ms", s.Name, s.VM, verb,
		volume.FormatSize(s.StateBytes), volume.FormatSize(s.DiskBytes), s.PausedMS)
}
