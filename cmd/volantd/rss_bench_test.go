package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/vmm/cloudhypervisor/chtest"
)

// BenchmarkDaemonIdleRSS measures volantd's resident memory while it idles
// (started, one plugin installed, no VMs, 3 s to settle), side by side with
// another build of it ($VOLANT_BENCH_BEFORE, a volantd binary): each round
// starts both, one after the other in alternating order, under the same
// conditions as BenchmarkDaemonScale's idle figure (the fake Cloud
// Hypervisor's host, a private network namespace). It prints the medians
// of /proc/PID/smaps_rollup's Rss, Anonymous and file-backed parts per
// side and their ratio; bench/volantd-scale/idle.sh runs it and writes
// $VOLANT_BENCH_OUT. It asserts nothing about memory.
func BenchmarkDaemonIdleRSS(b *testing.B) {
	before := os.Getenv("VOLANT_BENCH_BEFORE")
	if before == "" {
		b.Fatal("VOLANT_BENCH_BEFORE must name the volantd binary to compare with (bench/volantd-scale/idle.sh)")
	}
	rounds := 5
	if v, err := strconv.Atoi(os.Getenv("VOLANT_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	after := guesttest.Command(b, "volantd")
	if v := os.Getenv("VOLANT_BENCH_AFTER"); v != "" {
		after = v
	}
	sides := []struct {
		name, bin string
		samples   []rssSample
	}{{name: "after", bin: after}, {name: "before", bin: before}}
	h := newFakeHost(b)
	for r := range rounds {
		for i := range sides {
			s := &sides[(i+r)%2]
			s.samples = append(s.samples, idleRSS(b, h, s.bin, r))
		}
	}
	res := map[string]any{
		"benchmark":    "volantd-idle-rss",
		"date":         time.Now().UTC().Format(time.RFC3339),
		"rounds":       rounds,
		"settle":       "3 s after /healthz and one plugin installed, no VMs",
		"host_loadavg": loadavg(),
		"host_cpus":    runtime.NumCPU(),
		"host_kernel":  kernelRelease(),
		"target":       "idle RSS <= 25 MiB",
	}
	med := map[string]map[string]float64{}
	for _, s := range sides {
		st, _ := os.Stat(s.bin)
		m := map[string]float64{}
		for _, k := range []string{"rss", "anonymous", "file", "file_pmd_mapped"} {
			var xs []float64
			for _, x := range s.samples {
				xs = append(xs, float64(x[k])/1024)
			}
			m[k+"_mib"] = round2(median(xs))
		}
		med[s.name] = m
		res[s.name] = map[string]any{"binary": s.bin, "binary_bytes": st.Size(), "median": m, "samples_kib": s.samples}
	}
	res["ratio_rss"] = round2(med["after"]["rss_mib"] / med["before"]["rss_mib"])
	res["ratio_anonymous"] = round2(med["after"]["anonymous_mib"] / med["before"]["anonymous_mib"])
	res["ratio_file"] = round2(med["after"]["file_mib"] / med["before"]["file_mib"])
	js, _ := json.MarshalIndent(res, "", "  ")
	fmt.Printf("%s\n", js)
	b.ReportMetric(med["after"]["rss_mib"], "MiB-idle")
	b.ReportMetric(med["before"]["rss_mib"], "MiB-idle-before")
	if p := os.Getenv("VOLANT_BENCH_OUT"); p != "" {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, append(js, '\n'), 0o644); err != nil {
			b.Fatal(err)
		}
	}
}

// rssSample is smaps_rollup's figures (KiB) of one idle volantd.
type rssSample map[string]int

// idleRSS starts volantd (binary bin) on h, installs h's plugin, lets it
// settle, reads its memory and stops it.
func idleRSS(b *testing.B, h *fakeHost, bin string, round int) rssSample {
	b.Helper()
	dir := filepath.Join(b.TempDir(), fmt.Sprintf("r%d", round))
	os.MkdirAll(dir, 0o755)
	for name, target := range map[string]string{
		"volantd":       bin,
		"volant-launch": guesttest.Command(b, "volant-launch"),
		chtest.Name:     mustExecutable(b),
	} {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			b.Fatal(err)
		}
	}
	h.bin = dir
	d := h.start(b)
	if _, err := d.c.InstallPlugin(context.Background(), h.manifest, client.InstallOptions{}); err != nil {
		b.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	s := smapsRollup(b, d.cmd.Process.Pid)
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		b.Fatal("volantd did not stop within 30 s of SIGTERM")
	}
	// The next start begins with an empty data directory again.
	for _, p := range []string{"data", "run", "volantd.sock"} {
		if err := os.RemoveAll(filepath.Join(h.dir, p)); err != nil {
			b.Fatal(err)
		}
	}
	return s
}

func mustExecutable(b *testing.B) string {
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	return self
}

var smapsLine = regexp.MustCompile(`(?m)^(Rss|Anonymous|FilePmdMapped):\s+(\d+) kB`)

// smapsRollup reads /proc/PID/smaps_rollup: rss, anonymous,
// file (rss - anonymous: the binary's pages and other files) and
// file_pmd_mapped (file pages mapped 2 MiB at a time).
func smapsRollup(t testing.TB, pid int) rssSample {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := rssSample{}
	for _, m := range smapsLine.FindAllSubmatch(data, -1) {
		v, _ := strconv.Atoi(string(m[2]))
		switch string(m[1]) {
		case "Rss":
			s["rss"] = v
		case "Anonymous":
			s["anonymous"] = v
		case "FilePmdMapped":
			s["file_pmd_mapped"] = v
		}
	}
	if s["rss"] == 0 {
		t.Fatalf("no Rss in smaps_rollup of %d:\n%s", pid, data)
	}
	s["file"] = s["rss"] - s["anonymous"]
	return s
}

func kernelRelease() string {
	var u syscall.Utsname
	if syscall.Uname(&u) != nil {
		return ""
	}
	var out []byte
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}
