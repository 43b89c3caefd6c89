package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/controller/controllertest"
	"github.com/volantvm/volant/lib/ipam"
	"github.com/volantvm/volant/lib/server"
)

func TestPluginRoutes(t *testing.T) {
	e := newEnv(t)
	p := e.install("web")
	if p.Name != "web" || !p.Enabled || p.Version != "1.0.0" {
		t.Fatalf("installed %+v", p)
	}
	if evs := e.events(api.EventPluginInstalled); len(evs) != 1 || evs[0].ResourceID != "web" {
		t.Fatalf("events: %s", eventTypes(evs))
	}

	// Bad input: nothing changes.
	os.MkdirAll(filepath.Join(e.dir, "plugins", "adir"), 0o755)
	before := e.snapshot()
	for _, tc := range []struct {
		name   string
		body   string
		ctype  string
		status int
		code   apierr.Code
	}{
		{"malformed", `{"name":`, "application/json", 422, apierr.InvalidManifest},
		{"not an object", `[1,2]`, "application/json", 422, apierr.InvalidManifest},
		{"empty", ``, "application/json", 400, apierr.InvalidInput},
		{"unknown field", strings.Replace(string(e.plugin("x", "")), `"version"`, `"verison":"1","version"`, 1), "application/json", 422, apierr.InvalidManifest},
		{"duplicate", string(e.plugin("web", "")), "application/json", 409, apierr.Conflict},
		{"wrong content type", string(e.plugin("y", "")), "text/plain", 400, apierr.InvalidInput},
		{"escape sequence in the version", strings.Replace(string(e.plugin("y", "")), `"version":"1.0.0"`, `"version":"1.0\u001b[31m"`, 1), "application/json", 422, apierr.InvalidManifest},
		{"bell in a label", string(e.plugin("y", `,"labels":{"a":"\u0007"}`)), "application/json", 422, apierr.InvalidManifest},
		{"wrong content type with a JSON prefix", string(e.plugin("y", "")), "application/jsonx", 400, apierr.InvalidInput},
		{"missing artifact", `{"name":"z","version":"1","initramfs":{"url":"` + e.dir + `/plugins/z.cpio"},"workload":{"entrypoint":["/a"]}}`, "application/json", 422, apierr.InvalidManifest},
		{"artifact outside the allowed directories", `{"name":"z","version":"1","initramfs":{"url":"/etc/shadow"},"workload":{"entrypoint":["/a"]}}`, "application/json", 403, apierr.PermissionDenied},
		{"directory as artifact", `{"name":"z","version":"1","initramfs":{"url":"` + e.dir + `/plugins/adir"},"workload":{"entrypoint":["/a"]}}`, "application/json", 422, apierr.InvalidManifest},
		{"checksum mismatch", strings.Replace(string(e.plugin("m", "")), `"sha256:`, `"sha256:00`, 1)[:0] + mismatch(e), "application/json", 422, apierr.ChecksumMismatch},
		{"too large", `{"name":"big","pad":"` + strings.Repeat("x", server.MaxBodyBytes) + `"}`, "application/json", 413, apierr.TooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, body := e.do("POST", "/api/v1/plugins", tc.ctype, []byte(tc.body))
			ae := e.apiErr(st, body, tc.status, tc.code)
			if tc.code == apierr.InvalidManifest && tc.name == "unknown field" {
				if !strings.Contains(string(body), "verison") {
					t.Errorf("the error does not name the field: %s", body)
				}
			}
			_ = ae
		})
	}
	e.unchanged(before, "rejected installs")

	// show, manifest, list
	got, err := e.c.Plugin(e.ctx, "web")
	if err != nil || got.Name != "web" {
		t.Fatalf("show: %+v %v", got, err)
	}
	m, err := e.c.PluginManifest(e.ctx, "web")
	if err != nil || !strings.Contains(string(m), `"entrypoint":["/bin/app"]`) {
		t.Fatalf("manifest: %s %v", m, err)
	}
	if _, err := e.c.Plugin(e.ctx, "nope"); !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("show unknown: %v", err)
	}
	ps, err := e.c.ListPlugins(e.ctx)
	if err != nil || len(ps) != 1 {
		t.Fatalf("list: %+v %v", ps, err)
	}

	// replace
	if _, err := e.c.InstallPlugin(e.ctx, e.plugin("web", `,"labels":{"v":"2"}`), client.InstallOptions{Replace: true}); err != nil {
		t.Fatal(err)
	}
	if m, _ := e.c.PluginManifest(e.ctx, "web"); !strings.Contains(string(m), `"labels"`) {
		t.Fatalf("replace did not take: %s", m)
	}

	// disable: no new VMs; enable again.
	if p, err := e.c.DisablePlugin(e.ctx, "web"); err != nil || p.Enabled {
		t.Fatalf("disable: %+v %v", p, err)
	}
	before = e.snapshot()
	if _, err := e.c.CreateVM(e.ctx, api.CreateVMRequest{Name: "w1", Plugin: "web"}); !apierr.Is(err, apierr.Conflict) {
		t.Fatalf("create from a disabled plugin: %v", err)
	}
	e.unchanged(before, "create from a disabled plugin")
	if p, err := e.c.EnablePlugin(e.ctx, "web"); err != nil || !p.Enabled {
		t.Fatalf("enable: %+v %v", p, err)
	}
	if evs := e.events("plugin.*"); eventTypes(evs) != "plugin.installed(web) plugin.installed(web) plugin.disabled(web) plugin.enabled(web)" {
		t.Fatalf("plugin events: %s", eventTypes(evs))
	}

	// remove: refused while a VM uses it.
	if _, err := e.c.CreateVM(e.ctx, api.CreateVMRequest{Name: "w1", Plugin: "web"}); err != nil {
		t.Fatal(err)
	}
	before = e.snapshot()
	_, err = e.c.RemovePlugin(e.ctx, "web")
	if !apierr.Is(err, apierr.Conflict) {
		t.Fatalf("remove in use: %v", err)
	}
	e.unchanged(before, "removing a plugin in use")
	if _, err := e.c.DeleteVM(e.ctx, "w1"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.RemovePlugin(e.ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.RemovePlugin(e.ctx, "web"); !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("second remove: %v", err)
	}
	if evs := e.events(api.EventPluginRemoved); len(evs) != 1 {
		t.Fatalf("plugin.removed events: %s", eventTypes(evs))
	}
}

