package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/bootimage"
	"github.com/volantvm/volant/lib/initramfs"
	"github.com/volantvm/volant/lib/store"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// jailGuest is a kestrel guest with busybox httpd as its workload, 256 MiB
// of memory and a writable disk (so the VM has a disk copy of its own).
func jailGuest(t *testing.T, w *vmWorld) {
	t.Helper()
	k, _ := guesttest.Kernel(t)
	bb, err := exec.LookPath("busybox")
	if err != nil {
		netnstest.SkipOrFail(t, "busybox-static is needed")
	}
	b := initramfs.New()
	b.CopyFile("/bin/busybox", bb, 0o755)
	for _, a := range []string{"sh", "dd", "cat"} {
		b.Symlink("/bin/"+a, "busybox")
	}
	b.File("/www/index.html", 0o644, []byte("jailed\n"))
	if _, err := bootimage.Add(b, bootimage.Options{Kestrel: guesttest.Kestrel(t), ModulesDir: k.ModulesDir}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	archive := filepath.Join(dir, "jail.cpio.gz")
	if err := b.WriteFile(archive, initramfs.Gzip); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "data.img")
	os.WriteFile(disk, make([]byte, 1<<20), 0o644)
	sum := func(p string) string {
		data, _ := os.ReadFile(p)
		s := sha256.Sum256(data)
		return hex.EncodeToString(s[:])
	}
	w.guest.manifest = filepath.Join(dir, "jail.json")
	w.guest.probe = ":80/index.html"
	os.WriteFile(w.guest.manifest, []byte(fmt.Sprintf(`{"name":"jailtest","version":"1.0.0",
		"initramfs":{"url":%q,"checksum":"sha256:%s"},
		"disks":[{"name":"data","source":%q,"checksum":"sha256:%s"}],
		"resources":{"memory_mb":256},
		"workload":{"type":"http","entrypoint":["/bin/busybox","httpd","-f","-p","80","-h","/www"],"base_url":"http://127.0.0.1:80"},
		"health_check":{"endpoint":"/index.html","interval_ms":1000}}`,
		archive, sum(archive), disk, sum(disk))), 0o644)
}

