// Package api holds the types of volantd's REST API: the JSON bodies of its
// requests and responses, the VM states, the event types and the routes.
// volantd (lib/server, lib/controller) produces them and lib/client decodes
// them, so both sides share one definition. Standard library, lib/agentapi
// and lib/portmap only: a CLI can import it without the daemon's
// dependencies.
//
// The routes (all JSON unless noted; errors are lib/apierr bodies
// {"code","message","details"} with the code's HTTP status):
//
//	GET    /healthz                              Health
//	GET    /openapi.json                         the OpenAPI 3.1 document of all of this
//	GET    /api/v1/network                       Network
//	PUT    /api/v1/network                       SetNetworkRequest → Network (CONFLICT while VMs exist)
//	GET    /api/v1/plugins                       PluginList
//	POST   /api/v1/plugins[?replace=true]        a plugin manifest → 201 Plugin
//	POST   /api/v1/plugins                       InstallImageRequest → 201 Plugin (built) or 200 (cached)
//	GET    /api/v1/plugins/{name}                Plugin
//	DELETE /api/v1/plugins/{name}                Plugin (CONFLICT while VMs or deployments use it)
//	POST   /api/v1/plugins/{name}/enable         Plugin
//	POST   /api/v1/plugins/{name}/disable        Plugin
//	GET    /api/v1/plugins/{name}/manifest       the manifest as installed
//	GET    /api/v1/vms[?plugin=&deployment=&state=&label=K=V]  VMList
//	POST   /api/v1/vms                           CreateVMRequest → 201 VM
//	GET    /api/v1/vms/{name}                    VM
//	DELETE /api/v1/vms/{name}                    VM (state "deleted")
//	POST   /api/v1/vms/{name}/start              VM
//	POST   /api/v1/vms/{name}/stop               VM
//	POST   /api/v1/vms/{name}/restart            VM
//	POST   /api/v1/vms/{name}/pause              VM (state "paused")
//	POST   /api/v1/vms/{name}/resume             VM
//	GET    /api/v1/vms/{name}/logs[?follow=1&tail=N]  the serial console log, text/plain
//	GET    /api/v1/vms/{name}/wait?state=running&timeout=30s  VM, once it is in that state
//	POST   /api/v1/vms/{name}/agent              agentapi.Status from kestrel → 204
//	GET    /api/v1/deployments                   DeploymentList
//	POST   /api/v1/deployments                   CreateDeploymentRequest → 201 Deployment
//	GET    /api/v1/deployments/{name}            Deployment
//	DELETE /api/v1/deployments/{name}            Deployment (its VMs are deleted)
//	POST   /api/v1/deployments/{name}/scale      ScaleRequest → Deployment
//	GET    /api/v1/volumes ...                   volumes: see volumes.go
//	GET    /api/v1/events[?since=ID&type=vm.*]   text/event-stream of Event
//	POST|GET|DELETE /mcp                         Model Context Protocol (streamable HTTP)
package api

import (
	"encoding/json"
	"sort"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/portmap"
)

// Prefix is the path prefix of the versioned API.
const Prefix = "/api/v1"

// VMState is where a VM is in its life.
type VMState string

// The VM states. A VM is Starting from its creation (or a start) until its
// health check passes, then Running. Its VMM ending without being asked to
// makes it Crashed; a stop makes it Stopping, then Stopped.
const (
	// VMStarting: being created or started: lease, tap, staging, VMM
	// start, then waiting for the guest's health check to pass.
	VMStarting VMState = "starting"
	// VMRunning: the health check passed (for plugins without one: the
	// workload runs). The VM stays Running if it later turns unhealthy;
	// Health says so.
	VMRunning VMState = "running"
	// VMPaused: its vCPUs are paused (POST .../pause); it keeps its memory,
	// address and run. A paused VM is not health-polled, not counted
	// unhealthy, takes no published-port traffic and is not replaced by its
	// deployment; resume makes it running again (starting if it had not
	// passed its health check yet).
	VMPaused VMState = "paused"
	// VMStopping: a stop is in progress.
	VMStopping VMState = "stopping"
	// VMStopped: stopped on request; it keeps its address and can be started.
	VMStopped VMState = "stopped"
	// VMCrashed: the VMM ended without being asked to.
	VMCrashed VMState = "crashed"
	// VMFailed: a start could not be completed (Error says why).
	VMFailed VMState = "failed"
	// VMDeleting: a delete is in progress.
	VMDeleting VMState = "deleting"
	// VMDeleted is only ever reported, in the answer to a delete.
	VMDeleted VMState = "deleted"
)

