package runner

import (
	"context"
	"fmt"
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
	"github.com/volantvm/volant/lib/layout"
)

// Detached starts `volant-launch run` as a child in its own session: it
// survives its parent (also a kill -9), its stdout and stderr go to the
// VM's launch.log, and the parent reaps it while it lives.
type Detached struct {
	// Launcher is the volant-launch binary (FindLauncher).
	Launcher string
	// Options are passed to it through its environment (Environ); their
	// StateDir holds vms/<name>/launch.log.
	Options launch.Options
	// ReadyTimeout is passed as --ready-timeout (default 30 s).
	ReadyTimeout time.Duration
	Logger       *slog.Logger

	mu   sync.Mutex
	proc map[string]*exec.Cmd
}

// LaunchMarker starts each run's section of a launch log.
const LaunchMarker = "=== volantd: starting volant-launch run"

// Name implements Starter.
func (d *Detached) Name() string { return "detached" }

// Start implements Starter.
func (d *Detached) Start(ctx context.Context, name, specPath string) (<-chan struct{}, error) {
	if d.Launcher == "" {
		return nil, apierr.New(apierr.Unavailable, "no volant-launch binary configured")
	}
	spec, err := os.Open(specPath)
	if err != nil {
		return nil, fmt.Errorf("opening the spec of %s: %w", name, err)
	}
	defer spec.Close()
	logPath := LaunchLogPath(d.Options, name)
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, err
	}
	// Root's and its group's only, as the serial log: the VMM's command
	// line and errors are the VM's business (a log made before was 0644).
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", logPath, err)
	}
	defer logf.Close()
	_ = logf.Chmod(0o640)
	fmt.Fprintf(logf, "%s %s at %s\n", LaunchMarker, name, time.Now().UTC().Format(time.RFC3339Nano))
	rt := d.ReadyTimeout
	if rt <= 0 {
		rt = 30 * time.Second
	}
	cmd := exec.Command(d.Launcher, "run", "--name", name, "--ready-timeout", rt.String())
	cmd.Stdin, cmd.Stdout, cmd.Stderr = spec, logf, logf
	cmd.Env = Environ(d.Options)
	cmd.Dir = "/"
	// Its own session: no signal aimed at the parent's process group or
	// terminal reaches it, and it is not killed with the parent.
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

// Stop implements Starter: detached runs are stopped through the run dir.
func (d *Detached) Stop(context.Context, string) (bool, error) { return false, nil }

// FindLauncher returns the volant-launch binary: explicit when given, else
// the one next to the running executable, else the one on PATH
// (layout.FindBinary).
func FindLauncher(explicit string) (string, error) {
	p, err := layout.FindBinary("volant-launch", explicit)
	switch {
	case err == nil:
		return p, nil
	case explicit != "":
		return "", apierr.Wrap(apierr.Unavailable, err, "volant-launch binary "+strconv.Quote(explicit))
	}
	return "", apierr.New(apierr.Unavailable, "volant-launch not found next to volantd nor on PATH").
		With("hint", "install it beside volantd or pass --launcher")
}
