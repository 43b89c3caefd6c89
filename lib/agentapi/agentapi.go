// Package agentapi is the wire contract between kestrel (in the guest) and
// the host: the JSON kestrel serves on its HTTP port and the JSON it reports
// to the control plane. Types only, standard library only, so both kestrel
// and volantd import it without pulling anything else in.
//
// Kestrel serves, on Port (or the manifest's network.agent_port) inside the guest:
//
//	GET  /healthz            Status
//	GET  /v1/logs            the workload's output ring buffer (text); ?follow=1 streams
//	POST /v1/actions/{name}  runs a manifest action (proxied to the workload)
//	*    /v1/...             everything else under /v1/ is reverse-proxied to
//	                         the workload's base_url with the /v1 prefix removed
//
// Kestrel calls, on http://<volant.api_host>:<volant.api_port>:
//
//	GET  ManifestPath(plugin)  the plugin manifest, when it was too large for the command line
//	POST ReportPath(vm)        a Status, whenever workload or health state changes
package agentapi

import (
	"net/url"
	"time"
)

// Port is kestrel's default HTTP port inside the guest. A manifest moves it
// with network.agent_port (manifest.AgentPort), carried to kestrel as
// volant.agent_port= when it differs; hosts reach kestrel at that port.
const Port = 8080

// ManifestPath is where the control plane serves a plugin's manifest.
func ManifestPath(plugin string) string {
	return "/api/v1/plugins/" + url.PathEscape(plugin) + "/manifest"
}

// ReportPath is where kestrel posts its Status.
func ReportPath(vm string) string {
	return "/api/v1/vms/" + url.PathEscape(vm) + "/agent"
}

// WorkloadState is the supervised process's state.
type WorkloadState string

const (
	WorkloadStarting   WorkloadState = "starting"
	WorkloadRunning    WorkloadState = "running"
	WorkloadRestarting WorkloadState = "restarting" // exited, waiting out the backoff
	WorkloadExited     WorkloadState = "exited"     // exited and will not be restarted
	WorkloadFailed     WorkloadState = "failed"     // could not be started, or the restart cap was hit
	WorkloadStopping   WorkloadState = "stopping"
)

// HealthState is the health check's verdict.
type HealthState string

const (
	HealthUnknown   HealthState = "unknown" // no check has passed or failed enough yet
	HealthHealthy   HealthState = "healthy"
	HealthUnhealthy HealthState = "unhealthy"
)

// Status is kestrel's view of its VM.
type Status struct {
	VM       string         `json:"vm,omitempty"`
	Plugin   string         `json:"plugin,omitempty"`
	Agent    string         `json:"agent"` // kestrel's version
	Boot     string         `json:"boot"`  // initramfs | rootfs; none for `kestrel run` outside a guest
	UptimeMS int64          `json:"uptime_ms"`
	Workload WorkloadStatus `json:"workload"`
	Health   HealthStatus   `json:"health"`
	// Memory is kestrel's and the guest's memory use, when kestrel can read
	// it (/proc/self/status, /proc/meminfo).
	Memory *MemoryStatus `json:"memory,omitempty"`
	Time   time.Time     `json:"time"`
}

// MemoryStatus is memory use in KiB, as /proc reports it.
type MemoryStatus struct {
	AgentRSSKiB       int64 `json:"agent_rss_kib"`                 // kestrel's VmRSS
	GuestTotalKiB     int64 `json:"guest_total_kib,omitempty"`     // MemTotal
	GuestAvailableKiB int64 `json:"guest_available_kib,omitempty"` // MemAvailable
}

// WorkloadStatus describes the supervised process.
type WorkloadStatus struct {
	State     WorkloadState `json:"state"`
	PID       int           `json:"pid,omitempty"`
	Restarts  int           `json:"restarts"`
	ExitCode  *int          `json:"exit_code,omitempty"` // of the last exit
	Signal    string        `json:"signal,omitempty"`    // of the last exit, if killed
	StartedAt *time.Time    `json:"started_at,omitempty"`
	Error     string        `json:"error,omitempty"`
}

// HealthStatus describes the health check.
type HealthStatus struct {
	State               HealthState `json:"state"`
	Endpoint            string      `json:"endpoint,omitempty"`
	ConsecutiveFailures int         `json:"consecutive_failures"`
	LastCheck           *time.Time  `json:"last_check,omitempty"`
	LastError           string      `json:"last_error,omitempty"`
	Since               *time.Time  `json:"since,omitempty"` // when State last changed
}
