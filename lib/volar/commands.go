package volar

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/names"
	"github.com/volantvm/volant/lib/portmap"
	"github.com/volantvm/volant/lib/signing"
)

// ErrHelp is returned after --help printed the usage; it is not a failure.
var ErrHelp = errors.New("help requested")

// Session is one volar invocation talking to volantd: the client and how
// results are printed. Each method is one command.
type Session struct {
	Client *client.Client
	Out    *Output
}

// usage makes a USAGE error (exit 2) with a hint.
func usage(hint, format string, args ...any) error {
	return apierr.New(apierr.Usage, format, args...).With("hint", hint)
}

// checkName validates a VM or deployment name before anything is sent, so a
// typo is a usage error rather than a round trip.
func checkName(kind, name string) error {
	if name == "" {
		return usage("see volar "+kind+"s --help", "a %s name is required", kind)
	}
	if err := names.Check(kind+" name", name); err != nil {
		e := apierr.From(err)
		return &apierr.Error{Code: apierr.Usage, Message: e.Message, Details: e.Details, Err: err}
	}
	return nil
}

// --- plugins ---

// ListPlugins is `volar plugins list`.
func (s *Session) ListPlugins(ctx context.Context) error {
	ps, err := s.Client.ListPlugins(ctx)
	if err != nil {
		return err
	}
	return s.Out.PluginList(ps)
}

// ReadManifest reads a manifest file ("-" is stdin). It must be one JSON
// object; the daemon validates the rest.
func ReadManifest(path string, stdin io.Reader) ([]byte, error) {
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(io.LimitReader(stdin, 1<<20+1))
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, apierr.Wrap(apierr.CodeOf(err), err, "reading manifest")
	}
	// The bytes go as they are: a signature covers them all, the final
	// newline too.
	if t := bytes.TrimSpace(data); len(t) == 0 || t[0] != '{' || !json.Valid(t) {
		return nil, apierr.New(apierr.InvalidInput, "manifest %s is not a JSON object", path).
			With("hint", "a plugin manifest is JSON; check it with `volant-manifest validate "+path+"`")
	}
	return data, nil
}

// ReadSignature reads a manifest's minisign signature: the file sig, else
// manifestPath.minisig when it exists (fledge build --sign writes it
// there). nil when there is none.
func ReadSignature(manifestPath, sig string) ([]byte, error) {
	explicit := sig != ""
	if !explicit {
		if manifestPath == "-" || manifestPath == "" {
			return nil, nil
		}
		sig = manifestPath + signing.SignatureSuffix
	}
	data, err := os.ReadFile(sig)
	if err != nil {
		if !explicit && errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, apierr.Wrap(apierr.CodeOf(err), err, "reading the signature")
	}
	if len(data) > 4096 {
		return nil, apierr.New(apierr.InvalidInput, "signature %s is %d bytes; a minisign signature is a few hundred", sig, len(data))
	}
	return data, nil
}

// InstallPlugin is `volar plugins install --manifest FILE`, with the
// manifest's signature when sig is not nil.
func (s *Session) InstallPlugin(ctx context.Context, manifest, sig []byte, replace bool) error {
	p, err := s.Client.InstallPlugin(ctx, manifest, client.InstallOptions{Replace: replace, Signature: sig})
	if err != nil {
		return err
	}
	return s.Out.PluginAction(p, "installed")
}

// ShowPlugin is `volar plugins show NAME`.
func (s *Session) ShowPlugin(ctx context.Context, name string) error {
	p, err := s.Client.Plugin(ctx, name)
	if err != nil {
		return err
	}
	return s.Out.Plugin(p)
}

// EnablePlugin is `volar plugins enable NAME` (disable with enable false).
func (s *Session) EnablePlugin(ctx context.Context, name string, enable bool) error {
	var p *api.Plugin
	var err error
	verb := "enabled"
	if enable {
		p, err = s.Client.EnablePlugin(ctx, name)
	} else {
		verb = "disabled"
		p, err = s.Client.DisablePlugin(ctx, name)
	}
	if err != nil {
		return err
	}
	return s.Out.PluginAction(p, verb)
}

// RemovePlugin is `volar plugins remove NAME`.
func (s *Session) RemovePlugin(ctx context.Context, name string) error {
	p, err := s.Client.RemovePlugin(ctx, name)
	if err != nil {
		return err
	}
	return s.Out.PluginAction(p, "removed")
}