// VMStates lists every state, for validation and documentation.
func VMStates() []VMState {
	return []VMState{VMStarting, VMRunning, VMPaused, VMStopping, VMStopped, VMCrashed, VMFailed, VMDeleting, VMDeleted}
}

// Valid reports whether s is one of the states.
func (s VMState) Valid() bool {
	for _, v := range VMStates() {
		if s == v {
			return true
		}
	}
	return false
}

// Resources are a VM's vCPUs and memory.
type Resources struct {
	CPUCores int `json:"cpu_cores" jsonschema:"minimum=1,maximum=64"`
	MemoryMB int `json:"memory_mb" jsonschema:"minimum=64,maximum=262144"`
}

// VM is one microVM as volantd knows it.
type VM struct {
	Name   string `json:"name"`
	Plugin string `json:"plugin"`
	// PluginVersion is the version of the plugin the VM runs.
	PluginVersion string `json:"plugin_version,omitempty"`
	// Deployment is set for the replicas of a deployment.
	Deployment string `json:"deployment,omitempty"`
	// IP, MAC and Tap are the guest's address, NIC MAC and host tap; empty
	// for plugins with network mode "none".
	IP    string  `json:"ip,omitempty"`
	MAC   string  `json:"mac,omitempty"`
	Tap   string  `json:"tap,omitempty"`
	State VMState `json:"state"`
	// Health is kestrel's verdict (unknown, healthy, unhealthy) while the
	// VM runs; empty otherwise.
	Health agentapi.HealthState `json:"health,omitempty"`
	// Step names the step in progress (lease, tap, stage, start, stop,
	// release); empty when none is.
	Step string `json:"step,omitempty"`
	// Error is why the last start, stop or health check failed.
	Error string `json:"error,omitempty"`
	// PID is the hypervisor's process ID while it runs.
	PID int `json:"pid,omitempty"`
	// Jail says how the hypervisor is confined while it runs: its own uid
	// and cgroup, or insecure (volantd --insecure-vmm: as root, no jail).
	Jail      *VMMJail   `json:"jail,omitempty"`
	Resources Resources  `json:"resources"`
	CreatedAt time.Time  `json:"created_at"`
	StartedAt *time.Time `json:"started_at,omitempty"`
	UpdatedAt time.Time  `json:"updated_at"`
	// SerialLog is the path of the guest console log on the host.
	SerialLog string `json:"serial_log,omitempty"`
	// Agent is kestrel's last status report (or poll answer).
	Agent *agentapi.Status `json:"agent,omitempty"`
	// Volumes are the volumes the VM uses, in the order of its disks.
	Volumes []VolumeMount `json:"volumes,omitempty"`
	// Ports are the host ports published to this VM (see
	// CreateVMRequest.Ports).
	Ports []portmap.Mapping `json:"ports,omitempty"`
	// Workload is how the VM changes its plugin's workload (nil: not at all).
	Workload *WorkloadOverride `json:"workload,omitempty"`
	// Labels are the VM's own key/values.
	Labels map[string]string `json:"labels,omitempty"`
	// Inputs names what the VM receives over the agent channel (the
	// values are never answered).
	Inputs *InputsSummary `json:"inputs,omitempty"`
}

// VMMJail is a running VM's hypervisor jail (lib/vmm/jail).
type VMMJail struct {
	// Insecure: the hypervisor runs as root without a jail.
	Insecure bool   `json:"insecure,omitempty"`
	UID      uint32 `json:"uid,omitempty"`
	// Cgroup is its own cgroup ("" when its systemd unit's holds the
	// limits).
	Cgroup        string `json:"cgroup,omitempty"`
	MemoryLimitMB int64  `json:"memory_limit_mb,omitempty"`
}

