package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/testutil/netnstest"
	"github.com/volantvm/volant/lib/vmm/qemu"
)

// promQuery asks the Prometheus server at base (inside ns) for an instant
// vector and returns its samples: labels and value, with the sample time.
type promSample struct {
	Metric map[string]string
	Value  float64
	At     time.Time
}

func promQuery(t testing.TB, ns *netnstest.NS, base, q string) []promSample {
	t.Helper()
	return promQueryAt(t, ns, base, q, time.Time{})
}

// promQueryAt evaluates q at time at (now when zero): queries compared
// with each other must see the same window.
func promQueryAt(t testing.TB, ns *netnstest.NS, base, q string, at time.Time) []promSample {
	t.Helper()
	u := base + "/api/v1/query?query=" + url.QueryEscape(q)
	if !at.IsZero() {
		u += "&time=" + strconv.FormatFloat(float64(at.UnixMilli())/1000, 'f', 3, 64)
	}
	body, err := getIn(ns, u, 10*time.Second)
	if err != nil {
		t.Fatalf("query %s: %v %s", q, err, body)
	}
	var r struct {
		Status string
		Data   struct {
			Result []struct {
				Metric map[string]string
				Value  [2]any
			}
		}
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil || r.Status != "success" {
		t.Fatalf("query %s: %v %s", q, err, body)
	}
	var out []promSample
	for _, s := range r.Data.Result {
		ts, _ := s.Value[0].(float64)
		str, _ := s.Value[1].(string)
		v, err := strconv.ParseFloat(str, 64)
		if err != nil {
			t.Fatalf("query %s: value %v", q, s.Value)
		}
		sec := int64(ts)
		out = append(out, promSample{s.Metric, v, time.Unix(sec, int64((ts-float64(sec))*1e9))})
	}
	return out
}

// procStat reads a process's CPU seconds (utime+stime) and resident bytes
// from /proc/<pid>/stat, parsed here, apart from volantd's reader.
func procStat(t testing.TB, pid int) (cpu float64, rss float64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:])) // from field 3, state
	ut, _ := strconv.ParseFloat(f[11], 64)                                   // field 14
	st, _ := strconv.ParseFloat(f[12], 64)                                   // field 15
	pages, _ := strconv.ParseFloat(f[21], 64)                                // field 24
	return (ut + st) / 100, pages * float64(os.Getpagesize())                // USER_HZ is 100 on Linux
}

// blockstats asks the QEMU of a VM of volantd's (run directories under
// runRoot) for each drive's bytes read and written, over its QMP socket.
func blockstats(t testing.TB, runRoot, vm string) map[string][2]float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, err := qemu.DialQMP(ctx, filepath.Join(launch.VMMDir(filepath.Join(runRoot, vm)), launch.SocketName))
	if err != nil {
		t.Fatalf("%s: %v", vm, err)
	}
	defer q.Close()
	var stats []struct {
		Device string `json:"device"`
		QDev   string `json:"qdev"`
		Stats  struct {
			RdBytes float64 `json:"rd_bytes"`
			WrBytes float64 `json:"wr_bytes"`
		} `json:"stats"`
	}
	if err := q.Execute(ctx, "query-blockstats", nil, &stats); err != nil {
		t.Fatalf("%s: %v", vm, err)
	}
	out := map[string][2]float64{}
	for _, s := range stats {
		dev := s.Device
		if dev == "" {
			dev = s.QDev
		}
		out[dev] = [2]float64{s.Stats.RdBytes, s.Stats.WrBytes}
	}
	return out
}

