package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/initramfs"
	"github.com/volantvm/volant/lib/kernel"
	"github.com/volantvm/volant/lib/kmod"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/testutil/netnstest"
	"github.com/volantvm/volant/lib/vmm"
	"github.com/volantvm/volant/lib/vmm/qemu"
)

// BenchmarkVMDensity counts how many real guests reach healthy on this host
// within a window (default 120 s; the count within 60 s is reported too),
// side by side in one run:
//
//   - volantd: one deployment of N replicas (default 36) of a fledge-built
//     busybox-httpd initramfs plugin with our kestrel, health checks at
//     their defaults (kestrel probes the workload, volantd polls kestrel,
//     every 5 s), boot admission at volantd's default (--max-booting:
//     CPUs + 1);
//   - script: what a plain script does with the same kernel, QEMU command
//     line builder and workload: N guests whose /init is a busybox shell
//     script (mount, insmod the virtio network modules, set the address,
//     exec httpd), admitted CPUs + 1 at a time, each healthy at its first
//     HTTP 200 from the host.
//
// QEMU TCG, 1 vCPU and 128 MiB each, Debian's kernel, in a private network
// namespace. After the window each side's running guests idle for a while
// (default 20 s) and their QEMU processes' CPU use is the idle cost per
// guest; the volantd side also reports volantd's and the volant-launch
// supervisors' CPU over the window. bench/density/run.sh runs it and writes
// $VOLANT_BENCH_OUT. It asserts nothing about speed.
func BenchmarkVMDensity(b *testing.B) {
	k, vmlinux := guesttest.Kernel(b)
	qemuBin := guesttest.QEMU(b)
	kestrel := guesttest.Kestrel(b)
	o := densityOpts{n: 36, window: 120 * time.Second, idle: 20 * time.Second, admit: runtime.NumCPU() + 1}
	if v, err := strconv.Atoi(os.Getenv("VOLANT_BENCH_VMS")); err == nil && v > 0 {
		o.n = v
	}
	if v, err := time.ParseDuration(os.Getenv("VOLANT_BENCH_WINDOW")); err == nil && v > 0 {
		o.window = v
	}
	if v, err := time.ParseDuration(os.Getenv("VOLANT_BENCH_IDLE")); err == nil && v > 0 {
		o.idle = v
	}
	sides := strings.Fields(os.Getenv("VOLANT_BENCH_SIDES"))
	if len(sides) == 0 {
		sides = []string{"volantd", "script"}
	}
	ns := netnstest.New(b)
	res := map[string]any{
		"benchmark": "density", "date": time.Now().UTC().Format(time.RFC3339),
		"replicas": o.n, "window_seconds": o.window.Seconds(), "idle_seconds": o.idle.Seconds(), "admitted_at_once": o.admit,
		"guest":     "busybox httpd, initramfs, 1 vCPU, 128 MiB, QEMU TCG microvm (lib/vmm/qemu's command line)",
		"host_cpus": runtime.NumCPU(), "host_loadavg_before": loadavg(), "order": sides,
	}
	for _, side := range sides {
		var r map[string]any
		switch side {
		case "volantd":
			r = densityVolantd(b, ns, k, realBins(b), kestrel, "", o)
		case "before":
			// The volantd side with another build's volantd, volant-launch,
			// kestrel and fledge (VOLANT_BENCH_BEFORE, a directory holding them):
			// a change and what it changed, measured in one run.
			dir := os.Getenv("VOLANT_BENCH_BEFORE")
			if dir == "" {
				b.Fatal("side before: set VOLANT_BENCH_BEFORE to a directory with volantd, volant-launch and kestrel")
			}
			// Its plugin too, when dir holds a fledge: what goes into
			// a plugin is part of a change.
			fl := filepath.Join(dir, "fledge")
			if _, err := os.Stat(fl); err != nil {
				fl = ""
			}
			r = densityVolantd(b, ns, k, dir, filepath.Join(dir, "kestrel"), fl, o)
		case "script":
			r = densityScript(b, ns, k, vmlinux, qemuBin, o)
		default:
			b.Fatalf("unknown side %q (volantd, script, before)", side)
		}
		res[side] = r
		fmt.Fprintf(os.Stderr, "%s: %v of %d healthy within 60 s, %v within %s; idle %v cores per guest\n",
			side, r["healthy_within_60s"], o.n, r["healthy_in_window"], o.window, r["idle_cores_per_guest"])
	}
	if v, ok := res["volantd"].(map[string]any); ok {
		if s, ok := res["script"].(map[string]any); ok && s["healthy_within_60s"].(int) > 0 {
			res["ratio_healthy_within_60s"] = round2(float64(v["healthy_within_60s"].(int)) / float64(s["healthy_within_60s"].(int)))
		}
	}
	res["host_loadavg_after"] = loadavg()
	js, _ := json.MarshalIndent(res, "", "  ")
	fmt.Printf("%s\n", js)
	if p := os.Getenv("VOLANT_BENCH_OUT"); p != "" {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, append(js, '\n'), 0o644); err != nil {
			b.Fatal(err)
		}
	}
}

