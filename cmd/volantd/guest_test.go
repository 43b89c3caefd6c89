package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/testutil/kvmtest"
)

// TestGuestAccessThroughVolantd runs the whole host side of guest access:
// volantd (this test binary) starts a real volant-launch whose hypervisor
// is the fake Cloud Hypervisor; its vsock device speaks CH's hybrid vsock
// protocol and its "guest" runs kestrel's own agent-channel server, which
// runs commands on this host. Through volantd's API: a JSON exec, an
// interactive exec over the HTTP upgrade (stdin, exit status), files both
// ways (and a refused escape), the workload's logs per stream, the MCP
// tools through the official SDK client; then exec into the stopped VM is
// CONFLICT.
func TestGuestAccessThroughVolantd(t *testing.T) {
	kvmtest.Require(t)
	h := newFakeHost(t)
	tokb := make([]byte, 24)
	rand.Read(tokb)
	token := hex.EncodeToString(tokb)
	// The fake guest lives in the fake Cloud Hypervisor's process and
	// writes the host's files, which a jailed VMM cannot: no jail here.
	d := h.start(t, "--listen", "127.0.0.1:17070", "--insecure-tcp", "--token", token, "--insecure-vmm")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := d.c.InstallPlugin(ctx, h.manifest, client.InstallOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.c.CreateVM(ctx, api.CreateVMRequest{Name: "g1", Plugin: "app"}); err != nil {
		t.Fatal(err)
	}
	// volantd says the hypervisors run as root.
	if b, _ := os.ReadFile(d.log); !strings.Contains(string(b), "hypervisors run as root without a jail (--insecure-vmm)") {
		t.Fatalf("volantd's log does not warn of --insecure-vmm:\n%s", b)
	}

	// JSON exec (the fake guest answers once the supervisor connected).
	res, err := d.c.Exec(ctx, "g1", api.ExecRequest{Command: []string{"sh", "-c", "echo out; echo err >&2; exit 5"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 5 || res.Stdout != "out\n" || res.Stderr != "err\n" {
		t.Fatalf("exec: %+v", res)
	}
	// The supervisor, up since it answered, said so too.
	launchLog := filepath.Join(h.dir, "data", "vms", "g1", "launch.log")
	if b, _ := os.ReadFile(launchLog); !strings.Contains(string(b), "the VMM runs as root without a jail (--insecure-vmm)") {
		t.Fatalf("the supervisor's log %s does not warn of --insecure-vmm:\n%s", launchLog, b)
	}
	if _, err := d.c.Exec(ctx, "g1", api.ExecRequest{Command: []string{"no-such-command-anywhere"}}); !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("missing command: %v", err)
	}
	if _, err := d.c.Exec(ctx, "nope", api.ExecRequest{Command: []string{"true"}}); !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("exec into a VM that does not exist: %v", err)
	}

	// Interactive, over the upgrade: stdin in, both streams out.
	sess, err := d.c.GuestSession(ctx, "g1")
	if err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	exit, err := sess.Exec(ctx, agentchan.ExecRequest{Argv: []string{"sh", "-c", "tr a-z A-Z; echo done >&2; exit 7"}, Stdin: true},
		agentchan.ExecIO{Stdin: strings.NewReader("through volantd\n"), Stdout: &out, Stderr: &errb})
	if err != nil || exit.Code != 7 || out.String() != "THROUGH VOLANTD\n" || errb.String() != "done\n" {
		t.Fatalf("upgraded exec: %v %+v %q %q", err, exit, out.String(), errb.String())
	}
	// The proxy refuses what the exec route does not carry.
	if _, err := sess.Call(ctx, agentchan.ReadRequest{Op: agentchan.OpRead, Path: "/"}, &agentchan.ReadReply{}); !apierr.Is(err, apierr.PermissionDenied) {
		t.Fatalf("a read op on the exec route: %v", err)
	}
	sess.Close()

	// Files both ways.
	guestDir := t.TempDir() // the fake guest is this host
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	// Larger than a JSON body may be: the tar body is streamed.
	payload := bytes.Repeat([]byte("payload "), 3<<17)
	tw.WriteHeader(&tar.Header{Name: "in.txt", Typeflag: tar.TypeReg, Mode: 0o640, Size: int64(len(payload))})
	tw.Write(payload)
	tw.Close()
	cr, err := d.c.WriteFiles(ctx, "g1", guestDir, &tb)
	if err != nil || cr.Files != 1 || cr.Bytes != int64(len(payload)) {
		t.Fatalf("PUT files: %+v %v", cr, err)
	}
	if got, _ := os.ReadFile(filepath.Join(guestDir, "in.txt")); !bytes.Equal(got, payload) {
		t.Fatal("the file in the guest differs")
	}
	var back bytes.Buffer
	if err := d.c.ReadFiles(ctx, "g1", filepath.Join(guestDir, "in.txt"), &back); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(&back)
	hd, err := tr.Next()
	got, _ := io.ReadAll(tr)
	if err != nil || hd.Name != "in.txt" || !bytes.Equal(got, payload) {
		t.Fatalf("GET files: %v %+v %d bytes", err, hd, len(got))
	}
	if err := d.c.ReadFiles(ctx, "g1", "/no/such/file", io.Discard); !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("GET files of a missing path: %v", err)
	}
	tb.Reset()
	tw = tar.NewWriter(&tb)
	tw.WriteHeader(&tar.Header{Name: "../escaped", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1})
	tw.Write([]byte("x"))
	tw.Close()
	if _, err := d.c.WriteFiles(ctx, "g1", guestDir, &tb); !apierr.Is(err, apierr.InvalidInput) {
		t.Fatalf("PUT files with ../: %v", err)
	}

	// The workload's output, kept on the host, per stream.
	logs := func(stream string) string {
		r, err := d.c.VMLogs(ctx, "g1", api.LogOptions{Stream: stream})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		b, _ := io.ReadAll(r)
		return string(b)
	}
	if got := logs(api.LogWorkload); got != "fake guest workload: stdout\nfake guest workload: stderr\n" {
		t.Fatalf("workload logs: %q", got)
	}
	if got := logs(api.LogStderr); got != "fake guest workload: stderr\n" {
		t.Fatalf("stderr logs: %q", got)
	}
	// ?since= by the times the lines were read at: from the second
	// line's on, and after it.
	since := func(at time.Time) string {
		r, err := d.c.VMLogs(ctx, "g1", api.LogOptions{Stream: api.LogWorkload, Since: at})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		b, _ := io.ReadAll(r)
		return string(b)
	}
	var at [2]time.Time
	timed, err := d.c.VMLogs(ctx, "g1", api.LogOptions{Stream: api.LogWorkload, Timestamps: true})
	if err != nil {
		t.Fatal(err)
	}
	tb2, _ := io.ReadAll(timed)
	timed.Close()
	lines := strings.Split(strings.TrimSuffix(string(tb2), "\n"), "\n")
	for i := range at {
		ts, _, _ := strings.Cut(lines[min(i, len(lines)-1)], " ")
		if at[i], err = time.Parse(time.RFC3339Nano, ts); err != nil || len(lines) != 2 {
			t.Fatalf("timestamped workload logs: %q", tb2)
		}
	}
	want := "fake guest workload: stderr\n"
	if !at[0].Before(at[1]) {
		want = "fake guest workload: stdout\n" + want
	}
	if got := since(at[1]); got != want {
		t.Fatalf("workload logs since %s: %q, want %q", at[1].Format(time.RFC3339Nano), got, want)
	}
	last := at[1]
	if at[0].After(last) {
		last = at[0]
	}
	if got := since(last.Add(time.Nanosecond)); got != "" {
		t.Fatalf("workload logs since after the last line: %q", got)
	}
	if got := logs(api.LogConsole); !strings.Contains(got, "fake cloud-hypervisor guest: booted") {
		t.Fatalf("console logs: %q", got)
	}

	// The MCP tools, through the official SDK, inside the daemon's namespace.
	dir := mcpClientDir(t)
	cmd := h.ns.Cmd("node", filepath.Join(dir, "guest-client.mjs"))
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "MCP_URL=http://127.0.0.1:17070/mcp", "MCP_TOKEN="+token, "MCP_VM=g1")
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
	t.Logf("MCP client: %s", strings.TrimSpace(string(mcpOut)))

	// A stopped VM: exec is CONFLICT, its logs remain.
	if _, err := d.c.StopVM(ctx, "g1"); err != nil {
		t.Fatal(err)
	}
	_, err = d.c.Exec(ctx, "g1", api.ExecRequest{Command: []string{"true"}})
	if !apierr.Is(err, apierr.Conflict) || apierr.From(err).Details["reason"] != "not_running" {
		t.Fatalf("exec into a stopped VM: %v", err)
	}
	if _, err := d.c.GuestSession(ctx, "g1"); !apierr.Is(err, apierr.Conflict) {
		t.Fatalf("upgrade into a stopped VM: %v", err)
	}
	if got := logs(api.LogStdout); got != "fake guest workload: stdout\n" {
		t.Fatalf("stdout logs after stop: %q", got)
	}
}