// --- VMs ---

// ListVMs is `volar vms list`.
func (s *Session) ListVMs(ctx context.Context, f api.VMFilter) error {
	if f.State != "" && !f.State.Valid() {
		return usage("states: "+stateList(), "unknown VM state %q", f.State)
	}
	vms, err := s.Client.ListVMs(ctx, f)
	if err != nil {
		return err
	}
	return s.Out.VMList(vms)
}

func stateList() string {
	var ss []string
	for _, st := range api.VMStates() {
		ss = append(ss, string(st))
	}
	return strings.Join(ss, ", ")
}

// WaitOptions make a command wait for a VM state after acting.
type WaitOptions struct {
	// Wait for State (default running) before returning.
	Wait  bool
	State api.VMState
	// Timeout bounds the wait (default 2 minutes).
	Timeout time.Duration
}

func (w WaitOptions) withDefaults() WaitOptions {
	if w.State == "" {
		w.State = api.VMRunning
	}
	if w.Timeout <= 0 {
		w.Timeout = 2 * time.Minute
	}
	return w
}

// CreateVM is `volar vms create NAME --plugin P [--cpu N] [--memory MB]
// [--wait]`. It prints the spec's sentence when volantd answers and, with
// Wait, follows the VM's progress on stderr until it is running.
func (s *Session) CreateVM(ctx context.Context, req api.CreateVMRequest, w WaitOptions) error {
	if err := checkName("VM", req.Name); err != nil {
		return err
	}
	if req.Plugin == "" && req.FromSnapshot == "" {
		return usage("volar vms create NAME --plugin PLUGIN (or --from-snapshot SNAPSHOT)", "--plugin is required")
	}
	if req.CPUCores < 0 || req.MemoryMB < 0 {
		return usage("leave --cpu and --memory out for the plugin's defaults", "--cpu and --memory must be positive")
	}
	var mark eventMark
	if w.Wait {
		mark = s.markEvents(ctx)
	}
	vm, err := s.Client.CreateVM(ctx, req)
	if err != nil {
		return err
	}
	if !w.Wait {
		return s.Out.VMCreated(vm)
	}
	if s.Out.Format == Table && !s.Out.Quiet {
		if err := s.Out.VMCreated(vm); err != nil {
			return err
		}
	}
	vm, err = s.waitFor(ctx, vm.Name, w, mark, true)
	if err != nil {
		return err
	}
	if s.Out.Format == Table && !s.Out.Quiet {
		return s.Out.VMReached(vm)
	}
	return s.Out.VM(vm)
}

// ShowVM is `volar vms show NAME`.
func (s *Session) ShowVM(ctx context.Context, name string) error {
	vm, err := s.Client.VM(ctx, name)
	if err != nil {
		return err
	}
	return s.Out.VM(vm)
}

// VMAction is start, stop, restart and delete. start and restart honour w:
// with Wait they print the VM once it reached the state.
func (s *Session) VMAction(ctx context.Context, action, name string, w WaitOptions) error {
	acts := map[string]struct {
		do   func(context.Context, string) (*api.VM, error)
		verb string
	}{
		"start":   {s.Client.StartVM, "started"},
		"stop":    {s.Client.StopVM, "stopped"},
		"restart": {s.Client.RestartVM, "restarted"},
		"pause":   {s.Client.PauseVM, "paused"},
		"resume":  {s.Client.ResumeVM, "resumed"},
		"delete":  {s.Client.DeleteVM, "deleted"},
	}
	a, ok := acts[action]
	if !ok {
		return fmt.Errorf("unknown VM action %q", action)
	}
	wait := w.Wait && (action == "start" || action == "restart")
	var mark eventMark
	if wait {
		mark = s.markEvents(ctx)
	}
	vm, err := a.do(ctx, name)
	if err != nil {
		return err
	}
	if !wait {
		return s.Out.VMAction(vm, a.verb)
	}
	if vm, err = s.waitFor(ctx, name, w, mark, true); err != nil {
		return err
	}
	return s.Out.VMReached(vm)
}

// WaitVM is `volar vms wait NAME --state S`.
func (s *Session) WaitVM(ctx context.Context, name string, w WaitOptions) error {
	w.Wait = true
	if w.State != "" && !w.State.Valid() {
		return usage("states: "+stateList(), "unknown VM state %q", w.State)
	}
	vm, err := s.waitFor(ctx, name, w, s.markEvents(ctx), false)
	if err != nil {
		return err
	}
	return s.Out.VMReached(vm)
}