// TestVMJail runs two real guests under QEMU, each VMM in its jail, and
// checks what the jail promises (docs/security.md): the VMM runs as the
// VM's own uid with no_new_privs and a seccomp filter; its root holds only
// its own files; as its uid, neither another VM's disk nor the state
// database can be opened; a guest that makes its VMM outgrow the memory
// limit gets that VMM killed and leaves its neighbour running; a VMM that
// tries to run a program (QMP migrate to exec:) is killed by its sandbox.
func TestVMJail(t *testing.T) {
	netnstest.Require(t)
	wa, wb := newWorld(t, "jaila"), newWorld(t, "jailb")
	jailGuest(t, wa)
	jailGuest(t, wb)
	// The state database a VMM must not reach: a real one, as volantd
	// makes it.
	db := filepath.Join(wa.dir, "state", "volant.db")
	os.MkdirAll(filepath.Dir(db), 0o755)
	st, err := store.Open(context.Background(), db, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	// B's VMM may use only 8 MiB beyond its guest's memory: the guest can
	// make it outgrow that.
	wb.env = append(wb.env, "VOLANT_VMM_OVERHEAD_MB=8")

	runA, _, errA := wa.start(t, "jaila")
	runB, _, errB := wb.start(t, "jailb")
	// A run that is still there at the end is stopped as an operator
	// would (SIGTERM), so it gives back its uid, cgroup and files.
	t.Cleanup(func() {
		for _, r := range []*exec.Cmd{runA, runB} {
			if r.ProcessState == nil {
				r.Process.Signal(syscall.SIGTERM)
				waitRun(t, r, 30*time.Second)
			}
		}
	})
	wa.waitHealthy(t, 120*time.Second)
	wb.waitHealthy(t, 120*time.Second)

	type jailInfo struct {
		UID           uint32 `json:"uid"`
		Cgroup        string `json:"cgroup"`
		MemoryLimitMB int64  `json:"memory_limit_mb"`
		Insecure      bool   `json:"insecure"`
	}
	status := func(w *vmWorld) (pid int, j jailInfo, socket string) {
		out, stderr, code := w.launchRaw(t, "", "status", "--dir", w.runDir)
		var s struct {
			Process struct{ Pid int } `json:"vmm_process"`
			Jail    *jailInfo         `json:"jail"`
			Socket  string            `json:"socket"`
		}
		if code != 0 || json.Unmarshal([]byte(out), &s) != nil || s.Jail == nil || s.Process.Pid == 0 {
			t.Fatalf("status: %d %s %s", code, out, stderr)
		}
		return s.Process.Pid, *s.Jail, s.Socket
	}
	pidA, ja, sockA := status(wa)
	pidB, jb, _ := status(wb)
	t.Logf("VMM A: pid %d %+v; VMM B: pid %d %+v", pidA, ja, pidB, jb)
	if ja.Insecure || ja.UID == 0 || jb.UID == 0 || ja.UID == jb.UID || ja.Cgroup == "" || ja.Cgroup == jb.Cgroup {
		t.Fatalf("jails: A %+v, B %+v", ja, jb)
	}
	if ja.MemoryLimitMB <= 256 || jb.MemoryLimitMB != 256+8 {
		t.Fatalf("memory limits: A %d MiB, B %d MiB", ja.MemoryLimitMB, jb.MemoryLimitMB)
	}

	// /proc/PID/status: the VM's uid and gid, no_new_privs, seccomp filter.
	stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pidA))
	u := fmt.Sprint(ja.UID)
	for _, want := range []string{
		"Uid:\t" + u + "\t" + u + "\t" + u + "\t" + u + "\n",
		"Gid:\t" + u + "\t" + u + "\t" + u + "\t" + u + "\n",
		"NoNewPrivs:\t1\n", "Seccomp:\t2\n", "CapEff:\t0000000000000000\n",
	} {
		if !strings.Contains(string(stat), want) {
			t.Errorf("VMM status lacks %q:\n%s", want, stat)
		}
	}

	// Its root is the jail: the system's read-only directories, its /dev,
	// and the directories leading to its own files; nothing else.
	root := fmt.Sprintf("/proc/%d/root", pidA)
	ents, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var top []string
	for _, e := range ents {
		top = append(top, e.Name())
		if !slices.Contains([]string{"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "dev", "tmp", "var"}, e.Name()) {
			t.Errorf("the jail's root has %s", e.Name())
		}
	}
	t.Logf("the jail's root: %v", top)
	devs, _ := os.ReadDir(root + "/dev")
	var dn []string
	for _, d := range devs {
		dn = append(dn, d.Name())
	}
	if got := strings.Join(dn, " "); got != "full net null random urandom zero" {
		t.Errorf("the jail's /dev: %s", got)
	}
	diskB := filepath.Join(wb.dir, "state", "vms", "jailb", "disks", "disk-data.img")
	diskA := filepath.Join(wa.dir, "state", "vms", "jaila", "disks", "disk-data.img")
	for _, p := range []string{"/etc/shadow", "/proc/1/environ", db, diskB, filepath.Dir(db) + "/vms/jaila/launch.log"} {
		if _, err := os.Stat(root + p); !os.IsNotExist(err) {
			t.Errorf("%s is visible in the jail (%v)", p, err)
		}
	}
	if _, err := os.Stat(root + diskA); err != nil {
		t.Errorf("its own disk is not in the jail: %v", err)
	}

	// As its uid, outside the jail too: no other VM's disk, no state
	// database, not even its own disk by its host path (0700 directories).
	for _, p := range []string{diskB, db, diskA} {
		cat := exec.Command("/bin/cat", p)
		cat.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: ja.UID, Gid: ja.UID, Groups: []uint32{}}}
		out, err := cat.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "Permission denied") {
			t.Errorf("uid %d opened %s: %v %q", ja.UID, p, err, out)
		}
	}

	// B's guest fills its memory: its VMM outgrows the limit and is
	// killed; B's run ends with the reason; A goes on answering.
	t0 := time.Now()
	// dd's one buffer of 160 MiB, filled from /dev/zero, is guest memory
	// QEMU must back: more than the 8 MiB of room B's VMM has.
	_, stderr, code := wb.launchRaw(t, "", "exec", "--dir", wb.runDir, "--", "dd", "if=/dev/zero", "of=/dev/null", "bs=160M", "count=1")
	t.Logf("dd in B: status %d %s", code, strings.TrimSpace(stderr))
	waitRun(t, runB, 60*time.Second)
	if runB.ProcessState.Success() || !strings.Contains(errB.String(), `"reason":"oom"`) || !strings.Contains(errB.String(), "memory limit") {
		t.Fatalf("B's run after the guest outgrew its memory: %v\n%s", runB.ProcessState, errB)
	}
	t.Logf("B's VMM was killed at its memory limit %v after the guest began to fill its memory", time.Since(t0).Round(time.Millisecond))
	if _, err := os.FindProcess(pidA); err != nil || syscall.Kill(pidA, 0) != nil {
		t.Fatal("A's VMM died with B's")
	}
	if _, err := wa.get(wa.guest.probe, 5*time.Second); err != nil {
		t.Fatalf("A stopped answering when B was killed: %v", err)
	}

	// A's VMM asked to run a program (migration to exec:) is killed by
	// its seccomp filter (spawn=deny) before it can.
	qmp, err := net.Dial("unix", sockA)
	if err != nil {
		t.Fatal(err)
	}
	defer qmp.Close()
	fmt.Fprint(qmp, `{"execute":"qmp_capabilities"}`+"\n"+`{"execute":"migrate","arguments":{"uri":"exec:touch /tmp/volant-jail-escaped"}}`+"\n")
	waitRun(t, runA, 30*time.Second)
	if !strings.Contains(errA.String(), "bad system call") {
		t.Fatalf("A's VMM, told to exec, was not killed by its sandbox:\n%s", errA)
	}
	if _, err := os.Stat("/tmp/volant-jail-escaped"); err == nil {
		os.Remove("/tmp/volant-jail-escaped")
		t.Fatal("the VMM ran a program")
	}
}

// waitRun waits for a `volant-launch run` to end.
func waitRun(t *testing.T, cmd *exec.Cmd, d time.Duration) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(d):
		// Kill it here: the test's cleanup must not Wait a second time.
		cmd.Process.Kill()
		<-done
		t.Fatalf("the run did not end within %v", d)
	}
}
