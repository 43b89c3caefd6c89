package launch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/layout"
	"github.com/volantvm/volant/lib/vmm"
	"github.com/volantvm/volant/lib/vmm/jail"
	"github.com/volantvm/volant/lib/vmm/supervise"
)

// Status is a VM as seen from outside its run: from the run directory, the
// processes it names (checked by pid + start time + boot, never a bare
// pid), and the VMM's own answer on its control socket.
type Status struct {
	Name   string `json:"name"`
	RunDir string `json:"run_dir"`
	// Running says the VMM process is alive.
	Running bool `json:"running"`
	// State is what the VMM reports (running, paused, shutdown...), or
	// "starting" while a run holds the directory before the VMM answers,
	// or "stopped".
	State      vmm.State      `json:"state"`
	StateError string         `json:"state_error,omitempty"`
	VMM        string         `json:"vmm,omitempty"`
	Supervisor *ProcessStatus `json:"supervisor,omitempty"`
	Process    *ProcessStatus `json:"vmm_process,omitempty"`
	Socket     string         `json:"socket,omitempty"`
	Console    string         `json:"console_socket,omitempty"`
	SerialLog  string         `json:"serial_log,omitempty"`
	StartedAt  *time.Time     `json:"started_at,omitempty"`
	// Jail says how the hypervisor is confined: its uid and cgroup, or
	// insecure (it runs as root without a jail: --insecure-vmm).
	Jail *jail.Info `json:"jail,omitempty"`
}

// Starting reports whether a run holds the VM but its hypervisor is not
// running yet: the supervisor is alive (or, before it wrote its pid file,
// the run directory is locked) and no VMM process runs.
func (s *Status) Starting() bool {
	if s == nil || s.Running || s.State != StateStarting {
		return false
	}
	return s.Supervisor == nil || s.Supervisor.Alive
}

// Live reports whether the run is alive or coming up.
func (s *Status) Live() bool { return s != nil && (s.Running || s.Starting()) }

// Answering reports whether the hypervisor runs and answered on its
// control socket (its state is its own, not "starting" or "stopped").
func (s *Status) Answering() bool {
	return s != nil && s.Running && s.State != StateStarting && s.State != StateStopped
}

// SupervisorID is the identity of the run's supervisor (`volant-launch
// run`); the zero Identity when the run has not recorded one.
func (s *Status) SupervisorID() supervise.Identity {
	if s == nil || s.Supervisor == nil {
		return supervise.Identity{}
	}
	return s.Supervisor.Identity
}

// VMMID is the identity of the run's hypervisor process, or the zero
// Identity.
func (s *Status) VMMID() supervise.Identity {
	if s == nil || s.Process == nil {
		return supervise.Identity{}
	}
	return s.Process.Identity
}

// ProcessStatus is one process of a run and whether it is still that process.
type ProcessStatus struct {
	supervise.Identity
	Alive bool `json:"alive"`
}

// StateStarting and StateStopped complete the VMM's states for Status.
const (
	StateStarting vmm.State = "starting"
	StateStopped  vmm.State = "stopped"
)

// RunDirFor is the default run directory of a VM.
func RunDirFor(name string, o Options) string {
	return filepath.Join(o.withDefaults().RunRoot, name)
}

// RunDirOf is the run directory a command names by dir (a path) or by
// name (RunDirFor): exactly one must be given (USAGE otherwise), and a
// name must be a VM name (INVALID_INPUT).
func RunDirOf(dir, name string, o Options) (string, error) {
	switch {
	case dir != "" && name != "":
		return "", apierr.New(apierr.Usage, "give --dir or --name, not both")
	case dir != "":
		return filepath.Abs(dir)
	case name != "":
		if !ValidName(name) {
			return "", apierr.New(apierr.InvalidInput, "VM name %q is not valid", name)
		}
		return RunDirFor(name, o), nil
	}
	return "", apierr.New(apierr.Usage, "which VM? give --dir RUNDIR or --name NAME")
}

