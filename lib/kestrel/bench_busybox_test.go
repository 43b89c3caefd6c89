package kestrel_test

import (
	"fmt"
	"math"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/kestrel/internal/vmtest"
	"github.com/volantvm/volant/lib/kmod"
	"github.com/volantvm/volant/lib/testutil/guesttest"
)

// BenchmarkVMBootVsBusybox compares boot-to-healthy of a kestrel initramfs
// with the same kernel, modules and workload under a minimal busybox init:
// a shell script that mounts /proc, /sys and /dev, loads just the virtio
// network modules, sets the address and execs httpd. Both run busybox
// httpd with the same arguments (webManifest's: on :80, logging each
// request), and both are timed from QEMU's launch to the first HTTP 200
// of /index.html on the guest IP (kestrel's proxy is not in the path), in
// alternating boots so both see the same machine load ($VOLANT_BENCH_BEFORE,
// an earlier kestrel build, joins the alternation as a third variant for a
// before/after pair; $VOLANT_BENCH_GOFLOOR=1 adds the script booted through
// the smallest Go init, the floor of any Go PID 1). bench/boot/run.sh
// runs it; it prints medians and the ratio kestrel/busybox (target <= 1.15)
// and writes $VOLANT_BENCH_OUT. It asserts nothing about time.
func BenchmarkVMBootVsBusybox(b *testing.B) {
	n := benchRuns(7)
	k, vmlinux := guesttest.Kernel(b)
	net := vmtest.NewNet(b)

	kestrelInitrd := func(kestrel string) string {
		im := vmtest.BootImageWith(b, k, kestrel)
		im.AddBusybox("sh", "httpd")
		im.File("/srv/index.html", 0o644, "ok\n")
		return im.Write()
	}
	initrds := map[string]string{"kestrel": kestrelInitrd(guesttest.Kestrel(b))}
	variants := []string{"kestrel", "busybox"}
	// $VOLANT_BENCH_BEFORE names an earlier kestrel build, booted as a
	// third variant in the same alternation ("before"): a before/after
	// pair under one machine load.
	if before := os.Getenv("VOLANT_BENCH_BEFORE"); before != "" {
		initrds["before"] = kestrelInitrd(before)
		variants = append(variants, "before")
	}
	manifest := encode(b, webManifest(false))

	ix, err := kmod.LoadIndex(k.ModulesDir)
	if err != nil {
		b.Fatal(err)
	}
	steps, err := ix.Resolve("virtio_mmio", "virtio_net")
	if err != nil {
		b.Fatal(err)
	}
	var script strings.Builder
	// The script marks its start and its exec on the console with the
	// guest's uptime (read is a shell builtin: no process), as kestrel's
	// log lines do, so the two timelines compare step by step.
	script.WriteString("#!/bin/sh\nmount -t proc proc /proc\nread up _ </proc/uptime; echo \"[$up] busybox: init\"\nmount -t sysfs sysfs /sys\nmount -t devtmpfs devtmpfs /dev\n")
	for _, s := range steps {
		fmt.Fprintf(&script, "insmod /lib/modules/%s/%s\n", k.Release, s.Path)
	}
	script.WriteString(`for w in $(cat /proc/cmdline); do case $w in volant.ip=*) addr=${w#volant.ip=};; esac; done
ip link set lo up
ip addr add "$addr" dev eth0
ip link set eth0 up
read up _ </proc/uptime; echo "[$up] busybox: exec"
exec ` + strings.Join(webManifest(false).Workload.Entrypoint, " ") + `
`)
	bbImg := vmtest.BootImage(b, k) // same modules on board; /init replaced
	bbImg.AddBusybox("sh", "httpd", "mount", "insmod", "ip", "cat")
	bbImg.File("/srv/index.html", 0o644, "ok\n")
	bbImg.File("/init", 0o755, script.String())
	busyboxInitrd := bbImg.Write()
	// $VOLANT_BENCH_GOFLOOR=1 adds a variant that boots the same script
	// through the smallest Go init (testdata/goinit: it only execs the
	// script): what any Go PID 1 costs before doing anything, the floor
	// of kestrel's ratio under software emulation.
	var gofloorInitrd string
	if os.Getenv("VOLANT_BENCH_GOFLOOR") != "" {
		gi := vmtest.BootImage(b, k)
		gi.AddBusybox("sh", "httpd", "mount", "insmod", "ip", "cat")
		gi.File("/srv/index.html", 0o644, "ok\n")
		gi.File("/init.sh", 0o755, script.String())
		if err := gi.B.CopyFile("/init", guesttest.StaticInit(b, "lib/kestrel/internal/vmtest/testdata/goinit"), 0o755); err != nil {
			b.Fatal(err)
		}
		gofloorInitrd = gi.Write()
		variants = append(variants, "gofloor")
	}

	loadBefore, _ := os.ReadFile("/proc/loadavg")
	results := map[string][]float64{}
	var lateBefore, buttonBefore []bool
	for i := 0; i < n; i++ {
		for vi, variant := range variants {
			host := 100 + len(variants)*i + vi
			ip := netip.MustParseAddr("192.168.127." + strconv.Itoa(host))
			mac := fmt.Sprintf("02:00:00:00:01:%02x", host)
			cfg := vmtest.Config{Name: "boot-" + variant, IP: ip, MAC: mac,
				Cmdline: "volant.vm=bench volant.ip=" + ip.String() + "/24 volant.gw=192.168.127.1"}
			switch variant {
			case "busybox":
				cfg.Initrd = busyboxInitrd
			case "gofloor":
				cfg.Initrd = gofloorInitrd
			default:
				cfg.Initrd, cfg.Cmdline = initrds[variant], cfg.Cmdline+" volant.manifest="+manifest
			}
			vm := vmtest.Boot(b, net, vmlinux, cfg)
			waitHTTP200(b, vm, net, "http://"+ip.String()+":80/index.html")
			results[variant] = append(results[variant], float64(vm.Since().Milliseconds()))
			results[variant+"_cpu"] = append(results[variant+"_cpu"], float64(vm.CPUTime().Milliseconds()))
			// Under TCG much of a boot's CPU is translating guest code:
			// how much host code it made, and how often the cache filled.
			if j, err := vm.JIT(); err == nil {
				results[variant+"_jit_mb"] = append(results[variant+"_jit_mb"], math.Round(float64(j.CodeBytes)/1e5)/10)
				results[variant+"_jit_flushes"] = append(results[variant+"_jit_flushes"], float64(j.Flushes))
			} else {
				b.Logf("%s: info jit: %v", variant, err)
			}
			if variant == "busybox" || variant == "gofloor" {
				for k, v := range consoleMarks(vm.ConsoleText()) {
					results[variant+"_"+k] = append(results[variant+"_"+k], v)
				}
			}
			if variant == "kestrel" {
				marks := consoleMarks(vm.ConsoleText())
				for k, v := range marks {
					results["kestrel_"+k] = append(results["kestrel_"+k], v)
				}
				// Whether the late modules (boot.LateModulesDelay after the
				// workload started, by the guest's clock) were loaded before
				// the first answer: their CPU time is then in this boot's.
				_, late := marks["late"]
				lateBefore = append(lateBefore, late)
				// Likewise the power button's modules, loaded as soon as
				// the workload is healthy by kestrel's own check.
				_, button := marks["button"]
				buttonBefore = append(buttonBefore, button)
			}
			vm.Quit()
		}
	}
	loadAfter, _ := os.ReadFile("/proc/loadavg")
	med := medianOf
	// Each pair's ratio (a kestrel boot and the busybox boot right after
	// it) sees nearly the same machine: its median drifts less with the
	// host's load than the ratio of the two medians does.
	pairs := pairRatios(results["kestrel_cpu"], results["busybox_cpu"])
	out := map[string]any{
		"runs":                               n,
		"kestrel_launch_to_http_ms":          results["kestrel"],
		"busybox_launch_to_http_ms":          results["busybox"],
		"kestrel_launch_to_http_ms_median":   med(results["kestrel"]),
		"busybox_launch_to_http_ms_median":   med(results["busybox"]),
		"ratio_kestrel_to_busybox":           med(results["kestrel"]) / med(results["busybox"]),
		"kestrel_qemu_cpu_ms":                results["kestrel_cpu"],
		"busybox_qemu_cpu_ms":                results["busybox_cpu"],
		"kestrel_qemu_cpu_ms_median":         med(results["kestrel_cpu"]),
		"busybox_qemu_cpu_ms_median":         med(results["busybox_cpu"]),
		"ratio_qemu_cpu_kestrel_to_busybox":  med(results["kestrel_cpu"]) / med(results["busybox_cpu"]),
		"ratio_qemu_cpu_pairs":               pairs,
		"ratio_qemu_cpu_pairs_median":        med(pairs),
		"kestrel_jit_code_mb":                results["kestrel_jit_mb"],
		"busybox_jit_code_mb":                results["busybox_jit_mb"],
		"kestrel_jit_flushes":                results["kestrel_jit_flushes"],
		"busybox_jit_flushes":                results["busybox_jit_flushes"],
		"kestrel_uptime_ms_at":               marksMedians(results, "kestrel_"),
		"busybox_uptime_ms_at":               marksMedians(results, "busybox_"),
		"kestrel_late_modules_before_http":   lateBefore,
		"kestrel_button_modules_before_http": buttonBefore,
		"target_ratio":                       1.15,
		"host_loadavg_before":                strings.TrimSpace(string(loadBefore)),
		"host_loadavg_after":                 strings.TrimSpace(string(loadAfter)),
	}
	if _, ok := initrds["before"]; ok {
		out["before_kestrel"] = os.Getenv("VOLANT_BENCH_BEFORE")
		out["before_launch_to_http_ms"] = results["before"]
		out["before_qemu_cpu_ms"] = results["before_cpu"]
		out["before_qemu_cpu_ms_median"] = med(results["before_cpu"])
		out["before_jit_code_mb"] = results["before_jit_mb"]
		out["ratio_qemu_cpu_before_to_busybox"] = med(results["before_cpu"]) / med(results["busybox_cpu"])
		before := pairRatios(results["before_cpu"], results["busybox_cpu"])
		out["ratio_qemu_cpu_before_pairs"] = before
		out["ratio_qemu_cpu_before_pairs_median"] = med(before)
		after := pairRatios(results["kestrel_cpu"], results["before_cpu"])
		out["ratio_qemu_cpu_kestrel_to_before_pairs"] = after
		out["ratio_qemu_cpu_kestrel_to_before_pairs_median"] = med(after)
	}
	if gofloorInitrd != "" {
		out["gofloor_launch_to_http_ms"] = results["gofloor"]
		out["gofloor_qemu_cpu_ms"] = results["gofloor_cpu"]
		out["gofloor_qemu_cpu_ms_median"] = med(results["gofloor_cpu"])
		out["gofloor_jit_code_mb"] = results["gofloor_jit_mb"]
		out["gofloor_uptime_ms_at"] = marksMedians(results, "gofloor_")
		out["ratio_qemu_cpu_gofloor_to_busybox"] = med(results["gofloor_cpu"]) / med(results["busybox_cpu"])
		floor := pairRatios(results["gofloor_cpu"], results["busybox_cpu"])
		out["ratio_qemu_cpu_gofloor_pairs"] = floor
		out["ratio_qemu_cpu_gofloor_pairs_median"] = med(floor)
	}
	b.ReportMetric(out["ratio_kestrel_to_busybox"].(float64), "kestrel/busybox")
	b.ReportMetric(out["ratio_qemu_cpu_kestrel_to_busybox"].(float64), "cpu-kestrel/busybox")
	writeBenchOut(b, out)
}

