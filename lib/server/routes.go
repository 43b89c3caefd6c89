package server

import (
	"net/http"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
)

// route is one entry of the API: the handler and what the OpenAPI
// document says about it. The ServeMux and the document are both built
// from routes(), so neither can have a route the other lacks.
type route struct {
	method  string
	path    string // OpenAPI form: /api/v1/vms/{name}
	id      string // operationId
	summary string
	tag     string
	// req is the JSON body type (nil: no body); rawBody documents a body
	// that is any JSON object (the plugin manifest).
	req     any
	rawBody string
	// reqContent is rawBody's media type (default application/json: any
	// object); anything else is documented as binary.
	reqContent string
	// upgrade is the HTTP Upgrade token the route also accepts, answering
	// 101 Switching Protocols (upgradeDoc says what the stream carries).
	upgrade, upgradeDoc string
	// status and resp are the success answer; content its media type
	// (default application/json).
	status  int
	resp    any
	content string
	query   []param
	errors  []apierr.Code
	// agent routes are also served on the agent listener.
	agent   bool
	handler http.Handler
}

type param struct {
	name, typ, desc string
	enum            []string
}

func (rt route) pattern() string { return rt.method + " " + rt.path }

var (
	nameErrors = []apierr.Code{apierr.NotFound, apierr.InvalidInput}
	bodyErrors = []apierr.Code{apierr.InvalidInput, apierr.TooLarge}
)

func states() []string {
	var out []string
	for _, s := range api.VMStates() {
		out = append(out, string(s))
	}
	return out
}

