package volar

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/cli/clitest"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/portmap"
)

var now = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

func fixtureVMs() []api.VM {
	started := now.Add(-90 * time.Second)
	return []api.VM{
		{Name: "nginx-demo", Plugin: "nginx", IP: "192.168.127.100", MAC: "02:aa:bb:cc:dd:ee", Tap: "vt-nginx-demo",
			State: api.VMRunning, Health: agentapi.HealthHealthy, PID: 4242,
			Resources: api.Resources{CPUCores: 2, MemoryMB: 1024},
			CreatedAt: now.Add(-2 * time.Minute), StartedAt: &started, UpdatedAt: now.Add(-time.Minute),
			SerialLog: "/var/lib/volant/vms/nginx-demo/serial.log", Agent: &agentapi.Status{Agent: "kestrel 1.0"},
			Jail: &api.VMMJail{UID: 100042, Cgroup: "volant.slice/nginx-demo", MemoryLimitMB: 1232}},
		{Name: "web-1", Plugin: "caddy", Deployment: "web", IP: "192.168.127.101", State: api.VMRunning,
			Health: agentapi.HealthUnhealthy, Resources: api.Resources{CPUCores: 1, MemoryMB: 128}, Jail: &api.VMMJail{Insecure: true},
			CreatedAt: now.Add(-3 * time.Hour), UpdatedAt: now.Add(-3 * time.Hour)},
		{Name: "batch", Plugin: "tool", State: api.VMCrashed, Error: "hypervisor exited with status 1",
			Resources: api.Resources{CPUCores: 1, MemoryMB: 256}, CreatedAt: now.Add(-72 * time.Hour), UpdatedAt: now},
	}
}

func fixturePlugins() []api.Plugin {
	return []api.Plugin{
		{Name: "caddy", Version: "2.8.4", Runtime: "caddy", Enabled: true,
			Manifest: json.RawMessage(`{"name":"caddy","version":"2.8.4","initramfs":{"url":"file:///var/lib/volant/plugins/caddy/caddy.cpio.gz"},` +
				`"resources":{"cpu_cores":1,"memory_mb":128},"workload":{"entrypoint":["/usr/bin/caddy","file-server"],"base_url":"http://127.0.0.1:80"},` +
				`"health_check":{"endpoint":"/"},"labels":{"team":"web","tier":"edge"},"actions":{"reload":{"path":"/reload"}}}`),
			CreatedAt: now.Add(-48 * time.Hour), UpdatedAt: now.Add(-time.Hour)},
		{Name: "nginx", Version: "1.27", Runtime: "nginx", Enabled: false,
			Manifest:  json.RawMessage(`{"name":"nginx","version":"1.27","rootfs":{"url":"/var/lib/volant/plugins/nginx/rootfs.img"},"workload":{"entrypoint":["/usr/sbin/nginx"]},"network":{"mode":"none"}}`),
			CreatedAt: now.Add(-30 * time.Second), UpdatedAt: now.Add(-30 * time.Second)},
	}
}

func fixtureDeployments() []api.Deployment {
	return []api.Deployment{
		{Name: "web", Plugin: "caddy", Replicas: 3, Current: 2, Resources: api.Resources{CPUCores: 1, MemoryMB: 128},
			VMs: []string{"web-1", "web-2", "web-3"}, Error: "creating web-3: IP_EXHAUSTED",
			CreatedAt: now.Add(-10 * time.Minute), UpdatedAt: now.Add(-time.Minute)},
		{Name: "idle", Plugin: "caddy", Replicas: 0, Resources: api.Resources{CPUCores: 2, MemoryMB: 256},
			VMs: []string{}, CreatedAt: now.Add(-5 * 24 * time.Hour), UpdatedAt: now},
	}
}

func fixtureEvents() []api.Event {
	return []api.Event{
		{ID: 41, Type: api.EventVMCreated, ResourceID: "nginx-demo", Timestamp: now,
			Data: json.RawMessage(`{"name": "nginx-demo", "plugin": "nginx", "ip": "192.168.127.100"}`)},
		{ID: 42, Type: api.EventVMHealthy, ResourceID: "nginx-demo", Timestamp: now.Add(3 * time.Second),
			Data: json.RawMessage(`{"name":"nginx-demo","state":"running","health_check":"passed"}`)},
		{ID: 43, Type: api.EventPluginRemoved, ResourceID: "", Timestamp: now.Add(4 * time.Second)},
	}
}

