package client

import (
	"context"
	"net/http"

	"github.com/volantvm/volant/lib/api"
)

// --- volumes ---

// ListVolumes returns the volumes, by name.
func (c *Client) ListVolumes(ctx context.Context) ([]api.Volume, error) {
	var l api.VolumeList
	if err := c.call(ctx, request{method: http.MethodGet, path: api.Prefix + "/volumes"}, &l); err != nil {
		return nil, err
	}
	return l.Volumes, nil
}

// CreateVolume creates a volume and answers once its image is made.
func (c *Client) CreateVolume(ctx context.Context, req api.CreateVolumeRequest) (*api.Volume, error) {
	var v api.Volume
	return &v, c.call(ctx, request{method: http.MethodPost, path: api.Prefix + "/volumes", body: req}, &v)
}

// Volume returns one volume with the VMs that use it.
func (c *Client) Volume(ctx context.Context, name string) (*api.Volume, error) {
	var v api.Volume
	return &v, c.call(ctx, request{method: http.MethodGet, path: api.Prefix + "/volumes/" + esc(name)}, &v)
}

// ResizeVolume grows a volume (its VMs must be stopped: VOLUME_IN_USE).
func (c *Client) ResizeVolume(ctx context.Context, name string, req api.ResizeVolumeRequest) (*api.Volume, error) {
	var v api.Volume
	return &v, c.call(ctx, request{method: http.MethodPost, path: api.Prefix + "/volumes/" + esc(name) + "/resize", body: req}, &v)
}

// DeleteVolume deletes a volume and its data, and returns it as it was
// (VOLUME_IN_USE while a VM is attached to it).
func (c *Client) DeleteVolume(ctx context.Context, name string) (*api.Volume, error) {
	var v api.Volume
	return &v, c.call(ctx, request{method: http.MethodDelete, path: api.Prefix + "/volumes/" + esc(name)}, &v)
}