// GuestSocket is where clients reach the agent of the VM running in
// runDir (lib/agentchan's stream layout, served by Run).
func GuestSocket(runDir string) string { return filepath.Join(runDir, GuestSocketName) }

// WorkloadLogPath is where the workload output of VM name is kept
// (<data>/vms/<name>/workload.log, lib/workloadlog).
func WorkloadLogPath(o Options, name string) string {
	return filepath.Join(o.withDefaults().StateDir, "vms", name, layout.WorkloadLogName)
}

// Inspect reports the VM running in runDir. A run directory that does not
// exist is NOT_FOUND; one left by a run that died reports StateStopped.
// Identities in the answer let a restarted daemon check that a VMM it
// recorded is still the same process (adoption): compare
// Status.Process.Identity with the recorded one.
func Inspect(ctx context.Context, runDir string, o Options) (*Status, error) {
	o = o.withDefaults()
	if _, err := os.Stat(runDir); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, apierr.New(apierr.NotFound, "no VM runs in %s", runDir).With("run_dir", runDir)
		}
		return nil, fmt.Errorf("run dir: %w", err)
	}
	st := &Status{RunDir: runDir, Name: planName(runDir), State: StateStopped}
	var plan struct {
		Name      string `json:"name"`
		Console   string `json:"console_socket"`
		SerialLog string `json:"serial_log"`
	}
	if b, err := os.ReadFile(filepath.Join(runDir, PlanFileName)); err == nil && json.Unmarshal(b, &plan) == nil {
		st.Name, st.Console, st.SerialLog = plan.Name, plan.Console, plan.SerialLog
	}
	busy := runDirBusy(runDir)
	pf, err := supervise.ReadPidFile(filepath.Join(runDir, PidFileName))
	if err != nil {
		if busy {
			st.State = StateStarting
		}
		return st, nil
	}
	st.VMM, st.Socket, st.Jail = pf.Backend, pf.Socket, pf.Jail
	st.Supervisor = &ProcessStatus{Identity: pf.Supervisor, Alive: pf.Supervisor.Alive()}
	if pf.VMM.Pid == 0 {
		if st.Supervisor.Alive {
			st.State = StateStarting
		}
		return st, nil
	}
	st.Process = &ProcessStatus{Identity: pf.VMM, Alive: pf.VMM.Alive()}
	if !pf.StartedAt.IsZero() {
		t := pf.StartedAt
		st.StartedAt = &t
	}
	if !st.Process.Alive {
		return st, nil
	}
	st.Running = true
	st.State = StateStarting
	b, err := backendNamed(pf.Backend, o)
	if err != nil {
		st.StateError = err.Error()
		return st, nil
	}
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := b.Dial(cctx, pf.Socket)
	if err != nil {
		st.StateError = err.Error()
		return st, nil
	}
	defer c.Close()
	s, err := c.State(cctx)
	if err != nil {
		st.StateError = err.Error()
		return st, nil
	}
	st.State = s
	return st, nil
}

// StopReport says how Stop ended a VM.
type StopReport struct {
	Name    string `json:"name"`
	RunDir  string `json:"run_dir"`
	Method  string `json:"method"` // supervise.Stopped*, or "not_running"
	Elapsed int64  `json:"elapsed_ms"`
}

