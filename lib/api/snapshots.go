package api

import "time"

// The snapshot routes (see the package comment for the rest; see
// docs/snapshots.md for what a snapshot holds and what a VM started from
// one sees):
//
//	POST   /api/v1/vms/{name}/snapshot           CreateSnapshotRequest → 201 Snapshot (the VM runs on)
//	POST   /api/v1/vms/{name}/restore            RestoreVMRequest → VM (rolled back to the snapshot, running again)
//	GET    /api/v1/snapshots                     SnapshotList
//	GET    /api/v1/snapshots/{name}              Snapshot
//	DELETE /api/v1/snapshots/{name}              Snapshot (CONFLICT while a VM or deployment uses it)
//
// POST /api/v1/vms with "from_snapshot" starts the new VM from a snapshot
// instead of booting it.

// Snapshot is a VM saved as it ran: its memory and device state and a
// point-in-time copy of its disks and volumes. VMs started from it begin
// where it was saved, each with its own name, address, MAC, clock and
// randomness.
type Snapshot struct {
	Name string `json:"name"`
	// VM is the VM it was taken of, Plugin that VM's plugin: a VM
	// started from the snapshot runs that plugin, with its CPUs and memory.
	VM       string `json:"vm"`
	Plugin   string `json:"plugin"`
	VMM      string `json:"vmm"`
	CPUCores int    `json:"cpu_cores"`
	MemoryMB int    `json:"memory_mb"`
	// StateBytes is what the saved memory and device state take on the
	// host's disk, DiskBytes what the disk copies take (allocated bytes:
	// reflinked or sparse copies take little).
	StateBytes int64 `json:"state_bytes"`
	DiskBytes  int64 `json:"disk_bytes"`
	// PausedMS is how long the VM was paused while it was saved.
	PausedMS int64 `json:"paused_ms"`
	// Disks are the VM's disks as the snapshot holds them.
	Disks []SnapshotDisk `json:"disks"`
	// UsedBy are the VMs started from the snapshot (their disks are
	// derived from its copies) and the deployments that start replicas
	// from it, as "vm/NAME" and "deployment/NAME".
	UsedBy    []string  `json:"used_by"`
	Path      string    `json:"path"`
	CreatedAt time.Time `json:"created_at"`
}

// SnapshotDisk is one disk of a snapshot.
type SnapshotDisk struct {
	// Role: rootfs, disk:<name> (the manifest's), volume:<i>.
	Role string `json:"role"`
	// Method is how the copy was made: reflink, data-copy (a sparse copy
	// of the data), qcow2-flatten; empty for a read-only plugin artifact,
	// which is not copied.
	Method         string `json:"method,omitempty"`
	AllocatedBytes int64  `json:"allocated_bytes"`
	// MountPath is where the guest mounted a volume.
	MountPath string `json:"mount_path,omitempty"`
}

// SnapshotList is the answer of GET /api/v1/snapshots.
type SnapshotList struct {
	Snapshots []Snapshot `json:"snapshots"`
}

// CreateSnapshotRequest is the body of POST /api/v1/vms/{name}/snapshot.
type CreateSnapshotRequest struct {
	// Name of the snapshot (default: <vm>-<UTC time>, such as
	// web1-20261205t150405).
	Name string `json:"name,omitempty" jsonschema:"pattern=^[a-z0-9][a-z0-9_-]{0\\,62}$"`
}

// RestoreVMRequest is the body of POST /api/v1/vms/{name}/restore.
type RestoreVMRequest struct {
	// Snapshot is the snapshot to roll the VM back to: one of a VM of the
	// same plugin, CPUs and memory.
	Snapshot string `json:"snapshot"`
}

// Snapshot events.
const (
	EventSnapshotCreated = "snapshot.created" // {"name","vm","state_bytes","disk_bytes","paused_ms"}
	EventSnapshotDeleted = "snapshot.deleted" // {"name"}
	EventVMRestored      = "vm.restored"      // {"name","snapshot"}: the VM runs from the snapshot, under its own identity
)
