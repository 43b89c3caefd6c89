package server

import (
	"context"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/volantvm/volant/lib/api"
)

// VolumeBackend is what the volume tools call; the controller and
// lib/client's *Client implement it.
type VolumeBackend interface {
	ListVolumes(ctx context.Context) ([]api.Volume, error)
	Volume(ctx context.Context, name string) (*api.Volume, error)
	CreateVolume(ctx context.Context, req api.CreateVolumeRequest) (*api.Volume, error)
	ResizeVolume(ctx context.Context, name string, req api.ResizeVolumeRequest) (*api.Volume, error)
	DeleteVolume(ctx context.Context, name string) (*api.Volume, error)
}

type (
	volumeNameIn struct {
		Name string `json:"name" jsonschema:"the volume's name"`
	}
	createVolumeIn struct {
		Name string `json:"name" jsonschema:"the new volume's name: 1-63 lowercase letters, digits, - and _"`
		Size string `json:"size" jsonschema:"its size, such as 1GiB or 512MiB (16MiB at least)"`
		FS   string `json:"fs,omitempty" jsonschema:"its filesystem: ext4 (the default)"`
	}
	resizeVolumeIn struct {
		Name string `json:"name" jsonschema:"the volume's name"`
		Size string `json:"size" jsonschema:"the new, larger size, such as 2GiB; the VMs using the volume must be stopped"`
	}
)

// addVolumeTools adds the volume tools when b can serve them.
func addVolumeTools(s *mcp.Server, b any, ro *mcp.ToolAnnotations) {
	vb, ok := b.(VolumeBackend)
	if !ok {
		return
	}
	mcp.AddTool(s, &mcp.Tool{Name: "list_volumes", Description: "List the volumes (disk images that outlive VMs) with their size and the VMs using them.", Annotations: ro},
		func(ctx context.Context, _ *mcp.CallToolRequest, _ noIn) (*mcp.CallToolResult, any, error) {
			vs, err := vb.ListVolumes(ctx)
			if err != nil {
				return nil, nil, toolErr(err)
			}
			if vs == nil {
				vs = []api.Volume{}
			}
			return nil, api.VolumeList{Volumes: vs}, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "get_volume", Description: "Show one volume and the VMs using it.", Annotations: ro},
		func(ctx context.Context, _ *mcp.CallToolRequest, in volumeNameIn) (*mcp.CallToolResult, any, error) {
			v, err := vb.Volume(ctx, in.Name)
			if err != nil {
				return nil, nil, toolErr(err)
			}
			return nil, v, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "create_volume", Description: "Create a volume: an empty filesystem that VMs mount (create_vm's volumes) and that outlives them."},
		func(ctx context.Context, _ *mcp.CallToolRequest, in createVolumeIn) (*mcp.CallToolResult, any, error) {
			v, err := vb.CreateVolume(ctx, api.CreateVolumeRequest{Name: in.Name, Size: in.Size, FS: in.FS})
			if err != nil {
				return nil, nil, toolErr(err)
			}
			return nil, v, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "resize_volume", Description: "Grow a volume and its filesystem. The VMs using it must be stopped."},
		func(ctx context.Context, _ *mcp.CallToolRequest, in resizeVolumeIn) (*mcp.CallToolResult, any, error) {
			v, err := vb.ResizeVolume(ctx, in.Name, api.ResizeVolumeRequest{Size: in.Size})
			if err != nil {
				return nil, nil, toolErr(err)
			}
			return nil, v, nil
		})
	t := true
	mcp.AddTool(s, &mcp.Tool{Name: "delete_volume", Description: "Delete a volume and the data on it, for good. Refused while any VM is attached to it.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: &t}},
		func(ctx context.Context, _ *mcp.CallToolRequest, in volumeNameIn) (*mcp.CallToolResult, any, error) {
			v, err := vb.DeleteVolume(ctx, in.Name)
			if err != nil {
				return nil, nil, toolErr(err)
			}
			return nil, v, nil
		})
}