// eventMark is where the event log stood before an action, so the
// progress of a wait starts with the action's own events.
type eventMark struct {
	id int64
	ok bool // false: the daemon did not say; progress shows new events only
}

func (s *Session) markEvents(ctx context.Context) eventMark {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	h, err := s.Client.Health(ctx)
	if err != nil {
		return eventMark{}
	}
	return eventMark{id: h.LastEventID, ok: true}
}

// waitFor waits for a VM state through the daemon's long poll while
// printing the VM's events since mark on stderr as progress. Once the wait
// is over it lets the progress catch up (for at most 5 s), so the lines
// are complete and come before the result: until the event that put the
// VM in the state has been printed when the wait follows an action
// (expect), else until the reader has seen the newest event the daemon
// reports.
func (s *Session) waitFor(ctx context.Context, name string, w WaitOptions, mark eventMark, expect bool) (*api.VM, error) {
	w = w.withDefaults()
	s.Out.progress("Waiting for VM %s to be %s...", name, w.State)
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var seen atomic.Int64
	var reached atomic.Bool
	tick := make(chan struct{}, 1)
	done := make(chan struct{})
	// Not filtered by type on the server: every ID passes by, so the
	// reader knows when it has caught up.
	o := api.EventOptions{Since: mark.id, FromStart: mark.ok && mark.id == 0}
	if stream, err := s.Client.Events(pctx, o); err == nil {
		go func() {
			defer close(done)
			defer stream.Close()
			for {
				ev, err := stream.Next()
				if err != nil {
					return
				}
				if ev.ResourceID == name && strings.HasPrefix(ev.Type, "vm.") {
					s.Out.progress("  %s", describeVMEvent(&ev))
					if eventState(&ev) == w.State {
						reached.Store(true)
					}
				}
				seen.Store(ev.ID)
				select {
				case tick <- struct{}{}:
				default:
				}
			}
		}()
	} else {
		close(done) // progress is a nicety; the wait itself decides
	}
	vm, err := s.Client.WaitVM(ctx, name, w.State, w.Timeout)
	if err == nil {
		end := s.markEvents(ctx)
		caughtUp := func() bool {
			if expect {
				return reached.Load()
			}
			return !end.ok || seen.Load() >= end.id
		}
		deadline := time.After(5 * time.Second)
	catchUp:
		for !caughtUp() {
			select {
			case <-tick:
			case <-done:
				break catchUp
			case <-deadline:
				break catchUp
			}
		}
	}
	cancel()
	<-done
	return vm, err
}

// eventState is the state a VM event says the VM is in ("" if none).
func eventState(ev *api.Event) api.VMState {
	var d struct {
		State api.VMState `json:"state"`
	}
	_ = json.Unmarshal(ev.Data, &d)
	return d.State
}

// describeVMEvent is a progress line for a VM event.
func describeVMEvent(ev *api.Event) string {
	var d struct {
		State  string `json:"state"`
		IP     string `json:"ip"`
		PID    int    `json:"pid"`
		Error  string `json:"error"`
		Method string `json:"method"`
	}
	_ = json.Unmarshal(ev.Data, &d)
	switch ev.Type {
	case api.EventVMCreated:
		if d.IP != "" {
			return "created, IP " + d.IP
		}
		return "created"
	case api.EventVMStarted:
		return fmt.Sprintf("hypervisor started (pid %d), guest booting", d.PID)
	case api.EventVMHealthy:
		return "health check passed"
	case api.EventVMUnhealthy:
		return "unhealthy: " + d.Error
	case api.EventVMStopped:
		return "stopped"
	case api.EventVMPaused:
		return "paused"
	case api.EventVMResumed:
		return "resumed"
	case api.EventVMCrashed:
		return "crashed: " + d.Error
	case api.EventVMFailed:
		return "failed: " + d.Error
	case api.EventVMDeleted:
		return "deleted"
	}
	return ev.Type
}

