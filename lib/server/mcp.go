package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/buildinfo"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/portmap"
	"github.com/volantvm/volant/lib/workloadlog"
)

// Backend is what the MCP tools call. The controller (through
// ControllerBackend) serves /mcp inside volantd; lib/client's *Client
// serves `volantd mcp` on stdio, talking to the running daemon.
type Backend interface {
	ListVMs(ctx context.Context, f api.VMFilter) ([]api.VM, error)
	VM(ctx context.Context, name string) (*api.VM, error)
	CreateVM(ctx context.Context, req api.CreateVMRequest) (*api.VM, error)
	StartVM(ctx context.Context, name string) (*api.VM, error)
	StopVM(ctx context.Context, name string) (*api.VM, error)
	PauseVM(ctx context.Context, name string) (*api.VM, error)
	ResumeVM(ctx context.Context, name string) (*api.VM, error)
	DeleteVM(ctx context.Context, name string) (*api.VM, error)
	ListPlugins(ctx context.Context) ([]api.Plugin, error)
	ListDeployments(ctx context.Context) ([]api.Deployment, error)
	ScaleDeployment(ctx context.Context, name string, replicas int) (*api.Deployment, error)
	UpdateDeployment(ctx context.Context, name string, req api.UpdateDeploymentRequest) (*api.Deployment, error)
	Rollout(ctx context.Context, name string) (*api.Rollout, error)
	UndoRollout(ctx context.Context, name string) (*api.Rollout, error)
	VMLogs(ctx context.Context, name string, o api.LogOptions) (io.ReadCloser, error)
	Exec(ctx context.Context, name string, req api.ExecRequest) (*api.ExecResult, error)
}

// ControllerBackend adapts a controller to Backend.
type ControllerBackend struct{ *controller.Controller }

// VMLogs implements Backend (without Follow: MCP tools answer once).
func (b ControllerBackend) VMLogs(ctx context.Context, name string, o api.LogOptions) (io.ReadCloser, error) {
	o.Follow = false
	var buf bytes.Buffer
	var err error
	if o.Stream == "" || o.Stream == api.LogConsole {
		err = b.Logs(ctx, name, o, &buf, nil)
	} else {
		err = b.WorkloadLogText(ctx, name, o, &buf, nil)
	}
	if err != nil {
		return nil, err
	}
	return io.NopCloser(&buf), nil
}

// Tool inputs. The jsonschema tags are the descriptions the MCP client
// sees.
type (
	listVMsIn struct {
		Plugin     string `json:"plugin,omitempty" jsonschema:"only VMs of this plugin"`
		Deployment string `json:"deployment,omitempty" jsonschema:"only replicas of this deployment"`
		State      string `json:"state,omitempty" jsonschema:"only VMs in this state: starting, running, paused, stopping, stopped, crashed, failed, deleting"`
	}
	nameIn struct {
		Name string `json:"name" jsonschema:"the VM's name"`
	}
	createVMIn struct {
		Name     string            `json:"name" jsonschema:"the new VM's name: 1-63 lowercase letters, digits, - and _"`
		Plugin   string            `json:"plugin" jsonschema:"the installed plugin to boot: NAME (its default, last installed, version) or NAME@VERSION"`
		CPUCores int               `json:"cpu_cores,omitempty" jsonschema:"vCPUs (default: the plugin's)"`
		MemoryMB int               `json:"memory_mb,omitempty" jsonschema:"memory in MiB (default: the plugin's)"`
		Wait     bool              `json:"wait,omitempty" jsonschema:"wait until the VM is running (its health check passed), up to 2 minutes"`
		Volumes  []api.VolumeMount `json:"volumes,omitempty" jsonschema:"volumes to mount, each {volume, path, readonly}; a volume another running VM writes is refused (VOLUME_IN_USE)"`
		Ports    []string          `json:"ports,omitempty" jsonschema:"host ports to publish to the VM, each [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp], e.g. 8080:80"`
	}
	scaleIn struct {
		Name     string `json:"name" jsonschema:"the deployment's name"`
		Replicas int    `json:"replicas" jsonschema:"the desired number of replicas"`
	}
	updateIn struct {
		Name           string `json:"name" jsonschema:"the deployment's name"`
		Plugin         string `json:"plugin" jsonschema:"the plugin version to move the replicas to: NAME@VERSION, or NAME for its default (last installed) version"`
		MaxSurge       *int   `json:"max_surge,omitempty" jsonschema:"replicas allowed above the count during the update (default 1; 0 with volume templates)"`
		MaxUnavailable *int   `json:"max_unavailable,omitempty" jsonschema:"replicas of the count allowed to be out of service (default 0, or 1 when max_surge is 0)"`
		DeadlineMS     int64  `json:"deadline_ms,omitempty" jsonschema:"milliseconds a new replica may take to become healthy before the update rolls back (default 300000)"`
	}
	deploymentIn struct {
		Name string `json:"name" jsonschema:"the deployment's name"`
	}
	logsIn struct {
		Name       string `json:"name" jsonschema:"the VM's name"`
		Tail       int    `json:"tail,omitempty" jsonschema:"only the last N lines (default 200; 0 for the default)"`
		Stream     string `json:"stream,omitempty" jsonschema:"workload (default: the workload's stdout and stderr), stdout, stderr, or console (the serial console: kernel, kestrel and workload mixed)"`
		Since      string `json:"since,omitempty" jsonschema:"workload output from this time on: RFC 3339, or a duration before now such as 10m"`
		Timestamps bool   `json:"timestamps,omitempty" jsonschema:"prefix each workload line with the time it was written"`
	}
	execIn struct {
		Name      string   `json:"name" jsonschema:"the VM's name"`
		Command   []string `json:"command" jsonschema:"the program and its arguments, run directly (no shell unless you name one, e.g. [\"sh\",\"-c\",\"...\"])"`
		Env       []string `json:"env,omitempty" jsonschema:"entries of the form KEY=VALUE added to the workload's environment"`
		Workdir   string   `json:"workdir,omitempty" jsonschema:"working directory in the guest"`
		User      string   `json:"user,omitempty" jsonschema:"uid[:gid] to run as (default root)"`
		Stdin     *string  `json:"stdin,omitempty" jsonschema:"text given to the command on its standard input"`
		TimeoutMS int      `json:"timeout_ms,omitempty" jsonschema:"kill the command after this many milliseconds (default 60000, at most 3600000)"`
		MaxOutput int      `json:"max_output,omitempty" jsonschema:"bytes of each stream returned (default 65536, at most 16777216)"`
	}
	noIn struct{}
)

