// Command driver is bench/launch's measuring half; run.sh builds it and runs
// it inside a private network namespace that has bridge br0
// (192.168.127.1/24) and tap -tap on it.
//
// It boots the same VM N times each way, interleaved:
//
//	launch  `volant-launch run` with the VM spec on stdin
//	direct  the QEMU command line `volant-launch argv` printed for that
//	        spec, executed directly
//
// and measures, from the moment it starts the process, (1) when QEMU is
// exec'd — the first thing a shim named qemu-system-x86_64, first on PATH
// for both ways, does is record $EPOCHREALTIME before exec'ing the real
// QEMU — and (2) when the workload first answers HTTP (polled every 5 ms
// from this process). It prints medians and ratios and writes them as JSON.
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/volantvm/volant/lib/bootimage"
	"github.com/volantvm/volant/lib/initramfs"
	"github.com/volantvm/volant/lib/kernel"
)

const guestIP = "192.168.127.100"

type sample struct {
	ExecMS    float64 `json:"exec_ms"`
	HealthyMS float64 `json:"healthy_ms"`
}

func main() {
	bin := flag.String("bin", "", "volant-launch binary")
	before := flag.String("bin-before", "", "another volant-launch binary (an earlier build) booted the launch way too, interleaved: the before/after pair")
	work := flag.String("work", "", "scratch directory")
	tap := flag.String("tap", "vt-bench", "tap on br0")
	pid1 := flag.String("pid1", "", "guest PID 1 binary (kestrel or the test init)")
	kind := flag.String("pid1-kind", "testinit", "kestrel or testinit")
	n := flag.Int("n", 10, "boots per way")
	out := flag.String("out", "bench/results/launch.json", "results file")
	kdir := flag.String("kernel", os.Getenv("VOLANT_KERNEL_DIR"), "kernel directory")
	flag.Parse()
	if err := run(*bin, *before, *work, *tap, *pid1, *kind, *kdir, *n, *out); err != nil {
		fmt.Fprintln(os.Stderr, "bench/launch:", err)
		os.Exit(1)
	}
}