type densityOpts struct {
	n            int
	window, idle time.Duration
	admit        int
}

// densityResult turns the seconds at which each guest became healthy into
// the side's figures.
func densityResult(healthyAt []float64, window time.Duration) map[string]any {
	sort.Float64s(healthyAt)
	within60 := 0
	for _, s := range healthyAt {
		if s <= 60 {
			within60++
		}
	}
	for i := range healthyAt {
		healthyAt[i] = round2(healthyAt[i])
	}
	return map[string]any{"healthy_in_window": len(healthyAt), "healthy_within_60s": within60, "seconds_to_healthy": healthyAt}
}

// idleCores measures the CPU the processes pids use over d, per process.
func idleCores(t testing.TB, pids []int, d time.Duration) float64 {
	if len(pids) == 0 {
		return 0
	}
	c0 := map[int]int64{}
	for _, p := range pids {
		c0[p] = cpuTicksOr0(p)
	}
	t0 := time.Now()
	time.Sleep(d)
	var sum int64
	for _, p := range pids {
		sum += cpuTicksOr0(p) - c0[p]
	}
	return round3(float64(sum) / clkTck / time.Since(t0).Seconds() / float64(len(pids)))
}

func cpuTicksOr0(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return ut + st
}

// nsPids are the namespace's processes named name (argv[0]'s base).
func nsPids(ns *netnstest.NS, name string) []int {
	var out []int
	for _, pid := range ns.Pids() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && filepath.Base(strings.SplitN(string(b), "\x00", 2)[0]) == name {
			out = append(out, pid)
		}
	}
	return out
}

