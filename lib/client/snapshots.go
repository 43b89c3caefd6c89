package client

import (
	"context"
	"net/http"

	"github.com/volantvm/volant/lib/api"
)

// --- snapshots ---

// SnapshotVM saves a running VM as a snapshot; the VM runs on.
func (c *Client) SnapshotVM(ctx context.Context, vm string, req api.CreateSnapshotRequest) (*api.Snapshot, error) {
	var s api.Snapshot
	return &s, c.call(ctx, request{method: http.MethodPost, path: api.Prefix + "/vms/" + esc(vm) + "/snapshot", body: req}, &s)
}

// RestoreVM rolls a VM back to a snapshot and starts it from there.
func (c *Client) RestoreVM(ctx context.Context, vm string, req api.RestoreVMRequest) (*api.VM, error) {
	var v api.VM
	return &v, c.call(ctx, request{method: http.MethodPost, path: api.Prefix + "/vms/" + esc(vm) + "/restore", body: req}, &v)
}

// ListSnapshots returns the snapshots, by name.
func (c *Client) ListSnapshots(ctx context.Context) ([]api.Snapshot, error) {
	var l api.SnapshotList
	if err := c.call(ctx, request{method: http.MethodGet, path: api.Prefix + "/snapshots"}, &l); err != nil {
		return nil, err
	}
	return l.Snapshots, nil
}

// Snapshot returns one snapshot.
func (c *Client) Snapshot(ctx context.Context, name string) (*api.Snapshot, error) {
	var s api.Snapshot
	return &s, c.call(ctx, request{method: http.MethodGet, path: api.Prefix + "/snapshots/" + esc(name)}, &s)
}

// DeleteSnapshot deletes a snapshot (CONFLICT while a VM or deployment
// uses it) and returns it as it was.
func (c *Client) DeleteSnapshot(ctx context.Context, name string) (*api.Snapshot, error) {
	var s api.Snapshot
	return &s, c.call(ctx, request{method: http.MethodDelete, path: api.Prefix + "/snapshots/" + esc(name)}, &s)
}