// mismatch is a manifest whose checksum does not match its artifact.
func mismatch(e *env) string {
	m := string(e.plugin("mm", ""))
	i := strings.Index(m, "sha256:") + len("sha256:")
	return m[:i] + strings.Repeat("0", 64) + m[i+64:]
}

func TestCreateVMRejectsBadInputWithoutChanges(t *testing.T) {
	e := newEnv(t)
	e.install("web")
	if _, err := e.c.CreateVM(e.ctx, api.CreateVMRequest{Name: "taken", Plugin: "web"}); err != nil {
		t.Fatal(err)
	}
	e.rt.CheckErr["broken"] = apierr.New(apierr.ChecksumMismatch, "initramfs has sha256 x, the manifest says y")
	if _, err := e.c.InstallPlugin(e.ctx, e.plugin("broken", ""), client.InstallOptions{}); err != nil {
		t.Fatal(err)
	}
	before := e.snapshot()
	for _, tc := range []struct {
		name   string
		body   string
		status int
		code   apierr.Code
		field  string
	}{
		{"malformed JSON", `{"name":"a","plugin":`, 400, apierr.InvalidInput, ""},
		{"trailing data", `{"name":"a","plugin":"web"} {}`, 400, apierr.InvalidInput, ""},
		{"unknown field", `{"name":"a","plugin":"web","cpus":2}`, 400, apierr.InvalidInput, "cpus"},
		{"wrong type", `{"name":"a","plugin":"web","cpu_cores":"two"}`, 400, apierr.InvalidInput, "cpu_cores"},
		{"no body", ``, 400, apierr.InvalidInput, ""},
		{"bad name", `{"name":"Bad Name","plugin":"web"}`, 400, apierr.InvalidInput, ""},
		{"no plugin", `{"name":"a"}`, 400, apierr.InvalidInput, "plugin"},
		{"cpu out of range", `{"name":"a","plugin":"web","cpu_cores":65}`, 400, apierr.InvalidInput, "cpu_cores"},
		{"memory out of range", `{"name":"a","plugin":"web","memory_mb":16}`, 400, apierr.InvalidInput, "memory_mb"},
		{"kernel arg with a space", `{"name":"a","plugin":"web","kernel_args":["a b"]}`, 400, apierr.InvalidInput, "kernel_args[0]"},
		{"kernel arg with an escape", `{"name":"a","plugin":"web","kernel_args":["a=\u001b[2J"]}`, 400, apierr.InvalidInput, "kernel_args[0]"},
		{"unknown plugin", `{"name":"a","plugin":"nginx"}`, 404, apierr.NotFound, ""},
		{"duplicate name", `{"name":"taken","plugin":"web"}`, 409, apierr.Conflict, ""},
		{"plan fails", `{"name":"a","plugin":"broken"}`, 422, apierr.ChecksumMismatch, ""},
		{"oversize", `{"name":"a","plugin":"web","kernel_args":["` + strings.Repeat("x", server.MaxBodyBytes) + `"]}`, 413, apierr.TooLarge, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, body := e.do("POST", "/api/v1/vms", "application/json", []byte(tc.body))
			ae := e.apiErr(st, body, tc.status, tc.code)
			if tc.field != "" && ae.Details["field"] != tc.field {
				t.Errorf("details.field = %v, want %s (%s)", ae.Details["field"], tc.field, body)
			}
		})
	}
	e.unchanged(before, "rejected creates")

	// The client reports the same as *apierr.Error.
	_, err := e.c.CreateVM(e.ctx, api.CreateVMRequest{Name: "taken", Plugin: "web"})
	var ae *apierr.Error
	if !errors.As(err, &ae) || ae.Code != apierr.Conflict || ae.Details["http_status"] != 409 {
		t.Fatalf("client error: %#v", err)
	}
}