// TestVMMetricsPrometheus runs Debian's real Prometheus server against
// volantd's --metrics-listen, in a namespace of their own, for a minute
// while a deployment of two real guests (QEMU TCG) serves requests; then
// asks Prometheus's HTTP API for per-VM series and checks them against
// /proc, the taps' counters and QEMU's block counters (each replica
// mounts a volume of its own), and reports the scrape durations
// Prometheus measured.
func TestVMMetricsPrometheus(t *testing.T) {
	h := newQEMUHost(t, "prometheus", "mkfs.ext4")
	k, kestrel := h.k, h.kestrel
	d := h.daemon(t, "--metrics-listen", "127.0.0.1:9100", "--metrics-no-auth", "--insecure-tcp")
	ctx := context.Background()
	if _, err := d.c.InstallPlugin(ctx, svcPlugin(t, filepath.Join(h.dir, "data"), k.ModulesDir, kestrel, "1", "/health"), client.InstallOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.c.CreateDeployment(ctx, api.CreateDeploymentRequest{Name: "svc", Plugin: "svc", Replicas: 2,
		VolumeTemplates: []api.VolumeTemplate{{Name: "cache", Size: "16MiB", Path: "/cache"}}}); err != nil {
		t.Fatal(err)
	}
	t1 := time.Now()
	for _, n := range []string{"svc-1", "svc-2"} {
		for {
			_, err := d.c.WaitVM(ctx, n, api.VMRunning, 300*time.Second)
			if err == nil {
				break
			}
			if time.Since(t1) > 300*time.Second { // the replica may not exist yet
				t.Fatalf("%s: %v", n, err)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	t.Logf("2 replicas running after %s", time.Since(t1).Round(time.Millisecond))
	// QEMU's block counters before any scrape: the guest has mounted its
	// volume (a read), and every block series Prometheus gets is volantd's
	// reading of them since.
	runRoot := filepath.Join(h.dir, "run")
	blockBefore := map[string]map[string][2]float64{}
	for _, n := range []string{"svc-1", "svc-2"} {
		blockBefore[n] = blockstats(t, runRoot, n)
		read := 0.0
		for _, b := range blockBefore[n] {
			read += b[0]
		}
		if read == 0 {
			t.Fatalf("%s: QEMU counted no read on any drive after the guest mounted its volume: %v", n, blockBefore[n])
		}
	}

	cfg := filepath.Join(h.dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(`global:
  scrape_interval: 2s
  scrape_timeout: 2s
scrape_configs:
  - job_name: volantd
    static_configs:
      - targets: ["127.0.0.1:9100"]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	prom := exec.Command("ip", "netns", "exec", h.ns.Name, "prometheus", "--config.file="+cfg,
		"--storage.tsdb.path="+filepath.Join(h.dir, "tsdb"), "--web.listen-address=127.0.0.1:9091", "--log.level=warn")
	plog, err := os.Create(filepath.Join(h.dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	prom.Stdout, prom.Stderr = plog, plog
	prom.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := prom.Start(); err != nil {
		t.Fatal(err)
	}
	promDone := make(chan struct{})
	go func() { prom.Wait(); close(promDone) }()
	t.Cleanup(func() {
		prom.Process.Signal(syscall.SIGTERM)
		select {
		case <-promDone:
		case <-time.After(20 * time.Second):
			prom.Process.Kill()
			<-promDone
		}
		plog.Close()
		if t.Failed() {
			b, _ := os.ReadFile(plog.Name())
			t.Logf("prometheus log:\n%s", tail(string(b), 40))
		}
	})
	const base = "http://127.0.0.1:9091"

	// A minute of scrapes, with requests to the replicas meanwhile.
	vms := map[string]*api.VM{}
	for _, n := range []string{"svc-1", "svc-2"} {
		vms[n], _ = d.c.VM(ctx, n)
	}
	t0 := time.Now()
	requests := 0
	for time.Since(t0) < 60*time.Second {
		for _, n := range []string{"svc-1", "svc-2"} {
			if _, err := getIn(h.ns, "http://"+vms[n].IP+"/name.txt", 5*time.Second); err == nil {
				requests++
			}
		}
		time.Sleep(time.Second)
	}
	t.Logf("%d requests to the replicas during %s of scrapes", requests, time.Since(t0).Round(time.Second))

	// One evaluation time for both: a scrape landing between two queries
	// would make the second window hold one more.
	at := time.Now()
	ups := promQueryAt(t, h.ns, base, `count_over_time(up{job="volantd"}[1m])`, at)
	good := promQueryAt(t, h.ns, base, `sum_over_time(up{job="volantd"}[1m])`, at)
	if len(ups) != 1 || len(good) != 1 || ups[0].Value < 20 || good[0].Value != ups[0].Value {
		t.Fatalf("scrapes in the last minute: %+v, successful: %+v (want >= 20, all up)", ups, good)
	}
	dur := promQuery(t, h.ns, base, `avg_over_time(scrape_duration_seconds{job="volantd"}[1m])`)
	mx := promQuery(t, h.ns, base, `max_over_time(scrape_duration_seconds{job="volantd"}[1m])`)
	t.Logf("Prometheus: %v scrapes in the last minute, all up; scrape duration avg %.1f ms, max %.1f ms (2 VMs)",
		ups[0].Value, dur[0].Value*1000, mx[0].Value*1000)

	// Per-VM series against /proc: the CPU time Prometheus last scraped
	// is at most what /proc says now, and no further behind than the time
	// since that scrape could have added; memory within 25 %.
	for _, n := range []string{"svc-1", "svc-2"} {
		v, err := d.c.VM(ctx, n)
		if err != nil || v.PID == 0 {
			t.Fatalf("%s: %+v %v", n, v, err)
		}
		sel := fmt.Sprintf(`volant_vm_vmm_cpu_seconds_total{vm=%q,plugin="svc",deployment="svc"}`, n)
		cpu := promQuery(t, h.ns, base, sel)
		at := promQuery(t, h.ns, base, "timestamp("+sel+")") // when it was scraped
		rss := promQuery(t, h.ns, base, fmt.Sprintf(`volant_vm_vmm_resident_memory_bytes{vm=%q}`, n))
		procCPU, procRSS := procStat(t, v.PID)
		if len(cpu) != 1 || len(rss) != 1 || len(at) != 1 {
			t.Fatalf("%s: cpu %+v rss %+v", n, cpu, rss)
		}
		sec := int64(at[0].Value)
		cpu[0].At = time.Unix(sec, int64((at[0].Value-float64(sec))*1e9))
		lag := time.Since(cpu[0].At) + time.Second
		maxGain := lag.Seconds() * float64(runtime.NumCPU())
		t.Logf("%s (pid %d): cpu %.2f s in Prometheus (%s old), %.2f s in /proc; rss %.1f MiB vs %.1f MiB",
			n, v.PID, cpu[0].Value, time.Since(cpu[0].At).Round(time.Millisecond), procCPU, rss[0].Value/(1<<20), procRSS/(1<<20))
		if cpu[0].Value <= 0 || cpu[0].Value > procCPU+0.01 || procCPU-cpu[0].Value > maxGain {
			t.Errorf("%s: cpu %.2f s in Prometheus, %.2f s in /proc (at most %.2f s apart)", n, cpu[0].Value, procCPU, maxGain)
		}
		if r := rss[0].Value / procRSS; r < 0.75 || r > 1.25 {
			t.Errorf("%s: rss %.0f in Prometheus, %.0f in /proc", n, rss[0].Value, procRSS)
		}

		// The tap's counters, from inside volantd's namespace: the
		// guest's receive is the tap's transmit.
		rx := promQuery(t, h.ns, base, fmt.Sprintf(`volant_vm_network_receive_bytes_total{vm=%q}`, n))
		out, err := h.ns.Output("cat", "/sys/class/net/"+v.Tap+"/statistics/tx_bytes")
		if err != nil {
			t.Fatal(err)
		}
		tapTx, _ := strconv.ParseFloat(strings.TrimSpace(out), 64)
		if len(rx) != 1 || rx[0].Value <= 0 || rx[0].Value > tapTx {
			t.Errorf("%s: receive bytes %+v, tap tx_bytes now %.0f", n, rx, tapTx)
		}
		// Packets both ways, against the tap; the guest's transmit is
		// the tap's receive.
		for _, c := range []struct{ series, stat string }{
			{"volant_vm_network_receive_packets_total", "tx_packets"},
			{"volant_vm_network_transmit_packets_total", "rx_packets"},
			{"volant_vm_network_transmit_bytes_total", "rx_bytes"},
		} {
			got := promQuery(t, h.ns, base, fmt.Sprintf(`%s{vm=%q}`, c.series, n))
			out, err := h.ns.Output("cat", "/sys/class/net/"+v.Tap+"/statistics/"+c.stat)
			if err != nil {
				t.Fatal(err)
			}
			now, _ := strconv.ParseFloat(strings.TrimSpace(out), 64)
			if len(got) != 1 || got[0].Value <= 0 || got[0].Value > now {
				t.Errorf("%s: %s %+v, tap %s now %.0f", n, c.series, got, c.stat, now)
			}
		}
		// Workload restarts as kestrel reports them (its workload has not
		// restarted: the series is there, at 0, as the API says).
		restarts := promQuery(t, h.ns, base, fmt.Sprintf(`volant_vm_workload_restarts_total{vm=%q,plugin="svc",deployment="svc"}`, n))
		if v.Agent == nil || len(restarts) != 1 || restarts[0].Value != float64(v.Agent.Workload.Restarts) {
			t.Errorf("%s: workload restarts %+v, the API's agent status %+v", n, restarts, v.Agent)
		}
		healthy := promQuery(t, h.ns, base, fmt.Sprintf(`volant_vm_healthy{vm=%q}`, n))
		if len(healthy) != 1 || healthy[0].Value != 1 {
			t.Errorf("%s: healthy %+v", n, healthy)
		}
		mem := promQuery(t, h.ns, base, fmt.Sprintf(`volant_vm_guest_memory_used_bytes{vm=%q}`, n))
		if len(mem) != 1 || mem[0].Value <= 0 || mem[0].Value > 128<<20 {
			t.Errorf("%s: guest memory used %+v (a 128 MiB guest)", n, mem)
		}
		t.Logf("%s: guest memory used %.1f MiB, %0.f bytes received", n, mem[0].Value/(1<<20), rx[0].Value)

		// Block bytes, per drive: what Prometheus last scraped lies
		// between QEMU's count before the scrapes and its count now
		// (asked after the queries).
		got := map[string][2][]promSample{}
		for dev := range blockBefore[n] {
			for i, series := range []string{"volant_vm_block_read_bytes_total", "volant_vm_block_write_bytes_total"} {
				e := got[dev]
				e[i] = promQuery(t, h.ns, base, fmt.Sprintf(`%s{vm=%q,plugin="svc",deployment="svc",device=%q}`, series, n, dev))
				got[dev] = e
			}
		}
		after := blockstats(t, runRoot, n)
		for dev, b0 := range blockBefore[n] {
			for i, what := range []string{"read", "written"} {
				s := got[dev][i]
				if len(s) != 1 || s[0].Value < b0[i] || s[0].Value > after[dev][i] {
					t.Errorf("%s %s: bytes %s %+v in Prometheus; QEMU counted %.0f before the scrapes, %.0f now", n, dev, what, s, b0[i], after[dev][i])
					continue
				}
				t.Logf("%s %s: %.0f bytes %s in Prometheus (QEMU: %.0f before, %.0f now)", n, dev, s[0].Value, what, b0[i], after[dev][i])
			}
		}
	}
	boots := promQuery(t, h.ns, base, `volant_vm_boot_duration_seconds_count{plugin="svc"}`)
	sum := promQuery(t, h.ns, base, `volant_vm_boot_duration_seconds_sum{plugin="svc"}`)
	if len(boots) != 1 || boots[0].Value != 2 {
		t.Errorf("boots observed: %+v", boots)
	} else {
		t.Logf("boot duration (create → running) mean %.1f s over 2 boots", sum[0].Value/2)
	}
	if vms := promQuery(t, h.ns, base, `volant_vms{state="running"}`); len(vms) != 1 || vms[0].Value != 2 {
		t.Errorf("running VMs: %+v", vms)
	}
	if reqs := promQuery(t, h.ns, base, `volant_api_request_duration_seconds_count{route="createDeployment",code="201"}`); len(reqs) != 1 || reqs[0].Value != 1 {
		t.Errorf("createDeployment requests: %+v", reqs)
	}

	if _, err := d.c.DeleteDeployment(ctx, "svc"); err != nil {
		t.Fatal(err)
	}
}
