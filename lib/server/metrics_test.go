package server_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/controller/controllertest"
	"github.com/volantvm/volant/lib/server"
)

// scrape GETs url and parses the text format.
func scrape(t *testing.T, url, token string) map[string]*dto.MetricFamily {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s %s", url, resp.Status, b)
	}
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing the scrape: %v", err)
	}
	return fams
}

// value is the value of the series of family name with exactly these
// labels (and maybe others), and whether there is one.
func value(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

// TestMetrics (fakes): GET /metrics on the API answers the daemon's series
// and each VM's, labelled vm, plugin and deployment, with values from the
// controller's state and kestrel's last report; the boot histogram counts
// create → running; requests are timed by route and code; block counters
// come from the runtime on the next scrape; the metrics-only handler wants
// the token unless built without auth, and serves nothing else.
func TestMetrics(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan struct{})
	go func() { e.srv.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	e.install("web")
	if _, err := e.c.CreateDeployment(e.ctx, api.CreateDeploymentRequest{Name: "svc", Plugin: "web", Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.CreateVM(e.ctx, api.CreateVMRequest{Name: "solo", Plugin: "web"}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"svc-1", "solo"} {
		eventually(t, 5*time.Second, n+" has an address", func() bool { v, err := e.c.VM(e.ctx, n); return err == nil && v.IP != "" })
		v, _ := e.c.VM(e.ctx, n)
		st := controllertest.Healthy(n)
		st.Workload.Restarts = 3
		st.Memory = &agentapi.MemoryStatus{GuestTotalKiB: 1000, GuestAvailableKiB: 400}
		e.pr.Set(netip.MustParseAddr(v.IP), &st)
	}
	for _, n := range []string{"svc-1", "solo"} {
		if _, err := e.c.WaitVM(e.ctx, n, api.VMRunning, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.c.PauseVM(e.ctx, "solo"); err != nil {
		t.Fatal(err)
	}

	url := e.ts.URL + "/metrics"
	var fams map[string]*dto.MetricFamily
	eventually(t, 5*time.Second, "two boots observed and block counters read", func() bool {
		fams = scrape(t, url, "")
		n, _ := value(fams, "volant_vm_boot_duration_seconds", "plugin", "web")
		_, block := value(fams, "volant_vm_block_read_ops_total", "vm", "svc-1", "device", "disk0")
		return n == 2 && block
	})
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"volant_vms", []string{"state", "running"}, 1},
		{"volant_vms", []string{"state", "paused"}, 1},
		{"volant_vms", []string{"state", "crashed"}, 0},
		{"volant_vm_state", []string{"vm", "solo", "plugin", "web", "deployment", "", "state", "paused"}, 1},
		{"volant_vm_state", []string{"vm", "svc-1", "plugin", "web", "deployment", "svc", "state", "running"}, 1},
		{"volant_vm_healthy", []string{"vm", "svc-1", "deployment", "svc"}, 1},
		{"volant_vm_healthy", []string{"vm", "solo"}, 1}, // paused, not unhealthy
		{"volant_vm_workload_restarts_total", []string{"vm", "svc-1"}, 3},
		{"volant_vm_guest_memory_total_bytes", []string{"vm", "svc-1"}, 1000 * 1024},
		{"volant_vm_guest_memory_used_bytes", []string{"vm", "svc-1"}, 600 * 1024},
		{"volant_api_request_duration_seconds", []string{"route", "createVM", "code", "201"}, 1},
		{"volant_api_request_duration_seconds", []string{"route", "pauseVM", "code", "200"}, 1},
		{"volant_sse_subscribers", nil, 0},
		{"volant_boot_queue_length", nil, 0},
	} {
		got, ok := value(fams, c.name, c.labels...)
		if !ok || got != c.want {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	if n, ok := value(fams, "volant_reconcile_passes_total"); !ok || n < 1 {
		t.Errorf("reconcile passes: %v %v", n, ok)
	}
	if n, ok := value(fams, "volant_event_log_events"); !ok || n < 6 {
		t.Errorf("event log size: %v %v", n, ok)
	}
	if _, ok := value(fams, "go_goroutines"); !ok {
		t.Error("no Go runtime series")
	}

	// An open event stream counts.
	st, err := e.c.Events(e.ctx, api.EventOptions{})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "one SSE subscriber", func() bool {
		n, _ := value(scrape(t, url, ""), "volant_sse_subscribers")
		return n == 1
	})
	st.Close()

	// The metrics-only handler.
	for _, auth := range []bool{true, false} {
		e2 := newEnv(t, func(_ *controller.Config, o *server.Options) { o.Token = "0123456789abcdef0123456789abcdef" })
		ts := httptest.NewServer(e2.srv.MetricsHandler(auth))
		resp, err := http.Get(ts.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if want := map[bool]int{true: 401, false: 200}[auth]; resp.StatusCode != want {
			t.Errorf("metrics listener (auth %v) without a token: %s, want %d", auth, resp.Status, want)
		}
		if auth {
			if _, ok := value(scrape(t, ts.URL+"/metrics", "0123456789abcdef0123456789abcdef"), "volant_vms", "state", "running"); !ok {
				t.Error("no volant_vms with the token")
			}
		}
		resp, err = http.Get(ts.URL + "/api/v1/vms")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 404 && !(auth && resp.StatusCode == 401) {
			t.Errorf("metrics listener served /api/v1/vms: %s", resp.Status)
		}
		ts.Close()
	}
	if t.Failed() {
		var b strings.Builder
		for n := range fams {
			fmt.Fprintln(&b, n)
		}
		t.Log(b.String())
	}
}

// TestMetricsReconcileErrors (fakes): volant_reconcile_errors_total stays
// 0 while the reconciler's passes succeed and counts a replica it could
// not create (its hypervisor would not start).
func TestMetricsReconcileErrors(t *testing.T) {
	e := newEnv(t)
	e.rt.StartErr["bad-1"] = apierr.New(apierr.Unavailable, "the hypervisor would not start")
	e.install("web")
	url := e.ts.URL + "/metrics"
	counter := func(name string) float64 {
		t.Helper()
		n, ok := value(scrape(t, url, ""), name)
		if !ok {
			t.Fatalf("no %s", name)
		}
		return n
	}
	if _, err := e.c.CreateDeployment(e.ctx, api.CreateDeploymentRequest{Name: "good", Plugin: "web", Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "good-1 has an address", func() bool { v, err := e.c.VM(e.ctx, "good-1"); return err == nil && v.IP != "" })
	v, _ := e.c.VM(e.ctx, "good-1")
	healthy := controllertest.Healthy("good-1")
	e.pr.Set(netip.MustParseAddr(v.IP), &healthy)
	if _, err := e.c.WaitVM(e.ctx, "good-1", api.VMRunning, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	passes := counter("volant_reconcile_passes_total")
	eventually(t, 20*time.Second, "two more passes", func() bool { return counter("volant_reconcile_passes_total") >= passes+2 })
	if n := counter("volant_reconcile_errors_total"); n != 0 {
		t.Fatalf("%v reconcile errors with every replica made", n)
	}

	if _, err := e.c.CreateDeployment(e.ctx, api.CreateDeploymentRequest{Name: "bad", Plugin: "web", Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the failed replica counted", func() bool { return counter("volant_reconcile_errors_total") >= 1 })
	if d, err := e.c.Deployment(e.ctx, "bad"); err != nil || !strings.Contains(d.Error, "the hypervisor would not start") {
		t.Errorf("deployment bad: %+v %v, want its error", d, err)
	}
}

// TestMetricsBootQueue (fakes): while the boot slots (--max-booting) are
// held by guests not yet healthy, the replicas waiting for one show in
// volant_boot_queue_length and the slots in volant_boots_in_progress; a
// guest turning healthy hands its slot on, and the queue empties.
func TestMetricsBootQueue(t *testing.T) {
	e := newEnv(t, func(c *controller.Config, _ *server.Options) { c.MaxBooting = 1 })
	e.install("web")
	if _, err := e.c.CreateDeployment(e.ctx, api.CreateDeploymentRequest{Name: "svc", Plugin: "web", Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	url := e.ts.URL + "/metrics"
	boots := func(queued, booting float64) func() bool {
		return func() bool {
			fams := scrape(t, url, "")
			q, okq := value(fams, "volant_boot_queue_length")
			b, okb := value(fams, "volant_boots_in_progress")
			return okq && okb && q == queued && b == booting
		}
	}
	eventually(t, 20*time.Second, "one replica booting, two queued", boots(2, 1))
	var vms []api.VM
	started := func() []api.VM {
		var out []api.VM
		for _, v := range vms {
			if v.PID != 0 {
				out = append(out, v)
			}
		}
		return out
	}
	eventually(t, 20*time.Second, "a replica's hypervisor started", func() bool {
		var err error
		vms, err = e.c.ListVMs(e.ctx, api.VMFilter{Deployment: "svc"})
		return err == nil && len(started()) > 0
	})
	if len(vms) != 3 || len(started()) != 1 {
		t.Fatalf("with one boot slot, replicas %+v", vms)
	}
	healthy := func(v api.VM) {
		st := controllertest.Healthy(v.Name)
		e.pr.Set(netip.MustParseAddr(v.IP), &st)
	}
	healthy(started()[0])
	eventually(t, 20*time.Second, "the slot handed on: one booting, one queued", boots(1, 1))
	for _, v := range vms {
		healthy(v)
	}
	eventually(t, 20*time.Second, "nothing booting or queued", boots(0, 0))
}

// BenchmarkScrape times GET /metrics with 150 VMs on the fakes (no /proc,
// taps or hypervisor behind them: what the collector and the encoding
// cost by themselves), as Prometheus asks (gzip) and as curl does.
func BenchmarkScrape(b *testing.B) {
	e := newEnv(b, func(c *controller.Config, _ *server.Options) {
		c.HealthInterval = time.Hour
		c.Logger = slog.New(slog.DiscardHandler)
	})
	e.install("web")
	for i := range 150 { // the default pool holds 155
		if _, err := e.c.CreateVM(e.ctx, api.CreateVMRequest{Name: fmt.Sprintf("s%03d", i), Plugin: "web"}); err != nil {
			b.Fatal(err)
		}
	}
	h := e.srv.MetricsHandler(false)
	for _, enc := range []string{"gzip", "identity"} {
		b.Run(enc, func(b *testing.B) {
			for b.Loop() {
				req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
				req.Header.Set("Accept-Encoding", enc)
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				if w.Code != 200 || !strings.Contains(w.Body.String(), "s149") && enc == "identity" {
					b.Fatalf("%d %.200s", w.Code, w.Body.String())
				}
			}
		})
	}
}

// TestMetricsFreshness: a scrape shows a VM's change committed since the
// last scrape (the VM list is kept only while the store's generation
// holds), and block counters are asked for again once older than the
// refresh age, not before.
func TestMetricsFreshness(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan struct{})
	go func() { e.srv.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	e.install("web")
	if _, err := e.c.CreateVM(e.ctx, api.CreateVMRequest{Name: "solo", Plugin: "web"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "an address", func() bool { v, err := e.c.VM(e.ctx, "solo"); return err == nil && v.IP != "" })
	v, _ := e.c.VM(e.ctx, "solo")
	st := controllertest.Healthy("solo")
	e.pr.Set(netip.MustParseAddr(v.IP), &st)
	if _, err := e.c.WaitVM(e.ctx, "solo", api.VMRunning, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	url := e.ts.URL + "/metrics"
	state := func() string {
		for _, m := range scrape(t, url, "")["volant_vm_state"].GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "state" {
					return lp.GetValue()
				}
			}
		}
		return ""
	}
	if s := state(); s != "running" {
		t.Fatalf("state %q before the pause", s)
	}
	if _, err := e.c.PauseVM(e.ctx, "solo"); err != nil {
		t.Fatal(err)
	}
	if s := state(); s != "paused" {
		t.Errorf("the scrape after the pause says %q", s)
	}

	// Block counters: the fake's read_ops counts the runtime's calls.
	const age = 2 * time.Second
	server.SetBlockRefresh(e.srv, age)
	readOps := func() float64 {
		n, _ := value(scrape(t, url, ""), "volant_vm_block_read_ops_total", "vm", "solo")
		return n
	}
	var first float64
	eventually(t, 5*time.Second, "block counters", func() bool { first = readOps(); return first > 0 })
	t0 := time.Now()
	for time.Since(t0) < age/4 {
		if n := readOps(); n != first {
			t.Fatalf("block counters asked for again within the refresh age: %v then %v", first, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	eventually(t, 5*time.Second, "block counters refreshed after the refresh age", func() bool { return readOps() > first })
}
