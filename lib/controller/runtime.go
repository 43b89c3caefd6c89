package controller

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/vmm"
	"github.com/volantvm/volant/lib/vmm/supervise"
)

// Runtime runs VMs, one run per VM name. LaunchRuntime is the real one:
// a `volant-launch run` process per VM, so VMs outlive volantd.
type Runtime interface {
	// Check plans the VM without starting anything and fails as a start
	// would: manifest, checksums, kernel, hypervisor, command line.
	Check(ctx context.Context, spec launch.Spec) error
	// Start starts the VM from the spec staged at specPath and returns once
	// its hypervisor answers, or with the error that ended the run. A VM
	// that already has a live run is adopted, not started twice.
	Start(ctx context.Context, name, specPath string) (*RunInfo, error)
	// Inspect reports the VM's run; NOT_FOUND when it has none.
	Inspect(ctx context.Context, name string) (*RunInfo, error)
	// Stop stops the VM's run (power button, after grace a hard stop, then
	// a kill) and waits until it has ended. No run is success
	// ("not_running").
	Stop(ctx context.Context, name string, grace time.Duration) (method string, err error)
	// Wait blocks until the run described by info has ended, or ctx ends.
	Wait(ctx context.Context, info *RunInfo) error
	// Runs lists the names of the VMs that have a run (live or stale).
	Runs(ctx context.Context) ([]string, error)
	// LastError is the error a VM's last run ended with, if it recorded one.
	LastError(name string) error
}

// RunInfo describes one VM run.
type RunInfo struct {
	Name string `json:"name"`
	// Running: the hypervisor process is alive. Starting: a run holds the
	// VM but its hypervisor does not answer yet.
	Running  bool `json:"running"`
	Starting bool `json:"starting"`
	// State is the hypervisor's own (running, paused...), "starting" or
	// "stopped".
	State      string             `json:"state"`
	Supervisor supervise.Identity `json:"supervisor"`
	VMM        supervise.Identity `json:"vmm"`
	StartedAt  time.Time          `json:"started_at"`
	SerialLog  string             `json:"serial_log,omitempty"`
	// Console is the attachable serial console socket, when the
	// hypervisor serves one (QEMU).
	Console string `json:"console_socket,omitempty"`
	// Adopted is set by Start when the run existed already (started by an
	// earlier daemon, or by systemd) instead of being started by it.
	Adopted bool `json:"adopted,omitempty"`
}

// Live reports whether the run is alive or coming up.
func (r *RunInfo) Live() bool { return r != nil && (r.Running || r.Starting) }

// Runner starts `volant-launch run` for one VM: as a detached child of
// volantd, or as the volant-vm@NAME systemd unit.
type Runner interface {
	// Start starts the run of name reading its spec from specPath; it
	// returns once the process is started (not ready). exited is closed
	// when the process ends, if the runner can tell.
	Start(ctx context.Context, name, specPath string) (exited <-chan struct{}, err error)
	// Stop stops the run of name, if the runner has its own way to
	// (systemd: stop the unit, so it is not restarted); ok false means
	// the caller should stop it through the run directory.
	Stop(ctx context.Context, name string) (ok bool, err error)
	// Name is "detached" or "systemd".
	Name() string
}

// LaunchRuntime runs each VM as a `volant-launch run` process and inspects
// and stops it through its run directory with lib/launch.
type LaunchRuntime struct {
	// Options are lib/launch's host options; they are also passed to
	// volant-launch through its environment (VOLANT_RUN_ROOT, ...).
	Options launch.Options
	// Runner starts the processes.
	Runner Runner
	// PollInterval is how often Start looks for the hypervisor (default 50 ms).
	PollInterval time.Duration
	// StartTimeout bounds Start (default 60 s).
	StartTimeout time.Duration
}

var _ Runtime = (*LaunchRuntime)(nil)

// Check implements Runtime with launch.Prepare.
func (r *LaunchRuntime) Check(ctx context.Context, spec launch.Spec) error {
	_, err := launch.Prepare(ctx, spec, r.Options)
	return err
}

func (r *LaunchRuntime) runDir(name string) string { return launch.RunDirFor(name, r.Options) }

// Inspect implements Runtime.
func (r *LaunchRuntime) Inspect(ctx context.Context, name string) (*RunInfo, error) {
	st, err := launch.Inspect(ctx, r.runDir(name), r.Options)
	if err != nil {
		return nil, err
	}
	info := &RunInfo{Name: name, Running: st.Running, State: string(st.State), SerialLog: st.SerialLog, Console: st.Console}
	if st.Supervisor != nil {
		info.Supervisor = st.Supervisor.Identity
		if st.Supervisor.Alive && !st.Running && st.State == launch.StateStarting {
			info.Starting = true
		}
	} else if st.State == launch.StateStarting {
		info.Starting = true
	}
	if st.Process != nil {
		info.VMM = st.Process.Identity
	}
	if st.StartedAt != nil {
		info.StartedAt = *st.StartedAt
	}
	return info, nil
}

