package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/testutil/netnstest"
	"github.com/volantvm/volant/lib/vmm/cloudhypervisor/chtest"
)

// BenchmarkDaemonScale measures the control plane with many VMs: volantd's
// RSS idle and with N VMs tracked (default 200; each a real volant-launch
// process supervising the fake Cloud Hypervisor, with a real tap on a real
// bridge, all in a private network namespace), its CPU use while they idle,
// and GET /api/v1/vms with those N VMs under wrk from a second process on
// the namespace's loopback for a bounded time, side by side with the
// comparison: bench/volantd-scale/static ($VOLANT_BENCH_STATIC), a plain
// net/http server answering every request with the bytes volantd answered,
// in the same namespace. Rounds alternate which goes first.
// bench/volantd-scale/run.sh runs it and writes $VOLANT_BENCH_OUT. volantd
// is the real binary (guesttest.Command), not this test binary. It asserts
// nothing about speed.
func BenchmarkDaemonScale(b *testing.B) {
	netnstest.Require(b, "sh", "mount", "wrk")
	static := os.Getenv("VOLANT_BENCH_STATIC")
	if static == "" {
		b.Fatal("VOLANT_BENCH_STATIC must name the comparison server (bench/volantd-scale/run.sh builds it)")
	}
	n, rounds := 200, 3
	if v, err := strconv.Atoi(os.Getenv("VOLANT_BENCH_VMS")); err == nil && v > 0 {
		n = v
	}
	if v, err := strconv.Atoi(os.Getenv("VOLANT_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	dur := "10s"
	if v := os.Getenv("VOLANT_BENCH_WRK_DURATION"); v != "" {
		dur = v
	}
	h := newFakeHost(b)
	h.bin = realBins(b)
	const token = "b3nch-7f4e1a9c2d8b6e0f5a3c7d9e1b4f"
	port, staticPort := 18080, 18081
	// The default pool (.100-.254 of a /24) holds 155 guests; a /22 holds
	// 920 (.100 of the first /24 to the last host).
	d := h.start(b, "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--insecure-tcp", "--token", token, "--subnet", "192.168.124.0/22")
	ctx := context.Background()
	if _, err := d.c.InstallPlugin(ctx, h.manifest, client.InstallOptions{}); err != nil {
		b.Fatal(err)
	}
	time.Sleep(3 * time.Second) // let start-up work settle
	pid := d.cmd.Process.Pid
	idle := rssKiB(b, pid)
	idleCPU := cpuUse(b, pid, 10*time.Second)

	t0 := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if _, err := d.c.CreateVM(ctx, api.CreateVMRequest{Name: fmt.Sprintf("s%03d", i), Plugin: "app"}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatalf("creating VMs: %v", err)
	}
	created := time.Since(t0)
	waitTracked(b, d, n)
	time.Sleep(3 * time.Second)
	loaded := rssKiB(b, pid)
	prof := cpuProfile(b, "idle", 10)
	loadedCPU := cpuUse(b, pid, 10*time.Second)
	prof()

	// The comparison serves what volantd answers.
	body, err := rawGet(d.sock, "/api/v1/vms")
	if err != nil {
		b.Fatal(err)
	}
	// GET /metrics with the N VMs tracked (target < 50 ms), side by side
	// with GET /api/v1/vms one request at a time, alternating, on the
	// unix socket, one every 100 ms.
	var scrapeMS, listMS []float64
	var scrapeBytes, vmSeries int
	prof = cpuProfile(b, "scrape", 5)
	for i := 0; i < 21; i++ {
		for _, p := range []string{"/metrics", "/api/v1/vms"} {
			t0 := time.Now()
			body, err := rawGet(d.sock, p)
			ms := float64(time.Since(t0).Microseconds()) / 1000
			if err != nil {
				b.Fatal(err)
			}
			if p == "/metrics" {
				scrapeMS, scrapeBytes = append(scrapeMS, ms), len(body)
				vmSeries = strings.Count(string(body), "\nvolant_vm_state{")
			} else {
				listMS = append(listMS, ms)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	prof()
	if vmSeries != n {
		b.Fatalf("the scrape has %d volant_vm_state series, want %d", vmSeries, n)
	}
	fmt.Fprintf(os.Stderr, "GET /metrics with %d VMs: median %.1f ms, p95 %.1f ms (%d bytes); GET /api/v1/vms alone: median %.1f ms\n",
		n, median(scrapeMS), percentile(scrapeMS, 95), scrapeBytes, median(listMS))

	bodyFile := filepath.Join(b.TempDir(), "vms.json")
	if err := os.WriteFile(bodyFile, body, 0o644); err != nil {
		b.Fatal(err)
	}
	sc := h.ns.Cmd(static, fmt.Sprintf("127.0.0.1:%d", staticPort), bodyFile, token)
	sc.Stderr = os.Stderr
	if err := sc.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { sc.Process.Kill(); sc.Wait() }()
	staticRSS := 0

	type side struct {
		rps, p50, p99 []float64
		non2xx        int
	}
	var vd, st side
	run := func(s *side, p int) {
		url := fmt.Sprintf("http://127.0.0.1:%d/api/v1/vms", p)
		var out string
		for try := 0; ; try++ { // the comparison may still be starting
			out, err = h.ns.Output("wrk", "-t2", "-c16", "-d"+dur, "--latency", "-H", "Authorization: Bearer "+token, url)
			if err == nil || try == 20 {
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		if err != nil {
			b.Fatalf("wrk %s: %v\n%s", url, err, out)
		}
		s.rps = append(s.rps, wrkFloat(b, out, `Requests/sec:\s+([0-9.]+)`))
		s.p50 = append(s.p50, wrkMillis(b, out, "50%"))
		s.p99 = append(s.p99, wrkMillis(b, out, "99%"))
		if m := regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`).FindStringSubmatch(out); m != nil {
			v, _ := strconv.Atoi(m[1])
			s.non2xx += v
		}
	}
	for r := 0; r < rounds; r++ {
		if r%2 == 0 {
			run(&vd, port)
			run(&st, staticPort)
		} else {
			run(&st, staticPort)
			run(&vd, port)
		}
		if staticRSS == 0 {
			staticRSS = rssKiB(b, sc.Process.Pid)
		}
		fmt.Fprintf(os.Stderr, "round %d: volantd %.0f req/s (p99 %.1f ms), static %.0f req/s (p99 %.1f ms)\n",
			r+1, vd.rps[r], vd.p99[r], st.rps[r], st.p99[r])
	}
	if vd.non2xx+st.non2xx > 0 {
		b.Fatalf("non-2xx answers: volantd %d, static %d", vd.non2xx, st.non2xx)
	}
	sideJSON := func(s side) map[string]any {
		return map[string]any{
			"requests_per_second": median(s.rps), "latency_p50_ms": median(s.p50), "latency_p99_ms": median(s.p99),
			"samples": map[string]any{"requests_per_second": s.rps, "latency_p50_ms": s.p50, "latency_p99_ms": s.p99},
		}
	}
	res := map[string]any{
		"benchmark":                 "volantd-scale",
		"date":                      time.Now().UTC().Format(time.RFC3339),
		"vms":                       n,
		"rounds":                    rounds,
		"body_bytes":                len(body),
		"volantd_rss_idle_kib":      idle,
		"volantd_rss_with_vms_kib":  loaded,
		"rss_per_vm_kib":            float64(loaded-idle) / float64(n),
		"static_rss_kib":            staticRSS,
		"volantd_cpu_idle":          idleCPU,
		"volantd_cpu_with_vms_idle": loadedCPU,
		"create_all_seconds":        created.Seconds(),
		"get_vms_volantd":           sideJSON(vd),
		"get_vms_static":            sideJSON(st),
		"ratio_requests_per_second": round2(median(vd.rps) / median(st.rps)),
		"ratio_latency_p99":         round2(median(vd.p99) / median(st.p99)),
		"metrics_scrape_ms":         map[string]any{"median": median(scrapeMS), "p95": percentile(scrapeMS, 95), "samples": scrapeMS, "bytes": scrapeBytes, "target": "< 50 ms"},
		"get_vms_single_ms":         map[string]any{"median": median(listMS), "samples": listMS},
		"ratio_scrape_to_get_vms":   round2(median(scrapeMS) / median(listMS)),
		"wrk":                       "wrk -t2 -c16 -d" + dur + " --latency (second process, namespace loopback), rounds alternate which server goes first",
		"target":                    ">= 1000 req/s and p99 <= 50 ms for volantd; idle RSS <= 25 MiB",
		"host_loadavg":              loadavg(),
		"host_cpus":                 runtime.NumCPU(),
	}
	js, _ := json.MarshalIndent(res, "", "  ")
	fmt.Printf("%s\n", js)
	b.ReportMetric(median(vd.rps), "GET/vms/s")
	b.ReportMetric(float64(loaded)/1024, "MiB-with-VMs")
	if p := os.Getenv("VOLANT_BENCH_OUT"); p != "" {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, append(js, '\n'), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	// Stop the VMs before the namespace goes: 2N processes.
	var stopWG sync.WaitGroup
	for i := 0; i < n; i++ {
		stopWG.Add(1)
		sem <- struct{}{}
		go func() {
			defer stopWG.Done()
			defer func() { <-sem }()
			d.c.DeleteVM(ctx, fmt.Sprintf("s%03d", i))
		}()
	}
	stopWG.Wait()
}

// cpuProfile, when volantd serves net/http/pprof on the unix socket
// $VOLANTD_PPROF (built with -tags pprof, see cmd/volantd/pprof.go),
// takes a CPU profile of the next seconds into
// $VOLANT_BENCH_PROFILE_DIR/volantd-<name>.pprof; wait waits for it.
func cpuProfile(t testing.TB, name string, seconds int) (wait func()) {
	sock, dir := os.Getenv("VOLANTD_PPROF"), os.Getenv("VOLANT_BENCH_PROFILE_DIR")
	if sock == "" || dir == "" {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		body, err := rawGetTimeout(sock, fmt.Sprintf("/debug/pprof/profile?seconds=%d", seconds), time.Duration(seconds+30)*time.Second)
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, "volantd-"+name+".pprof"), body, 0o644)
		}
		if err != nil {
			t.Logf("profile %s: %v", name, err)
		}
	}()
	return func() { <-done }
}

// realBins is a directory with the real volantd and volant-launch (from
// $VOLANT_BIN, or built from this checkout) and this test binary as the
// fake cloud-hypervisor, for benchmarks that measure volantd itself.
func realBins(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for name, target := range map[string]string{
		"volantd":       guesttest.Command(t, "volantd"),
		"volant-launch": guesttest.Command(t, "volant-launch"),
		chtest.Name:     self,
	} {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// waitTracked waits until n VMs have a supervised hypervisor.
func waitTracked(t testing.TB, d *volantdProc, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Minute); ; {
		vms, err := d.c.ListVMs(context.Background(), api.VMFilter{})
		withPID := 0
		for _, v := range vms {
			if v.PID != 0 {
				withPID++
			}
		}
		if err == nil && withPID == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d VMs have a hypervisor: %v", withPID, n, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// rawGet returns the body of GET path on volantd's unix socket.
func rawGet(sock, path string) ([]byte, error) { return rawGetTimeout(sock, path, 0) }

func rawGetTimeout(sock, path string, timeout time.Duration) ([]byte, error) {
	hc := &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Get("http://volantd" + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return io.ReadAll(resp.Body)
}

// cpuUse is the share of one CPU process pid used over d.
func cpuUse(t testing.TB, pid int, d time.Duration) float64 {
	t.Helper()
	t0, c0 := time.Now(), cpuTicks(t, pid)
	time.Sleep(d)
	return round3(float64(cpuTicks(t, pid)-c0) / clkTck / time.Since(t0).Seconds())
}

// clkTck is USER_HZ, the unit of /proc/<pid>/stat's CPU times (100 on
// every Linux architecture Volant runs on).
const clkTck = 100

func cpuTicks(t testing.TB, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return ut + st
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return round2(m)
}

func round2(v float64) float64 { return math.Round(v*100) / 100 }
func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// wrkMillis reads a latency percentile of wrk --latency in milliseconds.
func wrkMillis(t testing.TB, out, pct string) float64 {
	t.Helper()
	m := regexp.MustCompile(`\s` + regexp.QuoteMeta(pct) + `\s+([0-9.]+)(us|ms|s)\b`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("wrk output lacks the %s latency:\n%s", pct, out)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	switch m[2] {
	case "us":
		v /= 1000
	case "s":
		v *= 1000
	}
	return round2(v)
}

func rssKiB(t testing.TB, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`VmRSS:\s+(\d+) kB`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no VmRSS for %d", pid)
	}
	v, _ := strconv.Atoi(string(m[1]))
	return v
}

func wrkFloat(t testing.TB, out, re string) float64 {
	m := regexp.MustCompile(re).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("wrk output lacks %s:\n%s", re, out)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.TrimSpace(string(b))
}

// percentile is the nearest-rank p-th percentile of v.
func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return round2(s[max(0, min(i, len(s)-1))])
}
