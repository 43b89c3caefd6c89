package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/initramfs"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// sharedLibs lists the shared objects a host binary loads (ldd's paths),
// the dynamic loader included.
func sharedLibs(tb testing.TB, bin string) []string {
	tb.Helper()
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		tb.Fatalf("ldd %s: %v", bin, err)
	}
	var libs []string
	for _, m := range regexp.MustCompile(`(?m)(/\S+) \(0x`).FindAllStringSubmatch(string(out), -1) {
		libs = append(libs, m[1])
	}
	return libs
}

// dropbearGuest is a kestrel plugin whose workload is Debian's dropbear
// (with its shared libraries), accepting root with the public key of
// dir/id (made here with ssh-keygen); busybox provides sh and true.
func dropbearGuest(b *testing.B, w *vmWorld, dir string) {
	b.Helper()
	for _, p := range []string{"dropbear", "dropbearkey", "ssh", "ssh-keygen", "ldd"} {
		if _, err := exec.LookPath(p); err != nil {
			netnstest.SkipOrFail(b, "needs %s (scripts/install-deps.sh: dropbear-bin, openssh-client)", p)
		}
	}
	dropbear, _ := exec.LookPath("dropbear")
	hostKey, id := filepath.Join(dir, "hostkey"), filepath.Join(dir, "id")
	for _, c := range [][]string{{"dropbearkey", "-t", "ed25519", "-f", hostKey}, {"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", id}} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			b.Fatalf("%s: %v: %s", c[0], err, out)
		}
	}
	pub, err := os.ReadFile(id + ".pub")
	if err != nil {
		b.Fatal(err)
	}
	libs := sharedLibs(b, dropbear)
	w.plugin(b, guestPlugin{name: "sshd", applets: []string{"sh", "true"},
		workload: `{"entrypoint":["/usr/sbin/dropbear","-F","-E","-s","-p","22","-r","/etc/dropbear/hostkey","-P","/tmp/dropbear.pid"]}`,
		build: func(bld *initramfs.Builder) error {
			for _, d := range []string{"/usr", "/usr/sbin", "/etc", "/etc/dropbear", "/lib", "/lib64", "/lib/x86_64-linux-gnu", "/tmp", "/var", "/var/run"} {
				bld.Dir(d, 0o755)
			}
			bld.Dir("/root", 0o700)
			bld.Dir("/root/.ssh", 0o700)
			bld.File("/root/.ssh/authorized_keys", 0o600, pub)
			bld.File("/etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n"))
			bld.File("/etc/group", 0o644, []byte("root:x:0:\n"))
			if err := bld.CopyFile("/etc/dropbear/hostkey", hostKey, 0o600); err != nil {
				return err
			}
			if err := bld.CopyFile("/usr/sbin/dropbear", dropbear, 0o755); err != nil {
				return err
			}
			for _, l := range libs {
				real, err := filepath.EvalSymlinks(l)
				if err != nil {
					return err
				}
				if err := bld.CopyFile(l, real, 0o755); err != nil {
					return err
				}
			}
			return nil
		}})
}

func medianMS(v []float64) float64 {
	x := append([]float64(nil), v...)
	sort.Float64s(x)
	if len(x)%2 == 1 {
		return x[len(x)/2]
	}
	return (x[len(x)/2-1] + x[len(x)/2]) / 2
}

