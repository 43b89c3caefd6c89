package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/cli/clitest"
)

// TestPluginCommands: every plugins command against volantd, in table,
// JSON and quiet form, with the server's errors and their exit status.
func TestPluginCommands(t *testing.T) {
	d := startDaemon(t)
	tr := &transcript{d: d}
	caddy := d.manifest("caddy", "2.8.4", `,"labels":{"team":"web"}`)

	tr.all("plugins", "list")
	tr.run(0, "plugins", "install", "--manifest", caddy)
	tr.run(1, "plugins", "install", "--manifest", caddy) // CONFLICT: installed already
	tr.run(0, "-o", "json", "plugins", "install", "--manifest", caddy, "--replace")

	bad := filepath.Join(d.dir, "bad.json")
	os.WriteFile(bad, []byte(`{"name":"Bad Name","version":"1","workload":{"entrypint":["/x"]}}`), 0o644)
	tr.run(1, "plugins", "install", "--manifest", bad)
	tr.run(1, "-o", "json", "plugins", "install", "-m", bad)
	notJSON := filepath.Join(d.dir, "notjson.json")
	os.WriteFile(notJSON, []byte("name: caddy\n"), 0o644)
	tr.run(1, "plugins", "install", "--manifest", notJSON)
	tr.run(1, "plugins", "install", "--manifest", filepath.Join(d.dir, "missing.json"))
	// The manifest from stdin.
	data, _ := os.ReadFile(d.manifest("nginx", "1.27", ""))
	r := runVolar(t, string(data), d.env(), "plugins", "install", "--manifest", "-")
	if r.Code != 0 || r.Stdout != "Plugin nginx 1.27 installed\n" {
		t.Fatalf("install from stdin: %s", r)
	}

	tr.all("plugins", "list")
	tr.all("plugins", "show", "caddy")
	tr.run(1, "plugins", "show", "nope")
	tr.run(0, "plugins", "disable", "caddy")
	tr.run(1, "vms", "create", "web1", "--plugin", "caddy") // disabled
	tr.run(0, "-o", "json", "plugins", "enable", "caddy")
	tr.run(0, "-q", "plugins", "enable", "caddy")
	tr.run(0, "vms", "create", "web1", "--plugin", "caddy")
	tr.run(1, "plugins", "remove", "caddy") // in use
	tr.run(0, "vms", "delete", "web1")
	tr.run(0, "plugins", "remove", "caddy")
	tr.run(0, "plugins", "rm", "nginx")
	tr.all("plugins", "list")
	clitest.Golden(t, "session-plugins", tr.b.String())
}