// Logs is `volar vms logs NAME [--follow] [--tail N]`: the serial console
// log, copied to stdout as it is. Following ends without error when ctx
// is canceled (Ctrl-C) or the VM is deleted.
func (s *Session) Logs(ctx context.Context, name string, o api.LogOptions) error {
	r, err := s.Client.VMLogs(ctx, name, o)
	if err != nil {
		return err
	}
	defer r.Close()
	_, err = io.Copy(flushWriter{s.Out.Stdout}, r)
	if err != nil && o.Follow && ctx.Err() != nil {
		return nil
	}
	if err != nil {
		return apierr.Wrap(apierr.Unavailable, err, "reading the log of "+name)
	}
	return nil
}

// flushWriter flushes after each write when the writer can (a bufio
// stdout), so followed output appears as it arrives.
type flushWriter struct{ w io.Writer }

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if fl, ok := f.w.(interface{ Flush() error }); ok && err == nil {
		err = fl.Flush()
	}
	return n, err
}

// --- deployments ---

// DeploymentConfig is the --config file of `deployments create` (the spec's
// service-config.json): any of the request's fields; flags override them.
type DeploymentConfig struct {
	Name            string               `json:"name,omitempty"`
	Plugin          string               `json:"plugin,omitempty"`
	Replicas        *int                 `json:"replicas,omitempty"`
	Resources       *api.Resources       `json:"resources,omitempty"`
	VolumeTemplates []api.VolumeTemplate `json:"volume_templates,omitempty"`
	Ports           []portmap.Mapping    `json:"ports,omitempty"`
	FromSnapshot    string               `json:"from_snapshot,omitempty"`
}

// ReadDeploymentConfig reads and strictly decodes a --config file.
func ReadDeploymentConfig(path string, stdin io.Reader) (*DeploymentConfig, error) {
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(io.LimitReader(stdin, 1<<20))
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, apierr.Wrap(apierr.CodeOf(err), err, "reading deployment config")
	}
	var c DeploymentConfig
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, apierr.Wrap(apierr.InvalidInput, err, "deployment config "+path).
			With("hint", `fields: name, plugin, replicas, resources {"cpu_cores","memory_mb"}, volume_templates [{"name","size","path"}], ports [{"host_ip","host_port","guest_port","protocol"}]`)
	}
	if dec.More() {
		return nil, apierr.New(apierr.InvalidInput, "deployment config %s: trailing data after the JSON object", path)
	}
	return &c, nil
}

// DeploymentFlags are the flags of `deployments create`; zero values are
// "not given" (Replicas nil).
type DeploymentFlags struct {
	Name     string
	Plugin   string
	Replicas *int
	CPU      int
	Memory   int
	// VolumeTemplates are --volume-template NAME:SIZE:/PATH values; they
	// replace the file's.
	VolumeTemplates []string
	// Ports replace the config's when given.
	Ports []portmap.Mapping
	// FromSnapshot starts the replicas from a snapshot.
	FromSnapshot string
}

// DeploymentRequest merges a --config file (nil: none) and the flags into
// a create request: flags win, resources merge field by field. Replicas
// must come from one of them (USAGE otherwise).
func DeploymentRequest(cfg *DeploymentConfig, f DeploymentFlags) (api.CreateDeploymentRequest, error) {
	req := api.CreateDeploymentRequest{Name: f.Name, Plugin: f.Plugin}
	haveReplicas := false
	if cfg != nil {
		if req.Name == "" {
			req.Name = cfg.Name
		}
		if req.Plugin == "" {
			req.Plugin = cfg.Plugin
		}
		if cfg.Replicas != nil {
			req.Replicas, haveReplicas = *cfg.Replicas, true
		}
		if cfg.Resources != nil {
			r := *cfg.Resources
			req.Resources = &r
		}
		req.VolumeTemplates = cfg.VolumeTemplates
		req.Ports = cfg.Ports
		req.FromSnapshot = cfg.FromSnapshot
	}
	if f.FromSnapshot != "" {
		req.FromSnapshot = f.FromSnapshot
	}
	if len(f.Ports) > 0 {
		req.Ports = f.Ports
	}
	if len(f.VolumeTemplates) > 0 {
		req.VolumeTemplates = nil
		for _, v := range f.VolumeTemplates {
			t, err := ParseVolumeTemplate(v)
			if err != nil {
				return req, err
			}
			req.VolumeTemplates = append(req.VolumeTemplates, t)
		}
	}
	if f.Replicas != nil {
		req.Replicas, haveReplicas = *f.Replicas, true
	}
	if !haveReplicas {
		return req, usage("volar deployments create NAME --plugin P --replicas N", "--replicas is required (or \"replicas\" in --config)")
	}
	if f.CPU != 0 || f.Memory != 0 {
		r := api.Resources{}
		if req.Resources != nil {
			r = *req.Resources
		}
		if f.CPU != 0 {
			r.CPUCores = f.CPU
		}
		if f.Memory != 0 {
			r.MemoryMB = f.Memory
		}
		req.Resources = &r
	}
	return req, nil
}