// Stop stops the VM in runDir and waits until its run has cleaned up. It
// escalates like Run does on SIGTERM — ACPI power button, after grace a
// hard stop through the control socket, then SIGKILL — acting on the VMM
// directly (through a verified pidfd), so it works whether or not a
// `volant-launch run` supervises it; a supervisor then sees the VMM exit,
// removes the run directory and exits. Stopping a VM that is not running
// (no run dir, or one left by a run that died) succeeds: Method
// "not_running".
func Stop(ctx context.Context, runDir string, grace time.Duration, o Options) (*StopReport, error) {
	o = o.withDefaults()
	t0 := time.Now()
	rep := &StopReport{Name: planName(runDir), RunDir: runDir, Method: "not_running"}
	done := func() (*StopReport, error) {
		rep.Elapsed = time.Since(t0).Milliseconds()
		return rep, nil
	}
	if _, err := os.Stat(runDir); errors.Is(err, os.ErrNotExist) {
		return done()
	}
	pf, err := supervise.ReadPidFile(filepath.Join(runDir, PidFileName))
	if err != nil && runDirBusy(runDir) {
		// A run is starting and has not written its pid file yet.
		time.Sleep(200 * time.Millisecond)
		pf, err = supervise.ReadPidFile(filepath.Join(runDir, PidFileName))
	}
	if err == nil {
		if pf.VMM.Pid != 0 {
			h, herr := pf.VMM.Open()
			if herr == nil {
				b, berr := backendNamed(pf.Backend, o)
				if berr != nil {
					h.Close()
					return nil, berr
				}
				res, serr := supervise.Stop(ctx, h, func(ctx context.Context) (vmm.Control, error) {
					return b.Dial(ctx, pf.Socket)
				}, supervise.StopOptions{Grace: grace, Logger: o.Logger})
				h.Close()
				if serr != nil {
					return nil, serr
				}
				rep.Method = res.Method
			} else if !errors.Is(herr, supervise.ErrGone) {
				return nil, herr
			}
		}
		if err := endSupervisor(ctx, runDir, pf.Supervisor); err != nil {
			return nil, err
		}
	}
	// The supervisor removes the run dir; after a crash, Stop does.
	if _, err := os.Stat(runDir); err == nil {
		if runDirBusy(runDir) {
			return nil, apierr.New(apierr.Conflict, "a run still holds %s after its VMM stopped", runDir).With("run_dir", runDir)
		}
		if err := removeRunDir(runDir); err != nil {
			return nil, err
		}
	}
	return done()
}

