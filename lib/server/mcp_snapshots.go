package server

import (
	"context"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/volantvm/volant/lib/api"
)

// SnapshotBackend is what the snapshot tools call; the controller and
// lib/client's *Client implement it.
type SnapshotBackend interface {
	SnapshotVM(ctx context.Context, vm string, req api.CreateSnapshotRequest) (*api.Snapshot, error)
	RestoreVM(ctx context.Context, vm string, req api.RestoreVMRequest) (*api.VM, error)
	ListSnapshots(ctx context.Context) ([]api.Snapshot, error)
	DeleteSnapshot(ctx context.Context, name string) (*api.Snapshot, error)
	CreateVM(ctx context.Context, req api.CreateVMRequest) (*api.VM, error)
}

type (
	snapshotVMIn struct {
		VM   string `json:"vm" jsonschema:"the running VM to snapshot"`
		Name string `json:"name,omitempty" jsonschema:"the snapshot's name (default: <vm>-<UTC time>)"`
	}
	restoreVMIn struct {
		VM       string `json:"vm" jsonschema:"the VM to roll back"`
		Snapshot string `json:"snapshot" jsonschema:"the snapshot to roll it back to (of a VM of the same plugin, CPUs and memory)"`
	}
	createFromSnapshotIn struct {
		Name     string `json:"name" jsonschema:"the new VM's name: 1-63 lowercase letters, digits, - and _"`
		Snapshot string `json:"snapshot" jsonschema:"the snapshot to start it from"`
	}
	snapshotNameIn struct {
		Name string `json:"name" jsonschema:"the snapshot's name"`
	}
)

// addSnapshotTools adds the snapshot tools when b can serve them.
func addSnapshotTools(s *mcp.Server, b any, ro *mcp.ToolAnnotations) {
	sb, ok := b.(SnapshotBackend)
	if !ok {
		return
	}
	mcp.AddTool(s, &mcp.Tool{Name: "snapshot_vm", Description: "Save a running VM (memory, devices, point-in-time copies of its disks) as a snapshot; the VM runs on."},
		func(ctx context.Context, _ *mcp.CallToolRequest, in snapshotVMIn) (*mcp.CallToolResult, any, error) {
			snap, err := sb.SnapshotVM(ctx, in.VM, api.CreateSnapshotRequest{Name: in.Name})
			if err != nil {
				return nil, nil, toolErr(err)
			}
			return nil, snap, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "create_vm_from_snapshot", Description: "Create a VM that starts from a snapshot instead of booting: " +
		"the saved VM's memory and disks, under the new VM's own name, address, MAC, clock and randomness."},
		func(ctx context.Context, _ *mcp.CallToolRequest, in createFromSnapshotIn) (*mcp.CallToolResult, any, error) {
			vm, err := sb.CreateVM(ctx, api.CreateVMRequest{Name: in.Name, FromSnapshot: in.Snapshot})
			if err != nil {
				return nil, nil, toolErr(err)
			}
			return nil, vm, nil
		})
	t := true
	mcp.AddTool(s, &mcp.Tool{Name: "restore_vm", Description: "Roll a VM back to a snapshot: its memory and disks become the snapshot's (what it wrote since is lost); it keeps its name and address.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: &t}},
		func(ctx context.Context, _ *mcp.CallToolRequest, in restoreVMIn) (*mcp.CallToolResult, any, error) {
			vm, err := sb.RestoreVM(ctx, in.VM, api.RestoreVMRequest{Snapshot: in.Snapshot})
			if err != nil {
				return nil, nil, toolErr(err)
			}
			return nil, vm, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "list_snapshots", Description: "List the snapshots with their source VM, plugin, sizes and users.", Annotations: ro},
		func(ctx context.Context, _ *mcp.CallToolRequest, _ noIn) (*mcp.CallToolResult, any, error) {
			ss, err := sb.ListSnapshots(ctx)
			if err != nil {
				return nil, nil, toolErr(err)
			}
			if ss == nil {
				ss = []api.Snapshot{}
			}
			return nil, api.SnapshotList{Snapshots: ss}, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "delete_snapshot", Description: "Delete a snapshot for good. Refused while a VM started from it or a deployment using it exists.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: &t}},
		func(ctx context.Context, _ *mcp.CallToolRequest, in snapshotNameIn) (*mcp.CallToolResult, any, error) {
			snap, err := sb.DeleteSnapshot(ctx, in.Name)
			if err != nil {
				return nil, nil, toolErr(err)
			}
			return nil, snap, nil
		})
}