// routes is the API. Order is the document's.
func (s *Server) routes() []route {
	rs := []route{
		{method: "GET", path: "/healthz", id: "health", tag: "daemon", summary: "Liveness and readiness (no token needed)",
			status: 200, resp: api.Health{}, handler: http.HandlerFunc(s.healthz)},
		{method: "GET", path: "/openapi.json", id: "openapi", tag: "daemon", summary: "This document",
			status: 200, resp: map[string]any{}, handler: http.HandlerFunc(s.openapi)},
		{method: "GET", path: "/metrics", id: "metrics", tag: "daemon",
			summary: "Prometheus metrics (text format): API request and VM boot durations, VMs by state, reconcile passes and errors, " +
				"the boot queue, the event log, event streams; per VM (labels vm, plugin, deployment) state, health, the hypervisor " +
				"process's CPU time and memory, guest memory and workload restarts as kestrel reports them, tap and block counters",
			status: 200, resp: "", content: "text/plain", handler: s.metrics.handler()},
		{method: "GET", path: api.Prefix + "/network", id: "getNetwork", tag: "daemon", summary: "The guest network: the pool VMs take addresses from",
			status: 200, resp: api.Network{}, handler: http.HandlerFunc(s.getNetwork)},
		{method: "PUT", path: api.Prefix + "/network", id: "setNetwork", tag: "daemon",
			summary: "Set the guest subnet (gateway its first address, the default range), kept across restarts where it wins over --subnet; " +
				"the bridge's address and kestrel's endpoint follow. The same subnet again changes nothing; another one is refused " +
				"(CONFLICT) while any VM exists, so a VM's address never moves. volant-kubelet sets its node's podCIDR here",
			req: api.SetNetworkRequest{}, status: 200, resp: api.Network{},
			errors: append(bodyErrors, apierr.Conflict, apierr.NotSupported), handler: http.HandlerFunc(s.setNetwork)},

		{method: "GET", path: api.Prefix + "/plugins", id: "listPlugins", tag: "plugins", summary: "List installed plugins",
			status: 200, resp: api.PluginList{}, handler: http.HandlerFunc(s.listPlugins)},
		{method: "POST", path: api.Prefix + "/plugins", id: "installPlugin", tag: "plugins",
			summary: "Install a plugin from its manifest (validated; remote artifacts fetched; checksums verified), " +
				"or build one from a container image: a body {\"image\": \"docker://…\"} (InstallImageRequest, without \"workload\") " +
				"is built by volantd with fledge (oci_rootfs), cached by image digest (200 with the plugin built before, 201 after a build); " +
				"the build's steps are plugin.build.* events; a signed plugin comes as a SignedPluginRequest " +
				"{\"manifest\": \"<the manifest's text>\", \"signature\": \"<its .minisig>\"}, verified with --trusted-keys " +
				"(SIGNATURE_INVALID); with --require-signed an unsigned manifest or an image is SIGNATURE_REQUIRED",
			rawBody: "a plugin manifest (docs/plugin-manifest.schema.json), a SignedPluginRequest, or an InstallImageRequest", status: 201, resp: api.Plugin{},
			query: []param{{name: "replace", typ: "boolean", desc: "replace an installed plugin of the same name"}},
			errors: append(bodyErrors, apierr.InvalidManifest, apierr.Conflict, apierr.ChecksumMismatch, apierr.Unavailable,
				apierr.NotFound, apierr.PermissionDenied, apierr.Timeout, apierr.SignatureRequired, apierr.SignatureInvalid),
			handler: http.HandlerFunc(s.installPlugin)},
		{method: "GET", path: api.Prefix + "/plugins/{name}", id: "getPlugin", tag: "plugins", summary: "Show a plugin",
			status: 200, resp: api.Plugin{}, errors: nameErrors, handler: http.HandlerFunc(s.getPlugin)},
		{method: "DELETE", path: api.Prefix + "/plugins/{name}", id: "removePlugin", tag: "plugins",
			summary: "Remove a plugin (CONFLICT while VMs or deployments use it)",
			status:  200, resp: api.Plugin{}, errors: append(nameErrors, apierr.Conflict), handler: http.HandlerFunc(s.removePlugin)},
		{method: "POST", path: api.Prefix + "/plugins/{name}/enable", id: "enablePlugin", tag: "plugins", summary: "Allow VMs to be created from a plugin",
			status: 200, resp: api.Plugin{}, errors: nameErrors, handler: s.setPluginEnabled(true)},
		{method: "POST", path: api.Prefix + "/plugins/{name}/disable", id: "disablePlugin", tag: "plugins", summary: "Stop new VMs from being created from a plugin",
			status: 200, resp: api.Plugin{}, errors: nameErrors, handler: s.setPluginEnabled(false)},
		{method: "GET", path: manifestPattern, id: "getPluginManifest", tag: "plugins",
			summary: "A plugin's manifest as installed (also on the agent endpoint, for kestrel)",
			status:  200, resp: map[string]any{}, errors: nameErrors, agent: true, handler: http.HandlerFunc(s.pluginManifest)},

		{method: "GET", path: api.Prefix + "/vms", id: "listVMs", tag: "vms", summary: "List VMs",
			query: []param{{name: "plugin", typ: "string", desc: "only VMs of this plugin"},
				{name: "deployment", typ: "string", desc: "only replicas of this deployment"},
				{name: "state", typ: "string", desc: "only VMs in this state", enum: states()},
				{name: "label", typ: "string", desc: "KEY=VALUE: only VMs whose label KEY is VALUE"}},
			status: 200, resp: api.VMList{}, errors: []apierr.Code{apierr.InvalidInput}, handler: http.HandlerFunc(s.listVMs)},
		{method: "POST", path: api.Prefix + "/vms", id: "createVM", tag: "vms",
			summary: "Create and start a VM: lease, tap, stage, start; answers once the hypervisor runs (state starting)",
			req:     api.CreateVMRequest{}, status: 201, resp: api.VM{},
			errors: append(bodyErrors, apierr.NotFound, apierr.Conflict, apierr.IPExhausted, apierr.PortInUse, apierr.ChecksumMismatch,
				apierr.CmdlineTooLong, apierr.NotSupported, apierr.Unavailable, apierr.Timeout, apierr.SignatureRequired, apierr.SignatureInvalid,
				apierr.SecretMissing),
			handler: http.HandlerFunc(s.createVM)},
		{method: "GET", path: api.Prefix + "/vms/{name}", id: "getVM", tag: "vms", summary: "Show a VM",
			status: 200, resp: api.VM{}, errors: nameErrors, handler: http.HandlerFunc(s.getVM)},
		{method: "DELETE", path: api.Prefix + "/vms/{name}", id: "deleteVM", tag: "vms",
			summary: "Stop a VM, delete its tap, free its address and forget it (answers with state deleted)",
			status:  200, resp: api.VM{}, errors: append(nameErrors, apierr.Unavailable), handler: s.vmAction(s.ctl.DeleteVM)},
		{method: "POST", path: api.Prefix + "/vms/{name}/start", id: "startVM", tag: "vms", summary: "Start a stopped, crashed or failed VM",
			status: 200, resp: api.VM{}, errors: append(nameErrors, apierr.Conflict, apierr.Unavailable, apierr.Timeout, apierr.SignatureRequired, apierr.SignatureInvalid), handler: s.vmAction(s.ctl.StartVM)},
		{method: "POST", path: api.Prefix + "/vms/{name}/stop", id: "stopVM", tag: "vms",
			summary: "Stop a VM: ACPI power button, then a hard stop after the stop timeout",
			status:  200, resp: api.VM{}, errors: append(nameErrors, apierr.Conflict), handler: s.vmAction(s.ctl.StopVM)},
		{method: "POST", path: api.Prefix + "/vms/{name}/restart", id: "restartVM", tag: "vms", summary: "Stop and start a VM",
			status: 200, resp: api.VM{}, errors: append(nameErrors, apierr.Conflict, apierr.Unavailable, apierr.SignatureRequired, apierr.SignatureInvalid), handler: s.vmAction(s.ctl.RestartVM)},
		{method: "POST", path: api.Prefix + "/vms/{name}/pause", id: "pauseVM", tag: "vms",
			summary: "Pause a running VM's vCPUs (state paused: not health-checked, no published-port traffic, not replaced by its deployment)",
			status:  200, resp: api.VM{}, errors: append(nameErrors, apierr.Conflict), handler: s.vmAction(s.ctl.PauseVM)},
		{method: "POST", path: api.Prefix + "/vms/{name}/resume", id: "resumeVM", tag: "vms",
			summary: "Resume a paused VM (running again, or starting if it had not passed its health check)",
			status:  200, resp: api.VM{}, errors: append(nameErrors, apierr.Conflict), handler: s.vmAction(s.ctl.ResumeVM)},
		{method: "GET", path: api.Prefix + "/vms/{name}/logs", id: "vmLogs", tag: "vms",
			summary: "The VM's serial console log (stream=console, the default) or its workload's output as kestrel captured it " +
				"(stream=workload for stdout and stderr, or one of them), kept on the host; lost output shows as a line " +
				"\"[volant: N bytes of output were lost here: ...]\"",
			query: []param{{name: "stream", typ: "string", desc: "what to read (default console)", enum: api.LogStreams()},
				{name: "follow", typ: "boolean", desc: "keep streaming what the guest writes"},
				{name: "tail", typ: "integer", desc: "start with the last N lines"},
				{name: "since", typ: "string", desc: "workload output from this time on: RFC 3339 or a duration before now (10m)"},
				{name: "timestamps", typ: "boolean", desc: "prefix each workload line with the time kestrel read it"}},
			status: 200, resp: "", content: "text/plain", errors: nameErrors, handler: http.HandlerFunc(s.vmLogs)},
		{method: "POST", path: api.Prefix + "/vms/{name}/exec", id: "execVM", tag: "vms",
			summary: "Run a command in a running VM over its host-only agent channel. Without an upgrade: the command runs to its end " +
				"(or timeout_ms) and the answer is its exit status and output. With Connection: Upgrade and Upgrade: " + agentchan.UpgradeProtocol +
				": an interactive session (stdin, a TTY, resizes, signals)",
			req: api.ExecRequest{}, status: 200, resp: api.ExecResult{}, upgrade: agentchan.UpgradeProtocol, upgradeDoc: execUpgradeDoc,
			errors:  append(append(nameErrors, bodyErrors...), apierr.Conflict, apierr.PermissionDenied, apierr.Unavailable, apierr.Timeout),
			handler: http.HandlerFunc(s.vmExec)},
		{method: "GET", path: api.Prefix + "/vms/{name}/files", id: "readVMFiles", tag: "vms",
			summary: "Copy a file or directory out of a running VM: a tar stream named from the path's last element. An error after " +
				"the first bytes is in the " + copyErrorTrailer + " trailer",
			query:  []param{{name: "path", typ: "string", desc: "the guest path (required)"}},
			status: 200, resp: "", content: "application/x-tar",
			errors: append(nameErrors, apierr.Conflict, apierr.PermissionDenied, apierr.Unavailable), handler: http.HandlerFunc(s.vmFilesGet)},
		{method: "PUT", path: api.Prefix + "/vms/{name}/files", id: "writeVMFiles", tag: "vms",
			summary: "Copy files into a running VM: the body is a tar stream, extracted into path when it is a directory, else " +
				"written as path (one top-level entry). Entries that would leave the destination are refused",
			query:   []param{{name: "path", typ: "string", desc: "the guest destination (required)"}},
			rawBody: "a tar stream", reqContent: "application/x-tar", status: 200, resp: api.CopyResult{},
			errors: append(nameErrors, apierr.Conflict, apierr.PermissionDenied, apierr.Unavailable), handler: http.HandlerFunc(s.vmFilesPut)},
		{method: "GET", path: api.Prefix + "/vms/{name}/console", id: "vmConsole", tag: "vms",
			summary: "Attach to the VM's serial console: send Connection: Upgrade and Upgrade: tcp; after 101 the connection is a raw byte stream both ways (one client at a time)",
			status:  http.StatusSwitchingProtocols, errors: append(nameErrors, apierr.InvalidInput, apierr.Conflict, apierr.NotSupported, apierr.Unavailable),
			handler: http.HandlerFunc(s.vmConsole)},
		{method: "GET", path: api.Prefix + "/vms/{name}/wait", id: "waitVM", tag: "vms",
			summary: "Wait until the VM is in a state (long poll); TIMEOUT when it does not get there, CONFLICT when it cannot",
			query: []param{{name: "state", typ: "string", desc: "the state to wait for (default running)", enum: states()},
				{name: "timeout", typ: "string", desc: "how long to wait, e.g. 30s (default 30s, at most 10m)"}},
			status: 200, resp: api.VM{}, errors: append(nameErrors, apierr.Timeout, apierr.Conflict), handler: http.HandlerFunc(s.waitVM)},
		{method: "POST", path: reportPattern, id: "agentReport", tag: "agent",
			summary: "kestrel's status report (also on the agent endpoint, where only the VM's own address may post)",
			req:     agentapi.Status{}, status: 204, errors: append(nameErrors, apierr.PermissionDenied),
			agent: true, handler: http.HandlerFunc(s.agentReport)},

		{method: "GET", path: api.Prefix + "/deployments", id: "listDeployments", tag: "deployments", summary: "List deployments",
			status: 200, resp: api.DeploymentList{}, handler: http.HandlerFunc(s.listDeployments)},
		{method: "POST", path: api.Prefix + "/deployments", id: "createDeployment", tag: "deployments",
			summary: "Create a deployment; its N replicas <name>-<index> are created in the background",
			req:     api.CreateDeploymentRequest{}, status: 201, resp: api.Deployment{},
			errors: append(bodyErrors, apierr.NotFound, apierr.Conflict, apierr.PortInUse, apierr.SignatureRequired, apierr.SignatureInvalid, apierr.SecretMissing), handler: http.HandlerFunc(s.createDeployment)},
		{method: "GET", path: api.Prefix + "/deployments/{name}", id: "getDeployment", tag: "deployments", summary: "Show a deployment",
			status: 200, resp: api.Deployment{}, errors: nameErrors, handler: http.HandlerFunc(s.getDeployment)},
		{method: "DELETE", path: api.Prefix + "/deployments/{name}", id: "deleteDeployment", tag: "deployments",
			summary: "Delete a deployment and its replicas", status: 200, resp: api.Deployment{}, errors: nameErrors,
			handler: http.HandlerFunc(s.deleteDeployment)},
		{method: "POST", path: api.Prefix + "/deployments/{name}/scale", id: "scaleDeployment", tag: "deployments",
			summary: "Set the replica count; replicas are created, or deleted from the highest index, in the background",
			req:     api.ScaleRequest{}, status: 200, resp: api.Deployment{}, errors: append(nameErrors, bodyErrors...),
			handler: http.HandlerFunc(s.scaleDeployment)},
		{method: "PATCH", path: api.Prefix + "/deployments/{name}", id: "updateDeployment", tag: "deployments",
			summary: "Start a rolling update to another plugin version: replicas are replaced a batch at a time (max_surge, max_unavailable); " +
				"a new replica not healthy within deadline_ms rolls it back. An update under way is superseded.",
			req: api.UpdateDeploymentRequest{}, status: 200, resp: api.Deployment{}, errors: append(append(nameErrors, bodyErrors...), apierr.Conflict, apierr.SecretMissing),
			handler: http.HandlerFunc(s.updateDeployment)},
		{method: "GET", path: api.Prefix + "/deployments/{name}/rollout", id: "getRollout", tag: "deployments",
			summary: "The latest rolling update and its progress (NOT_FOUND: the deployment never had one)",
			status:  200, resp: api.Rollout{}, errors: nameErrors, handler: http.HandlerFunc(s.getRollout)},
		{method: "POST", path: api.Prefix + "/deployments/{name}/rollout/undo", id: "undoRollout", tag: "deployments",
			summary: "Roll back the update under way, or start an update back to the version before the last complete one (CONFLICT: none)",
			status:  200, resp: api.Rollout{}, errors: append(nameErrors, apierr.Conflict), handler: http.HandlerFunc(s.undoRollout)},
		{method: "GET", path: api.Prefix + "/deployments/{name}/rollouts", id: "listRollouts", tag: "deployments",
			summary: "The deployment's rolling updates, newest first",
			status:  200, resp: api.RolloutList{}, errors: nameErrors, handler: http.HandlerFunc(s.listRollouts)},

		{method: "GET", path: api.Prefix + "/events", id: "events", tag: "events",
			summary: "The event stream (Server-Sent Events). Each event: id, event (its type), data (the Event as JSON). " +
				"Reconnect with Last-Event-ID (or ?since=) to get every event after that id; without either, only new events. " +
				"When the log was pruned past that id, an events.pruned event (id 0, no SSE id) comes first, saying how many are lost. " +
				"A reader that falls behind is disconnected and resumes. " +
				"A replay that cannot go on (a damaged log) ends with an error event (no SSE id) whose data is the error object.",
			query: []param{{name: "since", typ: "integer", desc: "replay events after this id (0: the whole retained log)"},
				{name: "type", typ: "string", desc: "comma-separated event types to keep; vm.* matches a prefix"}},
			status: 200, resp: api.Event{}, content: "text/event-stream", errors: []apierr.Code{apierr.InvalidInput, apierr.DataCorrupt},
			handler: http.HandlerFunc(s.events)},
	}
	rs = append(rs, s.tokenRoutes()...)
	rs = append(rs, s.volumeRoutes()...)
	rs = append(rs, s.snapshotRoutes()...)
	for _, m := range []string{"POST", "GET", "DELETE"} {
		rs = append(rs, route{method: m, path: "/mcp", id: "mcp" + map[string]string{"POST": "Post", "GET": "Get", "DELETE": "Delete"}[m], tag: "mcp",
			summary: map[string]string{
				"POST":   "Model Context Protocol, streamable HTTP transport: one JSON-RPC 2.0 message (initialize, tools/list, tools/call, ...)",
				"GET":    "Model Context Protocol: the session's server-to-client stream (text/event-stream)",
				"DELETE": "Model Context Protocol: end a session",
			}[m],
			rawBody: map[string]string{"POST": "a JSON-RPC 2.0 message"}[m],
			status:  200, resp: map[string]any{}, content: map[string]string{"POST": "application/json", "GET": "text/event-stream", "DELETE": "application/json"}[m],
			handler: s.mcp})
	}
	return rs
}