// VMList is the answer of GET /api/v1/vms.
type VMList struct {
	VMs []VM `json:"vms"`
}

// VMFilter narrows GET /api/v1/vms; empty fields match everything.
type VMFilter struct {
	Plugin     string  `json:"plugin,omitempty"`
	Deployment string  `json:"deployment,omitempty"`
	State      VMState `json:"state,omitempty"`
	// Label is KEY=VALUE: only VMs whose label KEY is VALUE.
	Label string `json:"label,omitempty"`
}

// CreateVMRequest is the body of POST /api/v1/vms. CPU and memory default
// to the plugin manifest's resources.
type CreateVMRequest struct {
	Name string `json:"name" jsonschema:"pattern=^[a-z0-9][a-z0-9_-]{0\\,62}$"`
	// Plugin is <name> (its default version: the one installed last) or
	// <name>@<version>.
	Plugin   string `json:"plugin"`
	CPUCores int    `json:"cpu_cores,omitempty" jsonschema:"minimum=1,maximum=64"`
	MemoryMB int    `json:"memory_mb,omitempty" jsonschema:"minimum=64,maximum=262144"`
	// KernelArgs are extra words for the guest kernel command line.
	KernelArgs []string `json:"kernel_args,omitempty"`
	// Volumes are attached in order and mounted by kestrel before the
	// workload starts. A volume another live VM holds read-write, or that
	// one holds at all when this one writes, is VOLUME_IN_USE.
	Volumes []VolumeMount `json:"volumes,omitempty"`
	// Ports publishes host ports to the VM: connections to HostPort (on
	// HostIP, or every host address) from other machines, the host itself
	// and other guests reach GuestPort of the VM. A host port in use (a
	// host listener, another VM or deployment) is PORT_IN_USE.
	Ports []portmap.Mapping `json:"ports,omitempty"`
	// FromSnapshot starts the VM from a snapshot (Snapshot) instead of
	// booting it: plugin, CPUs and memory are the snapshot's (giving
	// others is INVALID_INPUT), its disks and volumes are the VM's own
	// copies of the snapshot's, and volumes cannot be given.
	FromSnapshot string `json:"from_snapshot,omitempty"`
	// Workload changes the plugin's workload for this VM: its command,
	// environment, working directory and restart policy. It travels on
	// the guest kernel command line with the manifest: nothing secret
	// (that is what Inputs are for).
	Workload *WorkloadOverride `json:"workload,omitempty"`
	// Labels are the VM's own key/values (at most 32; keys as manifest
	// labels, values up to 256 characters); GET /api/v1/vms?label=K=V
	// selects by them. volant-kubelet records a pod's UID in one.
	Labels map[string]string `json:"labels,omitempty"`
	// Inputs are environment variables and files handed to kestrel over
	// the host-only agent channel before the workload starts: never on
	// the kernel command line, never in an answer.
	Inputs *Inputs `json:"inputs,omitempty"`
}

// WorkloadOverride changes a plugin's workload for one VM. Command and
// Args have Docker's and Kubernetes' meaning (see
// manifest.Workload.ResolveCommand): Command replaces the image's
// Entrypoint (and its Cmd with it), Args replaces the Cmd; a plugin not
// built from an image has its whole entrypoint as Entrypoint.
type WorkloadOverride struct {
	Command []string `json:"command,omitempty"`
	Args    []string `json:"args,omitempty"`
	// Env is added to the workload's environment (replacing the
	// manifest's value of a name).
	Env     map[string]string `json:"env,omitempty"`
	Workdir string            `json:"workdir,omitempty"`
	Restart string            `json:"restart,omitempty" jsonschema:"enum=no,enum=on-failure,enum=always"`
}

// Inputs are what a VM receives over the host-only agent channel before
// its workload starts, at every boot: kestrel waits for them (they never
// touch the kernel command line or the guest network). Env is added to the
// workload's environment (and to commands run with exec); Files are
// written (parent directories made, mode 0755; file mode default 0644);
// Dirs are made empty. File data is base64 in JSON.
type Inputs = agentchan.Inputs