// CreateDeployment is `volar deployments create`.
func (s *Session) CreateDeployment(ctx context.Context, req api.CreateDeploymentRequest) error {
	if err := checkName("deployment", req.Name); err != nil {
		return err
	}
	if req.Plugin == "" && req.FromSnapshot == "" {
		return usage("give --plugin or a --config file with \"plugin\"", "a plugin is required")
	}
	if req.Replicas < 0 || req.Replicas > api.MaxReplicas {
		return usage("--replicas N", "--replicas must be between 0 and %d", api.MaxReplicas)
	}
	if r := req.Resources; r != nil && (r.CPUCores < 0 || r.MemoryMB < 0) {
		return usage("leave --cpu and --memory out for the plugin's defaults", "--cpu and --memory must be positive")
	}
	d, err := s.Client.CreateDeployment(ctx, req)
	if err != nil {
		return err
	}
	return s.Out.DeploymentAction(d, "created")
}

// ScaleDeployment is `volar deployments scale NAME --replicas M`.
func (s *Session) ScaleDeployment(ctx context.Context, name string, replicas int) error {
	if replicas < 0 || replicas > api.MaxReplicas {
		return usage("--replicas M", "--replicas must be between 0 and %d", api.MaxReplicas)
	}
	d, err := s.Client.ScaleDeployment(ctx, name, replicas)
	if err != nil {
		return err
	}
	return s.Out.DeploymentAction(d, "scaled")
}

// UpdateDeployment is `volar deployments update NAME --plugin P[@V]`.
func (s *Session) UpdateDeployment(ctx context.Context, name string, req api.UpdateDeploymentRequest, deadline time.Duration) error {
	if deadline < 0 || (deadline > 0 && deadline < time.Millisecond) {
		return usage("--deadline 5m", "--deadline must be a positive duration")
	}
	for flag, n := range map[string]*int{"--max-surge": req.MaxSurge, "--max-unavailable": req.MaxUnavailable} {
		if n != nil && (*n < 0 || *n > api.MaxReplicas) {
			return usage(flag+" N", "%s must be between 0 and %d", flag, api.MaxReplicas)
		}
	}
	d, err := s.Client.UpdateDeployment(ctx, name, req)
	if err != nil {
		return err
	}
	return s.Out.DeploymentAction(d, "updated")
}

// RolloutStatus is `volar deployments rollout status NAME`.
func (s *Session) RolloutStatus(ctx context.Context, name string) error {
	r, err := s.Client.Rollout(ctx, name)
	if err != nil {
		return err
	}
	return s.Out.Rollout(r)
}

// UndoRollout is `volar deployments rollout undo NAME`.
func (s *Session) UndoRollout(ctx context.Context, name string) error {
	r, err := s.Client.UndoRollout(ctx, name)
	if err != nil {
		return err
	}
	return s.Out.Rollout(r)
}

// RolloutHistory is `volar deployments rollout history NAME`.
func (s *Session) RolloutHistory(ctx context.Context, name string) error {
	rs, err := s.Client.RolloutHistory(ctx, name)
	if err != nil {
		return err
	}
	return s.Out.RolloutList(rs)
}

// ListDeployments is `volar deployments list`.
func (s *Session) ListDeployments(ctx context.Context) error {
	ds, err := s.Client.ListDeployments(ctx)
	if err != nil {
		return err
	}
	return s.Out.DeploymentList(ds)
}

// ShowDeployment is `volar deployments show NAME`.
func (s *Session) ShowDeployment(ctx context.Context, name string) error {
	d, err := s.Client.Deployment(ctx, name)
	if err != nil {
		return err
	}
	return s.Out.Deployment(d)
}

// DeleteDeployment is `volar deployments delete NAME`.
func (s *Session) DeleteDeployment(ctx context.Context, name string) error {
	d, err := s.Client.DeleteDeployment(ctx, name)
	if err != nil {
		return err
	}
	return s.Out.DeploymentAction(d, "deleted")
}

// --- events ---