func densityVolantd(b *testing.B, ns *netnstest.NS, k *kernel.Kernel, bins, kestrel, fledgeBin string, o densityOpts) map[string]any {
	dir := b.TempDir()
	// Diagnosis knobs: volantd's poll interval of running guests and the
	// plugin's health check interval (both 5 s by default).
	args := []string{"--vmm", "qemu", "--accel", "tcg", "--kernel", k.Dir, "--kestrel", kestrel, "--start-timeout", "120s", "--stop-timeout", "5s"}
	if v := os.Getenv("VOLANT_BENCH_HEALTH_INTERVAL"); v != "" {
		args = append(args, "--health-interval", v)
	}
	probeMS := 5000
	if v, err := strconv.Atoi(os.Getenv("VOLANT_BENCH_PROBE_MS")); err == nil && v > 0 {
		probeMS = v
	}
	d := startDaemonFrom(b, bins, dir, []string{"ip", "netns", "exec", ns.Name}, nil, nil, args...)
	ctx := context.Background()
	// The plugin is built by fledgeBin when given (the side before's
	// own), else by this tree's lib/fledge.
	plugin := guestPlugin{Name: "web", Entrypoint: httpdWWW, Health: "/index.html", IntervalMS: probeMS,
		Files: map[string]string{"index.html": "hello from volant\n"}}
	plugin.Fledge = fledgeBin
	built := plugin.build(b, filepath.Join(dir, "data", "plugins", "web"), k.ModulesDir, kestrel)
	manifest, err := os.ReadFile(built.Manifest)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := d.c.InstallPlugin(ctx, manifest, client.InstallOptions{}); err != nil {
		b.Fatal(err)
	}
	// Every vm.* event from here on: when each replica's hypervisor
	// answered (vm.started) and when volantd recorded it healthy
	// (vm.healthy, which also frees its boot slot).
	evCtx, stopEvents := context.WithCancel(ctx)
	defer stopEvents()
	events, err := d.c.Events(evCtx, api.EventOptions{Types: []string{api.EventVMStarted, api.EventVMHealthy}})
	if err != nil {
		b.Fatal(err)
	}
	var evMu sync.Mutex
	var seen []api.Event
	// Each replica's QEMU CPU time when volantd recorded it healthy: what
	// its boot cost the host, beside how long it took.
	vmmPID := map[string]int{}
	var bootCPU, afterCPU []float64
	go func() {
		for {
			e, err := events.Next()
			if err != nil {
				return
			}
			evMu.Lock()
			seen = append(seen, e)
			switch e.Type {
			case api.EventVMStarted:
				var d struct {
					PID int `json:"pid"`
				}
				if json.Unmarshal(e.Data, &d) == nil {
					vmmPID[e.ResourceID] = d.PID
				}
			case api.EventVMHealthy:
				if p := vmmPID[e.ResourceID]; p > 0 {
					at := cpuTicksOr0(p)
					bootCPU = append(bootCPU, round2(float64(at)/clkTck))
					// And what it costs in the 5 s after (the work kestrel
					// does once the workload is up), while others boot.
					time.AfterFunc(5*time.Second, func() {
						evMu.Lock()
						afterCPU = append(afterCPU, round2(float64(cpuTicksOr0(p)-at)/clkTck))
						evMu.Unlock()
					})
				}
			}
			evMu.Unlock()
		}
	}()
	vd := d.cmd.Process.Pid
	vd0 := cpuTicksOr0(vd)
	sup0 := map[int]int64{}
	t0 := time.Now()
	if _, err := d.c.CreateDeployment(ctx, api.CreateDeploymentRequest{Name: "dense", Plugin: "web", Replicas: o.n}); err != nil {
		b.Fatal(err)
	}
	// With VOLANT_BENCH_KEEP_LOG, every replica's serial log is followed
	// through the window: each line gets the host's time it was seen at.
	stopTail := tailLogs(filepath.Join(dir, "data", "vms", "*", "serial.log"), t0)
	runningAt := map[string]float64{}
	qemuOf := map[string]int{}
	for time.Since(t0) < o.window {
		vms, err := d.c.ListVMs(ctx, api.VMFilter{})
		if err == nil {
			for _, v := range vms {
				if _, ok := runningAt[v.Name]; !ok && v.State == api.VMRunning {
					runningAt[v.Name] = time.Since(t0).Seconds()
					qemuOf[v.Name] = v.PID
				}
			}
		}
		for _, p := range nsPids(ns, "volant-launch") {
			if _, ok := sup0[p]; !ok {
				sup0[p] = 0 // started during the window: all its CPU counts
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	elapsed := time.Since(t0).Seconds()
	serialSeen := stopTail()
	volantdCPU := float64(cpuTicksOr0(vd)-vd0) / clkTck / elapsed
	var supTicks int64
	for p := range sup0 {
		supTicks += cpuTicksOr0(p)
	}
	var healthy []float64
	var pids []int
	for name, s := range runningAt {
		healthy = append(healthy, s)
		pids = append(pids, qemuOf[name])
	}
	r := densityResult(healthy, o.window)
	var all []api.VM
	if vms, err := d.c.ListVMs(ctx, api.VMFilter{}); err == nil {
		all = vms
	}
	// The replicas not healthy at the window's end, by state (and error):
	// a run that counts few should say why.
	notHealthy := map[string]int{}
	for _, v := range all {
		if _, ok := runningAt[v.Name]; !ok {
			k := string(v.State)
			if v.Error != "" {
				k += ": " + v.Error
			}
			notHealthy[k]++
		}
	}
	r["not_healthy_at_window_end"] = notHealthy
	if st, err := os.Stat(built.Artifact); err == nil {
		r["plugin_archive_bytes"] = st.Size()
	}
	evMu.Lock()
	for k, v := range densityBreakdown(t0, all, seen) {
		r[k] = v
	}
	r["breakdown_vmm_cpu_seconds_at_healthy"] = bootCPU
	r["median_vmm_cpu_seconds_at_healthy"] = median(bootCPU)
	r["breakdown_vmm_cpu_seconds_5s_after_healthy"] = afterCPU
	r["median_vmm_cpu_seconds_5s_after_healthy"] = median(afterCPU)
	evMu.Unlock()
	r["volantd_cpu_in_window"] = round3(volantdCPU)
	r["supervisors_cpu_in_window"] = round3(float64(supTicks) / clkTck / elapsed)
	r["idle_cores_per_guest"] = idleCores(b, pids, o.idle)
	r["idle_guests"] = len(pids)
	r["volantd_cpu_idle"] = cpuUse(b, vd, o.idle)
	r["health_checks"] = fmt.Sprintf("kestrel probes the workload every %d ms; volantd polls kestrel every %s", probeMS, or(os.Getenv("VOLANT_BENCH_HEALTH_INTERVAL"), "5s"))
	if p := os.Getenv("VOLANT_BENCH_KEEP_LOG"); p != "" {
		if data, err := os.ReadFile(d.log); err == nil {
			os.WriteFile(p, data, 0o644)
		}
		// And every replica's launch log (volant-launch's own account of
		// its jail, the VMM's start and its first answer), in one file.
		var all []byte
		logs, _ := filepath.Glob(filepath.Join(dir, "data", "vms", "*", "launch.log"))
		for _, l := range logs {
			if data, err := os.ReadFile(l); err == nil {
				all = append(all, data...)
			}
		}
		os.WriteFile(p+".launch", all, 0o644)
		// And every replica's serial log (kestrel's boot marks carry the
		// guest's uptime) as it came in the window: each line with the
		// seconds since the create it was seen at and the VM's name.
		os.WriteFile(p+".serial", []byte(serialSeen), 0o644)
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
	return r
}

// densityBreakdown says where each replica's time went, in seconds from
// the deployment's create (t0), per replica in the order they became
// healthy: until its hypervisor process started (queued for a boot slot,
// then lease, tap, spec and the supervisor's start), until the hypervisor
// answered (vm.started), until volantd recorded it healthy (vm.healthy,
// which frees its boot slot); and the boot itself, hypervisor start to
// healthy, which is how long each replica held its slot.
func densityBreakdown(t0 time.Time, vms []api.VM, events []api.Event) map[string]any {
	type times struct{ vmm, started, healthy float64 }
	at := map[string]*times{}
	get := func(n string) *times {
		if at[n] == nil {
			at[n] = &times{-1, -1, -1}
		}
		return at[n]
	}
	for _, v := range vms {
		if v.StartedAt != nil {
			get(v.Name).vmm = v.StartedAt.Sub(t0).Seconds()
		}
	}
	for _, e := range events {
		s := e.Timestamp.Sub(t0).Seconds()
		switch t := get(e.ResourceID); e.Type {
		case api.EventVMStarted:
			if t.started < 0 {
				t.started = s
			}
		case api.EventVMHealthy:
			if t.healthy < 0 {
				t.healthy = s
			}
		}
	}
	var done []*times
	for _, t := range at {
		if t.healthy >= 0 && t.vmm >= 0 {
			done = append(done, t)
		}
	}
	sort.Slice(done, func(i, j int) bool { return done[i].healthy < done[j].healthy })
	var toVMM, toAnswer, toHealthy, boot []float64
	for _, t := range done {
		toVMM = append(toVMM, round2(t.vmm))
		toAnswer = append(toAnswer, round2(t.started))
		toHealthy = append(toHealthy, round2(t.healthy))
		boot = append(boot, round2(t.healthy-t.vmm))
	}
	return map[string]any{
		"breakdown_seconds_to_vmm_start": toVMM, "breakdown_seconds_to_vmm_answering": toAnswer,
		"breakdown_seconds_to_recorded_healthy": toHealthy, "breakdown_boot_seconds": boot,
		"median_boot_seconds": median(boot),
	}
}

// densityScript boots o.n guests the way a plain script would: a busybox
// shell as /init, QEMU started directly, o.admit boots at a time.
func densityScript(b *testing.B, ns *netnstest.NS, k *kernel.Kernel, vmlinux, qemuBin string, o densityOpts) map[string]any {
	dir := b.TempDir()
	initrd := scriptInitramfs(b, k, dir)
	khz, err := kernel.HostTSCkHz()
	if err != nil {
		b.Fatal(err)
	}
	// lib/launch's command line under TCG on microvm, minus the volant.* keys:
	// the guest kernel's CPU mitigations on, as volantd's guests have them.
	base := "console=ttyS0 panic=-1 quiet tsc_early_khz=" + strconv.Itoa(khz) +
		" tsc=reliable no_timer_check 8250.nr_uarts=1 random.trust_cpu=on cryptomgr.notests"
	const bridge = "sbr0"
	ns.Run("ip", "link", "add", bridge, "type", "bridge")
	ns.Run("ip", "addr", "add", "192.168.128.1/24", "dev", bridge)
	ns.Run("ip", "link", "set", bridge, "up")
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer cancel()
			var c net.Conn
			err := ns.Do(func() error {
				var err error
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}}}

	var mu sync.Mutex
	var healthy, boots, bootCPU, afterCPU []float64
	var pids []int
	var procs []*os.Process
	slots := make(chan struct{}, o.admit)
	t0 := time.Now()
	stopTail := tailLogs(filepath.Join(dir, "*.console"), t0)
	var starts []string // with VOLANT_BENCH_KEEP_LOG: when each QEMU started
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < o.n; i++ {
			select {
			case slots <- struct{}{}:
			case <-stop:
				return
			}
			ip := fmt.Sprintf("192.168.128.%d", 100+i)
			mac := fmt.Sprintf("02:00:00:00:80:%02x", i)
			tap := fmt.Sprintf("st%d", i)
			ns.Run("ip", "tuntap", "add", "dev", tap, "mode", "tap")
			ns.Run("ip", "link", "set", tap, "master", bridge)
			ns.Run("ip", "link", "set", tap, "up")
			ns.Run("ip", "neigh", "replace", ip, "lladdr", mac, "nud", "permanent", "dev", bridge)
			argv, err := qemu.Argv(qemuBin, vmm.Config{Name: tap, CPUs: 1, MemoryMB: 128, Kernel: vmlinux, Initramfs: initrd,
				Cmdline: base + " volant.ip=" + ip + "/24", Accel: vmm.AccelTCG,
				APISocket: filepath.Join(dir, tap+".qmp"), Serial: vmm.Serial{LogFile: filepath.Join(dir, tap+".console")},
				Nets: []vmm.Net{{Tap: tap, MAC: mac}}})
			if err != nil {
				b.Error(err)
				return
			}
			cmd := ns.Cmd(argv[0], argv[1:]...)
			if err := cmd.Start(); err != nil {
				b.Error(err)
				return
			}
			go cmd.Wait()
			startedAt := time.Since(t0).Seconds()
			mu.Lock()
			starts = append(starts, fmt.Sprintf("%6.2f %s started\n", startedAt, tap))
			procs = append(procs, cmd.Process)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-slots }()
				for time.Since(t0) < o.window {
					resp, err := hc.Get("http://" + ip + "/index.html")
					if err == nil {
						resp.Body.Close()
						if resp.StatusCode == 200 {
							mu.Lock()
							starts = append(starts, fmt.Sprintf("%6.2f %s answered\n", time.Since(t0).Seconds(), tap))
							healthy = append(healthy, time.Since(t0).Seconds())
							boots = append(boots, round2(time.Since(t0).Seconds()-startedAt))
							at := cpuTicksOr0(cmd.Process.Pid)
							bootCPU = append(bootCPU, round2(float64(at)/clkTck))
							pid := cmd.Process.Pid
							time.AfterFunc(5*time.Second, func() {
								mu.Lock()
								afterCPU = append(afterCPU, round2(float64(cpuTicksOr0(pid)-at)/clkTck))
								mu.Unlock()
							})
							pids = append(pids, cmd.Process.Pid)
							mu.Unlock()
							return
						}
					}
					select {
					case <-stop:
						return
					case <-time.After(250 * time.Millisecond):
					}
				}
			}()
		}
	}()
	time.Sleep(o.window - time.Since(t0))
	close(stop)
	wg.Wait()
	mu.Lock()
	r := densityResult(healthy, o.window)
	// Each guest's boot, QEMU start to its first HTTP 200, in the order
	// they answered: how long each held its slot.
	r["breakdown_boot_seconds"] = boots
	r["median_boot_seconds"] = median(boots)
	// Each guest's QEMU CPU time at its first HTTP 200.
	r["breakdown_vmm_cpu_seconds_at_healthy"] = bootCPU
	r["median_vmm_cpu_seconds_at_healthy"] = median(bootCPU)
	r["idle_cores_per_guest"] = idleCores(b, pids, o.idle)
	r["breakdown_vmm_cpu_seconds_5s_after_healthy"] = afterCPU
	r["median_vmm_cpu_seconds_5s_after_healthy"] = median(afterCPU)
	r["idle_guests"] = len(pids)
	r["health_checks"] = "none after the first HTTP 200 from the host"
	for _, p := range procs {
		p.Kill()
	}
	mu.Unlock()
	consoles := stopTail()
	if p := os.Getenv("VOLANT_BENCH_KEEP_LOG"); p != "" {
		// Every guest's console (the script's marks) as it came.
		os.WriteFile(p+".script-serial", []byte(consoles), 0o644)
		os.WriteFile(p+".script-starts", []byte(strings.Join(starts, "")), 0o644)
	}
	for deadline := time.Now().Add(30 * time.Second); len(nsPids(ns, filepath.Base(qemuBin))) > 0 && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
	return r
}