// render runs f against an Output in each mode and returns the three
// outputs under headers, for one golden file per command.
func render(t *testing.T, f func(o *Output) error) string {
	t.Helper()
	var b strings.Builder
	for _, m := range []struct {
		name   string
		format Format
		quiet  bool
	}{{"table", Table, false}, {"json", JSON, false}, {"quiet", Table, true}} {
		var out, errb bytes.Buffer
		o := &Output{Format: m.format, Quiet: m.quiet, Stdout: &out, Stderr: &errb, Now: func() time.Time { return now }}
		if err := f(o); err != nil {
			t.Fatalf("%s: %v", m.name, err)
		}
		if m.format == JSON && !m.quiet {
			// Every JSON output must be valid JSON (NDJSON for streams).
			for _, doc := range splitJSON(t, out.String()) {
				if !json.Valid([]byte(doc)) {
					t.Fatalf("%s output is not JSON: %q", m.name, doc)
				}
			}
		}
		fmt.Fprintf(&b, "== %s\n%s", m.name, out.String())
	}
	return b.String()
}

func splitJSON(t *testing.T, s string) []string {
	t.Helper()
	s = strings.TrimSpace(s)
	if s == "" {
		t.Fatal("empty JSON output")
	}
	if strings.HasPrefix(s, "[") || strings.Contains(s, "\n  ") {
		return []string{s}
	}
	return strings.Split(s, "\n")
}

func TestOutputGolden(t *testing.T) {
	vms, ps, ds, evs := fixtureVMs(), fixturePlugins(), fixtureDeployments(), fixtureEvents()
	cases := []struct {
		name string
		f    func(o *Output) error
	}{
		{"vms-list", func(o *Output) error { return o.VMList(vms) }},
		{"vms-list-empty", func(o *Output) error { return o.VMList(nil) }},
		{"vms-show", func(o *Output) error { return o.VM(&vms[0]) }},
		{"vms-show-crashed", func(o *Output) error { return o.VM(&vms[2]) }},
		{"vms-show-insecure", func(o *Output) error { return o.VM(&vms[1]) }},
		{"vms-show-ports", func(o *Output) error {
			vm := vms[0]
			vm.Ports = []portmap.Mapping{{HostPort: 8080, GuestPort: 80, Protocol: "tcp"},
				{HostIP: "127.0.0.1", HostPort: 8443, GuestPort: 443, Protocol: "tcp"}, {HostPort: 5353, GuestPort: 53, Protocol: "udp"}}
			return o.VM(&vm)
		}},
		{"vms-created", func(o *Output) error { return o.VMCreated(&vms[0]) }},
		{"vms-created-no-ip", func(o *Output) error { return o.VMCreated(&vms[2]) }},
		{"vms-stopped", func(o *Output) error {
			vm := vms[0]
			vm.State = api.VMStopped
			return o.VMAction(&vm, "stopped")
		}},
		{"vms-started", func(o *Output) error {
			vm := vms[0]
			vm.State = api.VMStarting
			return o.VMAction(&vm, "started")
		}},
		{"vms-deleted", func(o *Output) error {
			vm := vms[0]
			vm.State = api.VMDeleted
			return o.VMAction(&vm, "deleted")
		}},
		{"vms-reached", func(o *Output) error { return o.VMReached(&vms[1]) }},
		{"plugins-list", func(o *Output) error { return o.PluginList(ps) }},
		{"plugins-list-empty", func(o *Output) error { return o.PluginList(nil) }},
		{"plugins-show", func(o *Output) error { return o.Plugin(&ps[0]) }},
		{"plugins-show-rootfs", func(o *Output) error { return o.Plugin(&ps[1]) }},
		{"plugins-installed", func(o *Output) error { return o.PluginAction(&ps[0], "installed") }},
		{"deployments-list", func(o *Output) error { return o.DeploymentList(ds) }},
		{"deployments-list-empty", func(o *Output) error { return o.DeploymentList(nil) }},
		{"deployments-show", func(o *Output) error { return o.Deployment(&ds[0]) }},
		{"deployments-show-empty", func(o *Output) error { return o.Deployment(&ds[1]) }},
		{"deployments-show-ports", func(o *Output) error {
			d := ds[0]
			d.Ports = []portmap.Mapping{{HostIP: "10.0.0.5", HostPort: 80, GuestPort: 8080, Protocol: "tcp"}}
			d.Endpoints = []string{"web-1", "web-3"}
			return o.Deployment(&d)
		}},
		{"deployments-show-ports-no-endpoint", func(o *Output) error {
			d := ds[0]
			d.Ports = []portmap.Mapping{{HostPort: 9090, GuestPort: 80, Protocol: "tcp"}}
			return o.Deployment(&d)
		}},
		{"deployments-scaled", func(o *Output) error { return o.DeploymentAction(&ds[0], "scaled") }},
		{"deployments-scaled-one", func(o *Output) error {
			d := ds[0]
			d.Replicas = 1
			return o.DeploymentAction(&d, "scaled")
		}},
		{"deployments-deleted", func(o *Output) error { return o.DeploymentAction(&ds[1], "deleted") }},
		{"events", func(o *Output) error {
			for i := range evs {
				if err := o.Event(&evs[i]); err != nil {
					return err
				}
			}
			return nil
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			clitest.Golden(t, "output-"+c.name, render(t, c.f))
		})
	}
}