// Events is `volar events [--since ID] [--type T]...`: it prints events as
// they arrive until ctx ends (then it returns nil), resuming by itself
// across disconnects. since < 0 starts with new events; 0 replays the
// whole retained log; n > 0 resumes after event n.
func (s *Session) Events(ctx context.Context, since int64, types []string) error {
	o := api.EventOptions{Types: types}
	switch {
	case since == 0:
		o.FromStart = true
	case since > 0:
		o.Since = since
	}
	stream, err := s.Client.Events(ctx, o)
	if err != nil {
		return err
	}
	defer stream.Close()
	for {
		ev, err := stream.Next()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if err := s.Out.Event(&ev); err != nil {
			return err
		}
	}
}

// --- version ---

// VersionInfo is what `volar version` reports.
type VersionInfo struct {
	Client string `json:"client"`
	// Server is volantd's version; empty when it could not be asked.
	Server string `json:"server,omitempty"`
	Addr   string `json:"addr"`
	// Error says why the server version is missing.
	Error string `json:"error,omitempty"`
}

// Version is `volar version`: this build, and volantd's when reachable (an
// unreachable daemon is reported, not an error).
func (s *Session) Version(ctx context.Context, clientVersion string) error {
	v := VersionInfo{Client: clientVersion, Addr: s.Client.Addr()}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if h, err := s.Client.Health(ctx); err != nil {
		v.Error = apierr.From(err).Message
	} else {
		v.Server = h.Version
	}
	switch {
	case s.Out.Quiet:
		return s.Out.names(v.Client)
	case s.Out.Format == JSON:
		return s.Out.JSONValue(v)
	}
	server := v.Server
	if server == "" {
		server = "unknown (" + v.Error + ")"
	}
	return s.Out.fields([][2]string{{"volar", v.Client}, {"volantd", server}, {"Address", v.Addr}})
}

// ParseSecrets turns `vms create`'s --secret-env and --secret-file specs
// into the VM's inputs, which volantd hands to kestrel over the host-only
// agent channel before the workload starts (api.CreateVMRequest.Inputs).
// A value never comes from the command line itself, where ps and the
// shell's history would keep it: --secret-env NAME=@FILE reads FILE (one
// final newline dropped), NAME=- reads stdin (once); --secret-file
// GUESTPATH=LOCALFILE copies LOCALFILE's bytes to GUESTPATH (mode 0600).
func ParseSecrets(envSpecs, fileSpecs []string, stdin io.Reader) (*api.Inputs, error) {
	if len(envSpecs) == 0 && len(fileSpecs) == 0 {
		return nil, nil
	}
	in := &api.Inputs{}
	stdinUsed := false
	for _, spec := range envSpecs {
		name, src, ok := strings.Cut(spec, "=")
		if !ok || name == "" {
			return nil, apierr.New(apierr.Usage, "--secret-env %q: give NAME=@FILE or NAME=-", spec)
		}
		var data []byte
		var err error
		switch {
		case src == "-":
			if stdinUsed {
				return nil, apierr.New(apierr.Usage, "--secret-env %s=-: stdin is read once, and another secret took it", name)
			}
			stdinUsed = true
			data, err = io.ReadAll(io.LimitReader(stdin, 1<<20))
		case strings.HasPrefix(src, "@"):
			data, err = os.ReadFile(src[1:])
		default:
			return nil, apierr.New(apierr.Usage, "--secret-env %s: a value on the command line stays in ps and the shell's history; give %s=@FILE or %s=- (stdin)", name, name, name)
		}
		if err != nil {
			return nil, apierr.Wrap(apierr.CodeOf(err), err, "reading secret "+name)
		}
		if in.Env == nil {
			in.Env = map[string]string{}
		}
		in.Env[name] = strings.TrimSuffix(string(data), "\n")
	}
	for _, spec := range fileSpecs {
		guest, local, ok := strings.Cut(spec, "=")
		if !ok || !strings.HasPrefix(guest, "/") || local == "" {
			return nil, apierr.New(apierr.Usage, "--secret-file %q: give /GUEST/PATH=LOCALFILE", spec)
		}
		data, err := os.ReadFile(local)
		if err != nil {
			return nil, apierr.Wrap(apierr.CodeOf(err), err, "reading secret file "+local)
		}
		in.Files = append(in.Files, api.InputFile{Path: guest, Mode: 0o600, Data: data})
	}
	return in, nil
}