// scriptInitramfs is the script side's initramfs: busybox, the modules the
// virtio network needs, a page to serve, and a shell script as /init.
func scriptInitramfs(b *testing.B, k *kernel.Kernel, dir string) string {
	ix, err := kmod.LoadIndex(k.ModulesDir)
	if err != nil {
		b.Fatal(err)
	}
	steps, err := ix.Resolve("virtio_mmio", "virtio_net")
	if err != nil {
		b.Fatal(err)
	}
	bb := "/bin/busybox"
	if _, err := os.Stat(bb); err != nil {
		netnstest.SkipOrFail(b, "busybox-static is needed for the script side")
	}
	im := initramfs.New()
	var script strings.Builder
	// The script marks its start and its exec on the console with the
	// guest's uptime (read is a shell builtin: no process), as kestrel's
	// log lines do, so the two sides' guest timelines compare.
	script.WriteString("#!/bin/sh\nmount -t proc proc /proc\nread up _ </proc/uptime; echo \"[$up] busybox: init\"\nmount -t sysfs sysfs /sys\nmount -t devtmpfs devtmpfs /dev\n")
	for _, s := range steps {
		p := "/lib/modules/" + k.Release + "/" + s.Path
		if err := im.CopyFile(p, filepath.Join(k.ModulesDir, s.Path), 0o644); err != nil {
			b.Fatal(err)
		}
		script.WriteString("insmod " + p + "\n")
	}
	script.WriteString(`for w in $(cat /proc/cmdline); do case $w in volant.ip=*) addr=${w#volant.ip=};; esac; done
ip link set lo up
ip addr add "$addr" dev eth0
ip link set eth0 up
read up _ </proc/uptime; echo "[$up] busybox: exec"
exec httpd -f -p 80 -h /www
`)
	must := func(err error) {
		if err != nil {
			b.Fatal(err)
		}
	}
	must(im.CopyFile("/bin/busybox", bb, 0o755))
	for _, a := range []string{"sh", "mount", "insmod", "cat", "ip", "httpd"} {
		must(im.Symlink("/bin/"+a, "busybox"))
	}
	must(im.File("/www/index.html", 0o644, []byte("hello from volant\n")))
	must(im.File("/init", 0o755, []byte(script.String())))
	for _, d := range []string{"/proc", "/sys", "/dev"} {
		must(im.Dir(d, 0o755))
	}
	p := filepath.Join(dir, "script.cpio")
	must(im.WriteFile(p, initramfs.None))
	return p
}