// NewMCPServer returns the MCP server of the API: tools to list, create,
// start, stop and delete VMs, read their console logs, list plugins and
// deployments, scale deployments, update them (rolling updates: start,
// status, undo), and (when b is a VolumeBackend) list,
// create, resize and delete volumes, and (a SnapshotBackend) snapshot,
// restore and start VMs from snapshots.
func NewMCPServer(b Backend, log *slog.Logger) *mcp.Server { return newMCPServer(b, log, nil) }

// newMCPServer is NewMCPServer whose tool calls guard checks against the
// API's roles (nil: no check, as on stdio, where the daemon's REST API
// checks the token of every call the tools make).
func newMCPServer(b Backend, log *slog.Logger, guard *Server) *mcp.Server {
	s := mcp.NewServer(&mcp.Implementation{Name: "volantd", Title: "Volant microVMs", Version: buildinfo.String()}, &mcp.ServerOptions{
		Instructions: "Volant runs workloads in microVMs on one Linux host. Plugins are installed images; " +
			"VMs boot from a plugin and get an IP on the host bridge; deployments keep N replicas running.",
		Logger: log,
	})
	ro := &mcp.ToolAnnotations{ReadOnlyHint: true}
	f := false
	destructive := &mcp.ToolAnnotations{DestructiveHint: &f}

	mcp.AddTool(s, &mcp.Tool{Name: "list_vms", Description: "List the VMs with their state, health and IP address.", Annotations: ro},
		func(ctx context.Context, _ *mcp.CallToolRequest, in listVMsIn) (*mcp.CallToolResult, any, error) {
			vms, err := b.ListVMs(ctx, api.VMFilter{Plugin: in.Plugin, Deployment: in.Deployment, State: api.VMState(in.State)})
			if err != nil {
				return nil, nil, toolErr(err)
			}
			if vms == nil {
				vms = []api.VM{}
			}
			return nil, api.VMList{VMs: vms}, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "get_vm", Description: "Show one VM.", Annotations: ro},
		func(ctx context.Context, _ *mcp.CallToolRequest, in nameIn) (*mcp.CallToolResult, any, error) {
			vm, err := b.VM(ctx, in.Name)
			if err != nil {
				return nil, nil, toolErr(err)
			}
			return nil, vm, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "create_vm", Description: "Create and start a VM from an installed plugin, optionally publishing host ports to it. It answers once the hypervisor runs (state starting), or with wait once the VM is running."},
		func(ctx context.Context, _ *mcp.CallToolRequest, in createVMIn) (*mcp.CallToolResult, any, error) {
			ports, err := portmap.ParseAll(in.Ports)
			if err != nil {
				return nil, nil, toolErr(err)
			}
			vm, err := b.CreateVM(ctx, api.CreateVMRequest{Name: in.Name, Plugin: in.Plugin, CPUCores: in.CPUCores, MemoryMB: in.MemoryMB, Volumes: in.Volumes, Ports: ports})
			if err != nil {
				return nil, nil, toolErr(err)
			}
			if in.Wait {
				if w, ok := b.(interface {
					WaitVM(context.Context, string, api.VMState, time.Duration) (*api.VM, error)
				}); ok {
					if vm, err = w.WaitVM(ctx, in.Name, api.VMRunning, 2*time.Minute); err != nil {
						return nil, nil, toolErr(err)
					}
				}
			}
			return nil, vm, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "start_vm", Description: "Start a stopped, crashed or failed VM."},
		func(ctx context.Context, _ *mcp.CallToolRequest, in nameIn) (*mcp.CallToolResult, any, error) {
			vm, err := b.StartVM(ctx, in.Name)
			if err != nil {
				return nil, nil, toolErr(err)
			}
			return nil, vm, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "stop_vm", Description: "Stop a VM (ACPI power button, then a hard stop). It keeps its address and can be started again.", Annotations: destructive},
		func(ctx context.Context, _ *mcp.CallToolRequest, in nameIn) (*mcp.CallToolResult, any, error) {
			vm, err := b.StopVM(ctx, in.Name)
			if err != nil {
				return nil, nil, toolErr(err)
			}
			return nil, vm, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "pause_vm", Description: "Pause a running VM's vCPUs. A paused VM keeps its memory and address, is not health-checked, takes no published-port traffic and is not replaced by its deployment."},
		func(ctx context.Context, _ *mcp.CallToolRequest, in nameIn) (*mcp.CallToolResult, any, error) {
			vm, err := b.PauseVM(ctx, in.Name)
			if err != nil {
				return nil, nil, toolErr(err)
			}
			return nil, vm, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "resume_vm", Description: "Resume a paused VM."},
		func(ctx context.Context, _ *mcp.CallToolRequest, in nameIn) (*mcp.CallToolResult, any, error) {
			vm, err := b.ResumeVM(ctx, in.Name)
			if err != nil {
				return nil, nil, toolErr(err)
			}
			return nil, vm, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "delete_vm", Description: "Stop a VM and delete it: its tap, address and files are freed."},
		func(ctx context.Context, _ *mcp.CallToolRequest, in nameIn) (*mcp.CallToolResult, any, error) {
			vm, err := b.DeleteVM(ctx, in.Name)
			if err != nil {
				return nil, nil, toolErr(err)
			}
			return nil, vm, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "vm_logs", Description: "Read the end of what a VM's workload wrote to stdout and stderr (kept on the host, " +
		"per stream), or of its serial console (stream console). Output the guest had to drop shows as a line saying how many bytes were lost.", Annotations: ro},
		func(ctx context.Context, _ *mcp.CallToolRequest, in logsIn) (*mcp.CallToolResult, any, error) {
			tail := in.Tail
			if tail <= 0 {
				tail = 200
			}
			o := api.LogOptions{Tail: tail, Stream: in.Stream, Timestamps: in.Timestamps}
			if o.Stream == "" {
				o.Stream = api.LogWorkload
			}
			var err error
			if o.Since, err = workloadlog.ParseSince(in.Since, time.Now()); err != nil {
				return nil, nil, toolErr(err)
			}
			rc, err := b.VMLogs(ctx, in.Name, o)
			if err != nil {
				return nil, nil, toolErr(err)
			}
			defer rc.Close()
			data, err := io.ReadAll(io.LimitReader(rc, 1<<20))
			if err != nil {
				return nil, nil, toolErr(err)
			}
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: string(data)}}}, nil, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "exec_vm", Description: "Run a command in a running VM (over a channel only the host reaches, not the network) and " +
		"return its exit code, stdout and stderr when it has ended. Not interactive: give input with stdin. A missing command is an error " +
		"(NOT_FOUND); a command that runs past timeout_ms is killed (TIMEOUT, with the output so far)."},
		func(ctx context.Context, _ *mcp.CallToolRequest, in execIn) (*mcp.CallToolResult, any, error) {
			if in.MaxOutput <= 0 {
				in.MaxOutput = 64 << 10
			}
			res, err := b.Exec(ctx, in.Name, api.ExecRequest{Command: in.Command, Env: in.Env, Workdir: in.Workdir, User: in.User,
				Stdin: in.Stdin, TimeoutMS: in.TimeoutMS, MaxOutput: in.MaxOutput})
			if err != nil {
				if res != nil && apierr.Is(err, apierr.Timeout) {
					b, _ := json.Marshal(res)
					return &mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{
						Text: "TIMEOUT: " + err.Error() + "\noutput so far: " + string(b)}}}, nil, nil
				}
				return nil, nil, toolErr(err)
			}
			return nil, res, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "list_plugins", Description: "List the installed plugins (what VMs can boot).", Annotations: ro},
		func(ctx context.Context, _ *mcp.CallToolRequest, _ noIn) (*mcp.CallToolResult, any, error) {
			ps, err := b.ListPlugins(ctx)
			if err != nil {
				return nil, nil, toolErr(err)
			}
			if ps == nil {
				ps = []api.Plugin{}
			}
			return nil, api.PluginList{Plugins: ps}, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "list_deployments", Description: "List the deployments with their desired and running replica counts.", Annotations: ro},
		func(ctx context.Context, _ *mcp.CallToolRequest, _ noIn) (*mcp.CallToolResult, any, error) {
			ds, err := b.ListDeployments(ctx)
			if err != nil {
				return nil, nil, toolErr(err)
			}
			if ds == nil {
				ds = []api.Deployment{}
			}
			return nil, api.DeploymentList{Deployments: ds}, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "scale_deployment", Description: "Set a deployment's replica count; replicas are created, or deleted from the highest index, in the background."},
		func(ctx context.Context, _ *mcp.CallToolRequest, in scaleIn) (*mcp.CallToolResult, any, error) {
			d, err := b.ScaleDeployment(ctx, in.Name, in.Replicas)
			if err != nil {
				return nil, nil, toolErr(err)
			}
			return nil, d, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "update_deployment", Description: "Start a rolling update of a deployment to another plugin version: " +
		"replicas are replaced a batch at a time in the background, each new one healthy before an old one goes (with max_unavailable 0); " +
		"a new replica not healthy within the deadline rolls the update back. Follow it with rollout_status."},
		func(ctx context.Context, _ *mcp.CallToolRequest, in updateIn) (*mcp.CallToolResult, any, error) {
			d, err := b.UpdateDeployment(ctx, in.Name, api.UpdateDeploymentRequest{Plugin: in.Plugin, MaxSurge: in.MaxSurge,
				MaxUnavailable: in.MaxUnavailable, DeadlineMS: in.DeadlineMS})
			if err != nil {
				return nil, nil, toolErr(err)
			}
			return nil, d, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "rollout_status", Description: "A deployment's latest rolling update: its state (progressing, rolling_back, complete, rolled_back, superseded), versions, and how many replicas run the target version and are healthy.", Annotations: ro},
		func(ctx context.Context, _ *mcp.CallToolRequest, in deploymentIn) (*mcp.CallToolResult, any, error) {
			r, err := b.Rollout(ctx, in.Name)
			if err != nil {
				return nil, nil, toolErr(err)
			}
			return nil, r, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "undo_rollout", Description: "Roll back a deployment's update under way, or start an update back to the version it ran before its last complete update."},
		func(ctx context.Context, _ *mcp.CallToolRequest, in deploymentIn) (*mcp.CallToolResult, any, error) {
			r, err := b.UndoRollout(ctx, in.Name)
			if err != nil {
				return nil, nil, toolErr(err)
			}
			return nil, r, nil
		})
	addVolumeTools(s, b, ro)
	addSnapshotTools(s, b, ro)
	if guard != nil {
		s.AddReceivingMiddleware(guard.mcpGuard)
	}
	return s
}

