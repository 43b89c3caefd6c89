package guesttest

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// TimeInNS runs a command from a thread inside ns (without `ip netns
// exec` in the measured time) and returns how long it took.
func TimeInNS(ns *netnstest.NS, env []string, name string, args ...string) (time.Duration, error) {
	var d time.Duration
	err := ns.Do(func() error {
		cmd := exec.Command(name, args...)
		cmd.Env = env
		errf, err := os.CreateTemp("", "timed-")
		if err != nil {
			return err
		}
		defer os.Remove(errf.Name())
		defer errf.Close()
		cmd.Stderr = errf // a file: no copying goroutine outside the namespace
		t0 := time.Now()
		err = cmd.Run()
		d = time.Since(t0)
		if err != nil {
			msg, _ := os.ReadFile(errf.Name())
			return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
		}
		return nil
	})
	return d, err
}

// ExecVsSSH measures `true` run in a guest by each of Volant's variants
// against OpenSSH's `ssh root@ip true` (a new connection each time) and
// the same through a ControlMaster connection opened once ("ssh_mux"),
// from inside ns, into a guest running Dropbear (key is Dropbear's
// return). It waits for the guest's SSH server, then alternates all
// variants N+1 times ($VOLANT_BENCH_N, else n; the first round warms
// caches and is not kept). It returns every sample, the medians, the
// ratios of each Volant variant to ssh and ssh_mux, and the host's load
// average, for the caller to complete and pass to WriteBench. dir must be
// short (ssh's control socket is made there).
func ExecVsSSH(b *testing.B, ns *netnstest.NS, ip, key, dir string, n int, order []string, volant map[string]func() (time.Duration, error)) map[string]any {
	b.Helper()
	if v, err := strconv.Atoi(os.Getenv("VOLANT_BENCH_N")); err == nil && v > 0 {
		n = v
	}
	env := os.Environ()
	// The SSH server starts with the workload; wait for its first answer.
	deadline := time.Now().Add(90 * time.Second)
	for {
		_, err := TimeInNS(ns, env, "ssh", SSHArgs(key, ip, []string{"-o", "ConnectTimeout=5"}, "true")...)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("no ssh into the guest: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	ctl := filepath.Join(dir, "ctl")
	master := exec.Command("ssh", SSHArgs(key, ip, []string{"-o", "ControlMaster=yes", "-o", "ControlPath=" + ctl, "-N"})...)
	if err := ns.Do(master.Start); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { master.Process.Kill(); master.Wait() })
	for t0 := time.Now(); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(ctl); err == nil {
			break
		}
		if time.Since(t0) > 30*time.Second {
			b.Fatal("ssh's control master did not come up")
		}
	}
	variants := map[string]func() (time.Duration, error){
		"ssh": func() (time.Duration, error) { return TimeInNS(ns, env, "ssh", SSHArgs(key, ip, nil, "true")...) },
		"ssh_mux": func() (time.Duration, error) {
			return TimeInNS(ns, env, "ssh", SSHArgs(key, ip, []string{"-o", "ControlPath=" + ctl}, "true")...)
		},
	}
	for k, f := range volant {
		variants[k] = f
	}
	all := append(append([]string(nil), order...), "ssh", "ssh_mux")
	loadBefore, _ := os.ReadFile("/proc/loadavg")
	samples := map[string][]float64{}
	for i := 0; i <= n; i++ {
		for _, v := range all {
			d, err := variants[v]()
			if err != nil {
				b.Fatalf("%s: %v", v, err)
			}
			if i > 0 {
				samples[v] = append(samples[v], float64(d.Microseconds())/1000)
			}
		}
	}
	loadAfter, _ := os.ReadFile("/proc/loadavg")
	out := map[string]any{"runs": n, "dropbear": DropbearVersion(),
		"host_loadavg_before": strings.TrimSpace(string(loadBefore)),
		"host_loadavg_after":  strings.TrimSpace(string(loadAfter)),
	}
	med := map[string]float64{}
	for _, v := range all {
		med[v] = median(samples[v])
		out[v] = map[string]any{"median_ms": med[v], "samples_ms": samples[v]}
		b.ReportMetric(med[v], v+"-ms")
	}
	for _, v := range order {
		out["ratio_"+v+"_to_ssh"] = med[v] / med["ssh"]
		out["ratio_"+v+"_to_ssh_mux"] = med[v] / med["ssh_mux"]
		b.ReportMetric(med[v]/med["ssh"], v+"/ssh")
	}
	return out
}

func median(v []float64) float64 {
	x := append([]float64(nil), v...)
	sort.Float64s(x)
	if len(x) == 0 {
		return 0
	}
	if len(x)%2 == 1 {
		return x[len(x)/2]
	}
	return (x[len(x)/2-1] + x[len(x)/2]) / 2
}

// WriteBench prints a benchmark's results and writes them to
// $VOLANT_BENCH_OUT when set.
func WriteBench(b *testing.B, out map[string]any) {
	js, _ := json.MarshalIndent(out, "", "  ")
	fmt.Printf("%s\n", js)
	if p := os.Getenv("VOLANT_BENCH_OUT"); p != "" {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, append(js, '\n'), 0o644); err != nil {
			b.Fatal(err)
		}
	}
}