// tailLogs follows the files matching glob, when VOLANT_BENCH_KEEP_LOG is
// set, until the returned function is called; that returns every complete
// line seen, each with the seconds since t0 it was seen at (polled every
// 50 ms) and the name of its file's directory (or the file's, without its
// extension, for files directly in the glob's directory).
func tailLogs(glob string, t0 time.Time) (stop func() string) {
	done := make(chan struct{})
	out := make(chan string, 1)
	go func() {
		var seen strings.Builder
		defer func() { out <- seen.String() }()
		if os.Getenv("VOLANT_BENCH_KEEP_LOG") == "" {
			<-done
			return
		}
		off := map[string]int{}
		for {
			logs, _ := filepath.Glob(glob)
			for _, l := range logs {
				data, err := os.ReadFile(l)
				if err != nil || len(data) <= off[l] {
					continue
				}
				rest := data[off[l]:]
				end := strings.LastIndexByte(string(rest), '\n')
				if end < 0 {
					continue
				}
				off[l] += end + 1
				name := filepath.Base(filepath.Dir(l))
				if filepath.Base(l) != "serial.log" {
					name = strings.TrimSuffix(filepath.Base(l), filepath.Ext(l))
				}
				for _, line := range strings.Split(string(rest[:end]), "\n") {
					fmt.Fprintf(&seen, "%6.2f %s %s\n", time.Since(t0).Seconds(), name, line)
				}
			}
			select {
			case <-done:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return func() string { close(done); return <-out }
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
