package launch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/agenthub"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/vmm"
	"github.com/volantvm/volant/lib/vmm/jail"
	"github.com/volantvm/volant/lib/vmm/supervise"
)

// RunOptions tune Run.
type RunOptions struct {
	Logger *slog.Logger
	// Notify receives sd_notify(3) states ("READY=1", "STOPPING=1",
	// "STATUS=..."); nil sends nothing. The command passes systemd's.
	Notify func(state string)
	// VMMOutput receives a copy of the VMM's stdout and stderr (the last
	// few KiB are kept for error messages either way).
	VMMOutput io.Writer
	// ReadyTimeout bounds the wait for the VMM's control socket (default 30s).
	ReadyTimeout time.Duration
}

// Result says how a run ended.
type Result struct {
	Name      string    `json:"name"`
	VMM       string    `json:"vmm"`
	Pid       int       `json:"pid"`
	StartedAt time.Time `json:"started_at"`
	EndedAt   time.Time `json:"ended_at"`
	// Ended is "poweroff" (the guest powered off, or was stopped through
	// its control socket by `volant-launch stop`) or "stopped" (Run's
	// context ended: SIGTERM, and Run stopped it).
	Ended      string `json:"ended"`
	StopMethod string `json:"stop_method,omitempty"`
}

// Run carries out a plan in the foreground: it takes the run directory
// (CONFLICT if another run holds it), stages the initrd, checks the taps,
// starts the VMM under the supervisor (it dies with this process), records
// the pid file, waits for the control socket and reports READY, then waits.
// When the VM ends by itself Run returns; when ctx ends (SIGTERM) it stops
// the VM gracefully — ACPI power button, then after the plan's stop timeout
// a hard stop, then SIGKILL — and returns. Either way the run directory is
// removed. A VMM that exits with an error or a guest that panicked is an
// error.
func Run(ctx context.Context, p *Plan, o Options, ro RunOptions) (res *Result, err error) {
	o = o.withDefaults()
	log := ro.Logger
	if log == nil {
		log = o.Logger
	}
	notify := ro.Notify
	if notify == nil {
		notify = func(string) {}
	}
	if ro.ReadyTimeout <= 0 {
		ro.ReadyTimeout = 30 * time.Second
	}
	b, err := backendNamed(p.VMM, o)
	if err != nil {
		return nil, err
	}
	unlock, err := lockRunDir(p.RunDir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if rerr := removeRunDir(p.RunDir); rerr != nil && err == nil {
			err = rerr
		}
		unlock()
	}()
	self, err := supervise.Self()
	if err != nil {
		return nil, err
	}
	pidFile := filepath.Join(p.RunDir, PidFileName)
	pf := supervise.PidFile{Supervisor: self, Backend: p.VMM, Socket: p.Config.APISocket}
	if err := supervise.WritePidFile(pidFile, pf); err != nil {
		return nil, fmt.Errorf("writing the pid file: %w", err)
	}
	if err := stageInitrd(p); err != nil {
		return nil, err
	}
	if err := stageDiskCopies(ctx, p.DiskCopies); err != nil {
		return nil, err
	}
	for _, n := range p.Config.Nets {
		if _, err := os.Stat(filepath.Join("/sys/class/net", n.Tap)); err != nil {
			return nil, apierr.New(apierr.NotFound, "tap device %s does not exist in this network namespace", n.Tap).
				With("tap", n.Tap).With("hint", "create it first: volant-net tap add --name "+n.Tap)
		}
	}
	logStart, err := prepareSerialLog(p.SerialLog)
	if err != nil {
		return nil, err
	}
	if err := os.Mkdir(VMMDir(p.RunDir), 0o700); err != nil {
		return nil, fmt.Errorf("run dir: %w", err)
	}
	var jl *jailRun
	pf.Jail = &jail.Info{Insecure: true}
	if p.InsecureVMM || o.Jail.Insecure {
		log.Warn("the VMM runs as root without a jail (--insecure-vmm)", "vm", p.Name)
	} else {
		if jl, err = setupJail(p, o, log); err != nil {
			return nil, err
		}
		defer jl.teardown(log)
		pf.Jail = &jl.info
	}

	var out io.Writer = io.Discard
	if ro.VMMOutput != nil {
		out = ro.VMMOutput
	}
	so := supervise.Options{Argv: p.Argv, Stdout: out, Stderr: out}
	if jl != nil {
		so.Jail = jl.spec
	}
	proc, err := supervise.Start(so)
	if err != nil {
		if apierr.Is(err, jail.Failed) {
			return nil, err
		}
		return nil, apierr.Wrap(apierr.Unavailable, err, "starting "+p.VMM)
	}
	started := time.Now()
	res = &Result{Name: p.Name, VMM: p.VMM, Pid: proc.Pid, StartedAt: started}
	defer func() {
		// However Run leaves, the VMM does not outlive it.
		if proc.State() == nil {
			proc.Kill()
			<-proc.Done()
		}
	}()
	pf.VMM, pf.StartedAt = proc.Identity, started.UTC()
	if err := supervise.WritePidFile(pidFile, pf); err != nil {
		return nil, fmt.Errorf("writing the pid file: %w", err)
	}
	// After the exec: nothing the VMM needs waits on it.
	if err := writePlan(p); err != nil {
		return nil, err
	}
	log.Info("VMM started", "vm", p.Name, "vmm", p.VMM, "pid", proc.Pid, "accel", p.Accel)
	var hub *agenthub.Hub
	if p.Agent != nil {
		stopAgent, h, err := startAgent(ctx, p, log)
		if err != nil {
			return nil, err
		}
		defer stopAgent()
		hub = h
	}
	if p.SerialRelay != "" {
		relay, err := startConsoleRelay(ctx, p.SerialRelay, p.Console, p.SerialLog, log)
		if err != nil {
			return nil, err
		}
		defer relay.Close()
	}

	dial := func(ctx context.Context) (vmm.Control, error) { return b.Dial(ctx, p.Config.APISocket) }
	rctx, cancel := context.WithTimeout(ctx, ro.ReadyTimeout)
	err = proc.WaitReady(rctx, 5*time.Millisecond, func(ctx context.Context) error {
		c, err := dial(ctx)
		if err != nil {
			return err
		}
		defer c.Close()
		return c.Ping(ctx)
	})
	cancel()
	switch {
	case errors.Is(err, supervise.ErrExited) && jl.oomKilled():
		return nil, errOOM(p, jl)
	case errors.Is(err, supervise.ErrExited):
		return nil, apierr.Wrap(apierr.Unavailable, err, p.VMM+" exited while starting")
	case err != nil && ctx.Err() != nil:
		// Interrupted while starting: fall through to the stop below.
	case err != nil:
		return nil, apierr.Wrap(apierr.Timeout, err, p.VMM+" did not answer on "+p.Config.APISocket)
	default:
		if p.Restore != nil {
			if err := restoreGuest(ctx, p, b, hub, log); err != nil {
				return nil, err
			}
		}
		log.Info("VM running", "vm", p.Name, "ready_after", time.Since(started).Round(time.Millisecond))
		notify(fmt.Sprintf("READY=1\nSTATUS=VM %s running (%s, pid %d)", p.Name, p.VMM, proc.Pid))
	}

	select {
	case <-proc.Done():
		res.Ended = "poweroff"
	case <-ctx.Done():
		notify("STOPPING=1\nSTATUS=stopping VM " + p.Name)
		log.Info("stopping the VM", "vm", p.Name, "grace", time.Duration(p.StopAfter))
		grace := time.Duration(p.StopAfter)
		sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), grace+30*time.Second)
		sr, serr := supervise.Stop(sctx, proc, dial, supervise.StopOptions{Grace: grace, Logger: log})
		scancel()
		if serr != nil {
			return res, serr
		}
		res.Ended, res.StopMethod = "stopped", sr.Method
		log.Info("VM stopped", "vm", p.Name, "method", sr.Method, "elapsed", sr.Elapsed.Round(time.Millisecond))
	}
	<-proc.Done()
	res.EndedAt = time.Now()
	if res.Ended == "poweroff" {
		if jl.oomKilled() {
			return res, errOOM(p, jl)
		}
		if err := proc.ExitError(); err != nil {
			return res, apierr.Wrap(apierr.Unavailable, err, p.VMM+" exited unexpectedly")
		}
		if tail := logTail(p.SerialLog, logStart, 16<<10); strings.Contains(tail, "Kernel panic") {
			return res, apierr.New(apierr.Unavailable, "the guest kernel panicked (see %s)", p.SerialLog).With("serial_log", p.SerialLog)
		}
		log.Info("the guest powered off", "vm", p.Name)
	}
	return res, nil
}