// TestVMCommands: create (the spec's sentence), --wait with progress,
// list/show in every form, stop/start/restart/delete, wait, logs.
func TestVMCommands(t *testing.T) {
	d := startDaemon(t)
	tr := &transcript{d: d}
	tr.run(0, "plugins", "install", "--manifest", d.manifest("nginx", "1.27", ""))

	tr.all("vms", "list")
	r := tr.run(0, "vms", "create", "nginx-demo", "--plugin", "nginx", "--cpu", "2", "--memory", "1024")
	if r.Stdout != "VM nginx-demo created with IP 192.168.127.100\n" {
		t.Fatalf("the spec's sentence: %q", r.Stdout)
	}
	tr.run(1, "vms", "create", "nginx-demo", "--plugin", "nginx") // CONFLICT: exists
	tr.run(1, "vms", "create", "web9", "--plugin", "nope")        // NOT_FOUND plugin
	d.healthy("192.168.127.100", "nginx-demo")
	d.waitVM("nginx-demo", api.VMRunning)

	// --wait: progress on stderr, the running VM at the end.
	d.healthy("192.168.127.101", "web2")
	r = tr.run(0, "vms", "create", "web2", "--plugin", "nginx", "--wait", "--timeout", "20s")
	if !strings.Contains(r.Stderr, "Waiting for VM web2 to be running...") || !strings.HasSuffix(r.Stdout, "VM web2 is running\n") {
		t.Fatalf("create --wait: %s", r)
	}
	d.healthy("192.168.127.102", "web3")
	r = tr.run(0, "-o", "json", "vms", "create", "web3", "--plugin", "nginx", "--wait")
	var vm api.VM
	if err := json.Unmarshal([]byte(r.Stdout), &vm); err != nil || vm.State != api.VMRunning || vm.IP != "192.168.127.102" {
		t.Fatalf("create --wait -o json: %v %s", err, r)
	}
	// A guest that never answers: --wait gives up with the server's TIMEOUT.
	tr.run(1, "vms", "create", "mute", "--plugin", "nginx", "--wait", "--timeout", "1s")

	tr.all("vms", "list")
	tr.all("vms", "list", "--state", "starting")
	tr.all("vms", "show", "nginx-demo")
	tr.run(1, "vms", "show", "nope")
	tr.run(0, "vms", "wait", "nginx-demo", "--state", "running")
	tr.run(1, "vms", "wait", "nope")

	tr.run(0, "vms", "stop", "nginx-demo")
	tr.run(0, "vms", "stop", "nginx-demo") // stopping a stopped VM succeeds
	tr.run(0, "-q", "vms", "wait", "nginx-demo", "--state", "stopped")
	tr.run(0, "vms", "start", "nginx-demo", "--wait")
	tr.run(0, "-o", "json", "vms", "restart", "nginx-demo", "--wait")
	tr.all("vms", "pause", "nginx-demo") // pausing a paused VM succeeds
	tr.run(0, "vms", "list", "--state", "paused")
	tr.run(0, "vms", "resume", "nginx-demo")
	tr.run(1, "vms", "pause", "nope")

	d.serialLog("nginx-demo", "Linux version 6.1.0\nkestrel: starting nginx\nnginx: ready\n")
	tr.run(0, "vms", "logs", "--console", "nginx-demo")
	tr.run(0, "vms", "logs", "--console", "nginx-demo", "--tail", "1")
	tr.run(0, "-o", "json", "vms", "logs", "--console", "nginx-demo", "--tail", "2") // logs are text in every format
	tr.run(1, "vms", "logs", "nope")

	tr.run(0, "vms", "delete", "mute")
	tr.run(0, "-o", "json", "vms", "rm", "web3")
	tr.run(0, "-q", "vms", "delete", "web2")
	tr.run(1, "vms", "show", "web2")
	tr.all("vms", "list")
	clitest.Golden(t, "session-vms", tr.b.String())
}

// TestDeploymentCommands: create (flags and the spec's --config file),
// scale up and down, list/show, delete.
func TestDeploymentCommands(t *testing.T) {
	d := startDaemon(t)
	tr := &transcript{d: d, maskIPs: true}
	tr.run(0, "plugins", "install", "--manifest", d.manifest("caddy", "2.8.4", ""))
	for i := 100; i < 110; i++ {
		d.healthy(fmt.Sprintf("192.168.127.%d", i), "")
	}

	tr.all("deployments", "list")
	tr.run(0, "deployments", "create", "web", "--plugin", "caddy", "--replicas", "2")
	d.waitDeployment("web", 2)
	tr.all("deployments", "list")
	tr.all("deployments", "show", "web")
	tr.run(0, "vms", "list", "--deployment", "web")
	tr.run(1, "deployments", "create", "web", "--plugin", "caddy", "--replicas", "1") // CONFLICT

	tr.run(0, "deployments", "scale", "web", "--replicas", "3")
	d.waitDeployment("web", 3)
	tr.run(0, "-q", "vms", "list", "--deployment", "web")
	tr.run(0, "-o", "json", "deployments", "scale", "web", "--replicas", "1")
	d.waitDeployment("web", 1)
	tr.run(0, "-q", "vms", "list", "--deployment", "web")
	tr.run(1, "deployments", "scale", "nope", "--replicas", "1")

	// A second version beside the first; a rolling update to it, undone.
	tr.run(0, "plugins", "install", "--manifest", d.manifest("caddy", "2.9.0", ""))
	tr.run(0, "plugins", "show", "caddy")
	tr.run(1, "deployments", "rollout", "status", "web") // NOT_FOUND: never updated
	tr.run(0, "deployments", "update", "web", "--plugin", "caddy@2.9.0", "--max-surge", "1", "--deadline", "2m")
	d.waitRollout("web", 1, api.RolloutComplete)
	tr.run(0, "deployments", "rollout", "status", "web")
	tr.run(0, "deployments", "update", "web", "--plugin", "caddy") // the default version: runs it already
	tr.run(0, "-q", "deployments", "rollout", "undo", "web")
	d.waitRollout("web", 2, api.RolloutComplete)
	tr.all("deployments", "rollout", "history", "web")
	tr.run(0, "deployments", "show", "web")
	tr.run(1, "deployments", "update", "web", "--plugin", "caddy@9")                                             // NOT_FOUND
	tr.run(1, "deployments", "update", "web", "--plugin", "caddy", "--max-surge", "0", "--max-unavailable", "0") // INVALID_INPUT
	tr.run(1, "plugins", "remove", "caddy@2.8.4")                                                                // in use

	// The spec's service-config.json: plugin and resources from the file,
	// replicas from the flag.
	cfg := filepath.Join(d.dir, "service-config.json")
	os.WriteFile(cfg, []byte(`{"plugin":"caddy","resources":{"cpu_cores":2,"memory_mb":256}}`), 0o644)
	tr.run(0, "deployments", "create", "my-service", "--config", cfg, "--replicas", "1")
	d.waitDeployment("my-service", 1)
	tr.run(0, "deployments", "show", "my-service")
	typo := filepath.Join(d.dir, "typo.json")
	os.WriteFile(typo, []byte(`{"plugin":"caddy","replica":3}`), 0o644)
	tr.run(1, "deployments", "create", "typo", "--config", typo)

	tr.run(0, "deployments", "delete", "my-service")
	tr.run(0, "-o", "json", "deployments", "rm", "web")
	tr.run(1, "deployments", "show", "web")
	tr.all("deployments", "list")
	clitest.Golden(t, "session-deployments", tr.b.String())
}

