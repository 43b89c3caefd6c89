package main

import (
	"context"
	"encoding/json"
	"fmt"
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
)

// BenchmarkDaemonScale measures the control plane with many VMs: volantd's
// RSS idle and with N VMs tracked (default 200; each a real volant-launch
// process supervising the fake Cloud Hypervisor, with a real tap on a real
// bridge, all in a private network namespace), and the throughput of
// GET /api/v1/vms with those N VMs, loaded by wrk from a second process on
// the namespace's loopback for a bounded time. bench/volantd-scale/run.sh
// runs it and writes $VOLANT_BENCH_OUT. It asserts nothing about speed.
func BenchmarkDaemonScale(b *testing.B) {
	netnstest.Require(b, "sh", "mount", "wrk")
	n := 200
	if v, err := strconv.Atoi(os.Getenv("VOLANT_BENCH_VMS")); err == nil && v > 0 {
		n = v
	}
	dur := "10s"
	if v := os.Getenv("VOLANT_BENCH_WRK_DURATION"); v != "" {
		dur = v
	}
	h := newFakeHost(b)
	const token = "bench-token"
	port := 18080
	// The default pool (.100-.254 of a /24) holds 155 guests; a /22 holds
	// 920 (.100 of the first /24 to the last host).
	d := h.start(b, "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--token", token, "--subnet", "192.168.124.0/22")
	ctx := context.Background()
	if _, err := d.c.InstallPlugin(ctx, h.manifest, client.InstallOptions{}); err != nil {
		b.Fatal(err)
	}
	time.Sleep(3 * time.Second) // let start-up work settle
	idle := rssKiB(b, d.cmd.Process.Pid)

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
	// Tracked: every VM has a supervised hypervisor.
	for deadline := time.Now().Add(5 * time.Minute); ; {
		vms, err := d.c.ListVMs(ctx, api.VMFilter{})
		withPID := 0
		for _, v := range vms {
			if v.PID != 0 {
				withPID++
			}
		}
		if err == nil && withPID == n {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d VMs have a hypervisor: %v", withPID, n, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	time.Sleep(3 * time.Second)
	loaded := rssKiB(b, d.cmd.Process.Pid)

	out, err := h.ns.Output("wrk", "-t2", "-c16", "-d"+dur, "--latency",
		"-H", "Authorization: Bearer "+token, fmt.Sprintf("http://127.0.0.1:%d/api/v1/vms", port))
	if err != nil {
		b.Fatalf("wrk: %v\n%s", err, out)
	}
	rps := wrkFloat(b, out, `Requests/sec:\s+([0-9.]+)`)
	p50 := wrkLatency(out, "50%")
	p99 := wrkLatency(out, "99%")
	non2xx := 0
	if m := regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`).FindStringSubmatch(out); m != nil {
		non2xx, _ = strconv.Atoi(m[1])
	}
	res := map[string]any{
		"vms":                         n,
		"volantd_rss_idle_kib":        idle,
		"volantd_rss_with_vms_kib":    loaded,
		"rss_per_vm_kib":              float64(loaded-idle) / float64(n),
		"create_all_seconds":          created.Seconds(),
		"get_vms_requests_per_second": rps,
		"get_vms_latency_p50":         p50,
		"get_vms_latency_p99":         p99,
		"get_vms_non_2xx":             non2xx,
		"wrk":                         "wrk -t2 -c16 -d" + dur + " (second process, namespace loopback)",
		"host_loadavg":                loadavg(),
	}
	js, _ := json.MarshalIndent(res, "", "  ")
	fmt.Printf("%s\n", js)
	b.ReportMetric(rps, "GET/vms/s")
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

func wrkLatency(out, pct string) string {
	m := regexp.MustCompile(`\s` + regexp.QuoteMeta(pct) + `\s+(\S+)`).FindStringSubmatch(out)
	if m == nil {
		return ""
	}
	return m[1]
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.TrimSpace(string(b))
}

// BenchmarkVMDensity counts how many real guests reach healthy on this host
// within a window (default 120 s): one deployment of N replicas (default
// 36) of a fledge-built busybox-httpd initramfs plugin, QEMU TCG, Debian's
// kernel, our kestrel, in a private network namespace. It records when each
// replica became running. bench/density/run.sh runs it and writes
// $VOLANT_BENCH_OUT. It asserts nothing about speed.
func BenchmarkVMDensity(b *testing.B) {
	k, _ := guesttest.Kernel(b)
	guesttest.QEMU(b)
	kestrel := guesttest.Kestrel(b)
	n, window := 36, 120*time.Second
	if v, err := strconv.Atoi(os.Getenv("VOLANT_BENCH_VMS")); err == nil && v > 0 {
		n = v
	}
	if v, err := time.ParseDuration(os.Getenv("VOLANT_BENCH_WINDOW")); err == nil && v > 0 {
		window = v
	}
	h := &fakeHost{ns: netnstest.New(b), dir: b.TempDir()}
	// volantd's and kestrel's health checks at their defaults (5 s): every
	// probe wakes a guest, and under software emulation that is not free.
	d := startDaemon(b, h.dir, []string{"ip", "netns", "exec", h.ns.Name}, nil, "--vmm", "qemu", "--accel", "tcg",
		"--kernel", k.Dir, "--kestrel", kestrel, "--start-timeout", "120s", "--stop-timeout", "5s")
	ctx := context.Background()
	if _, err := d.c.InstallPlugin(ctx, webPluginProbed(b, k.ModulesDir, kestrel, 5000), client.InstallOptions{}); err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	if _, err := d.c.CreateDeployment(ctx, api.CreateDeploymentRequest{Name: "dense", Plugin: "web", Replicas: n}); err != nil {
		b.Fatal(err)
	}
	runningAt := map[string]float64{}
	for time.Since(t0) < window {
		vms, err := d.c.ListVMs(ctx, api.VMFilter{})
		if err == nil {
			for _, v := range vms {
				if _, ok := runningAt[v.Name]; !ok && v.State == api.VMRunning {
					runningAt[v.Name] = time.Since(t0).Seconds()
				}
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	var times []float64
	within60 := 0
	for _, s := range runningAt {
		times = append(times, s)
		if s <= 60 {
			within60++
		}
	}
	sort.Float64s(times)
	res := map[string]any{
		"replicas":           n,
		"window_seconds":     window.Seconds(),
		"healthy_in_window":  len(runningAt),
		"healthy_within_60s": within60,
		"seconds_to_running": times,
		"guest":              "busybox httpd initramfs, 1 vCPU, 128 MiB, QEMU TCG microvm",
		"host_loadavg_after": loadavg(),
		"host_cpus":          runtime.NumCPU(),
	}
	js, _ := json.MarshalIndent(res, "", "  ")
	fmt.Printf("%s\n", js)
	b.ReportMetric(float64(len(runningAt)), "healthy-VMs")
	if p := os.Getenv("VOLANT_BENCH_OUT"); p != "" {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, append(js, '\n'), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	// Scale to zero before the namespace goes.
	if _, err := d.c.DeleteDeployment(ctx, "dense"); err != nil {
		b.Logf("deleting the deployment: %v", err)
	}
	for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		if vms, err := d.c.ListVMs(ctx, api.VMFilter{}); err == nil && len(vms) == 0 {
			break
		}
	}
}