// toolErr makes a tool failure the MCP client reads: the apierr code and
// message (the SDK marks the result isError).
func toolErr(err error) error {
	e := apierr.From(err)
	return fmt.Errorf("%s: %s", e.Code, e.Message)
}

// MCP session bounds unless Options say otherwise.
const (
	DefaultMCPSessionTimeout = 10 * time.Minute
	DefaultMCPMaxSessions    = 256
)

// MCPOptions bound MCPHandler's sessions.
type MCPOptions struct {
	// SessionTimeout ends a session that sends no request for that long
	// (default DefaultMCPSessionTimeout).
	SessionTimeout time.Duration
	// MaxSessions bounds the sessions at once (default
	// DefaultMCPMaxSessions); initialize is UNAVAILABLE past it.
	MaxSessions int
	Logger      *slog.Logger
	// guard checks each request's principal against the API's roles
	// (volantd's own server; see mcpGuard).
	guard *Server
}

// MCPHandler serves the MCP server of b over streamable HTTP. Idle
// sessions end after SessionTimeout and at most MaxSessions live at once;
// what the transport refuses (a missing header, an unknown session, a
// malformed message) comes as the API's JSON error object.
func MCPHandler(b Backend, o MCPOptions) http.Handler {
	if o.SessionTimeout <= 0 {
		o.SessionTimeout = DefaultMCPSessionTimeout
	}
	if o.MaxSessions <= 0 {
		o.MaxSessions = DefaultMCPMaxSessions
	}
	// The server, with its tools' JSON schemas (half a MiB of heap), is
	// made at the first request rather than when volantd starts: most
	// daemons never serve MCP.
	type served struct {
		s *mcp.Server
		h http.Handler
	}
	get := sync.OnceValue(func() served {
		s := newMCPServer(b, o.Logger, o.guard)
		var h http.Handler = mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s },
			&mcp.StreamableHTTPOptions{Logger: o.Logger, MaxRequestBodyBytes: MaxBodyBytes, SessionTimeout: o.SessionTimeout})
		if o.guard != nil {
			h = mcpPrincipal(h)
		}
		return served{s, h}
	})
	var mu sync.Mutex // one initialize at a time is counted against the cap
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m := get()
		s, h := m.s, m.h
		jw := &jsonErrors{ResponseWriter: w, r: r}
		defer jw.finish()
		if r.Method != http.MethodPost || r.Header.Get("Mcp-Session-Id") != "" {
			h.ServeHTTP(jw, r)
			return
		}
		// A POST without a session starts one.
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for range s.Sessions() {
			n++
		}
		if n >= o.MaxSessions {
			w.Header().Set("Retry-After", strconv.Itoa(int(o.SessionTimeout.Seconds())))
			writeError(w, r, apierr.New(apierr.Unavailable, "%d MCP sessions are open, the most volantd keeps; end one (DELETE /mcp) or wait until an idle one expires (after %s)",
				n, o.SessionTimeout).With("max_sessions", o.MaxSessions).With("session_timeout", o.SessionTimeout.String()))
			return
		}
		h.ServeHTTP(jw, r)
	})
}

