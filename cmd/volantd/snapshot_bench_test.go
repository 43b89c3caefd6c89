package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// BenchmarkSnapshotRestore measures, side by side in one run and one
// volantd, create → running (its health check passed) for VMs of one
// plugin (busybox httpd, kestrel, QEMU TCG here) cold-booted and started
// from a snapshot of a running VM of it, VOLANT_BENCH_N (default 5) of
// each, alternating which goes first; and the snapshot's size on disk
// against the guest's memory. bench/snapshot/run.sh runs it and writes
// $VOLANT_BENCH_OUT (target: restore/cold median <= 0.3).
func BenchmarkSnapshotRestore(b *testing.B) {
	n := 5
	if v, err := strconv.Atoi(os.Getenv("VOLANT_BENCH_N")); err == nil && v > 0 {
		n = v
	}
	k, _ := guesttest.Kernel(b)
	guesttest.QEMU(b)
	kestrel := guesttest.Kestrel(b)
	h := &fakeHost{ns: netnstest.New(b), dir: b.TempDir()}
	wrap := []string{"ip", "netns", "exec", h.ns.Name}
	d := startDaemon(b, h.dir, wrap, nil, "--vmm", "qemu", "--accel", "tcg", "--kernel", k.Dir, "--kestrel", kestrel,
		"--health-interval", "500ms", "--start-timeout", "120s", "--stop-timeout", "5s")
	ctx := context.Background()
	if _, err := d.c.InstallPlugin(ctx, counterPlugin(b, filepath.Join(h.dir, "data", "plugins", "counter"), k.ModulesDir, kestrel), client.InstallOptions{}); err != nil {
		b.Fatal(err)
	}
	healthy := func(req api.CreateVMRequest) float64 {
		b.Helper()
		t0 := time.Now()
		if _, err := d.c.CreateVM(ctx, req); err != nil {
			b.Fatal(err)
		}
		if _, err := d.c.WaitVM(ctx, req.Name, api.VMRunning, 180*time.Second); err != nil {
			b.Fatalf("%s: %v", req.Name, err)
		}
		ms := float64(time.Since(t0).Milliseconds())
		if _, err := d.c.DeleteVM(ctx, req.Name); err != nil {
			b.Fatal(err)
		}
		return ms
	}
	before := loadavg()
	healthy(api.CreateVMRequest{Name: "warmup", Plugin: "counter"}) // the boot image is built once
	if _, err := d.c.CreateVM(ctx, api.CreateVMRequest{Name: "src", Plugin: "counter"}); err != nil {
		b.Fatal(err)
	}
	if _, err := d.c.WaitVM(ctx, "src", api.VMRunning, 180*time.Second); err != nil {
		b.Fatal(err)
	}
	snap, err := d.c.SnapshotVM(ctx, "src", api.CreateSnapshotRequest{Name: "warm"})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := d.c.DeleteVM(ctx, "src"); err != nil {
		b.Fatal(err)
	}
	var cold, warm []float64
	for i := 0; i < n; i++ {
		c := func() {
			cold = append(cold, healthy(api.CreateVMRequest{Name: fmt.Sprintf("cold%d", i), Plugin: "counter"}))
		}
		w := func() {
			warm = append(warm, healthy(api.CreateVMRequest{Name: fmt.Sprintf("warm%d", i), FromSnapshot: "warm"}))
		}
		if i%2 == 0 {
			c()
			w()
		} else {
			w()
			c()
		}
		b.Logf("round %d: cold %.0f ms, from snapshot %.0f ms", i+1, cold[i], warm[i])
	}
	memBytes := int64(snap.MemoryMB) << 20
	res := map[string]any{
		"runs":                         n,
		"cold_create_to_healthy_ms":    cold,
		"restore_create_to_healthy_ms": warm,
		"cold_median_ms":               median(cold),
		"restore_median_ms":            median(warm),
		"ratio_restore_to_cold":        round3(median(warm) / median(cold)),
		"target_ratio":                 0.3,
		"snapshot_state_bytes":         snap.StateBytes,
		"snapshot_disk_bytes":          snap.DiskBytes,
		"guest_memory_bytes":           memBytes,
		"ratio_snapshot_to_memory":     round3(float64(snap.StateBytes+snap.DiskBytes) / float64(memBytes)),
		"snapshot_paused_ms":           snap.PausedMS,
		"vmm":                          snap.VMM,
		"host_loadavg_before":          before,
		"host_loadavg_after":           loadavg(),
		"host_cpus":                    runtime.NumCPU(),
	}
	js, _ := json.MarshalIndent(res, "", "  ")
	fmt.Printf("%s\n", js)
	b.ReportMetric(median(cold), "cold-ms")
	b.ReportMetric(median(warm), "restore-ms")
	if p := os.Getenv("VOLANT_BENCH_OUT"); p != "" {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, append(js, '\n'), 0o644); err != nil {
			b.Fatal(err)
		}
	}
}
