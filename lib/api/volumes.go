package api

import "time"

// The volume routes (see the package comment for the rest):
//
//	GET    /api/v1/volumes                       VolumeList
//	POST   /api/v1/volumes                       CreateVolumeRequest → 201 Volume
//	GET    /api/v1/volumes/{name}                Volume
//	DELETE /api/v1/volumes/{name}                Volume (state "deleted"; VOLUME_IN_USE while attached)
//	POST   /api/v1/volumes/{name}/resize         ResizeVolumeRequest → Volume (grow; VOLUME_IN_USE while a VM holds it)

// VolumeState is where a volume is in its life. Operations on a volume are
// recorded before they touch its file, so after a crash volantd finishes
// them (or, for a create, removes what was half made).
type VolumeState string

const (
	VolumeCreating VolumeState = "creating"
	VolumeReady    VolumeState = "ready"
	VolumeResizing VolumeState = "resizing"
	VolumeDeleting VolumeState = "deleting"
	// VolumeDeleted is only ever reported, in the answer to a delete.
	VolumeDeleted VolumeState = "deleted"
)

// Volume is a disk image that outlives VMs: a sparse raw file holding a
// filesystem, attached to VMs as a virtio-blk disk and mounted by kestrel.
type Volume struct {
	Name string `json:"name"`
	// SizeBytes is the size the guest sees.
	SizeBytes int64 `json:"size_bytes"`
	// Size is SizeBytes in words ("1GiB").
	Size string `json:"size"`
	// AllocatedBytes is what the image takes on the host's disk (it is
	// sparse); 0 when the image could not be read.
	AllocatedBytes int64       `json:"allocated_bytes"`
	FS             string      `json:"fs"`
	Format         string      `json:"format"` // raw
	State          VolumeState `json:"state"`
	// Path is the image on the host.
	Path string `json:"path"`
	// Deployment is set for a volume a deployment's volume template made
	// for one of its replicas.
	Deployment string `json:"deployment,omitempty"`
	// Attachments are the VMs that use the volume.
	Attachments []VolumeAttachment `json:"attachments"`
	Error       string             `json:"error,omitempty"`
	CreatedAt   time.Time          `json:"created_at"`
	UpdatedAt   time.Time          `json:"updated_at"`
}

// VolumeAttachment is one VM's use of a volume.
type VolumeAttachment struct {
	VM       string `json:"vm"`
	Path     string `json:"path"`
	ReadOnly bool   `json:"readonly,omitempty"`
	// Holding says the VM is live (starting, running or stopping) with
	// the volume: while it is, no other VM may write to it (nor read it
	// while this one writes).
	Holding bool `json:"holding"`
}

// VolumeList is the answer of GET /api/v1/volumes.
type VolumeList struct {
	Volumes []Volume `json:"volumes"`
}

// CreateVolumeRequest is the body of POST /api/v1/volumes. Give the size
// as size ("1GiB", "512MiB", "10G") or as size_bytes; it is rounded up to
// a whole MiB (16 MiB at least).
type CreateVolumeRequest struct {
	Name      string `json:"name" jsonschema:"pattern=^[a-z0-9][a-z0-9_-]{0\\,62}$"`
	Size      string `json:"size,omitempty"`
	SizeBytes int64  `json:"size_bytes,omitempty"`
	// FS is the filesystem (default ext4).
	FS string `json:"fs,omitempty" jsonschema:"enum=ext4"`
}

// ResizeVolumeRequest is the body of POST /api/v1/volumes/{name}/resize:
// the new, larger size (volumes only grow), as size or size_bytes. The VMs
// using the volume must be stopped.
type ResizeVolumeRequest struct {
	Size      string `json:"size,omitempty"`
	SizeBytes int64  `json:"size_bytes,omitempty"`
}

// VolumeMount asks for a volume in a VM: kestrel mounts it at Path before
// the workload starts.
type VolumeMount struct {
	Volume   string `json:"volume"`
	Path     string `json:"path"`
	ReadOnly bool   `json:"readonly,omitempty"`
}

// VolumeTemplate gives each replica of a deployment a volume of its own:
// replica <deployment>-<i> gets volume <Name>-<i> of Size mounted at Path,
// created when the replica is first created. Scaling down keeps the
// volumes; scaling up again reuses them.
type VolumeTemplate struct {
	Name      string `json:"name"`
	Size      string `json:"size,omitempty"`
	SizeBytes int64  `json:"size_bytes,omitempty"`
	Path      string `json:"path"`
	FS        string `json:"fs,omitempty"`
}

// Volume events. Data payloads:
const (
	EventVolumeCreated  = "volume.created"  // {"name","size_bytes","fs","deployment"}
	EventVolumeResized  = "volume.resized"  // {"name","from_bytes","size_bytes"}
	EventVolumeDeleted  = "volume.deleted"  // {"name","reason"}
	EventVolumeAttached = "volume.attached" // {"name","vm","path","readonly"}: a VM was created with it
	EventVolumeDetached = "volume.detached" // {"name","vm"}: the VM was deleted
	EventVolumeFailed   = "volume.failed"   // {"name","error"}: a create or resize could not finish
)
