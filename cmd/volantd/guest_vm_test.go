package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/testutil/wait"
)

// The talker's workload writes one line to each stream, then serves
// /www as webPlugin's does (its health check).
const (
	talkerStdout = "talker: to stdout"
	talkerStderr = "talker: to stderr"
)

// TestVMGuestAccess is guest access through volantd into a real guest
// (QEMU TCG, Debian's kernel, kestrel as PID 1, busybox; the plugin built
// by fledge) in a test-made network namespace: a JSON exec with its exit
// code and both streams; the MCP exec_vm and vm_logs tools through the
// official SDK client (tests/mcp/guest-client.mjs); then the guest
// reboots while two commands run, one a JSON exec and one over the
// upgraded stream: both end with UNAVAILABLE rather than hanging, and an
// exec into the VM afterwards is CONFLICT (not_running).
func TestVMGuestAccess(t *testing.T) {
	h := newQEMUHost(t)
	k, kestrel := h.k, h.kestrel
	mcpDir := mcpClientDir(t)
	tokb := make([]byte, 24)
	rand.Read(tokb)
	token := hex.EncodeToString(tokb)
	d := h.daemon(t, "--listen", "127.0.0.1:17071", "--insecure-tcp", "--token", token)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	entry := `["/bin/sh", "-c", "echo '` + talkerStdout + `'; echo '` + talkerStderr + `' >&2; exec /bin/busybox httpd -f -p 80 -h /www"]`
	m := webPluginRunning(t, filepath.Join(h.dir, "data", "plugins", "web"), k.ModulesDir, kestrel, 500, entry)
	if _, err := d.c.InstallPlugin(ctx, m, client.InstallOptions{}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if _, err := d.c.CreateVM(ctx, api.CreateVMRequest{Name: "g1", Plugin: "web"}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.c.WaitVM(ctx, "g1", api.VMRunning, 180*time.Second); err != nil {
		t.Fatalf("g1 never ran: %v", err)
	}
	t.Logf("g1 running %s after create", time.Since(t0).Round(time.Millisecond))

	// A JSON exec: it ran in the guest (kestrel is its PID 1, /init).
	res, err := d.c.Exec(ctx, "g1", api.ExecRequest{Command: []string{"sh", "-c", "cat /proc/1/comm; echo err >&2; exit 4"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 4 || res.Stdout != "init\n" || res.Stderr != "err\n" {
		t.Fatalf("exec: %+v", res)
	}

	// The MCP tools, through the official SDK, inside the daemon's
	// namespace. The workload's lines reach the host's log shortly after
	// boot: wait for them, so the client's checks are about MCP.
	if err := wait.For(60*time.Second, func() bool {
		return strings.Contains(vmLogs(ctx, t, d.c, "g1", api.LogWorkload), talkerStderr)
	}); err != nil {
		t.Fatalf("the workload's output never reached the host: %q", vmLogs(ctx, t, d.c, "g1", api.LogWorkload))
	}
	cmd := h.ns.Cmd("node", filepath.Join(mcpDir, "guest-client.mjs"))
	cmd.Dir = mcpDir
	cmd.Env = append(os.Environ(), "MCP_URL=http://127.0.0.1:17071/mcp", "MCP_TOKEN="+token, "MCP_VM=g1",
		"MCP_LOG_STDOUT="+talkerStdout, "MCP_LOG_STDERR="+talkerStderr, "MCP_LOG_CONSOLE=kestrel: agent ready",
		"MCP_TIMEOUT_MS=5000")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	mcpOut, err := cmd.Output()
	var sum struct {
		OK     bool `json:"ok"`
		Checks int  `json:"checks"`
	}
	if err != nil || json.Unmarshal(mcpOut, &sum) != nil || !sum.OK || sum.Checks < 10 {
		t.Fatalf("MCP client: %v\nstdout: %s\nstderr: %s", err, mcpOut, stderr.String())
	}
	t.Logf("MCP client against the real guest: %s", strings.TrimSpace(string(mcpOut)))

	// The guest reboots while two commands run.
	jsonDone := make(chan error, 1)
	go func() {
		_, err := d.c.Exec(ctx, "g1", api.ExecRequest{Command: []string{"sleep", "1001"}})
		jsonDone <- err
	}()
	sess, err := d.c.GuestSession(ctx, "g1")
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	upDone := make(chan error, 1)
	go func() {
		_, err := sess.Exec(ctx, agentchan.ExecRequest{Argv: []string{"sleep", "1002"}}, agentchan.ExecIO{})
		upDone <- err
	}()
	var sleeps string
	if err := wait.For(60*time.Second, func() bool {
		r, err := d.c.Exec(ctx, "g1", api.ExecRequest{Command: []string{"pidof", "sleep"}})
		if err == nil {
			sleeps = r.Stdout
		}
		return len(strings.Fields(sleeps)) == 2
	}); err != nil {
		t.Fatalf("the two commands never ran together in the guest: pidof sleep said %q", sleeps)
	}
	// reboot(2) does not return: that exec ends without a status too.
	if _, err := d.c.Exec(ctx, "g1", api.ExecRequest{Command: []string{"reboot", "-f"}}); !apierr.Is(err, apierr.Unavailable) {
		t.Errorf("exec of reboot -f: %v, want UNAVAILABLE", err)
	}
	for what, c := range map[string]chan error{"JSON exec": jsonDone, "upgraded exec": upDone} {
		select {
		case err := <-c:
			if !apierr.Is(err, apierr.Unavailable) {
				t.Errorf("%s through a reboot: %v, want UNAVAILABLE", what, err)
			} else {
				t.Logf("%s through a reboot: %v", what, err)
			}
		case <-time.After(90 * time.Second):
			t.Fatalf("the %s did not end when the guest rebooted", what)
		}
	}
	// The VMM ended with the guest (it runs with -no-reboot): the VM is
	// no longer running, and exec says so.
	if err := wait.For(60*time.Second, func() bool {
		v, err := d.c.VM(ctx, "g1")
		return err == nil && v.State != api.VMRunning
	}); err != nil {
		v, _ := d.c.VM(ctx, "g1")
		t.Fatalf("g1 still running after its guest rebooted: %+v", v)
	}
	_, err = d.c.Exec(ctx, "g1", api.ExecRequest{Command: []string{"true"}})
	if !apierr.Is(err, apierr.Conflict) || apierr.From(err).Details["reason"] != "not_running" {
		t.Fatalf("exec after the reboot: %v, want CONFLICT not_running", err)
	}
}

// vmLogs reads a VM's log of one stream to its end.
func vmLogs(ctx context.Context, t *testing.T, c *client.Client, name, stream string) string {
	t.Helper()
	r, err := c.VMLogs(ctx, name, api.LogOptions{Stream: stream})
	if err != nil {
		t.Fatal(err)
	}
	return readAll(r)
}