// pairRatios divides a[i] by b[i], to three decimals.
func pairRatios(a, b []float64) []float64 {
	var out []float64
	for i := range a {
		if i < len(b) && b[i] > 0 {
			out = append(out, math.Round(a[i]/b[i]*1000)/1000)
		}
	}
	return out
}

// consoleMarks reads the guest uptime (ms) at which kestrel logged each
// boot step (or the busybox script marked its start and exec), from a
// console transcript.
func consoleMarks(console string) map[string]float64 {
	marks := map[string]string{
		"stage1": "kestrel: stage 1 ", "modules": "kestrel: kernel modules loaded", "network": "kestrel: network configured",
		"ready": "kestrel: agent ready", "api": "kestrel: agent API listening", "workload": "kestrel: workload started",
		"late": "kestrel: later kernel modules loaded modules=virtio", "button": "kestrel: later kernel modules loaded modules=button",
		"init": "busybox: init", "exec": "busybox: exec",
	}
	out := map[string]float64{}
	for _, line := range strings.Split(console, "\n") {
		for k, m := range marks {
			i := strings.Index(line, m)
			if i < 0 || !strings.HasPrefix(line, "[") {
				continue
			}
			end := strings.IndexByte(line, ']')
			if sec, err := strconv.ParseFloat(strings.TrimSpace(line[1:end]), 64); err == nil {
				out[k] = math.Round(sec * 1000)
			}
		}
	}
	return out
}

func marksMedians(results map[string][]float64, prefix string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range results {
		if name, ok := strings.CutPrefix(k, prefix); ok && name != "cpu" && !strings.HasPrefix(name, "jit_") {
			out[name] = medianOf(v)
		}
	}
	return out
}
