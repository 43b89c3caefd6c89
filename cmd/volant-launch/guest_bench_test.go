package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/initramfs"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/testutil/guesttest"
)

// BenchmarkExecVsSSH runs `true` in one guest (QEMU, kestrel as PID 1,
// Debian's dropbear as its workload) over Volant's agent channel and over
// SSH through the bridge of a private network namespace, alternating, N
// times each ($VOLANT_BENCH_N, 20):
//
//   - exec: `volant-launch exec --dir RUN -- true`, a process per round
//     trip (what a shell script pays);
//   - exec_inprocess: lib/agentchan's Session.Run of `true` on a fresh
//     connection to the VM's supervisor, no process started on the host;
//   - ssh: OpenSSH's `ssh root@GUEST true`, a new connection each time
//     (key exchange, public key authentication, a session running
//     `sh -c true`);
//   - ssh_mux: the same through a ControlMaster connection opened once.
//
// bench/exec/run.sh runs it (and cmd/volar's BenchmarkVolarExecVsSSH for
// `volar vms exec` through volantd); it prints medians and the ratios to
// ssh (target <= 0.5) and writes $VOLANT_BENCH_OUT. It asserts nothing
// about time.
func BenchmarkExecVsSSH(b *testing.B) {
	const name = "sshbench"
	w := newWorld(b, name)
	dir, err := os.MkdirTemp("", "eb-") // short: ssh's control socket path
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	var key string
	w.plugin(b, guestPlugin{name: "sshd", applets: []string{"sh", "true"},
		workload: fmt.Sprintf(`{"entrypoint":%s}`, mustJSON(guesttest.DropbearEntrypoint)),
		build: func(bld *initramfs.Builder) error {
			key = guesttest.Dropbear(b, bld, dir)
			return nil
		}})
	run, _, runErr := w.start(b, name)
	w.waitAgent(b, runErr)

	out := guesttest.ExecVsSSH(b, w.ns, guestIP, key, dir, 20, []string{"exec", "exec_inprocess"}, map[string]func() (time.Duration, error){
		"exec": func() (time.Duration, error) {
			return guesttest.TimeInNS(w.ns, w.env, w.bin, "exec", "--dir", w.runDir, "--", "true")
		},
		"exec_inprocess": func() (time.Duration, error) {
			t0 := time.Now()
			sess, err := launch.DialGuest(context.Background(), w.runDir)
			if err != nil {
				return 0, err
			}
			defer sess.Close()
			res, err := sess.Run(context.Background(), agentchan.ExecRequest{Argv: []string{"true"}}, nil, 0)
			if err == nil && res.ExitCode != 0 {
				err = fmt.Errorf("exit status %d", res.ExitCode)
			}
			return time.Since(t0), err
		},
	})
	run.Process.Signal(syscall.SIGTERM)
	run.Wait()
	out["guest"] = "QEMU TCG, 1 vCPU, kestrel PID 1, run by volant-launch"
	guesttest.WriteBench(b, out)
}

// mustJSON is v in JSON.
func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}