// ErrRunning is wrapped by the CONFLICT error of a Run refused because
// another run holds the VM's run directory: that run is the VM's, and the
// refused one must not speak for it (lib/runner records no last error).
var ErrRunning = errors.New("the VM already runs")

// lockRunDir creates the run directory (mode 0700) and takes an exclusive
// flock on it for the caller's life. It fails with CONFLICT when another
// run holds it. Leftovers of a run that died are removed.
func lockRunDir(dir string) (unlock func(), err error) {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, fmt.Errorf("run dir: %w", err)
	}
	for attempt := 0; attempt < 3; attempt++ {
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("run dir: %w", err)
		}
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // removed between mkdir and open
			}
			return nil, fmt.Errorf("run dir: %w", err)
		}
		if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
			unix.Close(fd)
			if errors.Is(err, unix.EWOULDBLOCK) {
				e := apierr.New(apierr.Conflict, "a VM already runs in %s", dir).With("run_dir", dir)
				e.Err = ErrRunning
				if pf, err := supervise.ReadPidFile(filepath.Join(dir, PidFileName)); err == nil {
					e.With("supervisor_pid", pf.Supervisor.Pid)
				}
				return nil, e
			}
			return nil, fmt.Errorf("locking the run dir: %w", err)
		}
		// The directory may have been removed (by the run that held it)
		// between open and lock: then this lock guards nothing.
		var a, b unix.Stat_t
		if unix.Fstat(fd, &a) != nil || unix.Stat(dir, &b) != nil || a.Ino != b.Ino || a.Dev != b.Dev {
			unix.Close(fd)
			continue
		}
		if err := clearDir(dir); err != nil {
			unix.Close(fd)
			return nil, err
		}
		return func() { unix.Flock(fd, unix.LOCK_UN); unix.Close(fd) }, nil
	}
	return nil, apierr.New(apierr.Conflict, "run dir %s keeps changing under us", dir)
}