// InputFile is one file of Inputs.
type InputFile = agentchan.InputFile

// InputsSummary is what an answer says of a VM's Inputs: names, no values.
type InputsSummary struct {
	Env   []string `json:"env,omitempty"`
	Files []string `json:"files,omitempty"`
	Dirs  []string `json:"dirs,omitempty"`
}

// SummarizeInputs names the variables, files and directories of in.
func SummarizeInputs(in *Inputs) *InputsSummary {
	if in == nil {
		return nil
	}
	s := &InputsSummary{Dirs: in.Dirs}
	for k := range in.Env {
		s.Env = append(s.Env, k)
	}
	sort.Strings(s.Env)
	for _, f := range in.Files {
		s.Files = append(s.Files, f.Path)
	}
	return s
}

// LogOptions select what GET /api/v1/vms/{name}/logs returns.
type LogOptions struct {
	// Follow keeps the response open and streams what the guest writes
	// until the client goes away or the VM is deleted.
	Follow bool
	// Tail starts with the last Tail lines (0: the whole log).
	Tail int
	// Stream is what to read: LogConsole (the serial console, the
	// default), LogWorkload (the workload's stdout and stderr), LogStdout
	// or LogStderr.
	Stream string
	// Since drops workload output older than it (zero: none).
	Since time.Time
	// Timestamps prefixes each workload line with the time kestrel read
	// it (RFC 3339).
	Timestamps bool
}

// Log streams.
const (
	LogConsole  = "console"
	LogWorkload = "workload"
	LogStdout   = "stdout"
	LogStderr   = "stderr"
)

// LogStreams are the values of LogOptions.Stream.
func LogStreams() []string { return []string{LogConsole, LogWorkload, LogStdout, LogStderr} }

// ExecRequest is the body of a non-interactive POST
// /api/v1/vms/{name}/exec: the command runs to its end (or the timeout)
// with Stdin as its input, and the answer is an ExecResult. (With
// Connection: Upgrade and Upgrade: volant-agent/1 the route is interactive
// instead: see docs/guest-access.md.)
type ExecRequest struct {
	Command []string `json:"command"`
	// Env adds KEY=VALUE entries to the workload's environment.
	Env []string `json:"env,omitempty"`
	// Workdir is the working directory (default: the workload's).
	Workdir string `json:"workdir,omitempty"`
	// User is "uid[:gid]" (default root).
	User string `json:"user,omitempty"`
	// Stdin is the command's input (none: /dev/null).
	Stdin *string `json:"stdin,omitempty"`
	// TimeoutMS kills the command after this long (default 60 s, at most
	// 1 h); the answer is then TIMEOUT.
	TimeoutMS int `json:"timeout_ms,omitempty" jsonschema:"minimum=0,maximum=3600000"`
	// MaxOutput bounds each stream kept (default 1 MiB, at most 16 MiB).
	MaxOutput int `json:"max_output,omitempty" jsonschema:"minimum=0,maximum=16777216"`
}

// ExecResult is the answer of a non-interactive exec.
type ExecResult = agentchan.RunResult

// CopyResult is the answer of PUT /api/v1/vms/{name}/files.
type CopyResult struct {
	Files   int   `json:"files"`
	Bytes   int64 `json:"bytes"`
	Skipped int   `json:"skipped,omitempty"`
}