// TestJSONIsTheAPIObject checks that -o json prints exactly what volantd
// sent: decoding it gives back the same object.
func TestJSONIsTheAPIObject(t *testing.T) {
	vms := fixtureVMs()
	var out bytes.Buffer
	o := &Output{Format: JSON, Stdout: &out}
	if err := o.VMList(vms); err != nil {
		t.Fatal(err)
	}
	var back []api.VM
	if err := json.Unmarshal(out.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	want, _ := json.Marshal(vms)
	got, _ := json.Marshal(back)
	if !bytes.Equal(want, got) {
		t.Fatalf("round trip differs:\n got %s\nwant %s", got, want)
	}
}

func TestAge(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"}, {-5 * time.Second, "0s"}, {59 * time.Second, "59s"}, {time.Minute, "1m"},
		{59*time.Minute + 59*time.Second, "59m"}, {time.Hour, "1h"}, {47 * time.Hour, "47h"},
		{48 * time.Hour, "2d"}, {400 * 24 * time.Hour, "400d"},
	} {
		if got := Age(now, now.Add(-c.d)); got != c.want {
			t.Errorf("Age(%v) = %q, want %q", c.d, got, c.want)
		}
	}
	if got := Age(now, time.Time{}); got != "-" {
		t.Errorf("Age(zero) = %q", got)
	}
}