// TestEventsSinceAndResume: `events --since` replays after an ID, follows
// new events live, and survives the daemon going away and coming back
// without losing or repeating an event.
func TestEventsSinceAndResume(t *testing.T) {
	d := startDaemon(t)
	tr := &transcript{d: d}
	tr.run(0, "plugins", "install", "--manifest", d.manifest("caddy", "2.8.4", ""))
	tr.run(0, "plugins", "disable", "caddy")
	tr.run(0, "plugins", "enable", "caddy")

	// The whole log, as table and JSON lines.
	s := d.start(d.env(), "events", "--since", "0", "--type", "plugin.*")
	s.waitOutput(t, "3 plugin events", func(o string) bool { return strings.Count(o, "\n") >= 3 })
	r := s.end(t)
	if r.Code != 0 {
		t.Fatalf("events ended by Ctrl-C: %s", r)
	}
	tr.record([]string{"events", "--since", "0", "--type", "plugin.*"}, r)
	s = d.start(d.env(), "-o", "json", "events", "--since", "0", "--type", "plugin.installed,plugin.enabled")
	s.waitOutput(t, "2 events", func(o string) bool { return strings.Count(o, "\n") >= 2 })
	r = s.end(t)
	tr.record([]string{"-o", "json", "events", "--since", "0", "--type", "plugin.installed,plugin.enabled"}, r)
	var evs []api.Event
	for _, line := range strings.Split(strings.TrimSpace(r.Stdout), "\n") {
		var ev api.Event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("events -o json line %q: %v", line, err)
		}
		evs = append(evs, ev)
	}
	if len(evs) != 2 || evs[0].Type != api.EventPluginInstalled || evs[1].Type != api.EventPluginEnabled {
		t.Fatalf("events: %+v", evs)
	}

	// --since ID: only what came after it.
	s = d.start(d.env(), "-q", "events", "--since", strconv.FormatInt(evs[0].ID, 10), "--type", "plugin.*")
	out := s.waitOutput(t, "2 events", func(o string) bool { return strings.Count(o, "\n") >= 2 })
	time.Sleep(200 * time.Millisecond) // nothing else may come
	s.end(t)
	if out != "caddy\ncaddy\n" || s.out.String() != out {
		t.Fatalf("--since %d gave %q", evs[0].ID, s.out.String())
	}

	// Without --since: only events after the stream connected, none of
	// the log before it.
	before, err := d.c.Health(d.ctx)
	if err != nil {
		t.Fatal(err)
	}
	s = d.start(d.env(), "-o", "json", "events")
	// Each round changes the plugin (disabling a disabled plugin records
	// nothing), so a round after the stream connected shows.
	enabled := true
	for i := 0; !strings.Contains(s.out.String(), "\n"); i++ {
		if i == 100 {
			t.Fatal("events shows no new event")
		}
		var err error
		if enabled {
			_, err = d.c.DisablePlugin(d.ctx, "caddy")
		} else {
			_, err = d.c.EnablePlugin(d.ctx, "caddy")
		}
		if err != nil {
			t.Fatal(err)
		}
		enabled = !enabled
		time.Sleep(100 * time.Millisecond)
	}
	s.end(t)
	for _, line := range strings.Split(strings.TrimSpace(s.out.String()), "\n") {
		var ev api.Event
		if err := json.Unmarshal([]byte(line), &ev); err != nil || ev.ID <= before.LastEventID {
			t.Fatalf("events without --since printed an old event (log ended at %d): %s %v", before.LastEventID, line, err)
		}
	}
	if !enabled {
		if _, err := d.c.EnablePlugin(d.ctx, "caddy"); err != nil {
			t.Fatal(err)
		}
	}

	// Follow live events, through a daemon restart.
	// From the current end of the log on (what "only new events" means,
	// without racing the stream's connection).
	h, err := d.c.Health(d.ctx)
	if err != nil {
		t.Fatal(err)
	}
	s = d.start(d.env(), "-o", "json", "events", "--since", strconv.FormatInt(h.LastEventID, 10), "--type", "vm.created,vm.deleted")
	var want []string
	create := func(name string) {
		t.Helper()
		if _, err := d.c.CreateVM(d.ctx, api.CreateVMRequest{Name: name, Plugin: "caddy"}); err != nil {
			t.Fatal(err)
		}
		want = append(want, "vm.created "+name)
	}
	create("ev1")
	s.waitOutput(t, "ev1 created", func(o string) bool { return strings.Contains(o, `"ev1"`) })
	d.stopListening() // the daemon goes away; events keep being recorded
	c := d.ctl
	if _, err := c.DeleteVM(d.ctx, "ev1"); err != nil {
		t.Fatal(err)
	}
	want = append(want, "vm.deleted ev1")
	if _, err := c.CreateVM(d.ctx, api.CreateVMRequest{Name: "ev2", Plugin: "caddy"}); err != nil {
		t.Fatal(err)
	}
	want = append(want, "vm.created ev2")
	d.listen() // back: volar resumes after the last event it printed
	create("ev3")
	out = s.waitOutput(t, "ev3 created", func(o string) bool { return strings.Contains(o, `"ev3"`) })
	r = s.end(t)
	if r.Code != 0 {
		t.Fatalf("events: %s", r)
	}
	var got []string
	var last int64
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var ev api.Event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		if ev.ID <= last {
			t.Fatalf("event IDs not increasing: %d after %d", ev.ID, last)
		}
		last = ev.ID
		got = append(got, ev.Type+" "+ev.ResourceID)
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("events across the restart:\n got %q\nwant %q", got, want)
	}
	clitest.Golden(t, "session-events", tr.b.String())
}