// InstallImageRequest is the body of POST /api/v1/plugins that builds a
// plugin from a container image (lib/fledge's oci_rootfs, in volantd)
// rather than installing a manifest: a body with "image" and without
// "workload" is one. The image's config becomes the workload (Entrypoint
// and Cmd, Env, WorkingDir, User, the lowest exposed TCP port as
// base_url). Builds are cached by image digest: a plugin of that name
// built from the same digest is answered as it is (200 instead of 201).
type InstallImageRequest struct {
	// Image is a reference with a containers/image transport
	// (docker://registry/repo:tag, oci:DIR:TAG, …); without one, docker://.
	Image string `json:"image"`
	// Name is the plugin's name; default <repository>-<the first 12 hex
	// digits of the image digest>, so that each digest is its own plugin.
	Name string `json:"name,omitempty" jsonschema:"pattern=^[a-z0-9][a-z0-9_-]{0\\,62}$"`
	// Pull is when the registry is asked: "always" (resolve the tag to
	// its digest each time; the default), "if-not-present" (use a plugin
	// built from this reference without asking, else as always), "never"
	// (only such a plugin; NOT_FOUND without one).
	Pull string `json:"pull,omitempty" jsonschema:"enum=always,enum=if-not-present,enum=never"`
	// Insecure allows a plain-HTTP or unverified-TLS registry for this
	// build (volantd --insecure-registry allows some for every build).
	Insecure bool `json:"insecure,omitempty"`
	// Replace rebuilds over an installed plugin of that name built from
	// another digest (CONFLICT otherwise).
	Replace bool `json:"replace,omitempty"`
}

// Pull policies of InstallImageRequest.
const (
	PullAlways       = "always"
	PullIfNotPresent = "if-not-present"
	PullNever        = "never"
)

// Plugin is an installed plugin, in one of its versions: the default
// one (the version installed last, which a bare name means) unless asked
// for as <name>@<version>.
type Plugin struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Runtime string `json:"runtime"`
	Enabled bool   `json:"enabled"`
	// Versions are the versions installed side by side, oldest install
	// first; the last is the default.
	Versions []string `json:"versions,omitempty"`
	// Manifest is the manifest as installed (normalized; artifact URLs
	// that were remote point at the fetched copies).
	Manifest json.RawMessage `json:"manifest"`
	// Image and ImageDigest name the container image the plugin was
	// built from (the manifest's image and image_digest).
	Image       string `json:"image,omitempty"`
	ImageDigest string `json:"image_digest,omitempty"`
	// Signature is set when the plugin was installed with a signature.
	Signature *PluginSignature `json:"signature,omitempty"`
	CreatedAt time.Time        `json:"created_at"`
	UpdatedAt time.Time        `json:"updated_at"`
}

// PluginSignature says who signed a plugin's manifest (lib/signing).
type PluginSignature struct {
	// KeyID is the minisign key ID the signature names.
	KeyID string `json:"key_id"`
	// TrustedComment is the comment signed along (fledge writes the
	// plugin's name and version and the manifest's file name).
	TrustedComment string `json:"trusted_comment,omitempty"`
	// Verified says that a key of volantd's --trusted-keys verified it at
	// install; without --trusted-keys a signature is kept unverified.
	Verified bool `json:"verified"`
}

// SignedPluginRequest is the body of POST /api/v1/plugins that installs a
// signed plugin: the manifest file's text exactly as it was signed (a JSON
// string, so no byte of it changes on the way) and the text of its
// minisign signature file (<manifest>.minisig, as `fledge build --sign`
// writes it).
type SignedPluginRequest struct {
	Manifest  string `json:"manifest"`
	Signature string `json:"signature"`
}

// PluginList is the answer of GET /api/v1/plugins.
type PluginList struct {
	Plugins []Plugin `json:"plugins"`
}