func run(bin, before, work, tap, pid1, kind, kdir string, n int, out string) error {
	loadStart := loadavg()
	k, err := kernel.Open(kdir)
	if err != nil {
		return err
	}
	if _, err := k.Vmlinux(nil); err != nil {
		return err
	}
	manifest, probe, err := buildGuest(k, pid1, kind, work)
	if err != nil {
		return err
	}
	// The shim: first on PATH for both ways.
	real, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return err
	}
	shimDir := filepath.Join(work, "shim")
	os.MkdirAll(shimDir, 0o755)
	// It says when it ran on its stderr, which reaches us from QEMU run
	// directly and from volant-launch alike: a jailed VMM cannot write
	// outside its jail.
	shim := fmt.Sprintf("#!/bin/bash\nprintf '%s%%s\\n' \"$EPOCHREALTIME\" >&2\nexec %q \"$@\"\n", shimMark, real)
	if err := os.WriteFile(filepath.Join(shimDir, "qemu-system-x86_64"), []byte(shim), 0o755); err != nil {
		return err
	}
	env := append(os.Environ(), "PATH="+shimDir+":"+os.Getenv("PATH"),
		"VOLANT_CACHE_DIR="+filepath.Join(work, "cache"), "VOLANT_STATE_DIR="+filepath.Join(work, "state"))
	runDir := filepath.Join(work, "run")
	spec := fmt.Sprintf(`{"kind":"ipam.lease","vm":"bench","ip":%q,"prefix":24,"gateway":"192.168.127.1","mac":"02:00:00:00:00:64"}`, guestIP)
	args := []string{"--manifest", manifest, "--kernel", k.Dir, "--tap", tap, "--run-dir", runDir,
		"--serial-log", filepath.Join(work, "serial.log"), "--stop-timeout", "5s"}

	// The command line the direct way types.
	cmd := exec.Command(bin, append([]string{"argv"}, args...)...)
	cmd.Env, cmd.Stdin = env, strings.NewReader(spec)
	b, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("volant-launch argv: %v", err)
	}
	var av struct {
		Argv []string `json:"argv"`
	}
	if err := json.Unmarshal(b, &av); err != nil {
		return err
	}
	if filepath.Dir(av.Argv[0]) != shimDir {
		return fmt.Errorf("argv[0] %s is not the shim", av.Argv[0])
	}

	launchWith := func(bin string, extra ...string) func() (*exec.Cmd, error) {
		return func() (*exec.Cmd, error) {
			c := exec.Command(bin, append(append([]string{"run"}, args...), extra...)...)
			c.Env, c.Stdin = env, strings.NewReader(spec)
			return c, nil
		}
	}
	launch := func(extra ...string) func() (*exec.Cmd, error) { return launchWith(bin, extra...) }
	ways := map[string]func() (*exec.Cmd, error){
		// The default: the VMM in its jail, the guest's mitigations on.
		"launch": launch(),
		// Without the jail: what the jail costs.
		"insecure": launch("--insecure-vmm"),
		// The guest without CPU vulnerability mitigations: what the
		// default's mitigations cost.
		"nomitig": launch("--kernel-arg", "mitigations=off"),
		"direct": func() (*exec.Cmd, error) {
			// QEMU needs the run dir for its sockets; volant-launch makes it.
			if err := os.MkdirAll(filepath.Join(runDir, "vmm"), 0o700); err != nil {
				return nil, err
			}
			c := exec.Command(av.Argv[0], av.Argv[1:]...)
			c.Env = env
			return c, nil
		},
	}
	order := []string{"launch", "direct", "insecure", "nomitig"}
	if before != "" {
		ways["before"] = launchWith(before)
		order = append([]string{"before"}, order...)
	}
	var floor, floorBefore, trueMS []float64
	// The floor under the launch way: starting this Go binary at all; and
	// the CPU time (user + system, which a loaded machine does not inflate
	// the way it does wall time) of `version` and of a `run` whose QEMU
	// exits at once: what a start costs up to the hypervisor's exec, plus
	// a failed start's short tail.
	failDir := filepath.Join(work, "failqemu")
	os.MkdirAll(failDir, 0o755)
	if err := os.WriteFile(filepath.Join(failDir, "qemu-system-x86_64"), []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		return err
	}
	failEnv := append(os.Environ(), "PATH="+failDir+":"+os.Getenv("PATH"),
		"VOLANT_CACHE_DIR="+filepath.Join(work, "cache"), "VOLANT_STATE_DIR="+filepath.Join(work, "state"))
	bins := map[string]string{"after": bin}
	if before != "" {
		bins["before"] = before
	}
	cpu := map[string]map[string][]float64{}
	for _, b := range []string{"after", "before"} {
		cpu[b] = map[string][]float64{}
	}
	for range 20 {
		for _, b := range []string{"after", "before"} {
			path := bins[b]
			if path == "" {
				continue
			}
			t, err := timed(exec.Command(path, "version"))
			if err != nil {
				return err
			}
			cpu[b]["version_wall"] = append(cpu[b]["version_wall"], t.wall)
			cpu[b]["version_cpu"] = append(cpu[b]["version_cpu"], t.cpu)
			c := exec.Command(path, append([]string{"run"}, args...)...)
			c.Env, c.Stdin = failEnv, strings.NewReader(spec)
			t, err = timed(c)
			if err == nil {
				return fmt.Errorf("%s run with a QEMU that exits at once succeeded", path)
			}
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				return err
			}
			os.RemoveAll(runDir)
			cpu[b]["failed_start_wall"] = append(cpu[b]["failed_start_wall"], t.wall)
			cpu[b]["failed_start_cpu"] = append(cpu[b]["failed_start_cpu"], t.cpu)
		}
		t, err := timed(exec.Command("/bin/true"))
		if err != nil {
			return err
		}
		trueMS = append(trueMS, t.wall)
	}
	floor, floorBefore = cpu["after"]["version_wall"], cpu["before"]["version_wall"]
	res := map[string][]sample{}
	for i := -1; i < n; i++ { // i == -1 warms the caches, unrecorded
		for _, way := range order {
			s, err := boot(ways[way], probe, way != "direct", runDir)
			if err != nil {
				return fmt.Errorf("%s boot %d: %w", way, i, err)
			}
			if i >= 0 {
				res[way] = append(res[way], s)
			}
			fmt.Fprintf(os.Stderr, "%-8s %2d exec %7.2f ms  healthy %7.1f ms\n", way, i, s.ExecMS, s.HealthyMS)
		}
		slices.Reverse(order) // alternate who goes first
	}
	return report(res, cpu, kind, n, out, median(floor), median(floorBefore), median(trueMS), before, loadStart)
}