// runDirBusy reports whether a run holds dir's lock.
func runDirBusy(dir string) bool {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return errors.Is(err, unix.EWOULDBLOCK)
	}
	unix.Flock(fd, unix.LOCK_UN)
	return false
}

func clearDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("clearing the run dir: %w", err)
		}
	}
	return nil
}

func removeRunDir(dir string) error {
	if err := clearDir(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing the run dir: %w", err)
	}
	return nil
}

func writePlan(p *Plan) error {
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding the plan: %w", err)
	}
	return supervise.WriteRunFile(filepath.Join(p.RunDir, PlanFileName), append(b, '\n'), 0o600)
}

// maxSerialLog is the size past which the serial log is rotated (once, to
// <log>.1) when a VM starts.
const maxSerialLog = 8 << 20

// prepareSerialLog makes the log's directory, rotates a large log, and
// returns the log's size: where this run's output starts.
func prepareSerialLog(path string) (int64, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return 0, fmt.Errorf("serial log directory: %w", err)
	}
	st, err := os.Stat(path)
	if err != nil {
		return 0, nil
	}
	if st.Size() > maxSerialLog {
		if err := os.Rename(path, path+".1"); err != nil {
			return 0, fmt.Errorf("rotating the serial log: %w", err)
		}
		return 0, nil
	}
	return st.Size(), nil
}

// logTail returns up to n bytes from the end of the log, not before from.
func logTail(path string, from, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil {
		from = max(from, st.Size()-n)
	}
	f.Seek(from, io.SeekStart)
	b, _ := io.ReadAll(io.LimitReader(f, n))
	return string(b)
}
