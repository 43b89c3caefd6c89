package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/initramfs"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// BenchmarkVolarExecVsSSH runs `true` in a VM that a real volantd runs
// (QEMU, kestrel as PID 1, Debian's dropbear as the workload) with
// `volar vms exec web -- true` (volar → volantd's exec route → the VM's
// supervisor → kestrel) and with OpenSSH's `ssh root@GUEST true` over
// volantd's bridge in its private network namespace, alternating, N times
// each ($VOLANT_BENCH_N, 20), plus ssh through a ControlMaster.
// bench/exec/run.sh runs it; it prints medians and the ratio to ssh
// (target <= 0.5) and writes $VOLANT_BENCH_OUT. It asserts nothing about
// time.
func BenchmarkVolarExecVsSSH(b *testing.B) {
	k, _ := guesttest.Kernel(b)
	guesttest.QEMU(b)
	kestrel := guesttest.Kestrel(b)
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		netnstest.SkipOrFail(b, "busybox not installed (apt-get install busybox-static)")
	}
	volar := guesttest.Command(b, "volar")
	dir, sock, c, ns := startVolantdVMs(b, realBinaries(b), k.Dir, kestrel)
	env := map[string]string{"VOLANT_HOST": sock}

	bld := initramfs.New()
	bld.CopyFile("/bin/busybox", busybox, 0o755)
	for _, a := range []string{"sh", "true"} {
		bld.Symlink("/bin/"+a, "busybox")
	}
	key := guesttest.Dropbear(b, bld, dir)
	art := filepath.Join(dir, "sshd.cpio.gz")
	if err := bld.WriteFile(art, initramfs.Gzip); err != nil {
		b.Fatal(err)
	}
	data, _ := os.ReadFile(art)
	sum := sha256.Sum256(data)
	entry, _ := json.Marshal(guesttest.DropbearEntrypoint)
	man := filepath.Join(dir, "sshd.json")
	os.WriteFile(man, []byte(fmt.Sprintf(`{"name":"sshd","version":"1","initramfs":{"url":%q,"checksum":"sha256:%s"},
		"workload":{"entrypoint":%s},"resources":{"cpu_cores":1,"memory_mb":128}}`, art, hex.EncodeToString(sum[:]), entry)), 0o644)
	if r := runVolar(b, "", env, "plugins", "install", "--manifest", man); r.Code != 0 {
		b.Fatal(r)
	}
	if r := runVolar(b, "", env, "vms", "create", "web", "--plugin", "sshd"); r.Code != 0 {
		b.Fatal(r)
	}
	vm, err := c.VM(context.Background(), "web")
	if err != nil || vm.IP == "" {
		b.Fatalf("the VM's address: %+v %v", vm, err)
	}
	deadline := time.Now().Add(120 * time.Second)
	for {
		r := runVolar(b, "", env, "vms", "exec", "web", "--", "true")
		if r.Code == 0 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("no exec into web: %s", r)
		}
		time.Sleep(500 * time.Millisecond)
	}
	volarEnv := append(os.Environ(), "VOLANT_HOST="+sock)
	out := guesttest.ExecVsSSH(b, ns, vm.IP, key, dir, 20, []string{"volar_exec"}, map[string]func() (time.Duration, error){
		"volar_exec": func() (time.Duration, error) {
			return guesttest.TimeInNS(ns, volarEnv, volar, "vms", "exec", "web", "--", "true")
		},
	})
	out["guest"] = "QEMU TCG, 1 vCPU, kestrel PID 1, run by volantd"
	guesttest.WriteBench(b, out)
}