// TestLogsFollow: `vms logs --follow` prints what the guest writes while it
// writes it, ends with 0 on Ctrl-C, and ends by itself when the VM is
// deleted.
func TestLogsFollow(t *testing.T) {
	d := startDaemon(t)
	if r := d.volar("plugins", "install", "--manifest", d.manifest("caddy", "2.8.4", "")); r.Code != 0 {
		t.Fatal(r)
	}
	if r := d.volar("vms", "create", "web1", "--plugin", "caddy"); r.Code != 0 {
		t.Fatal(r)
	}
	d.serialLog("web1", "boot line 1\nboot line 2\n")
	s := d.start(d.env(), "vms", "logs", "--console", "web1", "--follow")
	s.waitOutput(t, "the log so far", func(o string) bool { return o == "boot line 1\nboot line 2\n" })
	for i := 3; i <= 5; i++ {
		line := fmt.Sprintf("guest line %d\n", i)
		d.serialLog("web1", line)
		s.waitOutput(t, line, func(o string) bool { return strings.HasSuffix(o, line) })
	}
	r := s.end(t)
	if r.Code != 0 || r.Stderr != "" {
		t.Fatalf("logs --follow interrupted: %s", r)
	}

	// --tail with --follow, and the end of the VM ends the stream.
	s = d.start(d.env(), "vms", "logs", "--console", "web1", "-f", "--tail", "1")
	s.waitOutput(t, "the last line", func(o string) bool { return o == "guest line 5\n" })
	d.serialLog("web1", "last words\n")
	s.waitOutput(t, "a new line", func(o string) bool { return strings.HasSuffix(o, "last words\n") })
	if _, err := d.c.DeleteVM(d.ctx, "web1"); err != nil {
		t.Fatal(err)
	}
	r = s.ended(t)
	if r.Code != 0 || r.Stdout != "guest line 5\nlast words\n" {
		t.Fatalf("logs --follow after delete: %s", r)
	}
}

