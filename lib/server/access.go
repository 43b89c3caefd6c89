package server

import (
	"github.com/volantvm/volant/lib/auth"
)

// anyone marks an operation that needs no token (/healthz). It is not a
// role: no principal has it, and Allows never grants it.
const anyone auth.Role = "anyone"

// access is who may call what, in one place: every operation of the API
// (a route's id; the MCP tools name the operation they perform, see
// mcpTools) and the least role it needs. An operation missing here needs
// admin (and TestEveryRouteHasARole fails).
//
//   - viewer: read VMs, plugins, deployments, volumes, snapshots; logs;
//     the event stream; metrics; the OpenAPI document.
//   - operator: the VM lifecycle (create, start, stop, restart, pause,
//     resume, delete, wait is a read), exec, the console, copying files
//     in and out (as strong as exec), snapshots and volumes.
//   - admin: plugins, deployments, tokens, the guest network, and
//     kestrel's report on the API (guests use the agent endpoint, which has its own rule).
func access() map[string]auth.Role {
	v, o, a := auth.Viewer, auth.Operator, auth.Admin
	return map[string]auth.Role{
		"health":  anyone,
		"openapi": v,
		"metrics": v,
		// The guest subnet: every VM's addressing.
		"getNetwork": v,
		"setNetwork": a,

		"listPlugins":       v,
		"getPlugin":         v,
		"getPluginManifest": v,
		"installPlugin":     a,
		"removePlugin":      a,
		"enablePlugin":      a,
		"disablePlugin":     a,

		"listVMs":      v,
		"getVM":        v,
		"vmLogs":       v,
		"waitVM":       v,
		"createVM":     o,
		"deleteVM":     o,
		"startVM":      o,
		"stopVM":       o,
		"restartVM":    o,
		"pauseVM":      o,
		"resumeVM":     o,
		"execVM":       o,
		"readVMFiles":  o,
		"writeVMFiles": o,
		"vmConsole":    o,
		"agentReport":  a,

		"listDeployments":  v,
		"getDeployment":    v,
		"createDeployment": a,
		"deleteDeployment": a,
		"scaleDeployment":  a,
		"updateDeployment": a,
		"getRollout":       v,
		"listRollouts":     v,
		"undoRollout":      a,

		"listVolumes":  v,
		"getVolume":    v,
		"createVolume": o,
		"deleteVolume": o,
		"resizeVolume": o,

		"listSnapshots":  v,
		"getSnapshot":    v,
		"snapshotVM":     o,
		"restoreVM":      o,
		"deleteSnapshot": o,

		"events": v,

		// MCP's transport is open to every role; each tool call is checked
		// against the operation the tool performs (mcpTools).
		"mcpPost":   v,
		"mcpGet":    v,
		"mcpDelete": v,

		"listTokens":  a,
		"createToken": a,
		"revokeToken": a,
	}
}

// mcpTools maps each MCP tool to the operation it performs, so a tool
// call needs that operation's role.
func mcpTools() map[string]string {
	return map[string]string{
		"list_vms":                "listVMs",
		"get_vm":                  "getVM",
		"vm_logs":                 "vmLogs",
		"create_vm":               "createVM",
		"start_vm":                "startVM",
		"stop_vm":                 "stopVM",
		"pause_vm":                "pauseVM",
		"resume_vm":               "resumeVM",
		"delete_vm":               "deleteVM",
		"exec_vm":                 "execVM",
		"list_plugins":            "listPlugins",
		"list_deployments":        "listDeployments",
		"scale_deployment":        "scaleDeployment",
		"update_deployment":       "updateDeployment",
		"rollout_status":          "getRollout",
		"undo_rollout":            "undoRollout",
		"list_volumes":            "listVolumes",
		"get_volume":              "getVolume",
		"create_volume":           "createVolume",
		"resize_volume":           "resizeVolume",
		"delete_volume":           "deleteVolume",
		"list_snapshots":          "listSnapshots",
		"snapshot_vm":             "snapshotVM",
		"create_vm_from_snapshot": "createVM",
		"restore_vm":              "restoreVM",
		"delete_snapshot":         "deleteSnapshot",
	}
}

// need is the role operation id needs (admin when the table lacks it).
func (s *Server) need(id string) auth.Role {
	if r, ok := s.access[id]; ok {
		return r
	}
	return auth.Admin
}

// audited says which calls the audit trail records: everything but GET
// (which only reads), and attaching to a console (a GET whose stream
// types into the guest).
func audited(rt route) bool { return rt.method != "GET" || rt.id == "vmConsole" }
