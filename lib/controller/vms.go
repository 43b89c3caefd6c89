package controller

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"
	"unicode"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/hostnet"
	"github.com/volantvm/volant/lib/ipam"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/names"
	"github.com/volantvm/volant/lib/portmap"
	"github.com/volantvm/volant/lib/store"
	"github.com/volantvm/volant/lib/vmm"
)

// ListVMs returns the VMs matching f, by name.
func (c *Controller) ListVMs(ctx context.Context, f api.VMFilter) ([]api.VM, error) {
	if f.State != "" && !f.State.Valid() {
		return nil, apierr.New(apierr.InvalidInput, "unknown VM state %q", f.State).With("states", api.VMStates())
	}
	var rows []vmRow
	var atts []attachmentRow
	err := c.st.Read(ctx, func(tx *sql.Tx) error {
		var err error
		if rows, err = listVMs(ctx, tx, f); err != nil {
			return err
		}
		atts, err = queryAttachments(ctx, tx, "1")
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make([]api.VM, 0, len(rows))
	for _, r := range rows {
		vm := r.toAPI(c.SerialLog(r.Name))
		vm.Volumes = mountsOf(atts, r.Name)
		out = append(out, vm)
	}
	if err := c.st.Read(ctx, func(tx *sql.Tx) error { return attachVMPorts(ctx, tx, out) }); err != nil {
		return nil, err
	}
	return out, nil
}

// VM returns one VM; NOT_FOUND when there is none of that name.
func (c *Controller) VM(ctx context.Context, name string) (*api.VM, error) {
	v, err := c.readVM(ctx, name)
	if err != nil {
		return nil, err
	}
	out := []api.VM{v.toAPI(c.SerialLog(name))}
	atts, err := c.vmVolumes(ctx, name)
	if err != nil {
		return nil, err
	}
	out[0].Volumes = mountsOf(atts, name)
	if v.State == api.VMRunning {
		// Its jail, from the run's pid file (cheap; gone once it ends).
		if st, err := c.cfg.Runtime.Inspect(ctx, name); err == nil && st.Live() && st.Jail != nil {
			j := st.Jail
			out[0].Jail = &api.VMMJail{Insecure: j.Insecure, UID: j.UID, Cgroup: j.Cgroup, MemoryLimitMB: j.MemoryLimitMB}
		}
	}
	if err := c.st.Read(ctx, func(tx *sql.Tx) error { return attachVMPorts(ctx, tx, out) }); err != nil {
		return nil, err
	}
	return &out[0], nil
}

func (c *Controller) readVM(ctx context.Context, name string) (vmRow, error) {
	var v vmRow
	err := c.st.Read(ctx, func(tx *sql.Tx) error {
		var err error
		v, err = getVM(ctx, tx, name)
		return err
	})
	return v, err
}

// updateVM reads the VM in a write transaction, lets fn change it and
// append events, and saves it. fn returning errSkip leaves the row alone.
func (c *Controller) updateVM(ctx context.Context, name string, fn func(tx *sql.Tx, v *vmRow) error) (vmRow, error) {
	var v vmRow
	err := c.st.Tx(ctx, func(tx *sql.Tx) error {
		var err error
		if v, err = getVM(ctx, tx, name); err != nil {
			return err
		}
		if err := fn(tx, &v); err != nil {
			return err
		}
		return saveVM(ctx, tx, &v)
	})
	if errors.Is(err, errSkip) {
		return v, nil
	}
	if err == nil {
		c.notify()
	}
	return v, err
}

var errSkip = errors.New("nothing to change")

func appendVMEvent(ctx context.Context, tx *sql.Tx, typ string, v *vmRow, e vmEvent) error {
	e.Name = v.Name
	if e.State == "" {
		e.State = v.State
	}
	_, err := store.AppendEvent(ctx, tx, typ, v.Name, e)
	return err
}

// CreateVM creates a VM and starts it (lease → tap → stage → start) and
// returns it once its hypervisor runs, normally "starting". Bad input,
// an unknown or disabled plugin, a taken name, or a VM that could not be
// planned (checksums, kernel, hypervisor) fail before anything changes; a
// create that fails later is undone.
func (c *Controller) CreateVM(ctx context.Context, req api.CreateVMRequest) (*api.VM, error) {
	return c.createVM(ctx, req, "")
}

func validateCreate(req api.CreateVMRequest) error {
	if err := checkName("VM name", req.Name); err != nil {
		return err
	}
	if req.Plugin == "" {
		return apierr.New(apierr.InvalidInput, "plugin is required").With("field", "plugin")
	}
	if req.CPUCores != 0 && (req.CPUCores < 1 || req.CPUCores > 64) {
		return apierr.New(apierr.InvalidInput, "cpu_cores %d is not between 1 and 64", req.CPUCores).With("field", "cpu_cores")
	}
	if req.MemoryMB != 0 && (req.MemoryMB < 64 || req.MemoryMB > 262144) {
		return apierr.New(apierr.InvalidInput, "memory_mb %d is not between 64 and 262144", req.MemoryMB).With("field", "memory_mb")
	}
	if _, err := portmap.ValidateList(req.Ports); err != nil {
		return err
	}
	for i, a := range req.KernelArgs {
		if a == "" || strings.ContainsAny(a, " \t\n\"") || strings.ContainsFunc(a, unicode.IsControl) || len(a) > 256 {
			return apierr.New(apierr.InvalidInput, "kernel_args[%d] %q must be one word without spaces, quotes or control characters", i, a).
				With("field", fmt.Sprintf("kernel_args[%d]", i))
		}
	}
	if err := checkWorkload(req); err != nil {
		return err
	}
	return checkMounts(req.Volumes)
}

func (c *Controller) createVM(ctx context.Context, req api.CreateVMRequest, deployment string) (*api.VM, error) {
	if req.FromSnapshot != "" && (req.Workload != nil || req.Inputs != nil) {
		// A snapshot's workload already runs, with its inputs.
		return nil, apierr.New(apierr.InvalidInput, "a VM from a snapshot runs the snapshot's workload: give no workload or inputs").
			With("field", "from_snapshot")
	}
	if req.FromSnapshot != "" {
		if err := c.fromSnapshot(&req); err != nil {
			return nil, err
		}
	}
	if err := validateCreate(req); err != nil {
		return nil, err
	}
	unlock, err := c.locks.lock(ctx, req.Name)
	if err != nil {
		return nil, err
	}
	defer unlock()

	p, m, err := c.usablePlugin(ctx, req.Plugin)
	if err != nil {
		return nil, err
	}
	if req.FromSnapshot == "" { // a snapshot's guest has its secrets already
		if err := checkSecrets(m, p.Name, req.Inputs); err != nil {
			return nil, err
		}
	}
	if _, err := c.readVM(ctx, req.Name); err == nil {
		return nil, vmExists(req.Name)
	} else if !apierr.Is(err, apierr.NotFound) {
		return nil, err
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	row := vmRow{
		Name: req.Name, Plugin: p.Name, PluginVersion: p.Version, Deployment: deployment, State: api.VMStarting, Desired: desireRunning, Step: "lease",
		CPUCores: req.CPUCores, MemoryMB: req.MemoryMB, CreatedAt: now, UpdatedAt: now, KernelArgs: req.KernelArgs,
		Labels: req.Labels,
	}
	if req.Workload != nil || req.Inputs != nil {
		row.Workload = &vmWorkload{Override: req.Workload, Inputs: api.SummarizeInputs(req.Inputs)}
	}
	if row.CPUCores == 0 {
		row.CPUCores = m.Resources.CPUCores
	}
	if row.MemoryMB == 0 {
		row.MemoryMB = m.Resources.MemoryMB
	}
	bridged := m.Network == nil || m.Network.Mode != "none"
	if bridged {
		row.Tap = hostnet.TapName(req.Name)
	}
	ports, err := c.checkPorts(ctx, "vm", req.Name, req.Ports, bridged)
	if err != nil {
		return nil, err
	}

	// Plan it before changing anything, with a provisional lease of the
	// pool's longest address: what would fail at start fails here.
	var lease *ipam.Lease
	if bridged {
		pool := c.pool()
		lease = &ipam.Lease{VM: req.Name, IP: pool.End, Prefix: pool.Subnet.Bits(), Gateway: pool.Gateway, MAC: names.MAC(req.Name, 0)}
	}
	vols, err := c.checkVolumesExist(ctx, req.Volumes)
	if err != nil {
		return nil, fmt.Errorf("creating VM %s: %w", req.Name, err)
	}
	spec, err := c.spec(row, p, lease)
	if err != nil {
		return nil, fmt.Errorf("creating VM %s: %w", req.Name, err)
	}
	spec.Volumes = vols
	// The inputs are sealed for the VM's row (secrets.go) and, in clear,
	// go to its run's inputs file before the runtime checks the spec that
	// names it. A create that fails removes the file.
	var sealed sealedInputs
	if req.Inputs != nil {
		plain, s, err := c.sealInputs(req.Name, req.Inputs)
		if err != nil {
			return nil, fmt.Errorf("creating VM %s: %w", req.Name, err)
		}
		sealed = s
		if err := c.writeRunInputs(req.Name, plain); err != nil {
			return nil, fmt.Errorf("creating VM %s: %w", req.Name, err)
		}
	}
	if err := c.cfg.Runtime.Check(ctx, spec); err != nil {
		if req.Inputs != nil {
			c.dropRunInputs(req.Name)
		}
		return nil, fmt.Errorf("creating VM %s: %w", req.Name, err)
	}

	if req.FromSnapshot != "" {
		if err := c.refSnapshot(ctx, req.Name, req.FromSnapshot); err != nil {
			return nil, err
		}
	}
	// The row and its lease, in one transaction, with the pool held
	// (SetNetwork waits for the commit).
	c.netMu.RLock()
	err = c.st.Tx(ctx, func(tx *sql.Tx) error {
		if _, err := getVM(ctx, tx, req.Name); err == nil {
			return vmExists(req.Name)
		}
		if _, err := getPlugin(ctx, tx, row.pluginRef()); err != nil {
			return err
		}
		if bridged {
			if lease.Subnet() != c.cfg.Pool.Subnet {
				return apierr.New(apierr.Conflict, "creating VM %s: the guest network changed to %s meanwhile; try again", req.Name, c.cfg.Pool.Subnet)
			}
			l, err := ipam.AcquireTx(ctx, tx, c.cfg.Pool, req.Name)
			if err != nil {
				return fmt.Errorf("creating VM %s: %w", req.Name, err)
			}
			row.IP, row.MAC = l.IP.String(), l.MAC
		}
		if err := insertVM(ctx, tx, row); err != nil {
			if store.IsConstraint(err) {
				return apierr.Wrap(apierr.Conflict, err, "creating VM "+req.Name)
			}
			return err
		}
		if req.Inputs != nil {
			if err := putInputsTx(ctx, tx, req.Name, sealed); err != nil {
				return err
			}
		}
		if err := attachVolumesTx(ctx, tx, req.Name, req.Volumes); err != nil {
			return fmt.Errorf("creating VM %s: %w", req.Name, err)
		}
		if err := insertPorts(ctx, tx, "vm", req.Name, ports); err != nil {
			return err
		}
		res := &api.Resources{CPUCores: row.CPUCores, MemoryMB: row.MemoryMB}
		return appendVMEvent(ctx, tx, api.EventVMCreated, &row, vmEvent{Plugin: row.Plugin, PluginVersion: row.PluginVersion, Deployment: deployment, IP: row.IP, Resources: res})
	})
	c.netMu.RUnlock()
	if err != nil {
		if req.FromSnapshot != "" {
			os.RemoveAll(c.vmDir(req.Name))
		} else if req.Inputs != nil {
			c.dropRunInputs(req.Name)
		}
		return nil, err
	}
	c.notify()
	c.log.Info("VM created", "vm", req.Name, "plugin", p.Name, "ip", row.IP)
	if len(ports) > 0 {
		c.publishNow(ctx)
	}

	// The steps run to the end even if the caller goes away; a half-made
	// VM is worse than a late answer.
	sctx := context.WithoutCancel(ctx)
	if err := c.runSteps(sctx, req.Name, c.upSteps(req.Name)); err != nil {
		c.log.Warn("VM create failed; undoing it", "vm", req.Name, "err", err)
		if derr := c.destroy(sctx, req.Name, "create failed: "+err.Error()); derr != nil {
			c.log.Error("undoing a failed create", "vm", req.Name, "err", derr)
		}
		if deployment == "" {
			// Its name is free again for a deployment's replica. (A
			// replica's retry waits for its backoff: no pass now.)
			c.kickDeployments()
		}
		return nil, fmt.Errorf("creating VM %s: %w", req.Name, err)
	}
	return c.VM(ctx, req.Name)
}

func vmExists(name string) error {
	return apierr.New(apierr.Conflict, "a VM named %s exists already", name).With("vm", name)
}

// usablePlugin returns an installed, enabled plugin, in the version ref
// names (see SplitPluginRef), and its manifest; a plugin whose signature
// does not hold (checkBootSignature) is refused.
func (c *Controller) usablePlugin(ctx context.Context, ref string) (pluginRow, *manifest.Manifest, error) {
	var p pluginRow
	err := c.st.Read(ctx, func(tx *sql.Tx) error {
		var err error
		p, err = getPlugin(ctx, tx, ref)
		return err
	})
	name := p.Name
	if err != nil {
		return p, nil, err
	}
	if !p.Enabled {
		return p, nil, apierr.New(apierr.Conflict, "plugin %s is disabled", name).With("plugin", name).
			With("hint", "enable it: POST /api/v1/plugins/"+name+"/enable")
	}
	if err := c.checkBootSignature(p); err != nil {
		return p, nil, err
	}
	m, err := manifest.Decode(p.Manifest)
	if err != nil {
		return p, nil, fmt.Errorf("stored manifest of plugin %s: %w", name, err)
	}
	m.Normalize()
	return p, m, nil
}

// spec is the launch spec of a VM.
func (c *Controller) spec(v vmRow, p pluginRow, lease *ipam.Lease) (launch.Spec, error) {
	d := c.cfg.Launch
	o, in := v.workloadSummary()
	m, err := vmManifest(p.Manifest, o)
	if err != nil {
		return launch.Spec{}, fmt.Errorf("the workload of VM %s over plugin %s: %w", v.Name, p.Name, err)
	}
	s := launch.Spec{
		Name:          v.Name,
		Manifest:      m,
		Kernel:        d.Kernel,
		BootInitramfs: d.BootInitramfs,
		Kestrel:       d.Kestrel,
		VMM:           d.VMM,
		Accel:         vmm.Accel(d.Accel),
		Machine:       d.Machine,
		CPUs:          v.CPUCores,
		MemoryMB:      v.MemoryMB,
		APIHost:       c.agentHost(),
		APIPort:       c.cfg.AgentPort,
		SerialLog:     c.SerialLog(v.Name),
		KernelArgs:    v.KernelArgs,
		Debug:         d.Debug,
		InsecureVMM:   d.InsecureVMM,
		StopTimeoutMS: int(c.cfg.StopTimeout.Milliseconds()),
	}
	if lease != nil {
		s.Tap = v.Tap
		if s.Tap == "" {
			s.Tap = hostnet.TapName(v.Name)
		}
		s.MAC = lease.MAC
		s.DNS = c.cfg.DNS
		s.Lease = &launch.Lease{VM: v.Name, IP: lease.IP.String(), Prefix: lease.Prefix, Gateway: lease.Gateway.String(), MAC: lease.MAC}
	}
	if in != nil {
		s.InputsFile = c.InputsPath(v.Name)
	}
	return s, nil
}

// step is one named, idempotent step of an operation: run measures the
// live state and acts only where it differs, so re-running a step that
// completed (after a crash) changes nothing.
type step struct {
	name string
	run  func(ctx context.Context) error
}

// runSteps runs steps in order, recording each in vms.step so a restarted
// daemon knows an operation was interrupted; it clears the record when all
// are done.
func (c *Controller) runSteps(ctx context.Context, name string, steps []step) error {
	for _, s := range steps {
		if err := c.setStep(ctx, name, s.name); err != nil {
			return err
		}
		if err := s.run(ctx); err != nil {
			return fmt.Errorf("step %s: %w", s.name, err)
		}
	}
	return c.setStep(ctx, name, "")
}

func (c *Controller) setStep(ctx context.Context, name, s string) error {
	_, err := c.updateVM(ctx, name, func(_ *sql.Tx, v *vmRow) error {
		if v.Step == s {
			return errSkip
		}
		v.Step = s
		return nil
	})
	return err
}

// upSteps bring a VM from its row to a running hypervisor.
func (c *Controller) upSteps(name string) []step {
	return []step{
		{"lease", func(ctx context.Context) error { return c.stepLease(ctx, name) }},
		{"tap", func(ctx context.Context) error { return c.stepTap(ctx, name) }},
		{"volumes", func(ctx context.Context) error { return c.stepVolumes(ctx, name) }},
		{"stage", func(ctx context.Context) error { return c.stepStage(ctx, name) }},
		{"start", func(ctx context.Context) error { return c.stepStart(ctx, name) }},
	}
}

func (c *Controller) bridged(ctx context.Context, v vmRow) (bool, error) {
	var p pluginRow
	err := c.st.Read(ctx, func(tx *sql.Tx) error {
		var err error
		p, err = getPlugin(ctx, tx, v.pluginRef())
		return err
	})
	if err != nil {
		return false, err
	}
	var m struct {
		Network *struct {
			Mode string `json:"mode"`
		} `json:"network"`
	}
	if err := json.Unmarshal(p.Manifest, &m); err != nil {
		return false, fmt.Errorf("stored manifest of plugin %s: %w", p.Name, err)
	}
	return m.Network == nil || m.Network.Mode != "none", nil
}

// stepLease makes sure the VM holds a lease and the row records it.
func (c *Controller) stepLease(ctx context.Context, name string) error {
	v, err := c.readVM(ctx, name)
	if err != nil {
		return err
	}
	if ok, err := c.bridged(ctx, v); err != nil || !ok {
		return err
	}
	c.netMu.RLock()
	defer c.netMu.RUnlock()
	_, err = c.updateVM(ctx, name, func(tx *sql.Tx, v *vmRow) error {
		l, err := ipam.AcquireTx(ctx, tx, c.cfg.Pool, name) // returns the held lease when there is one
		if err != nil {
			return err
		}
		if v.IP == l.IP.String() && v.MAC == l.MAC && v.Tap != "" {
			return errSkip
		}
		v.IP, v.MAC = l.IP.String(), l.MAC
		if v.Tap == "" {
			v.Tap = hostnet.TapName(name)
		}
		return nil
	})
	return err
}

// stepTap makes the VM's tap (hostnet measures and changes only what differs).
func (c *Controller) stepTap(ctx context.Context, name string) error {
	v, err := c.readVM(ctx, name)
	if err != nil {
		return err
	}
	if v.IP == "" {
		return nil // no network
	}
	_, err = c.cfg.Network.AddTap(ctx, hostnet.TapConfig{Name: v.Tap, VM: name, Bridge: c.cfg.Bridge, MAC: v.MAC, IP: v.IP})
	return err
}

// stepStage writes the VM's launch spec, unless it is there already.
func (c *Controller) stepStage(ctx context.Context, name string) error {
	v, err := c.readVM(ctx, name)
	if err != nil {
		return err
	}
	var p pluginRow
	if err := c.st.Read(ctx, func(tx *sql.Tx) error {
		var err error
		p, err = getPlugin(ctx, tx, v.pluginRef())
		return err
	}); err != nil {
		return err
	}
	if err := c.checkBootSignature(p); err != nil {
		return err
	}
	var lease *ipam.Lease
	if v.IP != "" {
		l, err := ipam.Get(ctx, c.st, name)
		if err != nil {
			return err
		}
		lease = &l
	}
	atts, err := c.vmVolumes(ctx, name)
	if err != nil {
		return err
	}
	spec, err := c.spec(v, p, lease)
	if err != nil {
		return err
	}
	spec.Volumes = launchVolumes(atts)
	if err := c.stageFromSnapshot(ctx, name, &spec); err != nil {
		return err
	}
	if spec.InputsFile != "" {
		if err := c.stageInputs(ctx, name); err != nil {
			return err
		}
	}
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	path := c.SpecPath(name)
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, b) {
		return nil
	}
	if err := writeFileAtomic(path, b, 0o600); err != nil {
		return fmt.Errorf("staging the spec of %s: %w", name, err)
	}
	return nil
}

// stepStart starts the VM's run, or adopts the live one, and records it.
// A start first waits for a boot slot (Config.MaxBooting).
func (c *Controller) stepStart(ctx context.Context, name string) error {
	t0 := time.Now()
	admitted, err := c.boots.Acquire(ctx, name)
	if err != nil {
		return fmt.Errorf("waiting for a boot slot for %s: %w", name, err)
	}
	t1 := time.Now()
	info, adopted, err := c.cfg.Runtime.Start(ctx, name, c.SpecPath(name))
	admitted(err == nil)
	if err != nil {
		return err
	}
	t2 := time.Now()
	c.recordRun(ctx, name, info, adopted)
	c.log.Debug("boot slot: started", "vm", name, "waited", t1.Sub(t0), "start", t2.Sub(t1), "record", time.Since(t2))
	return nil
}

// recordRun records a run in the VM's row and watches it. A run that is the
// one the row records already (adoption after a restart) gets a
// vm.adopted event when adopted is set (the run was there before the
// start), otherwise none; a new run gets vm.started.
func (c *Controller) recordRun(ctx context.Context, name string, info *launch.Status, adopted bool) {
	_, err := c.updateVM(ctx, name, func(tx *sql.Tx, v *vmRow) error {
		sup, vmmID := info.SupervisorID(), info.VMMID()
		same := v.Supervisor != nil && *v.Supervisor == sup
		prev := v.Supervisor
		v.Supervisor, v.VMM, v.PID = &sup, &vmmID, vmmID.Pid
		if info.StartedAt != nil && !info.StartedAt.IsZero() {
			t := info.StartedAt.UTC().Truncate(time.Millisecond)
			v.StartedAt = &t
		}
		switch {
		case !same && prev != nil:
			// Another run than the recorded one (systemd restarted it):
			// its guest has to prove itself healthy again.
			v.State, v.Health, v.Agent, v.AgentAt = api.VMStarting, string(agentapi.HealthUnknown), nil, nil
		case same && v.State == api.VMPaused && info.State == vmm.StatePaused:
			// Adopted after a restart, still paused: it stays paused.
		case !same && v.State == api.VMRunning:
			// The first run since a start; its guest reported healthy
			// before this step finished recording it.
		case v.State != api.VMRunning && v.State != api.VMStarting:
			v.State, v.Health = api.VMStarting, string(agentapi.HealthUnknown)
		case v.Health == "":
			v.Health = string(agentapi.HealthUnknown)
		}
		v.Error = ""
		if !same {
			// The first record of this run.
			if err := appendVMEvent(ctx, tx, api.EventVMStarted, v, vmEvent{PID: v.PID, IP: v.IP}); err != nil {
				return err
			}
		}
		if adopted {
			// A run this daemon did not start (an earlier daemon did, or
			// systemd), now watched.
			return appendVMEvent(ctx, tx, api.EventVMAdopted, v, vmEvent{PID: v.PID, IP: v.IP})
		}
		return nil
	})
	if err != nil {
		c.log.Warn("recording a run", "vm", name, "err", err)
	}
	c.watch(name, info)
}

// StartVM starts a stopped, crashed or failed VM. A VM that is starting or
// running is returned as it is.
func (c *Controller) StartVM(ctx context.Context, name string) (*api.VM, error) {
	unlock, err := c.locks.lock(ctx, name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := c.start(context.WithoutCancel(ctx), name); err != nil {
		return nil, err
	}
	return c.VM(ctx, name)
}

func (c *Controller) start(ctx context.Context, name string) error {
	v, err := c.readVM(ctx, name)
	if err != nil {
		return err
	}
	if v.Desired == desireDeleted {
		return apierr.New(apierr.Conflict, "VM %s is being deleted", name).With("vm", name).With("state", string(v.State))
	}
	if (v.State == api.VMStarting || v.State == api.VMRunning) && v.Step == "" {
		if info, err := c.cfg.Runtime.Inspect(ctx, name); err == nil && info.Live() {
			return nil
		}
	}
	if _, err := c.updateVM(ctx, name, func(_ *sql.Tx, v *vmRow) error {
		v.Desired, v.State, v.Error = desireRunning, api.VMStarting, ""
		return nil
	}); err != nil {
		return err
	}
	if err := c.runSteps(ctx, name, c.upSteps(name)); err != nil {
		c.markFailed(ctx, name, err)
		return fmt.Errorf("starting VM %s: %w", name, err)
	}
	return nil
}

// markFailed records that a start could not complete.
func (c *Controller) markFailed(ctx context.Context, name string, cause error) {
	_, err := c.updateVM(ctx, name, func(tx *sql.Tx, v *vmRow) error {
		v.State, v.Step, v.Error, v.Health, v.PID = api.VMFailed, "", cause.Error(), "", 0
		return appendVMEvent(ctx, tx, api.EventVMFailed, v, vmEvent{Error: cause.Error()})
	})
	if err != nil {
		c.log.Warn("recording a failed start", "vm", name, "err", err)
	}
}

// StopVM stops a VM: the guest gets the ACPI power button, and after the
// stop timeout is stopped hard. Stopping a stopped VM succeeds.
func (c *Controller) StopVM(ctx context.Context, name string) (*api.VM, error) {
	unlock, err := c.locks.lock(ctx, name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := c.stop(context.WithoutCancel(ctx), name, desireStopped); err != nil {
		return nil, err
	}
	return c.VM(ctx, name)
}

// stop ends the VM's run and records desired (stopped, or deleted for a
// delete, which then continues).
func (c *Controller) stop(ctx context.Context, name, desired string) error {
	v, err := c.updateVM(ctx, name, func(_ *sql.Tx, v *vmRow) error {
		if desired == desireStopped && v.Desired == desireDeleted {
			return apierr.New(apierr.Conflict, "VM %s is being deleted", name).With("vm", name)
		}
		v.Desired, v.Step = desired, "stop"
		if desired == desireDeleted {
			v.State = api.VMDeleting
		} else if v.State == api.VMStarting || v.State == api.VMRunning || v.State == api.VMPaused {
			v.State = api.VMStopping
		}
		return nil
	})
	if err != nil {
		return err
	}
	c.unwatch(name)
	c.resumeToStop(ctx, name)
	method, err := c.cfg.Runtime.Stop(ctx, name, c.cfg.StopTimeout)
	if err != nil {
		return fmt.Errorf("stopping VM %s: %w", name, err)
	}
	c.dropRunInputs(name) // the next start writes them again
	was := v.State
	_, err = c.updateVM(ctx, name, func(tx *sql.Tx, v *vmRow) error {
		v.PID, v.Supervisor, v.VMM, v.Health = 0, nil, nil, ""
		if desired == desireDeleted {
			return nil
		}
		v.Step = ""
		v.State = api.VMStopped
		if was == api.VMStopped {
			return nil
		}
		return appendVMEvent(ctx, tx, api.EventVMStopped, v, vmEvent{Method: method})
	})
	return err
}

// RestartVM stops and starts a VM.
func (c *Controller) RestartVM(ctx context.Context, name string) (*api.VM, error) {
	unlock, err := c.locks.lock(ctx, name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	sctx := context.WithoutCancel(ctx)
	if err := c.stop(sctx, name, desireStopped); err != nil {
		return nil, err
	}
	if err := c.start(sctx, name); err != nil {
		return nil, err
	}
	return c.VM(ctx, name)
}

// DeleteVM stops a VM, deletes its tap, frees its lease and forgets it.
// It returns the VM as it was, with state "deleted".
func (c *Controller) DeleteVM(ctx context.Context, name string) (*api.VM, error) {
	if err := checkName("VM name", name); err != nil {
		return nil, err
	}
	// A create still queued for a boot slot holds the VM's lock: end its
	// wait, so it fails and undoes itself instead of booting first.
	before, _ := c.VM(ctx, name)
	c.boots.CancelWait(name)
	unlock, err := c.locks.lock(ctx, name)
	c.boots.Uncancel(name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	defer c.kickDeployments() // a deployment's replica: make it again
	v, err := c.VM(ctx, name)
	if apierr.Is(err, apierr.NotFound) && before != nil {
		before.State, before.PID, before.Step = api.VMDeleted, 0, ""
		return before, nil // the canceled create undid it
	}
	if err != nil {
		return nil, err
	}
	if err := c.destroy(context.WithoutCancel(ctx), name, ""); err != nil {
		return nil, err
	}
	v.State, v.PID, v.Step = api.VMDeleted, 0, ""
	return v, nil
}

// destroy runs the delete steps; the caller holds the VM's lock. It does
// not wake the deployment reconciler: a caller whose delete may leave a
// deployment short does (DeleteVM); the reconciler's own deletes (scaling
// down, recreating, undoing a replica's failed create, whose retry waits
// for its backoff) must not start a pass at once.
func (c *Controller) destroy(ctx context.Context, name, reason string) error {
	steps := []step{
		{"stop", func(ctx context.Context) error { return c.stop(ctx, name, desireDeleted) }},
		{"untap", func(ctx context.Context) error {
			v, err := c.readVM(ctx, name)
			if err != nil || v.Tap == "" {
				return err
			}
			_, err = c.cfg.Network.DelTap(ctx, hostnet.TapRef{Name: v.Tap, VM: name})
			return err
		}},
		{"release", func(ctx context.Context) error { return c.release(ctx, name, reason) }},
	}
	for _, s := range steps {
		if s.name != "stop" {
			if err := c.setStep(ctx, name, s.name); err != nil {
				if apierr.Is(err, apierr.NotFound) {
					break
				}
				return err
			}
		}
		if err := s.run(ctx); err != nil {
			return fmt.Errorf("deleting VM %s: step %s: %w", name, s.name, err)
		}
	}
	if err := os.RemoveAll(c.vmDir(name)); err != nil {
		c.log.Warn("removing the VM's files", "vm", name, "err", err)
	}
	c.dropRunInputs(name)
	c.publishNow(ctx)
	return nil
}

// release frees the lease and deletes the row, in one transaction.
func (c *Controller) release(ctx context.Context, name, reason string) error {
	err := c.st.Tx(ctx, func(tx *sql.Tx) error {
		v, err := getVM(ctx, tx, name)
		if err != nil {
			return err
		}
		if _, err := ipam.ReleaseTx(ctx, tx, name); err != nil {
			return err
		}
		if err := detachVolumesTx(ctx, tx, name); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM vms WHERE id = ?`, name); err != nil {
			return internal(err, "deleting VM %s", name)
		}
		data := map[string]any{"name": name, "ip": v.IP, "plugin": v.Plugin}
		if v.Deployment != "" {
			data["deployment"] = v.Deployment
		}
		if reason != "" {
			data["reason"] = reason
		}
		_, err = store.AppendEvent(ctx, tx, api.EventVMDeleted, name, data)
		return err
	})
	if apierr.Is(err, apierr.NotFound) {
		return nil
	}
	if err == nil {
		c.notify()
		c.log.Info("VM deleted", "vm", name)
	}
	return err
}

// WaitVM waits until the VM is in state, for at most timeout. It fails
// with TIMEOUT when time runs out and with CONFLICT when the VM settles in
// a state it will not leave by itself (waiting for running: stopped,
// crashed, failed). Waiting for "deleted" succeeds once the VM is gone.
func (c *Controller) WaitVM(ctx context.Context, name string, state api.VMState, timeout time.Duration) (*api.VM, error) {
	if !state.Valid() {
		return nil, apierr.New(apierr.InvalidInput, "unknown VM state %q", state).With("states", api.VMStates())
	}
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last *api.VM
	for {
		ch := c.changes()
		v, err := c.VM(ctx, name)
		switch {
		case apierr.Is(err, apierr.NotFound) && state == api.VMDeleted:
			if last == nil {
				last = &api.VM{Name: name}
			}
			last.State = api.VMDeleted
			return last, nil
		case err != nil:
			if ctx.Err() != nil {
				break
			}
			return nil, err
		case v.State == state:
			return v, nil
		case (state == api.VMRunning || state == api.VMStarting) &&
			(v.State == api.VMStopped || v.State == api.VMCrashed || v.State == api.VMFailed) && v.Step == "":
			return v, apierr.New(apierr.Conflict, "VM %s is %s, not %s", name, v.State, state).
				With("vm", name).With("state", string(v.State)).With("error", v.Error)
		default:
			last = v
		}
		select {
		case <-ch:
		case <-time.After(time.Second):
		case <-ctx.Done():
			got := api.VMState("")
			if last != nil {
				got = last.State
			}
			return last, apierr.New(apierr.Timeout, "VM %s did not become %s within %s (it is %s)", name, state, timeout, got).
				With("vm", name).With("state", string(got)).With("want", string(state))
		}
	}
}

var _ = netip.Addr{}