func TestVMLifecycle(t *testing.T) {
	e := newEnv(t)
	e.install("web")
	vm, err := e.c.CreateVM(e.ctx, api.CreateVMRequest{Name: "web1", Plugin: "web", MemoryMB: 256})
	if err != nil {
		t.Fatal(err)
	}
	if vm.State != api.VMStarting || vm.IP != "192.168.127.100" || vm.Resources.MemoryMB != 256 || vm.Resources.CPUCores != 1 || vm.PID == 0 || vm.Tap != "vt-web1" {
		t.Fatalf("created %+v", vm)
	}
	if l, ok := e.lease("web1"); !ok || l.IP.String() != vm.IP || l.MAC != vm.MAC {
		t.Fatalf("lease %+v %v", l, ok)
	}
	if tap, ok := e.nw.Taps()["vt-web1"]; !ok || tap.IP != vm.IP || tap.MAC != vm.MAC {
		t.Fatalf("tap %+v", e.nw.Taps())
	}
	spec, err := os.ReadFile(e.ctl.SpecPath("web1"))
	if err != nil || !strings.Contains(string(spec), `"ip": "192.168.127.100"`) || !strings.Contains(string(spec), `"api_port": 7070`) {
		t.Fatalf("staged spec: %s %v", spec, err)
	}

	// Running only once healthy: a report from kestrel moves it.
	if _, err := e.c.WaitVM(e.ctx, "web1", api.VMRunning, 200*time.Millisecond); !apierr.Is(err, apierr.Timeout) {
		t.Fatalf("wait before healthy: %v", err)
	}
	if err := e.c.ReportAgent(e.ctx, "web1", controllertest.Healthy("web1")); err != nil {
		t.Fatal(err)
	}
	vm, err = e.c.WaitVM(e.ctx, "web1", api.VMRunning, 5*time.Second)
	if err != nil || vm.State != api.VMRunning || vm.Health != agentapi.HealthHealthy || vm.Agent == nil {
		t.Fatalf("after report: %+v %v", vm, err)
	}

	// Unhealthy keeps it running, says so.
	bad := controllertest.Healthy("web1")
	bad.Health.State, bad.Health.LastError = agentapi.HealthUnhealthy, "GET / answered 500"
	if err := e.c.ReportAgent(e.ctx, "web1", bad); err != nil {
		t.Fatal(err)
	}
	vm, _ = e.c.VM(e.ctx, "web1")
	if vm.State != api.VMRunning || vm.Health != agentapi.HealthUnhealthy || vm.Error != "GET / answered 500" {
		t.Fatalf("unhealthy: %+v", vm)
	}

	// stop (twice), start, restart
	for i := 0; i < 2; i++ {
		vm, err = e.c.StopVM(e.ctx, "web1")
		if err != nil || vm.State != api.VMStopped || vm.PID != 0 || vm.IP == "" {
			t.Fatalf("stop %d: %+v %v", i, vm, err)
		}
	}
	if len(e.rt.Live()) != 0 {
		t.Fatalf("runs after stop: %v", e.rt.Live())
	}
	if _, err := e.c.WaitVM(e.ctx, "web1", api.VMRunning, time.Second); !apierr.Is(err, apierr.Conflict) {
		t.Fatalf("wait running on a stopped VM: %v", err)
	}
	vm, err = e.c.StartVM(e.ctx, "web1")
	if err != nil || vm.State != api.VMStarting || vm.IP != "192.168.127.100" {
		t.Fatalf("start: %+v %v", vm, err)
	}
	if again, err := e.c.StartVM(e.ctx, "web1"); err != nil || again.PID != vm.PID {
		t.Fatalf("start of a started VM: %+v %v", again, err)
	}
	vm2, err := e.c.RestartVM(e.ctx, "web1")
	if err != nil || vm2.PID == vm.PID || vm2.State != api.VMStarting {
		t.Fatalf("restart: %+v %v", vm2, err)
	}
	if e.rt.Starts("web1") != 3 {
		t.Fatalf("starts = %d, want 3", e.rt.Starts("web1"))
	}

	// delete frees everything; a second delete is NOT_FOUND.
	vm, err = e.c.DeleteVM(e.ctx, "web1")
	if err != nil || vm.State != api.VMDeleted {
		t.Fatalf("delete: %+v %v", vm, err)
	}
	if _, ok := e.lease("web1"); ok {
		t.Fatal("lease left after delete")
	}
	if len(e.nw.Taps()) != 0 || len(e.rt.Live()) != 0 {
		t.Fatalf("left taps %v runs %v", e.nw.Taps(), e.rt.Live())
	}
	if _, err := os.Stat(e.ctl.SpecPath("web1")); !os.IsNotExist(err) {
		t.Fatalf("VM files left: %v", err)
	}
	if _, err := e.c.DeleteVM(e.ctx, "web1"); !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("second delete: %v", err)
	}
	for _, p := range []string{"start", "stop", "restart"} {
		st, body := e.do("POST", "/api/v1/vms/web1/"+p, "", nil)
		e.apiErr(st, body, 404, apierr.NotFound)
	}
	want := "vm.created(web1) vm.started(web1) vm.healthy(web1) vm.unhealthy(web1) vm.stopped(web1) " +
		"vm.started(web1) vm.stopped(web1) vm.started(web1) vm.deleted(web1)"
	if got := eventTypes(e.events("vm.*")); got != want {
		t.Fatalf("events:\n got %s\nwant %s", got, want)
	}
	if got := eventTypes(e.events("ip.*")); got != "ip.leased(web1) ip.released(web1)" {
		t.Fatalf("ip events: %s", got)
	}
}

