package launch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/agenthub"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/vmm"
	"github.com/volantvm/volant/lib/workloadlog"
)

// startAgent starts the owner of the VM's agent channel (lib/agenthub):
// clients reach the guest through p.Agent.Socket, and the workload's output
// is kept in p.Agent.WorkloadLog. The returned function stops it.
func startAgent(ctx context.Context, p *Plan, log *slog.Logger) (stop func(), hub *agenthub.Hub, err error) {
	a := p.Agent
	if err := os.MkdirAll(filepath.Dir(a.WorkloadLog), 0o755); err != nil {
		return nil, nil, fmt.Errorf("workload log directory: %w", err)
	}
	var inputs *agentchan.Inputs
	if a.Inputs != "" {
		// Read once: the VM's inputs for every boot of this run.
		b, err := os.ReadFile(a.Inputs)
		if err != nil {
			return nil, nil, fmt.Errorf("reading the VM's inputs: %w", err)
		}
		inputs = &agentchan.Inputs{}
		if err := json.Unmarshal(b, inputs); err != nil {
			return nil, nil, apierr.Wrap(apierr.InvalidInput, err, "the VM's inputs file "+a.Inputs)
		}
	}
	logs, err := workloadlog.Open(a.WorkloadLog, workloadlog.Rotation{})
	if err != nil {
		return nil, nil, err
	}
	dial := func(ctx context.Context) (io.ReadWriteCloser, error) {
		if a.Transport == vmm.AgentVsock {
			return agentchan.DialVsock(ctx, a.VMMSocket, agentchan.VsockPort)
		}
		var d net.Dialer
		return d.DialContext(ctx, "unix", a.VMMSocket)
	}
	hub, err = agenthub.Start(ctx, agenthub.Options{VM: p.Name, Dial: dial, Socket: a.Socket, Logs: logs, Inputs: inputs, Log: log})
	if err != nil {
		logs.Close()
		return nil, nil, err
	}
	return func() {
		hub.Close()
		logs.Close()
	}, hub, nil
}

// DialGuest connects to the agent of the VM running in runDir, through the
// socket its supervisor serves (GuestSocket). A VM that does not run there
// is CONFLICT with details reason "not_running".
func DialGuest(ctx context.Context, runDir string) (*agentchan.Session, error) {
	sess, err := agentchan.Dial(ctx, GuestSocket(runDir))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, apierr.New(apierr.Conflict, "no VM runs in %s (or it runs without an agent channel)", runDir).
				With("run_dir", runDir).With("reason", "not_running")
		}
		return nil, apierr.Wrap(apierr.Unavailable, err, "connecting to the VM's agent socket")
	}
	return sess, nil
}