func (s *Server) tokenRoutes() []route {
	return []route{
		{method: "GET", path: api.Prefix + "/tokens", id: "listTokens", tag: "tokens",
			summary: "List the named API tokens (never their secrets) with their role, expiry and state",
			status:  200, resp: api.TokenList{}, handler: http.HandlerFunc(s.listTokens)},
		{method: "POST", path: api.Prefix + "/tokens", id: "createToken", tag: "tokens",
			summary: "Create a named token with a role (viewer, operator, admin) and an optional lifetime; the answer holds its secret, " +
				"which volantd keeps only as a hash and never shows again",
			req: api.CreateTokenRequest{}, status: 201, resp: api.CreatedToken{}, errors: append(bodyErrors, apierr.Conflict),
			handler: http.HandlerFunc(s.createToken)},
		{method: "DELETE", path: api.Prefix + "/tokens/{name}", id: "revokeToken", tag: "tokens",
			summary: "Revoke a token: the next request with it is UNAUTHORIZED (its name stays taken); repeating it answers the same",
			status:  200, resp: api.Token{}, errors: nameErrors, handler: http.HandlerFunc(s.revokeToken)},
	}
}

// The routes kestrel calls, as patterns; a test checks that they match
// agentapi.ManifestPath and agentapi.ReportPath.
const (
	manifestPattern = api.Prefix + "/plugins/{name}/manifest"
	reportPattern   = api.Prefix + "/vms/{name}/agent"
)