// boot starts one VM, records when QEMU was exec'd and when the workload
// answered, and stops it.
func boot(start func() (*exec.Cmd, error), probe string, graceful bool, runDir string) (sample, error) {
	c, err := start()
	if err != nil {
		return sample{}, err
	}
	var stderr lockedBuffer
	c.Stdout, c.Stderr = io.Discard, &stderr
	t0 := time.Now()
	if err := c.Start(); err != nil {
		return sample{}, err
	}
	defer func() {
		if graceful {
			c.Process.Signal(syscall.SIGTERM)
		} else {
			c.Process.Kill()
		}
		c.Wait()
		os.RemoveAll(runDir)
	}()
	var healthy time.Time
	deadline := t0.Add(120 * time.Second)
	for time.Now().Before(deadline) {
		if get(probe) == nil {
			healthy = time.Now()
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if healthy.IsZero() {
		return sample{}, fmt.Errorf("the workload never answered %s", probe)
	}
	b := stderr.String()
	i := strings.Index(b, shimMark)
	if i < 0 {
		return sample{}, fmt.Errorf("the shim recorded no exec: %.2000s", b)
	}
	line, _, _ := strings.Cut(b[i+len(shimMark):], "\n")
	sec, err := strconv.ParseFloat(strings.TrimSpace(line), 64)
	if err != nil {
		return sample{}, fmt.Errorf("shim line %q: %w", line, err)
	}
	execAt := time.Unix(0, int64(sec*1e9))
	return sample{
		ExecMS:    float64(execAt.Sub(t0).Microseconds()) / 1000,
		HealthyMS: float64(healthy.Sub(t0).Microseconds()) / 1000,
	}, nil
}

// shimMark starts the line the QEMU shim writes when it runs.
const shimMark = "volant-bench-exec "

// lockedBuffer is a process's stderr, read while it runs.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func get(probe string) error {
	c, err := net.DialTimeout("tcp", guestIP+":"+strings.Split(probe, "/")[0], 200*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	_, path, _ := strings.Cut(probe, "/")
	fmt.Fprintf(c, "GET /%s HTTP/1.0\r\nHost: %s\r\n\r\n", path, guestIP)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}

// buildGuest writes the plugin (boot image with pid1 and modules; for
// kestrel also busybox httpd as the workload) and its manifest.
func buildGuest(k *kernel.Kernel, pid1, kind, work string) (manifest, probe string, err error) {
	b := initramfs.New()
	workload := `"workload":{"entrypoint":["/bin/app"]}`
	probe = "8080/healthz"
	if kind == "kestrel" {
		bb, err := exec.LookPath("busybox")
		if err != nil {
			return "", "", err
		}
		b.CopyFile("/bin/busybox", bb, 0o755)
		b.File("/www/index.html", 0o644, []byte("hello\n"))
		workload = `"workload":{"type":"http","entrypoint":["/bin/busybox","httpd","-f","-p","80","-h","/www"],"base_url":"http://127.0.0.1:80"}`
		probe = "80/index.html"
	}
	if _, err := bootimage.Add(b, bootimage.Options{Kestrel: pid1, ModulesDir: k.ModulesDir}); err != nil {
		return "", "", err
	}
	archive := filepath.Join(work, "plugin.cpio.gz")
	if err := b.WriteFile(archive, initramfs.Gzip); err != nil {
		return "", "", err
	}
	data, _ := os.ReadFile(archive)
	sum := sha256.Sum256(data)
	manifest = filepath.Join(work, "manifest.json")
	m := fmt.Sprintf(`{"name":"bench","version":"1","initramfs":{"url":%q,"checksum":"sha256:%s"},%s}`, archive, hex.EncodeToString(sum[:]), workload)
	return manifest, probe, os.WriteFile(manifest, []byte(m), 0o644)
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func report(res map[string][]sample, cpu map[string]map[string][]float64, kind string, n int, out string, floor, floorBefore, trueMS float64, before, loadStart string) error {
	col := func(way string, f func(sample) float64) []float64 {
		var v []float64
		for _, s := range res[way] {
			v = append(v, f(s))
		}
		return v
	}
	ex := func(s sample) float64 { return s.ExecMS }
	he := func(s sample) float64 { return s.HealthyMS }
	le, de := median(col("launch", ex)), median(col("direct", ex))
	lh, dh := median(col("launch", he)), median(col("direct", he))
	ie, ih := median(col("insecure", ex)), median(col("insecure", he))
	nh := median(col("nomitig", he))
	uname := syscall.Utsname{}
	syscall.Uname(&uname)
	var rel []byte
	for _, c := range uname.Release {
		if c == 0 {
			break
		}
		rel = append(rel, byte(c))
	}
	r := map[string]any{
		"benchmark": "launch",
		"what":      "volant-launch run vs the same QEMU command line run directly: time from process start to QEMU exec, and to the workload answering HTTP",
		"date":      time.Now().UTC().Format(time.RFC3339),
		"host":      map[string]any{"cpus": runtime.NumCPU(), "kernel": string(rel)},
		"guest":     kind,
		"accel":     "as volant-launch resolved it (tcg on a PVM-only KVM host)",
		"n":         n,
		"exec_ms": map[string]any{
			"launch_median": round(le), "direct_median": round(de), "overhead_median": round(le - de),
			"launch": col("launch", ex), "direct": col("direct", ex),
		},
		"healthy_ms": map[string]any{
			"launch_median": round(lh), "direct_median": round(dh), "ratio": round3(lh / dh),
			"launch": col("launch", he), "direct": col("direct", he),
		},
		"jail": map[string]any{
			"note":                 "launch runs the VMM in its jail (own uid, mount namespace, cgroup, seccomp); insecure is the same run with --insecure-vmm",
			"exec_overhead_ms":     round(le - ie),
			"healthy_ratio":        round3(lh / ih),
			"insecure_exec_median": round(ie), "insecure_healthy_median": round(ih),
			"insecure_exec": col("insecure", ex), "insecure_healthy": col("insecure", he),
		},
		"mitigations": map[string]any{
			"note":            "launch boots the guest with its CPU vulnerability mitigations (the default); nomitig adds mitigations=off",
			"healthy_ratio":   round3(lh / nh),
			"nomitig_median":  round(nh),
			"nomitig_healthy": col("nomitig", he),
		},
		"process_ms": map[string]any{
			"note":                  "fork+exec+exit of `volant-launch version` and of /bin/true: the part of the exec overhead that is starting a Go binary at all",
			"volant_launch_version": round(floor), "bin_true": round(trueMS),
		},
		"load_average":       loadavg(),
		"load_average_start": loadStart,
		"targets":            map[string]any{"exec_overhead_ms": 10, "healthy_ratio": 1.05},
		"pass":               map[string]bool{"exec_overhead": le-de <= 10, "healthy_ratio": lh/dh <= 1.05},
		"reproduce":          "make build && sudo bash bench/launch/run.sh   (BENCH_N=10 by default)",
	}
	be, bh := median(col("before", ex)), median(col("before", he))
	if before != "" {
		r["before"] = map[string]any{
			"note":                 "the same launch way with an earlier build of volant-launch (-bin-before), interleaved: the before/after pair",
			"binary":               before,
			"exec_median":          round(be),
			"healthy_median":       round(bh),
			"exec_overhead_median": round(be - de),
			"healthy_ratio":        round3(bh / dh),
			"version_ms":           round(floorBefore),
			"exec":                 col("before", ex),
			"healthy":              col("before", he),
		}
	}
	cpuOut := map[string]any{"note": "CPU time (user + system, from wait4's rusage) and wall time of `version` and of a `run` whose QEMU exits at once (the start up to the hypervisor's exec plus a failed start's tail), 20 each, medians; CPU time is what a loaded machine inflates least"}
	for b, m := range cpu {
		if len(m) == 0 {
			continue
		}
		o := map[string]any{}
		for k, v := range m {
			o[k+"_median"] = round(median(v))
			o[k] = v
		}
		cpuOut[b] = o
	}
	r["cpu_ms"] = cpuOut
	b, _ := json.MarshalIndent(r, "", "  ")
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(out, append(b, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Printf("\nbench/launch (%s guest, n=%d per way, medians)\n", kind, n)
	fmt.Printf("  to QEMU exec:   volant-launch %7.2f ms   direct %7.2f ms   overhead %6.2f ms   (target <= 10 ms)\n", le, de, le-de)
	fmt.Printf("  process start:  volant-launch version %.2f ms, /bin/true %.2f ms (fork+exec+exit)\n", floor, trueMS)
	fmt.Printf("  load average:   %s at the start, %s at the end\n", loadStart, loadavg())
	fmt.Printf("  to healthy:     volant-launch %7.1f ms   direct %7.1f ms   ratio %.3f        (target <= 1.05)\n", lh, dh, lh/dh)
	fmt.Printf("  the jail:       to exec %+.2f ms, to healthy %.3f× (launch %7.1f ms, --insecure-vmm %7.1f ms)\n", le-ie, lh/ih, lh, ih)
	fmt.Printf("  mitigations:    to healthy %.3f× (default %7.1f ms, mitigations=off %7.1f ms)\n", lh/nh, lh, nh)
	if before != "" {
		fmt.Printf("  before (%s): to QEMU exec %7.2f ms (overhead %6.2f ms), to healthy %7.1f ms (ratio %.3f); version %.2f ms\n",
			before, be, be-de, bh, bh/dh, floorBefore)
	}
	for _, b := range []string{"after", "before"} {
		m := cpu[b]
		if len(m) == 0 {
			continue
		}
		fmt.Printf("  CPU (%-6s):  version %.2f ms CPU (%.2f wall); a run whose QEMU exits at once %.2f ms CPU (%.2f wall)\n", b,
			median(m["version_cpu"]), median(m["version_wall"]), median(m["failed_start_cpu"]), median(m["failed_start_wall"]))
	}
	fmt.Printf("  written to %s\n", out)
	return nil
}

type timing struct{ wall, cpu float64 }

// timed runs c and returns its wall time and CPU time (user + system of it
// and the children it waited for), in ms.
func timed(c *exec.Cmd) (timing, error) {
	t0 := time.Now()
	err := c.Run()
	t := timing{wall: float64(time.Since(t0).Microseconds()) / 1000}
	if c.ProcessState != nil {
		t.cpu = float64((c.ProcessState.UserTime() + c.ProcessState.SystemTime()).Microseconds()) / 1000
	}
	return t, err
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func round(f float64) float64  { return float64(int64(f*100+0.5)) / 100 }
func round3(f float64) float64 { return float64(int64(f*1000+0.5)) / 1000 }