// BenchmarkExecVsSSH runs `true` in one guest (QEMU, kestrel as PID 1,
// Debian's dropbear as its workload) over Volant's agent channel and over
// SSH through the bridge of a private network namespace, alternating, N
// times each ($VOLANT_BENCH_N, 20):
//
//   - exec: `volant-launch exec --dir RUN -- true`, a process per round trip
//     (what a shell script pays; volar adds volantd's hop);
//   - exec-inprocess: lib/agentchan's Session.Run of `true` on a fresh
//     connection to the supervisor, no process started on the host;
//   - ssh: OpenSSH's `ssh root@GUEST true`, a new connection each time
//     (key exchange, public key authentication, a session running
//     `sh -c true`);
//   - ssh-mux: the same through a ControlMaster connection opened once.
//
// bench/exec/run.sh runs it; it prints medians and the ratio exec/ssh
// (target <= 0.5) and writes $VOLANT_BENCH_OUT. It asserts nothing about
// time.
func BenchmarkExecVsSSH(b *testing.B) {
	n := 20
	if v, err := strconv.Atoi(os.Getenv("VOLANT_BENCH_N")); err == nil && v > 0 {
		n = v
	}
	const name = "sshbench"
	w := newWorld(b, name)
	dir, err := os.MkdirTemp("", "eb-") // short: ssh's control socket path
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	dropbearGuest(b, w, dir)
	run, _, runErr := w.start(b, name)
	w.waitAgent(b, runErr)

	ctl := filepath.Join(dir, "ctl")
	sshArgs := func(extra ...string) []string {
		return append(append([]string{"-F", "/dev/null", "-i", filepath.Join(dir, "id"), "-o", "BatchMode=yes",
			"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"}, extra...),
			"root@"+guestIP, "true")
	}
	// Each command is started from a thread inside the namespace (the
	// bridge is there), without `ip netns exec` in the measured time.
	timed := func(name string, args ...string) float64 {
		b.Helper()
		var d time.Duration
		err := w.ns.Do(func() error {
			cmd := exec.Command(name, args...)
			cmd.Env = w.env
			errf, _ := os.CreateTemp(dir, "stderr-")
			defer os.Remove(errf.Name())
			defer errf.Close()
			cmd.Stderr = errf
			t0 := time.Now()
			err := cmd.Run()
			d = time.Since(t0)
			if err != nil {
				msg, _ := os.ReadFile(errf.Name())
				return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		return float64(d.Microseconds()) / 1000
	}
	// dropbear starts with the workload; wait for its first answer.
	deadline := time.Now().Add(60 * time.Second)
	for {
		var err error
		w.ns.Do(func() error {
			err = exec.Command("ssh", sshArgs("-o", "ConnectTimeout=5")...).Run()
			return nil
		})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			con, _ := os.ReadFile(w.log)
			b.Fatalf("no ssh into the guest: %v\nconsole:\n%s", err, con)
		}
		time.Sleep(500 * time.Millisecond)
	}
	// The multiplexing master, for ssh-mux.
	master := exec.Command("ssh", sshArgs("-o", "ControlMaster=yes", "-o", "ControlPath="+ctl, "-N")...)
	master.Args = master.Args[:len(master.Args)-1] // -N: no command
	if err := w.ns.Do(master.Start); err != nil {
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
	inProcess := func() float64 {
		t0 := time.Now()
		sess, err := launch.DialGuest(context.Background(), w.runDir)
		if err != nil {
			b.Fatal(err)
		}
		res, err := sess.Run(context.Background(), agentchan.ExecRequest{Argv: []string{"true"}}, nil, 0)
		sess.Close()
		if err != nil || res.ExitCode != 0 {
			b.Fatalf("in-process exec: %+v %v", res, err)
		}
		return float64(time.Since(t0).Microseconds()) / 1000
	}

	loadBefore, _ := os.ReadFile("/proc/loadavg")
	samples := map[string][]float64{}
	variants := []string{"exec", "exec_inprocess", "ssh", "ssh_mux"}
	for i := 0; i < n+1; i++ { // round 0 warms caches and is not kept
		for _, v := range variants {
			var ms float64
			switch v {
			case "exec":
				ms = timed(w.bin, "exec", "--dir", w.runDir, "--", "true")
			case "exec_inprocess":
				ms = inProcess()
			case "ssh":
				ms = timed("ssh", sshArgs()...)
			case "ssh_mux":
				ms = timed("ssh", sshArgs("-o", "ControlPath="+ctl)...)
			}
			if i > 0 {
				samples[v] = append(samples[v], ms)
			}
		}
	}
	loadAfter, _ := os.ReadFile("/proc/loadavg")
	run.Process.Signal(syscall.SIGTERM)
	run.Wait()

	out := map[string]any{"runs": n, "guest": "QEMU TCG, 1 vCPU, kestrel PID 1, dropbear " + dropbearVersion(),
		"host_loadavg_before": strings.TrimSpace(string(loadBefore)),
		"host_loadavg_after":  strings.TrimSpace(string(loadAfter)),
	}
	med := map[string]float64{}
	for _, v := range variants {
		med[v] = medianMS(samples[v])
		out[v] = map[string]any{"median_ms": med[v], "samples_ms": samples[v]}
		b.ReportMetric(med[v], v+"-ms")
	}
	out["ratio_exec_to_ssh"] = med["exec"] / med["ssh"]
	out["ratio_exec_inprocess_to_ssh"] = med["exec_inprocess"] / med["ssh"]
	out["ratio_exec_to_ssh_mux"] = med["exec"] / med["ssh_mux"]
	out["ratio_exec_inprocess_to_ssh_mux"] = med["exec_inprocess"] / med["ssh_mux"]
	b.ReportMetric(med["exec"]/med["ssh"], "exec/ssh")
	js, _ := json.MarshalIndent(out, "", "  ")
	fmt.Printf("%s\n", js)
	if p := os.Getenv("VOLANT_BENCH_OUT"); p != "" {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, append(js, '\n'), 0o644); err != nil {
			b.Fatal(err)
		}
	}
}

// dropbearVersion is the installed dropbear-bin package's version.
func dropbearVersion() string {
	out, _ := exec.Command("dpkg-query", "-W", "-f", "${Version}", "dropbear-bin").Output()
	return string(out)
}
