package controller

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/layout"
	"github.com/volantvm/volant/lib/workloadlog"
)

// Exec limits.
const (
	DefaultExecTimeout = time.Minute
	MaxExecTimeout     = time.Hour
	MaxExecOutput      = 16 << 20
)

// GuestSocket is where the agent of a running VM is reached (its
// supervisor's guest socket, lib/agentchan's stream layout). A VM that is
// not running is CONFLICT with details reason "not_running".
func (c *Controller) GuestSocket(ctx context.Context, name string) (string, error) {
	v, err := c.VM(ctx, name)
	if err != nil {
		return "", err
	}
	notRunning := func() error {
		return apierr.New(apierr.Conflict, "VM %s is %s: commands and copies need it running", name, v.State).
			With("vm", name).With("state", string(v.State)).With("reason", "not_running")
	}
	if v.State != api.VMStarting && v.State != api.VMRunning {
		return "", notRunning()
	}
	info, err := c.cfg.Runtime.Inspect(ctx, name)
	if err != nil || !info.Live() {
		return "", notRunning()
	}
	return launch.GuestSocket(info.RunDir), nil
}

// DialGuest connects to the agent of a running VM (see GuestSocket).
func (c *Controller) DialGuest(ctx context.Context, name string) (*agentchan.Session, error) {
	sock, err := c.GuestSocket(ctx, name)
	if err != nil {
		return nil, err
	}
	sess, err := agentchan.Dial(ctx, sock)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, apierr.New(apierr.Unavailable, "VM %s runs without an agent channel (started by an older Volant?)", name).With("vm", name)
		}
		return nil, apierr.Wrap(apierr.Unavailable, err, "connecting to the agent of VM "+name)
	}
	return sess, nil
}

// Exec runs a command in a running VM to its end and returns its output
// (non-interactive: the REST route without an upgrade, and MCP's exec_vm).
func (c *Controller) Exec(ctx context.Context, name string, req api.ExecRequest) (*api.ExecResult, error) {
	if len(req.Command) == 0 || req.Command[0] == "" {
		return nil, apierr.New(apierr.InvalidInput, "exec: no command given").With("field", "command")
	}
	timeout := DefaultExecTimeout
	if req.TimeoutMS < 0 || time.Duration(req.TimeoutMS)*time.Millisecond > MaxExecTimeout {
		return nil, apierr.New(apierr.InvalidInput, "timeout_ms must be 0-%d", MaxExecTimeout.Milliseconds()).With("field", "timeout_ms")
	}
	if req.TimeoutMS > 0 {
		timeout = time.Duration(req.TimeoutMS) * time.Millisecond
	}
	if req.MaxOutput < 0 || req.MaxOutput > MaxExecOutput {
		return nil, apierr.New(apierr.InvalidInput, "max_output must be 0-%d", MaxExecOutput).With("field", "max_output")
	}
	sess, err := c.DialGuest(ctx, name)
	if err != nil {
		return nil, err
	}
	defer sess.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var stdin []byte
	if req.Stdin != nil {
		stdin = []byte(*req.Stdin)
	}
	return sess.Run(ctx, agentchan.ExecRequest{Argv: req.Command, Env: req.Env, Dir: req.Workdir, User: req.User}, stdin, req.MaxOutput)
}

// WorkloadLog is where a VM's workload output is kept.
func (c *Controller) WorkloadLog(name string) string {
	return filepath.Join(c.vmDir(name), layout.WorkloadLogName)
}

// WorkloadLogs calls fn with a VM's workload output as o selects; with
// Follow it goes on until ctx ends or the VM is deleted.
func (c *Controller) WorkloadLogs(ctx context.Context, name string, o api.LogOptions, fn func(workloadlog.Entry) error) error {
	if _, err := c.readVM(ctx, name); err != nil {
		return err
	}
	if o.Tail < 0 {
		return apierr.New(apierr.InvalidInput, "tail must not be negative").With("field", "tail")
	}
	ro := workloadlog.ReadOptions{Since: o.Since, Tail: o.Tail, Follow: o.Follow}
	switch o.Stream {
	case api.LogWorkload, "":
	case api.LogStdout, api.LogStderr:
		ro.Stream = o.Stream
	default:
		return apierr.New(apierr.InvalidInput, "stream %q is not one of stdout, stderr, workload", o.Stream).With("field", "stream")
	}
	if o.Follow {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		go func() {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					if _, err := c.readVM(ctx, name); apierr.Is(err, apierr.NotFound) {
						cancel()
						return
					}
				}
			}
		}()
	}
	return workloadlog.Read(ctx, c.WorkloadLog(name), ro, fn)
}

// WorkloadLogText writes a VM's workload output to w as text (see
// workloadlog.Printer), flushing after each entry when following.
func (c *Controller) WorkloadLogText(ctx context.Context, name string, o api.LogOptions, w io.Writer, flush func()) error {
	if flush == nil {
		flush = func() {}
	}
	p := workloadlog.Printer(w, o.Timestamps)
	return c.WorkloadLogs(ctx, name, o, func(e workloadlog.Entry) error {
		if err := p(e); err != nil {
			return err
		}
		if o.Follow {
			flush()
		}
		return nil
	})
}