// answering reports whether the hypervisor of a run answered its socket.
func answering(info *RunInfo) bool {
	return info.Running && info.State != string(launch.StateStarting) && info.State != string(launch.StateStopped)
}

// Start implements Runtime.
func (r *LaunchRuntime) Start(ctx context.Context, name, specPath string) (*RunInfo, error) {
	timeout := r.StartTimeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	poll := r.PollInterval
	if poll <= 0 {
		poll = 50 * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	// Measure first: a live run of this VM (started before a volantd
	// crash, or by systemd) is adopted, not started a second time.
	var exited <-chan struct{}
	info, err := r.Inspect(ctx, name)
	adopted := false
	switch {
	case err == nil && info.Live():
		adopted = true
	case err == nil || apierr.Is(err, apierr.NotFound):
		if err == nil && !info.Live() {
			// A run that died left its directory: clear it.
			if _, err := launch.Stop(ctx, r.runDir(name), time.Second, r.Options); err != nil {
				return nil, fmt.Errorf("clearing the stale run of %s: %w", name, err)
			}
		}
		exited, err = r.Runner.Start(ctx, name, specPath)
		if err != nil {
			return nil, err
		}
	default:
		return nil, err
	}
	seenLive := false
	ended := func() bool {
		if exited == nil {
			return false
		}
		select {
		case <-exited:
			return true
		default:
			return false
		}
	}
	for {
		info, err := r.Inspect(ctx, name)
		switch {
		case err == nil && answering(info):
			info.Adopted = adopted || ended()
			return info, nil
		case err == nil && info.Live():
			seenLive = true
		case err != nil && !apierr.Is(err, apierr.NotFound):
			return nil, err
		default:
			// No live run. The process we started may have lost the race
			// for the run dir to another run of the VM (adopt that one),
			// or failed; a run we adopted may have ended.
			if ended() || exited == nil {
				if lerr := r.LastError(name); lerr != nil {
					return nil, lerr
				}
				return nil, apierr.New(apierr.Unavailable, "volant-launch for %s ended before its hypervisor answered (see %s)",
					name, r.launchLog(name)).With("vm", name).With("log", r.launchLog(name))
			}
		}
		select {
		case <-ctx.Done():
			if seenLive {
				return nil, apierr.New(apierr.Timeout, "the hypervisor of %s did not answer within %s", name, timeout).With("vm", name)
			}
			return nil, apierr.New(apierr.Timeout, "volant-launch for %s did not start its VM within %s (see %s)", name, timeout, r.launchLog(name)).
				With("vm", name).With("log", r.launchLog(name))
		case <-time.After(poll):
		}
	}
}

// Stop implements Runtime.
func (r *LaunchRuntime) Stop(ctx context.Context, name string, grace time.Duration) (string, error) {
	ok, err := r.Runner.Stop(ctx, name)
	if err != nil {
		return "", err
	}
	// Also after the runner's own stop: it clears what a dead run left.
	rep, err := launch.Stop(ctx, r.runDir(name), grace, r.Options)
	if err != nil {
		return "", err
	}
	if ok && rep.Method == "not_running" {
		return "unit_stopped", nil
	}
	return rep.Method, nil
}

// Wait implements Runtime: it waits for the supervisor (volant-launch run)
// to exit; the hypervisor never outlives it.
func (r *LaunchRuntime) Wait(ctx context.Context, info *RunInfo) error {
	id := info.Supervisor
	if id.Pid == 0 {
		id = info.VMM
	}
	h, err := id.Open()
	if errors.Is(err, supervise.ErrGone) {
		return nil
	}
	if err != nil {
		return err
	}
	defer h.Close()
	return h.Wait(ctx)
}

// Runs implements Runtime.
func (r *LaunchRuntime) Runs(ctx context.Context) ([]string, error) {
	root := filepath.Dir(r.runDir("x"))
	ents, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

func (r *LaunchRuntime) launchLog(name string) string {
	return LaunchLogPath(r.Options.StateDir, name)
}

// LaunchLogPath is where a detached volant-launch of a VM writes its
// stdout and stderr.
func LaunchLogPath(stateDir, name string) string {
	if stateDir == "" {
		stateDir = launch.DefaultStateDir
	}
	return filepath.Join(stateDir, "vms", name, "launch.log")
}

// LastError implements Runtime: the last error object volant-launch wrote
// to the VM's launch log, if its last run ended with one.
func (r *LaunchRuntime) LastError(name string) error {
	return lastLaunchError(r.launchLog(name))
}

// lastLaunchError reads the tail of a launch log and returns the last
// {"code","message"} line after the last run's start marker.
func lastLaunchError(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > 64<<10 {
		f.Seek(st.Size()-64<<10, io.SeekStart)
	}
	var last *apierr.Error
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if bytes.HasPrefix(line, []byte(launchMarker)) {
			last = nil
			continue
		}
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var e apierr.Error
		if json.Unmarshal(line, &e) == nil && e.Code != "" && e.Message != "" {
			last = &e
		}
	}
	if last == nil {
		return nil
	}
	return last
}

// launchMarker starts each run's section of a launch log.
const launchMarker = "=== volantd: starting volant-launch run"

// Environ is the environment volant-launch gets for the options: its
// VOLANT_* variables plus PATH.
func Environ(o launch.Options) []string {
	env := []string{"PATH=" + os.Getenv("PATH")}
	add := func(k, v string) {
		if v != "" {
			env = append(env, k+"="+v)
		}
	}
	add("VOLANT_KERNEL_DIR", o.KernelDir)
	add("VOLANT_KESTREL", o.Kestrel)
	add("VOLANT_RUN_ROOT", o.RunRoot)
	add("VOLANT_STATE_DIR", o.StateDir)
	add("VOLANT_CACHE_DIR", o.CacheDir)
	return env
}

// DetachedRunner starts `volant-launch run` as a child in its own session:
// it survives volantd (also a kill -9), its stdout and stderr go to the
// VM's launch.log, and volantd reaps it while it lives.
type DetachedRunner struct {
	// Launcher is the volant-launch binary.
	Launcher string
	// Env is its environment (see Environ).
	Env []string
	// StateDir holds vms/<name>/launch.log.
	StateDir string
	// ReadyTimeout is passed as --ready-timeout (default 30 s).
	ReadyTimeout time.Duration
	Logger       *slog.Logger

	mu   sync.Mutex
	proc map[string]*exec.Cmd
}

// Name implements Runner.
func (d *DetachedRunner) Name() string { return "detached" }

// Start implements Runner.
func (d *DetachedRunner) Start(ctx context.Context, name, specPath string) (<-chan struct{}, error) {
	if d.Launcher == "" {
		return nil, apierr.New(apierr.Unavailable, "no volant-launch binary configured")
	}
	spec, err := os.Open(specPath)
	if err != nil {
		return nil, fmt.Errorf("opening the spec of %s: %w", name, err)
	}
	defer spec.Close()
	logPath := LaunchLogPath(d.StateDir, name)
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", logPath, err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "%s %s at %s\n", launchMarker, name, time.Now().UTC().Format(time.RFC3339Nano))
	rt := d.ReadyTimeout
	if rt <= 0 {
		rt = 30 * time.Second
	}
	cmd := exec.Command(d.Launcher, "run", "--name", name, "--ready-timeout", rt.String())
	cmd.Stdin, cmd.Stdout, cmd.Stderr = spec, logf, logf
	cmd.Env = d.Env
	cmd.Dir = "/"
	// Its own session: no signal aimed at volantd's process group or
	// terminal reaches it, and it is not killed with volantd.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, apierr.Wrap(apierr.Unavailable, err, "starting "+d.Launcher)
	}
	done := make(chan struct{})
	d.mu.Lock()
	if d.proc == nil {
		d.proc = map[string]*exec.Cmd{}
	}
	d.proc[name] = cmd
	d.mu.Unlock()
	go func() {
		err := cmd.Wait() // reap it
		if d.Logger != nil {
			d.Logger.Debug("volant-launch exited", "vm", name, "pid", cmd.Process.Pid, "err", err)
		}
		d.mu.Lock()
		if d.proc[name] == cmd {
			delete(d.proc, name)
		}
		d.mu.Unlock()
		close(done)
	}()
	return done, nil
}

// Stop implements Runner: detached runs are stopped through the run dir.
func (d *DetachedRunner) Stop(context.Context, string) (bool, error) { return false, nil }

// FindLauncher returns the volant-launch binary: explicit when given, else
// the one next to the running executable, else the one on PATH.
func FindLauncher(explicit string) (string, error) {
	if explicit != "" {
		p, err := exec.LookPath(explicit)
		if err != nil {
			return "", apierr.Wrap(apierr.Unavailable, err, "volant-launch binary "+strconv.Quote(explicit))
		}
		return filepath.Abs(p)
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "volant-launch")
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	p, err := exec.LookPath("volant-launch")
	if err != nil {
		return "", apierr.New(apierr.Unavailable, "volant-launch not found next to volantd nor on PATH").
			With("hint", "install it beside volantd or pass --launcher")
	}
	return filepath.Abs(p)
}

var _ = vmm.StateRunning
