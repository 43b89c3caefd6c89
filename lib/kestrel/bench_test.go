package kestrel_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/kestrel/internal/vmtest"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/vmm/supervise"
)

// BenchmarkVMBoot measures kestrel in real guests, the initramfs and the
// rootfs path side by side (alternating, so both see the same machine
// load): QEMU launch to the first HTTP 200 from the workload through
// kestrel's proxy on the guest IP, kestrel's RSS in the guest, and a stop
// through the ACPI power button (lib/vmm/supervise.Stop, as launchers do)
// to QEMU's exit. bench/kestrel/run.sh runs it; it prints
// medians and ratios and writes $VOLANT_BENCH_OUT. It asserts nothing
// about time.
func BenchmarkVMBoot(b *testing.B) {
	n := benchRuns(5)
	k, vmlinux := guesttest.Kernel(b)
	net := vmtest.NewNet(b)
	initramfsImg := func() string {
		im := vmtest.BootImage(b, k)
		im.AddBusybox("sh", "httpd")
		im.File("/srv/index.html", 0o644, "ok\n")
		return im.Write()
	}()
	bootOnly := vmtest.BootImage(b, k).Write()
	root := rootDisk(b, true, "ok\n")
	initManifest, rootManifest := encode(b, webManifest(false)), encode(b, webManifest(true))

	loadBefore, _ := os.ReadFile("/proc/loadavg")
	type sample struct{ httpMS, rssKiB, offMS float64 }
	results := map[string][]sample{}
	for i := 0; i < n; i++ {
		for vi, variant := range []string{"initramfs", "rootfs"} {
			host := 100 + 2*i + vi // a fresh address and MAC per boot
			ip := netip.MustParseAddr("192.168.127." + strconv.Itoa(host))
			mac := fmt.Sprintf("02:00:00:00:00:%02x", host)
			cfg := vmtest.Config{Name: "bench-" + variant, IP: ip, MAC: mac,
				Cmdline: "volant.vm=bench volant.ip=" + ip.String() + "/24 volant.gw=192.168.127.1"}
			if variant == "initramfs" {
				cfg.Initrd, cfg.Cmdline = initramfsImg, cfg.Cmdline+" volant.manifest="+initManifest
			} else {
				cfg.Initrd, cfg.Disks, cfg.Cmdline = bootOnly, []string{copyImage(b, root)}, cfg.Cmdline+" volant.manifest="+rootManifest
			}
			vm := vmtest.Boot(b, net, vmlinux, cfg)
			t0 := time.Now()
			g := &guest{t: b, client: net.PollClient(), base: "http://" + ip.String() + ":8080"}
			for {
				code, body, err := g.get("/v1/index.html")
				if err == nil && code == 200 && body == "ok\n" {
					break
				}
				if time.Since(t0) > bootTimeout {
					b.Fatalf("%s: no HTTP 200 within %s:\n%s", variant, bootTimeout, vm.ConsoleText())
				}
				time.Sleep(20 * time.Millisecond)
			}
			httpAt := vm.Since()
			st := g.waitStatus("status", 10*time.Second, func(s agentapi.Status) bool { return s.Memory != nil })
			t1 := time.Now()
			if res := vm.Stop(30 * time.Second); res.Method != supervise.StoppedPowerButton {
				b.Fatalf("%s: the power button did not stop the guest: %+v\n%s", variant, res, vm.ConsoleText())
			}
			results[variant] = append(results[variant], sample{
				httpMS: float64(httpAt.Milliseconds()),
				rssKiB: float64(st.Memory.AgentRSSKiB),
				offMS:  float64(time.Since(t1).Milliseconds()),
			})
		}
	}
	median := func(v []sample, f func(sample) float64) float64 {
		x := make([]float64, len(v))
		for i, s := range v {
			x[i] = f(s)
		}
		return medianOf(x)
	}
	size := int64(0)
	if st, err := os.Stat(guesttest.Kestrel(b)); err == nil {
		size = st.Size()
	}
	loadAfter, _ := os.ReadFile("/proc/loadavg")
	out := map[string]any{"runs": n, "kestrel_binary_bytes": size,
		// The host is shared; its load says how much to trust the medians.
		"host_loadavg_before": strings.TrimSpace(string(loadBefore)),
		"host_loadavg_after":  strings.TrimSpace(string(loadAfter)),
	}
	for _, v := range []string{"initramfs", "rootfs"} {
		m := map[string]float64{
			"launch_to_http_ms_median":       median(results[v], func(s sample) float64 { return s.httpMS }),
			"kestrel_rss_kib_median":         median(results[v], func(s sample) float64 { return s.rssKiB }),
			"power_button_to_exit_ms_median": median(results[v], func(s sample) float64 { return s.offMS }),
		}
		out[v] = m
		b.ReportMetric(m["launch_to_http_ms_median"], v+"-http-ms")
		b.ReportMetric(m["kestrel_rss_kib_median"], v+"-rss-KiB")
		b.ReportMetric(m["power_button_to_exit_ms_median"], v+"-off-ms")
	}
	ratio := out["rootfs"].(map[string]float64)["launch_to_http_ms_median"] / out["initramfs"].(map[string]float64)["launch_to_http_ms_median"]
	out["ratio_rootfs_to_initramfs_http"] = ratio
	b.ReportMetric(ratio, "rootfs/initramfs")
	writeBenchOut(b, out)
}

// benchRuns is $VOLANT_BENCH_N, or def.
func benchRuns(def int) int {
	if v, err := strconv.Atoi(os.Getenv("VOLANT_BENCH_N")); err == nil && v > 0 {
		return v
	}
	return def
}

func medianOf(v []float64) float64 {
	x := append([]float64(nil), v...)
	sort.Float64s(x)
	if len(x)%2 == 1 {
		return x[len(x)/2]
	}
	return (x[len(x)/2-1] + x[len(x)/2]) / 2
}

// writeBenchOut prints a benchmark's results and writes them to
// $VOLANT_BENCH_OUT when set.
func writeBenchOut(b *testing.B, out map[string]any) {
	js, _ := json.MarshalIndent(out, "", "  ")
	fmt.Printf("%s\n", js)
	if p := os.Getenv("VOLANT_BENCH_OUT"); p != "" {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, append(js, '\n'), 0o644); err != nil {
			b.Fatal(err)
		}
	}
}

// copyImage gives each boot a fresh copy of a disk image (QEMU locks images,
// and each boot should start from the same state).
func copyImage(t testing.TB, src string) string {
	dst := filepath.Join(t.TempDir(), filepath.Base(src))
	copyFile(t, src, dst)
	return dst
}