func TestParseFormat(t *testing.T) {
	for in, want := range map[string]Format{"": Table, "table": Table, "json": JSON} {
		if got, err := ParseFormat(in); err != nil || got != want {
			t.Errorf("ParseFormat(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseFormat("yaml"); !apierr.Is(err, apierr.Usage) {
		t.Errorf("ParseFormat(yaml) = %v, want USAGE", err)
	}
}

func TestParseEscape(t *testing.T) {
	for _, c := range []struct {
		in   string
		key  byte
		on   bool
		fail bool
	}{
		{"", 0x1d, true, false}, {"^]", 0x1d, true, false}, {"^a", 0x01, true, false}, {"^A", 0x01, true, false},
		{"ctrl-]", 0x1d, true, false}, {"Ctrl-P", 0x10, true, false}, {"^@", 0x00, true, false},
		{"none", 0, false, false}, {"NONE", 0, false, false},
		{"x", 0, false, true}, {"^", 0, false, true}, {"^ab", 0, false, true}, {"^1", 0, false, true},
	} {
		key, on, err := ParseEscape(c.in)
		if c.fail {
			if !apierr.Is(err, apierr.Usage) {
				t.Errorf("ParseEscape(%q) = %v, want USAGE", c.in, err)
			}
			continue
		}
		if err != nil || key != c.key || on != c.on {
			t.Errorf("ParseEscape(%q) = %#x, %v, %v; want %#x, %v", c.in, key, on, err, c.key, c.on)
		}
	}
	if EscapeName(0x1d) != "^]" || EscapeName(0x01) != "^A" {
		t.Errorf("EscapeName: %q %q", EscapeName(0x1d), EscapeName(0x01))
	}
}

// TestReport checks the exit status of every kind of failure and the
// message a person sees.
func TestReport(t *testing.T) {
	// A real transport failure, from the real client.
	c, err := client.New("/nonexistent/volantd.sock", client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, unreachable := c.ListVMs(context.Background(), api.VMFilter{})
	if !Unreachable(unreachable) {
		t.Fatalf("a missing socket is not reported as unreachable: %#v", unreachable)
	}
	answered := apierr.New(apierr.Unavailable, "no usable hypervisor").With("http_status", 503)
	def := &Target{Addr: "/nonexistent/volantd.sock", Source: "default"}
	cases := []struct {
		name   string
		err    error
		target *Target
		json   bool
		status int
	}{
		{"ok", nil, def, false, ExitOK},
		{"help", ErrHelp, def, false, ExitOK},
		{"not-found", apierr.New(apierr.NotFound, "no VM named web1").With("http_status", 404), def, false, ExitError},
		{"not-found-json", apierr.New(apierr.NotFound, "no VM named web1").With("http_status", 404), def, true, ExitError},
		{"conflict-hint", apierr.New(apierr.Conflict, "plugin caddy is in use").With("hint", "delete its VMs first").With("http_status", 409), def, false, ExitError},
		{"invalid-manifest", &apierr.Error{Code: apierr.InvalidManifest, Message: "invalid manifest (2 problems): name: required; workload.entrypoint: required",
			Details: map[string]any{"http_status": 422, "errors": []any{
				map[string]any{"field": "name", "message": "required"},
				map[string]any{"field": "workload.entrypoint", "message": "required"}}}}, def, false, ExitError},
		{"usage", apierr.New(apierr.Usage, "--replicas is required").With("hint", "volar deployments create NAME --plugin P --replicas N"), def, false, ExitUsage},
		{"unreachable-default", unreachable, def, false, ExitUnreachable},
		{"unreachable-env", unreachable, &Target{Addr: "/tmp/v.sock", Source: "VOLANT_HOST"}, false, ExitUnreachable},
		{"unreachable-tcp", unreachable, &Target{Addr: "http://10.0.0.1:7777", Source: "--host"}, false, ExitUnreachable},
		{"unreachable-json", unreachable, def, true, ExitUnreachable},
		{"unreachable-permission", apierr.Wrap(apierr.Unavailable, errors.New("dial unix /run/volant/volantd.sock: connect: permission denied"), "GET /healthz"), def, false, ExitUnreachable},
		{"unavailable-answer", answered, def, false, ExitError},
		{"unavailable-no-target", unreachable, nil, false, ExitError},
		{"canceled", apierr.New(apierr.Canceled, "interrupted"), def, false, ExitInterrupted},
		{"plain-error", errors.New("boom"), def, false, ExitError},
	}
	var all strings.Builder
	for _, c := range cases {
		var b bytes.Buffer
		status := Report(&b, c.err, c.target, c.json)
		if status != c.status {
			t.Errorf("%s: status %d, want %d (%s)", c.name, status, c.status, b.String())
		}
		fmt.Fprintf(&all, "== %s (exit %d)\n%s", c.name, status, b.String())
	}
	clitest.Golden(t, "report", all.String())
}

func TestDeploymentRequest(t *testing.T) {
	n := func(i int) *int { return &i }
	cfg := &DeploymentConfig{Name: "from-file", Plugin: "caddy", Replicas: n(5), Resources: &api.Resources{CPUCores: 2, MemoryMB: 1024}}
	for _, c := range []struct {
		name string
		cfg  *DeploymentConfig
		f    DeploymentFlags
		want string // JSON of the request, or "USAGE"
	}{
		{"flags only", nil, DeploymentFlags{Name: "web", Plugin: "nginx", Replicas: n(3)},
			`{"name":"web","plugin":"nginx","replicas":3}`},
		{"no replicas", nil, DeploymentFlags{Name: "web", Plugin: "nginx"}, "USAGE"},
		{"zero replicas is a value", nil, DeploymentFlags{Name: "web", Plugin: "nginx", Replicas: n(0)},
			`{"name":"web","plugin":"nginx","replicas":0}`},
		{"file only", cfg, DeploymentFlags{},
			`{"name":"from-file","plugin":"caddy","replicas":5,"resources":{"cpu_cores":2,"memory_mb":1024}}`},
		{"flags win", cfg, DeploymentFlags{Name: "web", Plugin: "nginx", Replicas: n(1), Memory: 256},
			`{"name":"web","plugin":"nginx","replicas":1,"resources":{"cpu_cores":2,"memory_mb":256}}`},
		{"the spec's file: replicas from the flag", &DeploymentConfig{Plugin: "nginx", Resources: &api.Resources{CPUCores: 2, MemoryMB: 1024}},
			DeploymentFlags{Name: "my-service", Replicas: n(5)},
			`{"name":"my-service","plugin":"nginx","replicas":5,"resources":{"cpu_cores":2,"memory_mb":1024}}`},
		{"cpu flag without file", nil, DeploymentFlags{Name: "web", Plugin: "nginx", Replicas: n(1), CPU: 4},
			`{"name":"web","plugin":"nginx","replicas":1,"resources":{"cpu_cores":4,"memory_mb":0}}`},
	} {
		req, err := DeploymentRequest(c.cfg, c.f)
		if c.want == "USAGE" {
			if !apierr.Is(err, apierr.Usage) {
				t.Errorf("%s: %v, want USAGE", c.name, err)
			}
			continue
		}
		b, _ := json.Marshal(req)
		if err != nil || string(b) != c.want {
			t.Errorf("%s: %s, %v\nwant %s", c.name, b, err, c.want)
		}
	}
	// The file is not changed by the merge.
	if cfg.Resources.MemoryMB != 1024 {
		t.Error("DeploymentRequest changed the config's resources")
	}
}

func TestJoinArgsQuotesScripts(t *testing.T) {
	got := joinArgs([]string{"/bin/sh", "-c", "echo a\nsleep 1", "", "plain"})
	want := `/bin/sh -c "echo a\nsleep 1" "" plain`
	if got != want {
		t.Fatalf("joinArgs = %s, want %s", got, want)
	}
}
