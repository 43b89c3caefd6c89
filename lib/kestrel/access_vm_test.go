package kestrel_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/kestrel/internal/vmtest"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/testutil/wait"
)

// connectAgent dials a VM's agent socket and performs the handshake,
// retrying while QEMU creates the socket and kestrel loads the port's
// driver (after the workload is up).
func connectAgent(t testing.TB, vm *vmtest.VM, timeout time.Duration) *agentchan.Session {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.Dial("unix", vm.AgentSocket)
		if err == nil {
			ctx, cancel := context.WithDeadline(context.Background(), deadline)
			sess, err := agentchan.Connect(ctx, c)
			cancel()
			if err == nil {
				t.Cleanup(func() { sess.Close() })
				return sess
			}
			t.Fatalf("agent handshake: %v\n%s", err, vm.ConsoleText())
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent socket %s: %v", vm.AgentSocket, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func run(t testing.TB, sess *agentchan.Session, argv ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errb lockedBuf
	exit, err := sess.Exec(ctx, agentchan.ExecRequest{Argv: argv}, agentchan.ExecIO{Stdout: &out, Stderr: &errb})
	if err != nil {
		t.Fatalf("exec %q: %v", argv, err)
	}
	return out.String(), errb.String(), exit.Code
}

// TestVMAgentChannel boots kestrel under QEMU with the agent channel (a
// virtio-serial port) and uses every operation through it: commands with
// exit statuses, stdin and a terminal, a missing command, a client that
// leaves mid-command (nothing may be left running), files copied both ways
// with checksums, and the workload's two output streams.
func TestVMAgentChannel(t *testing.T) {
	k, vmlinux := guesttest.Kernel(t)
	n := vmtest.NewNet(t)
	m := &manifest.Manifest{
		Name: "talker", Version: "1", Initramfs: &manifest.Artifact{URL: "/unused.cpio"},
		Workload: manifest.Workload{
			Entrypoint: []string{"/bin/sh", "-c", `i=0; while :; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); sleep 0.2; done`},
			Env:        map[string]string{"GREETING": "hello from the manifest"},
		},
	}
	im := vmtest.BootImage(t, k)
	im.AddBusybox("sh", "sleep", "sha256sum", "tty", "stty", "cat", "echo", "true", "id")
	initrd := im.Write()
	vm := vmtest.Boot(t, n, vmlinux, vmtest.Config{Name: "agent", Initrd: initrd, Agent: true,
		Cmdline: "volant.vm=agent volant.manifest=" + encode(t, m)})
	vm.WaitConsole("kestrel: agent ready", bootTimeout)
	sess := connectAgent(t, vm, bootTimeout)
	t.Logf("agent channel up %s after launch: %+v", vm.Since().Round(time.Millisecond), sess.Hello)
	if sess.Hello.VM != "agent" || sess.Hello.BootID == "" {
		t.Errorf("hello %+v", sess.Hello)
	}

	// Exit statuses and the workload's environment.
	out, errOut, code := run(t, sess, "sh", "-c", `echo "$GREETING"; echo oops >&2; exit 7`)
	if out != "hello from the manifest\n" || errOut != "oops\n" || code != 7 {
		t.Errorf("exec: %q %q %d", out, errOut, code)
	}
	if out, _, _ := run(t, sess, "cat", "/proc/sys/kernel/random/boot_id"); out != sess.Hello.BootID+"\n" {
		t.Errorf("the command ran elsewhere: boot id %q, the guest's %q", out, sess.Hello.BootID)
	}

	// Round trips of a trivial command.
	var rtts []time.Duration
	for i := 0; i < 15; i++ {
		t0 := time.Now()
		if _, _, code := run(t, sess, "true"); code != 0 {
			t.Fatal("true failed")
		}
		rtts = append(rtts, time.Since(t0))
	}
	sort.Slice(rtts, func(i, j int) bool { return rtts[i] < rtts[j] })
	t.Logf("exec true round trip over virtio-serial under TCG: median %s, min %s, max %s", rtts[len(rtts)/2], rtts[0], rtts[len(rtts)-1])
	rtts = rtts[:0]
	for i := 0; i < 15; i++ {
		t0 := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		st, err := sess.Call(ctx, agentchan.ReadRequest{Op: agentchan.OpRead, Path: "/no/such"}, &agentchan.ReadReply{})
		cancel()
		if err == nil {
			st.Conn.Close()
		}
		rtts = append(rtts, time.Since(t0))
	}
	sort.Slice(rtts, func(i, j int) bool { return rtts[i] < rtts[j] })
	t.Logf("stream open + request + reply (no process) over virtio-serial under TCG: median %s, min %s, max %s", rtts[len(rtts)/2], rtts[0], rtts[len(rtts)-1])

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err := sess.Exec(ctx, agentchan.ExecRequest{Argv: []string{"no-such-program"}}, agentchan.ExecIO{})
	if !apierr.Is(err, apierr.NotFound) {
		t.Errorf("missing command: %v", err)
	}

	// stdin, and a terminal.
	var catOut lockedBuf
	exit, err := sess.Exec(ctx, agentchan.ExecRequest{Argv: []string{"sha256sum"}, Stdin: true},
		agentchan.ExecIO{Stdin: strings.NewReader("piped in\n"), Stdout: &catOut})
	sum := sha256.Sum256([]byte("piped in\n"))
	if err != nil || exit.Code != 0 || !strings.HasPrefix(catOut.String(), hex.EncodeToString(sum[:])) {
		t.Errorf("stdin: %v %+v %q", err, exit, catOut.String())
	}
	var ttyOut lockedBuf
	exit, err = sess.Exec(ctx, agentchan.ExecRequest{Argv: []string{"sh", "-c", "tty; stty size"}, TTY: true, Size: &agentchan.Size{Rows: 33, Cols: 101}},
		agentchan.ExecIO{Stdout: &ttyOut})
	if err != nil || exit.Code != 0 || !strings.Contains(ttyOut.String(), "/dev/pts/") || !strings.Contains(ttyOut.String(), "33 101") {
		t.Errorf("tty: %v %+v %q", err, exit, ttyOut.String())
	}

	// A client that leaves: the command is hung up, then killed.
	cctx, ccancel := context.WithCancel(ctx)
	started := make(chan int, 1)
	done := make(chan error, 1)
	go func() {
		_, err := sess.Exec(cctx, agentchan.ExecRequest{Argv: []string{"sh", "-c", `trap "" HUP; sleep 1000 & sleep 1000`}},
			agentchan.ExecIO{Started: func(pid int) { started <- pid }})
		done <- err
	}()
	leader := <-started
	// The exec's processes are those of its session (sid = the leader's
	// pid), not every sleep in the guest: the workload runs its own
	// `sleep 0.2` most of the time, which `pidof sleep` kept finding
	// (so the test failed whenever no poll fell between two of them).
	members := func() string {
		out, _, _ := run(t, sess, "sh", "-c", sessionMembers(leader))
		return out
	}
	var before string
	if err := wait.For(30*time.Second, func() bool { before = members(); return strings.Count(before, "(sleep)") == 2 }); err != nil {
		t.Fatalf("the exec's two sleeps never showed in its session: %q", before)
	}
	ccancel()
	if err := <-done; !apierr.Is(err, apierr.Canceled) {
		t.Errorf("canceled exec: %v", err)
	}
	var left string
	if err := wait.For(agentchan.HangupGrace+10*time.Second, func() bool { left = members(); return left == "" }); err != nil {
		t.Fatalf("the exec's processes still run in the guest after its client left: %q (before: %q)", left, before)
	}

	// Files both ways, checked by checksum on both sides.
	src := t.TempDir()
	data := make([]byte, 4<<20)
	rand.Read(data)
	os.WriteFile(filepath.Join(src, "blob"), data, 0o640)
	sum = sha256.Sum256(data)
	res, err := sess.CopyTo(ctx, filepath.Join(src, "blob"), "/tmp/", nil)
	if err != nil || res.Bytes != int64(len(data)) {
		t.Fatalf("copy in: %v %+v", err, res)
	}
	if out, _, _ := run(t, sess, "sha256sum", "/tmp/blob"); !strings.HasPrefix(out, hex.EncodeToString(sum[:])) {
		t.Errorf("checksum in the guest %q, want %x", out, sum)
	}
	back := filepath.Join(t.TempDir(), "blob.back")
	if _, err := sess.CopyFrom(ctx, "/tmp/blob", back, nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(back); sha256.Sum256(got) != sum {
		t.Errorf("copied back %d bytes with another checksum", len(got))
	}
	if st, _ := os.Stat(back); st == nil || st.Mode().Perm() != 0o640 {
		t.Errorf("mode not kept: %v", st)
	}
	if _, err := sess.CopyFrom(ctx, "/tmp/../../nowhere", t.TempDir(), nil); !apierr.Is(err, apierr.NotFound) {
		t.Errorf("copy of a missing path: %v", err)
	}

	// The workload's output, per stream.
	st, err := sess.Call(ctx, agentchan.LogsRequest{Op: agentchan.OpLogs, From: -1}, &agentchan.Reply{})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{}
	for !strings.Contains(seen["stdout"], "out 3\n") || !strings.Contains(seen["stderr"], "err 3\n") {
		var r agentchan.LogRecord
		if err := st.ReadLine(&r); err != nil {
			t.Fatalf("logs: %v (so far %q)", err, seen)
		}
		b := make([]byte, r.N)
		if _, err := io.ReadFull(st, b); err != nil {
			t.Fatal(err)
		}
		seen[r.Stream] += string(b)
	}
	if strings.Contains(seen["stdout"], "err") || strings.Contains(seen["stderr"], "out") {
		t.Errorf("streams mixed: %q", seen)
	}
	st.Conn.Close()

	// The guest powers off: the session ends.
	vm.PowerButton()
	select {
	case <-sess.Done():
	case <-time.After(30 * time.Second):
		t.Error("the session outlived the guest")
	}
	if err := vm.Wait(30 * time.Second); err != nil {
		t.Fatal(err)
	}
}

// sessionMembers is a guest shell script that prints the processes of
// session sid that have not exited ("pid (comm)" lines).
func sessionMembers(sid int) string {
	return `for d in /proc/[0-9]*; do
	read -r pid comm state ppid pgrp sid rest 2>/dev/null <"$d/stat" || continue
	if [ "$sid" = ` + strconv.Itoa(sid) + ` ] && [ "$state" != Z ]; then echo "$pid $comm"; fi
done`
}