// TestTokenOverTCP: volantd on TCP requires the bearer token; volar sends
// VOLANT_TOKEN or --token, and a missing one is the server's UNAUTHORIZED.
func TestTokenOverTCP(t *testing.T) {
	d := startDaemon(t)
	url := d.listenTCP()
	tr := &transcript{d: d}
	mask := func(r result) result {
		r.Stdout = strings.ReplaceAll(r.Stdout, url, "$URL")
		r.Stderr = strings.ReplaceAll(r.Stderr, url, "$URL")
		return r
	}
	for _, c := range []struct {
		env  map[string]string
		args []string
		code int
	}{
		{map[string]string{"VOLANT_HOST": url}, []string{"vms", "list"}, 1},
		{map[string]string{"VOLANT_HOST": url, "VOLANT_TOKEN": "wrong"}, []string{"vms", "list"}, 1},
		{map[string]string{"VOLANT_HOST": url, "VOLANT_TOKEN": testToken}, []string{"vms", "list"}, 0},
		{nil, []string{"--host", url, "--token", testToken, "-o", "json", "plugins", "list"}, 0},
		{map[string]string{"VOLANT_HOST": url}, []string{"events"}, 1},
	} {
		r := runVolar(t, "", c.env, c.args...)
		if r.Code != c.code {
			t.Fatalf("%v %v: %s", c.env, c.args, r)
		}
		var args []string
		for _, k := range []string{"VOLANT_HOST", "VOLANT_TOKEN"} {
			if v, ok := c.env[k]; ok {
				args = append(args, k+"="+v)
			}
		}
		args = append(args, "volar")
		args = append(args, c.args...)
		for i := range args {
			args[i] = strings.ReplaceAll(strings.ReplaceAll(args[i], url, "$URL"), testToken, "$TOKEN")
		}
		fmt.Fprintf(&tr.b, "$ %s\n%s\n", strings.Join(args, " "), mask(r))
	}
	clitest.Golden(t, "session-token", tr.b.String())
}

// TestVersionWithDaemon: volar version names both builds.
func TestVersionWithDaemon(t *testing.T) {
	d := startDaemon(t)
	r := d.volar("-o", "json", "version")
	var v struct{ Client, Server, Addr, Error string }
	if err := json.Unmarshal([]byte(r.Stdout), &v); err != nil || r.Code != 0 || v.Server == "" || v.Client == "" || v.Addr != d.sock || v.Error != "" {
		t.Fatalf("version: %v %s", err, r)
	}
}

// TestCompletionNamesFromDaemon: VM, plugin and deployment names complete
// from volantd, in process and through the bash script.
func TestCompletionNamesFromDaemon(t *testing.T) {
	d := startDaemon(t)
	for _, args := range [][]string{
		{"plugins", "install", "--manifest", d.manifest("caddy", "2.8.4", "")},
		{"plugins", "install", "--manifest", d.manifest("nginx", "1.27", "")},
		{"vms", "create", "web1", "--plugin", "caddy"},
		{"vms", "create", "db1", "--plugin", "nginx"},
		{"deployments", "create", "api", "--plugin", "caddy", "--replicas", "0"},
	} {
		if r := d.volar(args...); r.Code != 0 {
			t.Fatal(r)
		}
	}
	t.Setenv("VOLANT_HOST", d.sock)
	t.Setenv("GO_FLAGS_COMPLETION", "1")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"vms", "show", ""}, "db1\nweb1\n"},
		{[]string{"vms", "console", "w"}, "web1\n"},
		{[]string{"plugins", "show", "c"}, "caddy\n"},
		{[]string{"vms", "create", "x", "--plugin", ""}, "caddy\nnginx\n"},
		{[]string{"vms", "list", "--deployment", ""}, "api\n"},
		{[]string{"deployments", "scale", ""}, "api\n"},
		{[]string{"vms", "create", ""}, ""}, // a new name: nothing to offer
	} {
		r := runVolar(t, "", nil, c.args...)
		if r.Code != 0 || r.Stdout != c.want {
			t.Errorf("complete %q: %s, want %q", c.args, r, c.want)
		}
	}
	os.Unsetenv("GO_FLAGS_COMPLETION")
	got := bashComplete(t, "volar vms stop ", "VOLANT_HOST="+d.sock)
	if !strings.HasSuffix(got, "db1\nweb1\n") {
		t.Errorf("bash completion of VM names: %q", got)
	}
}