// jsonErrors turns the MCP transport's text/plain error answers into the
// API's JSON error object (with the status of its code); everything else
// passes through.
type jsonErrors struct {
	http.ResponseWriter
	r       *http.Request
	status  int
	convert bool
	msg     bytes.Buffer
}

func (j *jsonErrors) WriteHeader(code int) {
	if j.status != 0 {
		return
	}
	j.status = code
	if code >= 400 && strings.HasPrefix(j.Header().Get("Content-Type"), "text/plain") {
		j.convert = true
		return
	}
	j.ResponseWriter.WriteHeader(code)
}

func (j *jsonErrors) Write(b []byte) (int, error) {
	if j.status == 0 {
		j.WriteHeader(http.StatusOK)
	}
	if j.convert {
		if j.msg.Len() < 4096 {
			j.msg.Write(b)
		}
		return len(b), nil
	}
	return j.ResponseWriter.Write(b)
}

func (j *jsonErrors) Unwrap() http.ResponseWriter { return j.ResponseWriter }

// Flush keeps the transport's streams flowing (http.Flusher).
func (j *jsonErrors) Flush() {
	if !j.convert {
		http.NewResponseController(j.ResponseWriter).Flush()
	}
}

func (j *jsonErrors) finish() {
	if !j.convert {
		return
	}
	code := apierr.Internal
	switch j.status {
	case http.StatusBadRequest, http.StatusUnsupportedMediaType, http.StatusNotAcceptable:
		code = apierr.InvalidInput
	case http.StatusUnauthorized:
		code = apierr.Unauthorized
	case http.StatusForbidden:
		code = apierr.PermissionDenied
	case http.StatusNotFound:
		code = apierr.NotFound
	case http.StatusMethodNotAllowed:
		code = apierr.MethodNotAllowed
	case http.StatusConflict:
		code = apierr.Conflict
	case http.StatusRequestEntityTooLarge:
		code = apierr.TooLarge
	}
	h := j.ResponseWriter.Header()
	h.Del("Content-Type")
	h.Del("X-Content-Type-Options")
	writeError(j.ResponseWriter, j.r, apierr.New(code, "MCP: %s", strings.TrimSpace(j.msg.String())).With("status", j.status))
}

// ServeMCP runs the MCP server of b on one stdio-like connection until the
// client closes it or ctx ends.
func ServeMCP(ctx context.Context, b Backend, in io.ReadCloser, out io.WriteCloser, log *slog.Logger) error {
	s := NewMCPServer(b, log)
	return s.Run(ctx, &mcp.IOTransport{Reader: in, Writer: out})
}