// endSupervisor waits for the run that supervised a VMM that is gone to
// clean up and release the run directory, and ends it if it does not
// (SIGTERM, then SIGKILL). A supervisor that is this very process (Run and
// Stop called from one program) is only waited for.
func endSupervisor(ctx context.Context, runDir string, id supervise.Identity) error {
	released := func(d time.Duration) bool {
		deadline := time.Now().Add(d)
		for {
			if _, err := os.Stat(runDir); errors.Is(err, os.ErrNotExist) || !runDirBusy(runDir) {
				return true
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return false
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if released(10 * time.Second) {
		return nil
	}
	if self, err := supervise.Self(); err == nil && self == id {
		return apierr.New(apierr.Timeout, "this process's own run of %s did not finish", runDir)
	}
	h, err := id.Open()
	if errors.Is(err, supervise.ErrGone) {
		return nil
	}
	if err != nil {
		return err
	}
	defer h.Close()
	for _, step := range []struct {
		sig  syscall.Signal
		wait time.Duration
	}{{syscall.SIGTERM, 10 * time.Second}, {syscall.SIGKILL, 5 * time.Second}} {
		if err := h.Signal(step.sig); err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, step.wait)
		err := h.Wait(wctx)
		cancel()
		if err == nil {
			return nil
		}
	}
	return apierr.New(apierr.Timeout, "supervisor %s did not exit", id)
}

// Pause pauses the VM's vCPUs; Resume resumes them. Both answer with the
// status after the change, and CONFLICT when no VMM runs.
func Pause(ctx context.Context, runDir string, o Options) (*Status, error) {
	return control(ctx, runDir, o, func(ctx context.Context, c vmm.Control) error { return c.Pause(ctx) })
}

// Resume resumes a paused VM.
func Resume(ctx context.Context, runDir string, o Options) (*Status, error) {
	return control(ctx, runDir, o, func(ctx context.Context, c vmm.Control) error { return c.Resume(ctx) })
}

func control(ctx context.Context, runDir string, o Options, op func(context.Context, vmm.Control) error) (*Status, error) {
	o = o.withDefaults()
	if _, err := withControl(ctx, runDir, o, op); err != nil {
		return nil, err
	}
	return Inspect(ctx, runDir, o)
}

// withControl runs op on a connection to the VMM of the run in runDir and
// returns the status it found before.
func withControl(ctx context.Context, runDir string, o Options, op func(context.Context, vmm.Control) error) (*Status, error) {
	o = o.withDefaults()
	st, err := Inspect(ctx, runDir, o)
	if err != nil {
		return nil, err
	}
	if !st.Running {
		return nil, apierr.New(apierr.Conflict, "VM %s is not running (state %s)", st.Name, st.State).With("state", string(st.State))
	}
	b, err := backendNamed(st.VMM, o)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := b.Dial(cctx, st.Socket)
	if err != nil {
		return nil, apierr.Wrap(apierr.Unavailable, err, "connecting to "+st.VMM)
	}
	err = op(cctx, c)
	c.Close()
	if err != nil {
		return nil, err
	}
	return st, nil
}

// CountersReport is a VM's I/O counters.
type CountersReport struct {
	Name   string `json:"name"`
	RunDir string `json:"run_dir"`
	VMM    string `json:"vmm"`
	// Counters maps a device to its counters. The hypervisor's own come
	// first: Cloud Hypervisor's per device (GET /vm.counters), QEMU's per
	// drive (query-blockstats: read_bytes, write_bytes, read_ops,
	// write_ops). Each NIC's tap adds "tap:<name>" from the host's
	// interface statistics, seen from the guest like Cloud Hypervisor's
	// (rx = received by the guest): rx_bytes, rx_frames, tx_bytes,
	// tx_frames, when the tap is visible in the caller's network namespace.
	Counters map[string]map[string]int64 `json:"counters"`
}

// Counters reads the I/O counters of the VM in runDir (CONFLICT when no
// VMM runs; NOT_SUPPORTED from a backend without counters).
func Counters(ctx context.Context, runDir string, o Options) (*CountersReport, error) {
	rep := &CountersReport{Counters: map[string]map[string]int64{}}
	st, err := withControl(ctx, runDir, o, func(ctx context.Context, c vmm.Control) error {
		m, err := c.Counters(ctx)
		for dev, kv := range m {
			rep.Counters[dev] = kv
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	rep.Name, rep.RunDir, rep.VMM = st.Name, st.RunDir, st.VMM
	for _, n := range planNets(runDir) {
		if kv := tapCounters(n.Tap); kv != nil {
			rep.Counters["tap:"+n.Tap] = kv
		}
	}
	return rep, nil
}

// planNets are the NICs recorded in a run dir's plan.
func planNets(runDir string) []vmm.Net {
	var plan struct {
		Config vmm.Config `json:"config"`
	}
	if b, err := os.ReadFile(filepath.Join(runDir, PlanFileName)); err == nil && json.Unmarshal(b, &plan) == nil {
		return plan.Config.Nets
	}
	return nil
}

// tapCounters reads a tap's statistics from sysfs, turned to the guest's
// view (what the tap transmits, the guest receives); nil when the tap is
// not visible here.
func tapCounters(tap string) map[string]int64 {
	dir := filepath.Join("/sys/class/net", tap, "statistics")
	read := func(f string) (int64, bool) {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return 0, false
		}
		v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		return v, err == nil
	}
	out := map[string]int64{}
	for guest, host := range map[string]string{"rx_bytes": "tx_bytes", "rx_frames": "tx_packets", "tx_bytes": "rx_bytes", "tx_frames": "rx_packets"} {
		v, ok := read(host)
		if !ok {
			return nil
		}
		out[guest] = v
	}
	return out
}

// planName is the VM name recorded in a run dir's plan, else the dir's name.
func planName(runDir string) string {
	var plan struct {
		Name string `json:"name"`
	}
	if b, err := os.ReadFile(filepath.Join(runDir, PlanFileName)); err == nil && json.Unmarshal(b, &plan) == nil && plan.Name != "" {
		return plan.Name
	}
	return filepath.Base(runDir)
}
