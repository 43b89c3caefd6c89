package launch

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/vmm"
	"github.com/volantvm/volant/lib/workloadlog"
)

// TestRunAgentChannelCloudHypervisor runs a VM on the fake Cloud
// Hypervisor, whose vsock device speaks CH's hybrid vsock protocol on the
// run directory's agent socket and whose guest runs kestrel's agent-channel
// server: Run connects to it (CONNECT 1024), clients exec through the
// run directory's guest socket, and the workload's output lands in the
// VM's workload log.
func TestRunAgentChannelCloudHypervisor(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	p, err := Prepare(ctx, f.spec(), f.opts)
	if err != nil {
		t.Fatal(err)
	}
	if p.Agent == nil || p.Agent.Transport != vmm.AgentVsock || !strings.Contains(strings.Join(p.Argv, " "), "--vsock cid=3,socket="+p.Agent.VMMSocket) {
		t.Fatalf("plan's agent %+v, argv %q", p.Agent, p.Argv)
	}
	wait := startRun(t, ctx, p, f.opts)
	waitRunning(t, p.RunDir, f.opts)

	sess, err := DialGuest(ctx, p.RunDir)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	ectx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	res, err := sess.Run(ectx, agentchan.ExecRequest{Argv: []string{"sh", "-c", "echo via vsock; echo to stderr >&2; exit 4"}}, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if res.Stdout != "via vsock\n" || res.Stderr != "to stderr\n" || res.ExitCode != 4 {
		t.Fatalf("exec through the supervisor: %+v", res)
	}

	// The workload's output reached the host's log.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var got []string
		workloadlog.Read(ctx, p.Agent.WorkloadLog, workloadlog.ReadOptions{}, func(e workloadlog.Entry) error {
			got = append(got, e.Stream+":"+string(e.Data()))
			return nil
		})
		if strings.Join(got, "") == "stdout:fake guest workload: stdout\nstderr:fake guest workload: stderr\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("workload log %q", got)
		}
		time.Sleep(50 * time.Millisecond)
	}

	if _, err := Stop(ctx, p.RunDir, 10*time.Second, f.opts); err != nil {
		t.Fatal(err)
	}
	if _, err := wait(); err != nil {
		t.Fatal(err)
	}
	// The session ended with the VM; a new one finds no VM.
	select {
	case <-sess.Done():
	case <-time.After(10 * time.Second):
		t.Error("the client session outlived the VM")
	}
	if _, err := DialGuest(ctx, p.RunDir); !apierr.Is(err, apierr.Conflict) || apierr.From(err).Details["reason"] != "not_running" {
		t.Fatalf("exec into a stopped VM: %v, want CONFLICT not_running", err)
	}
	// The log outlives the run.
	if _, err := os.Stat(p.Agent.WorkloadLog); err != nil {
		t.Fatal(err)
	}
}