func TestCrashDetectionAndPolledHealth(t *testing.T) {
	e := newEnv(t)
	e.install("web")
	vm, err := e.c.CreateVM(e.ctx, api.CreateVMRequest{Name: "web1", Plugin: "web"})
	if err != nil {
		t.Fatal(err)
	}
	// No report: the poll of kestrel's /healthz finds it healthy.
	st := controllertest.Healthy("web1")
	e.pr.Set(netip.MustParseAddr(vm.IP), &st)
	if _, err := e.c.WaitVM(e.ctx, "web1", api.VMRunning, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// kestrel stops answering: unhealthy after three failed polls.
	e.pr.Set(netip.MustParseAddr(vm.IP), nil)
	eventually(t, 5*time.Second, "unhealthy", func() bool {
		v, _ := e.c.VM(e.ctx, "web1")
		return v.Health == agentapi.HealthUnhealthy && strings.Contains(v.Error, "kestrel does not answer")
	})
	// The VMM dies: crashed.
	e.rt.Kill("web1", apierr.New(apierr.Unavailable, "the guest kernel panicked"))
	eventually(t, 5*time.Second, "crashed", func() bool {
		v, _ := e.c.VM(e.ctx, "web1")
		return v.State == api.VMCrashed && v.PID == 0 && strings.Contains(v.Error, "panicked")
	})
	if evs := e.events(api.EventVMCrashed); len(evs) != 1 {
		t.Fatalf("crash events: %s", eventTypes(evs))
	}
	// A crashed VM keeps its address and starts again.
	if vm, err := e.c.StartVM(e.ctx, "web1"); err != nil || vm.State != api.VMStarting || vm.IP != "192.168.127.100" {
		t.Fatalf("start after crash: %+v %v", vm, err)
	}
}

func TestReportRules(t *testing.T) {
	e := newEnv(t)
	e.install("web")
	if _, err := e.c.CreateVM(e.ctx, api.CreateVMRequest{Name: "web1", Plugin: "web"}); err != nil {
		t.Fatal(err)
	}
	// A report naming another VM, or for a VM that does not exist.
	st := controllertest.Healthy("web2")
	b, _ := json.Marshal(st)
	code, body := e.do("POST", agentapi.ReportPath("web1"), "application/json", b)
	e.apiErr(code, body, 400, apierr.InvalidInput)
	code, body = e.do("POST", agentapi.ReportPath("web2"), "application/json", b)
	e.apiErr(code, body, 404, apierr.NotFound)

	// A health check that has not passed yet keeps the VM starting even
	// though the workload runs.
	if _, err := e.c.InstallPlugin(e.ctx, e.plugin("checked", `,"health_check":{"endpoint":"/ready"}`), client.InstallOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.CreateVM(e.ctx, api.CreateVMRequest{Name: "c1", Plugin: "checked"}); err != nil {
		t.Fatal(err)
	}
	st = controllertest.Healthy("c1")
	st.Health.State = agentapi.HealthUnknown
	if err := e.c.ReportAgent(e.ctx, "c1", st); err != nil {
		t.Fatal(err)
	}
	if v, _ := e.c.VM(e.ctx, "c1"); v.State != api.VMStarting {
		t.Fatalf("a workload running before its check passed made it %s", v.State)
	}
	st.Health.State = agentapi.HealthHealthy
	if err := e.c.ReportAgent(e.ctx, "c1", st); err != nil {
		t.Fatal(err)
	}
	if v, _ := e.c.VM(e.ctx, "c1"); v.State != api.VMRunning {
		t.Fatalf("after the check passed: %s", v.State)
	}
}

func TestAgentHandlerServesOnlyAgentRoutesFromTheVM(t *testing.T) {
	e := newEnv(t)
	e.install("web")
	if _, err := e.c.CreateVM(e.ctx, api.CreateVMRequest{Name: "web1", Plugin: "web"}); err != nil {
		t.Fatal(err)
	}
	ah := e.srv.AgentHandler()
	serve := func(method, path, remote string, body string) *httptestRecorder {
		r := newRecorder()
		req, _ := http.NewRequest(method, path, strings.NewReader(body))
		req.RemoteAddr = remote
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		ah.ServeHTTP(r, req)
		return r
	}
	if r := serve("GET", agentapi.ManifestPath("web"), "192.168.127.100:5555", ""); r.code != 200 || !strings.Contains(r.body.String(), `"name":"web"`) {
		t.Fatalf("manifest on the agent endpoint: %d %s", r.code, r.body.String())
	}
	// Another guest (or a VM of another plugin) may not read it.
	if r := serve("GET", agentapi.ManifestPath("web"), "192.168.127.150:5555", ""); r.code != 403 {
		t.Fatalf("manifest for a stranger: %d %s", r.code, r.body.String())
	}
	for _, p := range []string{"/api/v1/vms", "/api/v1/plugins", "/openapi.json", "/api/v1/events"} {
		if r := serve("GET", p, "192.168.127.100:5555", ""); r.code != 404 {
			t.Errorf("GET %s on the agent endpoint: %d", p, r.code)
		}
	}
	if r := serve("DELETE", "/api/v1/vms/web1", "192.168.127.100:5555", ""); r.code != 404 && r.code != 405 {
		t.Errorf("DELETE on the agent endpoint: %d", r.code)
	}
	b, _ := json.Marshal(controllertest.Healthy("web1"))
	if r := serve("POST", agentapi.ReportPath("web1"), "192.168.127.101:5555", string(b)); r.code != 403 {
		t.Fatalf("report from another address: %d %s", r.code, r.body.String())
	}
	if v, _ := e.c.VM(e.ctx, "web1"); v.State != api.VMStarting {
		t.Fatalf("a refused report changed the VM: %s", v.State)
	}
	// A guest learns nothing about other VMs: a report or a manifest fetch
	// for a VM or plugin that exists but is not its own is answered as for
	// one that does not exist (status and body, the name aside), and no
	// answer carries an address.
	same := func(what string, a, b *httptestRecorder, nameA, nameB string) {
		t.Helper()
		ba := strings.ReplaceAll(a.body.String(), nameA, "NAME")
		bb := strings.ReplaceAll(b.body.String(), nameB, "NAME")
		if a.code != b.code || ba != bb {
			t.Errorf("%s: an existing name and a missing one are told apart:\n%d %s\n%d %s", what, a.code, ba, b.code, bb)
		}
		if strings.Contains(ba, "192.168.") || strings.Contains(bb, "192.168.") {
			t.Errorf("%s: an answer tells an address: %s / %s", what, ba, bb)
		}
	}
	ghost, _ := json.Marshal(controllertest.Healthy("ghost1"))
	same("report", serve("POST", agentapi.ReportPath("web1"), "192.168.127.150:5555", string(b)),
		serve("POST", agentapi.ReportPath("ghost1"), "192.168.127.150:5555", string(ghost)), "web1", "ghost1")
	same("manifest", serve("GET", agentapi.ManifestPath("web"), "192.168.127.150:5555", ""),
		serve("GET", agentapi.ManifestPath("ghost"), "192.168.127.150:5555", ""), "web", "ghost")
	if r := serve("POST", agentapi.ReportPath("web1"), "192.168.127.100:5555", string(b)); r.code != 204 {
		t.Fatalf("report from the VM: %d %s", r.code, r.body.String())
	}
	if v, _ := e.c.VM(e.ctx, "web1"); v.State != api.VMRunning {
		t.Fatalf("after the VM's report: %s", v.State)
	}
}

func TestAuth(t *testing.T) {
	e := newEnv(t, func(_ *controller.Config, o *server.Options) { o.Token = "s3cret" })
	if code, _ := e.do("GET", "/healthz", "", nil); code != 200 {
		t.Fatalf("healthz without a token: %d", code)
	}
	for _, hdr := range [][]string{nil, {"Authorization", "Bearer wrong"}, {"Authorization", "s3cret"}} {
		code, body := e.do("GET", "/api/v1/vms", "", nil, hdr...)
		e.apiErr(code, body, 401, apierr.Unauthorized)
	}
	if code, body := e.do("GET", "/api/v1/vms", "", nil, "Authorization", "Bearer s3cret"); code != 200 {
		t.Fatalf("with the token: %d %s", code, body)
	}
	if _, err := e.c.ListVMs(e.ctx, api.VMFilter{}); err != nil {
		t.Fatalf("client with the token: %v", err)
	}
	bad, _ := client.New(e.ts.URL, client.Options{Token: "nope"})
	if _, err := bad.ListVMs(e.ctx, api.VMFilter{}); !apierr.Is(err, apierr.Unauthorized) {
		t.Fatalf("client with a wrong token: %v", err)
	}
	if _, err := bad.Events(e.ctx, api.EventOptions{}); !apierr.Is(err, apierr.Unauthorized) {
		t.Fatalf("events with a wrong token: %v", err)
	}
}

func TestLogs(t *testing.T) {
	e := newEnv(t)
	e.install("web")
	if _, err := e.c.CreateVM(e.ctx, api.CreateVMRequest{Name: "web1", Plugin: "web"}); err != nil {
		t.Fatal(err)
	}
	path := e.ctl.SerialLog("web1")
	if err := os.WriteFile(path, []byte("one\ntwo\nthree\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	read := func(o api.LogOptions) string {
		rc, err := e.c.VMLogs(e.ctx, "web1", o)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		b, _ := io.ReadAll(rc)
		return string(b)
	}
	if got := read(api.LogOptions{}); got != "one\ntwo\nthree\n" {
		t.Fatalf("all: %q", got)
	}
	if got := read(api.LogOptions{Tail: 2}); got != "two\nthree\n" {
		t.Fatalf("tail 2: %q", got)
	}
	if got := read(api.LogOptions{Tail: 10}); got != "one\ntwo\nthree\n" {
		t.Fatalf("tail 10: %q", got)
	}
	if _, err := e.c.VMLogs(e.ctx, "nope", api.LogOptions{}); !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("logs of an unknown VM: %v", err)
	}
	code, body := e.do("GET", "/api/v1/vms/web1/logs?tail=x", "", nil)
	e.apiErr(code, body, 400, apierr.InvalidInput)

	// follow: lines appended later arrive, across a rotation, and the
	// stream ends when the VM is deleted.
	ctx, cancel := context.WithTimeout(e.ctx, 20*time.Second)
	defer cancel()
	rc, err := e.c.VMLogs(ctx, "web1", api.LogOptions{Follow: true, Tail: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	br := bufio.NewReader(rc)
	expect := func(want string) {
		t.Helper()
		line, err := br.ReadString('\n')
		if err != nil || line != want {
			t.Fatalf("follow: got %q %v, want %q", line, err, want)
		}
	}
	expect("three\n")
	appendFile(t, path, "four\n")
	expect("four\n")
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	appendFile(t, path+".1", "five\n")
	time.Sleep(300 * time.Millisecond)
	appendFile(t, path, "six\n")
	expect("five\n")
	expect("six\n")
	if _, err := e.c.DeleteVM(e.ctx, "web1"); err != nil {
		t.Fatal(err)
	}
	if _, err := br.ReadString('\n'); err != io.EOF {
		t.Fatalf("follow after delete: %v", err)
	}
}

func appendFile(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(s)
	f.Close()
}

func TestDeployments(t *testing.T) {
	e := newEnv(t)
	e.install("web")
	// A standalone VM that a replica name would take.
	if _, err := e.c.CreateVM(e.ctx, api.CreateVMRequest{Name: "clash-2", Plugin: "web"}); err != nil {
		t.Fatal(err)
	}
	before := e.snapshot()
	for _, tc := range []struct {
		body   string
		status int
		code   apierr.Code
	}{
		{`{"name":"d","plugin":"web","replicas":-1}`, 400, apierr.InvalidInput},
		{`{"name":"d","plugin":"web","replicas":1001}`, 400, apierr.InvalidInput},
		{`{"name":"d","plugin":"nope","replicas":1}`, 404, apierr.NotFound},
		{`{"name":"` + strings.Repeat("d", 60) + `","plugin":"web","replicas":1}`, 400, apierr.InvalidInput},
		{`{"name":"d","plugin":"web","replicas":1,"extra":1}`, 400, apierr.InvalidInput},
		{`{"name":"clash","plugin":"web","replicas":3}`, 409, apierr.Conflict},
		{`{"name":"d","plugin":"web","replicas":1,"resources":{"cpu_cores":99}}`, 400, apierr.InvalidInput},
	} {
		code, body := e.do("POST", "/api/v1/deployments", "application/json", []byte(tc.body))
		e.apiErr(code, body, tc.status, tc.code)
	}
	e.unchanged(before, "rejected deployments")

	d, err := e.c.CreateDeployment(e.ctx, api.CreateDeploymentRequest{Name: "svc", Plugin: "web", Replicas: 3, Resources: &api.Resources{MemoryMB: 192}})
	if err != nil || d.Replicas != 3 || d.Resources.MemoryMB != 192 || d.Resources.CPUCores != 1 {
		t.Fatalf("create: %+v %v", d, err)
	}
	if _, err := e.c.CreateDeployment(e.ctx, api.CreateDeploymentRequest{Name: "svc", Plugin: "web", Replicas: 1}); !apierr.Is(err, apierr.Conflict) {
		t.Fatalf("duplicate deployment: %v", err)
	}
	replicas := func(want ...string) {
		t.Helper()
		eventually(t, 10*time.Second, "replicas "+strings.Join(want, ","), func() bool {
			d, err := e.c.Deployment(e.ctx, "svc")
			return err == nil && strings.Join(d.VMs, ",") == strings.Join(want, ",")
		})
	}
	replicas("svc-1", "svc-2", "svc-3")
	vms, _ := e.c.ListVMs(e.ctx, api.VMFilter{Deployment: "svc"})
	for _, v := range vms {
		if v.Resources.MemoryMB != 192 || v.Deployment != "svc" {
			t.Fatalf("replica %+v", v)
		}
		if err := e.c.ReportAgent(e.ctx, v.Name, controllertest.Healthy(v.Name)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 5*time.Second, "current 3", func() bool {
		d, _ := e.c.Deployment(e.ctx, "svc")
		return d.Current == 3
	})

	// A crashed replica is recreated (a new run), the others are left alone.
	pid2 := vmPID(t, e, "svc-2")
	var last api.VM
	defer func() {
		if t.Failed() {
			t.Logf("svc-2: %+v", last)
			t.Logf("events: %s", eventTypes(e.events()))
		}
	}()
	if !e.ctl.Watching("svc-2") {
		t.Fatal("svc-2 is not watched")
	}
	if !e.rt.Kill("svc-2", nil) {
		t.Fatal("svc-2 has no run")
	}
	eventually(t, 10*time.Second, "svc-2 recreated", func() bool {
		v, err := e.c.VM(e.ctx, "svc-2")
		if v != nil {
			last = *v
		}
		return err == nil && v.PID != 0 && v.PID != pid2 && v.State == api.VMStarting
	})
	if e.rt.Starts("svc-1") != 1 || e.rt.Starts("svc-3") != 1 {
		t.Fatal("healthy replicas were restarted")
	}

	// Scale down from the highest index, freeing addresses.
	ip3 := vmIP(t, e, "svc-3")
	if d, err := e.c.ScaleDeployment(e.ctx, "svc", 1); err != nil || d.Replicas != 1 {
		t.Fatalf("scale: %+v %v", d, err)
	}
	replicas("svc-1")
	if _, ok := e.lease("svc-3"); ok {
		t.Fatal("svc-3 kept its lease")
	}
	// The two go at once (replicas stop in parallel), in either order.
	if got := eventTypes(e.events(api.EventVMDeleted)); !strings.HasSuffix(got, "vm.deleted(svc-3) vm.deleted(svc-2)") && !strings.HasSuffix(got, "vm.deleted(svc-2) vm.deleted(svc-3)") {
		t.Fatalf("scale down deleted: %s", got)
	}
	// Scale up reuses the freed addresses.
	if _, err := e.c.ScaleDeployment(e.ctx, "svc", 2); err != nil {
		t.Fatal(err)
	}
	replicas("svc-1", "svc-2")
	if evs := e.events(api.EventDeploymentScaled); len(evs) != 2 || !strings.Contains(string(evs[0].Data), `"from":3`) || !strings.Contains(string(evs[0].Data), `"to":1`) {
		t.Fatalf("scaled events: %s %s", eventTypes(evs), evs[0].Data)
	}
	_ = ip3
	code, body := e.do("POST", "/api/v1/deployments/svc/scale", "application/json", []byte(`{"replicas":"3"}`))
	e.apiErr(code, body, 400, apierr.InvalidInput)
	if _, err := e.c.ScaleDeployment(e.ctx, "nope", 1); !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("scale unknown: %v", err)
	}

	// The plugin cannot be removed while the deployment uses it.
	if _, err := e.c.RemovePlugin(e.ctx, "web"); !apierr.Is(err, apierr.Conflict) {
		t.Fatalf("remove a deployed plugin: %v", err)
	}
	ds, err := e.c.ListDeployments(e.ctx)
	if err != nil || len(ds) != 1 {
		t.Fatalf("list: %+v %v", ds, err)
	}
	d, err = e.c.DeleteDeployment(e.ctx, "svc")
	if err != nil || d.Name != "svc" {
		t.Fatalf("delete: %+v %v", d, err)
	}
	if vms, _ := e.c.ListVMs(e.ctx, api.VMFilter{Deployment: "svc"}); len(vms) != 0 {
		t.Fatalf("replicas left: %+v", vms)
	}
	if _, err := e.c.Deployment(e.ctx, "svc"); !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("after delete: %v", err)
	}
	// Only the standalone VM's lease is left.
	var leases []string
	for _, l := range e.snapshot().Leases {
		leases = append(leases, l)
	}
	if strings.Join(leases, ",") != "clash-2:192.168.127.100" {
		t.Fatalf("leases left: %v", leases)
	}
}

func vmPID(t *testing.T, e *env, name string) int {
	v, err := e.c.VM(e.ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return v.PID
}

func vmIP(t *testing.T, e *env, name string) string {
	v, err := e.c.VM(e.ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return v.IP
}

func TestListFiltersAndHealthz(t *testing.T) {
	e := newEnv(t)
	e.install("web")
	e.install("db")
	for _, r := range []api.CreateVMRequest{{Name: "a", Plugin: "web"}, {Name: "b", Plugin: "db"}, {Name: "c", Plugin: "web"}} {
		if _, err := e.c.CreateVM(e.ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.c.StopVM(e.ctx, "c"); err != nil {
		t.Fatal(err)
	}
	names := func(f api.VMFilter) string {
		vms, err := e.c.ListVMs(e.ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		var s []string
		for _, v := range vms {
			s = append(s, v.Name)
		}
		return strings.Join(s, ",")
	}
	if got := names(api.VMFilter{}); got != "a,b,c" {
		t.Fatal(got)
	}
	if got := names(api.VMFilter{Plugin: "web"}); got != "a,c" {
		t.Fatal(got)
	}
	if got := names(api.VMFilter{State: api.VMStopped}); got != "c" {
		t.Fatal(got)
	}
	code, body := e.do("GET", "/api/v1/vms?state=sleeping", "", nil)
	e.apiErr(code, body, 400, apierr.InvalidInput)
	h, err := e.c.Health(e.ctx)
	if err != nil || h.Status != "ok" || !h.Ready || h.LastEventID == 0 {
		t.Fatalf("health: %+v %v", h, err)
	}
	// The guest pool (volant-kubelet's podCIDR).
	if n := h.Network; n == nil || n.Subnet != ipam.DefaultSubnet || n.Gateway != "192.168.127.1" || n.RangeStart != "192.168.127.100" {
		t.Fatalf("health network: %+v", h.Network)
	}
	code, body = e.do("GET", "/api/v1/nothing", "", nil)
	e.apiErr(code, body, 404, apierr.NotFound)
	code, body = e.do("GET", "/api/v1/vms/a/wait?timeout=forever", "", nil)
	e.apiErr(code, body, 400, apierr.InvalidInput)
	code, body = e.do("GET", "/api/v1/vms/a/wait?state=sleeping", "", nil)
	e.apiErr(code, body, 400, apierr.InvalidInput)
}

// TestVMListSeesEveryChange: GET /api/v1/vms answers from a cache while
// nothing changes, and every change (create, a health report, stop,
// delete) is in the very next answer, for the whole list and a filter.
func TestVMListSeesEveryChange(t *testing.T) {
	e := newEnv(t, func(c *controller.Config, _ *server.Options) { c.HealthInterval = time.Hour })
	e.install("web")
	list := func(q string) api.VMList {
		t.Helper()
		code, body := e.do("GET", "/api/v1/vms"+q, "", nil)
		if code != 200 {
			t.Fatalf("GET /api/v1/vms%s: %d %s", q, code, body)
		}
		var l api.VMList
		if err := json.Unmarshal(body, &l); err != nil {
			t.Fatal(err)
		}
		return l
	}
	state := func(q string) string {
		t.Helper()
		var s []string
		for _, v := range list(q).VMs {
			s = append(s, v.Name+"="+string(v.State)+"/"+string(v.Health))
		}
		return strings.Join(s, ",")
	}
	if got := state(""); got != "" {
		t.Fatalf("before any VM: %q", got)
	}
	for i := 0; i < 3; i++ {
		v, err := e.c.CreateVM(e.ctx, api.CreateVMRequest{Name: fmt.Sprintf("w%d", i), Plugin: "web"})
		if err != nil {
			t.Fatal(err)
		}
		if n := len(list("").VMs); n != i+1 {
			t.Fatalf("after creating %s the list has %d VMs", v.Name, n)
		}
		if n := len(list("?plugin=web").VMs); n != i+1 {
			t.Fatalf("after creating %s the filtered list has %d VMs", v.Name, n)
		}
	}
	if got := state(""); got != "w0=starting/unknown,w1=starting/unknown,w2=starting/unknown" {
		t.Fatalf("created: %q", got)
	}
	if err := e.ctl.Report(e.ctx, "w1", controllertest.Healthy("w1"), netip.Addr{}); err != nil {
		t.Fatal(err)
	}
	if got := state(""); got != "w0=starting/unknown,w1=running/healthy,w2=starting/unknown" {
		t.Fatalf("after w1's healthy report: %q", got)
	}
	if got := state("?state=running"); got != "w1=running/healthy" {
		t.Fatalf("running after w1's healthy report: %q", got)
	}
	if _, err := e.c.StopVM(e.ctx, "w1"); err != nil {
		t.Fatal(err)
	}
	if got := state("?state=running"); got != "" {
		t.Fatalf("running after w1 stopped: %q", got)
	}
	if _, err := e.c.DeleteVM(e.ctx, "w0"); err != nil {
		t.Fatal(err)
	}
	if got := state(""); got != "w1=stopped/,w2=starting/unknown" {
		t.Fatalf("after deleting w0: %q", got)
	}
}

func TestAgentPathsMatchTheRoutes(t *testing.T) {
	// kestrel builds its URLs with agentapi; the daemon must serve them.
	e := newEnv(t)
	e.install("web")
	code, _ := e.do("GET", agentapi.ManifestPath("web"), "", nil)
	if code != 200 {
		t.Fatalf("GET %s: %d", agentapi.ManifestPath("web"), code)
	}
	code, body := e.do("POST", agentapi.ReportPath("nope"), "application/json", []byte(`{}`))
	e.apiErr(code, body, 404, apierr.NotFound)
}

// httptestRecorder is a minimal ResponseWriter (httptest.ResponseRecorder
// without the flush bookkeeping).
type httptestRecorder struct {
	code int
	hdr  http.Header
	body strings.Builder
}

func newRecorder() *httptestRecorder { return &httptestRecorder{hdr: http.Header{}} }

func (r *httptestRecorder) Header() http.Header { return r.hdr }
func (r *httptestRecorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = 200
	}
	return r.body.Write(b)
}
func (r *httptestRecorder) WriteHeader(c int) {
	if r.code == 0 {
		r.code = c
	}
}

// TestMethodNotAllowed: a method a known route does not serve is 405 with
// an Allow header and the JSON error object, not 404; unknown paths stay
// 404.
func TestMethodNotAllowed(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct{ method, path, allow string }{
		{"PUT", "/api/v1/vms/web1", "DELETE, GET"},
		{"PATCH", "/api/v1/vms/web1", "DELETE, GET"},
		{"PUT", "/api/v1/plugins", "GET, POST"},
		{"PUT", "/api/v1/deployments/svc", "DELETE, GET, PATCH"},
		{"DELETE", "/api/v1/vms", "GET, POST"},
		{"GET", "/api/v1/vms/web1/start", "POST"},
		{"POST", "/healthz", "GET"},
	} {
		req, _ := http.NewRequest(tc.method, e.ts.URL+tc.path, strings.NewReader(`{}`))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		e.apiErr(resp.StatusCode, body, http.StatusMethodNotAllowed, apierr.MethodNotAllowed)
		if got := resp.Header.Get("Allow"); got != tc.allow {
			t.Errorf("%s %s: Allow %q, want %q", tc.method, tc.path, got, tc.allow)
		}
	}
	code, body := e.do("PUT", "/api/v1/nothing", "application/json", []byte(`{}`))
	e.apiErr(code, body, 404, apierr.NotFound)
}