// Deployment keeps Replicas VMs named <name>-1 .. <name>-<replicas> running.
type Deployment struct {
	Name   string `json:"name"`
	Plugin string `json:"plugin"`
	// PluginVersion is the plugin version its replicas run (during a
	// rolling update: the one they are being moved to).
	PluginVersion string `json:"plugin_version,omitempty"`
	Replicas      int    `json:"replicas"`
	// Current counts the replicas that are running (healthy).
	Current   int       `json:"current"`
	Resources Resources `json:"resources"`
	// VolumeTemplates give each replica a volume of its own.
	VolumeTemplates []VolumeTemplate `json:"volume_templates,omitempty"`
	// VMs are the names of the replicas that exist, in index order.
	VMs []string `json:"vms"`
	// Ports are the host ports published to the deployment, each balanced
	// across the replicas in Endpoints.
	Ports []portmap.Mapping `json:"ports,omitempty"`
	// Endpoints are the replicas that receive the published ports'
	// connections, in index order: those the host's rules send them to,
	// which are the running and healthy ones once a change is applied.
	Endpoints []string `json:"endpoints,omitempty"`
	// FromSnapshot is the snapshot replicas start from.
	FromSnapshot string `json:"from_snapshot,omitempty"`
	// Inputs names the replicas' inputs, without their values.
	Inputs *InputsSummary `json:"inputs,omitempty"`
	// Rollout is the latest rolling update, with its progress.
	Rollout *Rollout `json:"rollout,omitempty"`
	// Error is the last reconcile failure, if the last reconcile failed.
	Error     string    `json:"error,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// DeploymentList is the answer of GET /api/v1/deployments.
type DeploymentList struct {
	Deployments []Deployment `json:"deployments"`
}

// CreateDeploymentRequest is the body of POST /api/v1/deployments.
// Resources default to the plugin manifest's.
type CreateDeploymentRequest struct {
	Name string `json:"name" jsonschema:"pattern=^[a-z0-9][a-z0-9_-]{0\\,58}$"`
	// Plugin is <name> (its default version) or <name>@<version>; the
	// replicas run that version until an update moves them.
	Plugin    string     `json:"plugin"`
	Replicas  int        `json:"replicas" jsonschema:"minimum=0,maximum=1000"`
	Resources *Resources `json:"resources,omitempty"`
	// VolumeTemplates give each replica a volume of its own, kept when
	// the deployment scales down (and when it is deleted) and reused when
	// it scales up again.
	VolumeTemplates []VolumeTemplate `json:"volume_templates,omitempty"`
	// Ports publishes host ports balanced across the healthy replicas
	// (one new connection to each in turn); a replica leaves the set while
	// its health check fails.
	Ports []portmap.Mapping `json:"ports,omitempty"`
	// FromSnapshot starts every replica from a snapshot instead of
	// booting it (see CreateVMRequest.FromSnapshot); the snapshot cannot
	// be deleted while the deployment exists.
	FromSnapshot string `json:"from_snapshot,omitempty"`
	// Inputs are every replica's inputs (see CreateVMRequest.Inputs):
	// the secrets the plugin's manifest names, sealed at rest.
	Inputs *Inputs `json:"inputs,omitempty"`
}

// ScaleRequest is the body of POST /api/v1/deployments/{name}/scale.
type ScaleRequest struct {
	Replicas int `json:"replicas" jsonschema:"minimum=0,maximum=1000"`
}

// MaxReplicas bounds a deployment's replica count.
const MaxReplicas = 1000

// Event is one entry of the event log, as GET /api/v1/events streams it:
//
//	id: 42
//	event: vm.created
//	data: {"id":42,"type":"vm.created","resource_id":"web1","data":{...},"timestamp":"..."}
//
// IDs increase and are never reused; a client that reconnects with
// Last-Event-ID (or ?since=) gets every event after that ID.
type Event struct {
	ID         int64           `json:"id"`
	Type       string          `json:"type"`
	ResourceID string          `json:"resource_id"`
	Data       json.RawMessage `json:"data,omitempty"`
	Timestamp  time.Time       `json:"timestamp"`
}

// Event types. Data payloads are JSON objects described next to each.
const (
	EventVMCreated   = "vm.created"   // {"name","plugin","deployment","ip","resources"}
	EventVMStarted   = "vm.started"   // {"name","state","pid","ip"}: the VMM is up, the guest is booting
	EventVMHealthy   = "vm.healthy"   // {"name","state","health_check":"passed"}: the VM is running
	EventVMUnhealthy = "vm.unhealthy" // {"name","state","error"}
	EventVMStopped   = "vm.stopped"   // {"name","state","method"}
	EventVMPaused    = "vm.paused"    // {"name","state"}
	EventVMResumed   = "vm.resumed"   // {"name","state"}: running again (starting if it had not passed its check)
	EventVMCrashed   = "vm.crashed"   // {"name","state","error"}
	EventVMFailed    = "vm.failed"    // {"name","state","error"}: a start could not complete
	EventVMAdopted   = "vm.adopted"   // {"name","state","pid"}: found running after a volantd restart
	EventVMDeleted   = "vm.deleted"   // {"name","ip"}

	EventPluginInstalled = "plugin.installed" // {"name","version"}
	EventPluginEnabled   = "plugin.enabled"   // {"name"}
	EventPluginDisabled  = "plugin.disabled"  // {"name"}
	EventPluginRemoved   = "plugin.removed"   // {"name","version"}
	// Builds of plugins from images (POST /api/v1/plugins {"image"}).
	EventPluginBuildStarted  = "plugin.build.started"  // {"name","image"}
	EventPluginBuildProgress = "plugin.build.progress" // {"name","image","step","bytes","done"}: a build step began or ended
	EventPluginBuildFinished = "plugin.build.finished" // {"name","image","digest","duration_ms","bytes"}
	EventPluginBuildFailed   = "plugin.build.failed"   // {"name","image","error"}

	EventDeploymentCreated = "deployment.created" // {"name","plugin","replicas"}
	EventDeploymentScaled  = "deployment.scaled"  // {"name","from","to"}
	EventDeploymentDeleted = "deployment.deleted" // {"name"}

	// lib/ipam appends these in the transactions that lease and release.
	EventIPLeased   = "ip.leased"   // {"ip","prefix","gateway","mac"}
	EventIPReleased = "ip.released" // {"ip","prefix","gateway","mac","reason"}

	// EventsPruned is not stored: the stream sends it, with ID 0 and no
	// SSE id, before replaying when the log no longer holds every event
	// after the position asked for (the oldest were pruned), whatever the
	// type filter. {"after","first_kept","missed"}: first_kept is 0 when
	// the log is empty; missed counts the events lost.
	EventsPruned = "events.pruned"
)

// EventTypes lists the event types volantd emits.
func EventTypes() []string {
	return []string{
		EventVMCreated, EventVMStarted, EventVMHealthy, EventVMUnhealthy, EventVMStopped, EventVMPaused, EventVMResumed,
		EventVMCrashed, EventVMFailed, EventVMAdopted, EventVMDeleted,
		EventPluginInstalled, EventPluginEnabled, EventPluginDisabled, EventPluginRemoved,
		EventPluginBuildStarted, EventPluginBuildProgress, EventPluginBuildFinished, EventPluginBuildFailed,
		EventDeploymentCreated, EventDeploymentScaled, EventDeploymentDeleted,
		EventRolloutStarted, EventRolloutStep, EventRolloutRollingBack, EventRolloutComplete, EventRolloutRolledBack, EventRolloutSuperseded,
		EventIPLeased, EventIPReleased,
		EventVolumeCreated, EventVolumeResized, EventVolumeDeleted, EventVolumeAttached, EventVolumeDetached, EventVolumeFailed,
	}
}

// EventOptions select what GET /api/v1/events streams.
type EventOptions struct {
	// Since resumes after this event ID (0: only new events, unless
	// FromStart).
	Since int64
	// FromStart replays the whole retained log first.
	FromStart bool
	// Types keeps only these types; "vm.*" matches a prefix.
	Types []string
}

// Health is the answer of GET /healthz.
type Health struct {
	Status  string `json:"status"` // "ok"
	Version string `json:"version"`
	// Ready is false until startup reconciliation has finished.
	Ready bool `json:"ready"`
	// LastEventID is the newest event's ID.
	LastEventID int64 `json:"last_event_id"`
	// Network is the guest address pool (GET /api/v1/network).
	Network *Network `json:"network,omitempty"`
}

// SetNetworkRequest is the body of PUT /api/v1/network: the guest subnet
// (the gateway is its first address, the range the default one).
type SetNetworkRequest struct {
	Subnet string `json:"subnet"`
}

// Network is volantd's guest address pool.
type Network struct {
	Subnet     string `json:"subnet"`
	Gateway    string `json:"gateway"`
	RangeStart string `json:"range_start"`
	RangeEnd   string `json:"range_end"`
}
