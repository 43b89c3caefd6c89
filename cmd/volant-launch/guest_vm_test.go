package main

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/bootimage"
	"github.com/volantvm/volant/lib/initramfs"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// guestPlugin describes a kestrel plugin built for a test: busybox with
// some of its applets, more files, the workload and other manifest fields.
type guestPlugin struct {
	name     string
	applets  []string
	files    map[string]string // guest path -> host file, copied with mode 0755
	workload string            // the manifest's "workload" object
	extra    string            // more top-level manifest fields, each after a comma
	build    func(b *initramfs.Builder) error
}

// plugin builds p as w's guest: an initramfs with busybox, p's files and
// the boot image (kestrel and the kernel's modules), and its manifest.
func (w *vmWorld) plugin(t testing.TB, p guestPlugin) {
	t.Helper()
	k, _ := guesttest.Kernel(t)
	bb, err := exec.LookPath("busybox")
	if err != nil {
		netnstest.SkipOrFail(t, "busybox-static is needed")
	}
	b := initramfs.New()
	b.CopyFile("/bin/busybox", bb, 0o755)
	for _, a := range p.applets {
		b.Symlink("/bin/"+a, "busybox")
	}
	for guest, host := range p.files {
		if err := b.CopyFile(guest, host, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if p.build != nil {
		if err := p.build(b); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := bootimage.Add(b, bootimage.Options{Kestrel: guesttest.Kestrel(t), ModulesDir: k.ModulesDir}); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), p.name+".cpio.gz")
	if err := b.WriteFile(archive, initramfs.Gzip); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(archive)
	sum := sha256.Sum256(data)
	w.guest.manifest = filepath.Join(t.TempDir(), p.name+".json")
	os.WriteFile(w.guest.manifest, []byte(fmt.Sprintf(`{"name":%q,"version":"1.0.0","initramfs":{"url":%q,"checksum":"sha256:%s"},"workload":%s%s}`,
		p.name, archive, hex.EncodeToString(sum[:]), p.workload, p.extra)), 0o644)
}

// talkerGuest is a kestrel plugin whose workload writes numbered lines to
// stdout and stderr, with busybox for the commands the test runs.
func talkerGuest(t *testing.T, w *vmWorld) {
	t.Helper()
	w.plugin(t, guestPlugin{name: "talker", applets: []string{"sh", "cat", "sha256sum", "sleep", "echo"},
		workload: `{"entrypoint":["/bin/sh","-c","i=0; while :; do echo \"out $i\"; echo \"err $i\" >&2; i=$((i+1)); sleep 0.1; done"]}`})
}

// launchRaw runs volant-launch and returns its stdout, stderr and status.
func (w *vmWorld) launchRaw(t testing.TB, stdin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(w.bin, args...)
	cmd.Env = w.env
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return out.String(), errb.String(), cmd.ProcessState.ExitCode()
}

// TestVMExecCpLogs runs a real guest with `volant-launch run` and uses
// exec (JSON and streamed), cp both ways and logs as a shell would: the
// binaries, their JSON and their exit statuses.
func TestVMExecCpLogs(t *testing.T) {
	const name = "talker1"
	w := newWorld(t, name)
	talkerGuest(t, w)
	cmd, _, errb := w.start(t, name)
	dir := "--dir=" + w.runDir

	// Once the VMM runs, the first exec waits for the guest's agent.
	for t0 := time.Now(); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(w.runDir, "guest.sock")); err == nil {
			break
		}
		if time.Since(t0) > 60*time.Second {
			t.Fatalf("no guest socket: %s", errb)
		}
	}
	t0 := time.Now()
	out, stderr, code := w.launchRaw(t, "", "exec", dir, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
	if code != 0 {
		log, _ := os.ReadFile(w.log)
		t.Fatalf("exec: status %d %s\nrun: %s\nconsole:\n%s", code, stderr, errb, log)
	}
	t.Logf("first exec answered %s after the run started", time.Since(t0).Round(time.Millisecond))
	// Only root reaches the channel: the clients' socket is 0600 in a
	// 0700 run directory owned by root, and the VMM's end of it is in the
	// VMM's own 0700 directory.
	for _, c := range []struct {
		path string
		perm os.FileMode
	}{{w.runDir, 0o700}, {filepath.Join(w.runDir, launch.GuestSocketName), 0o600}, {launch.VMMDir(w.runDir), 0o700}} {
		st, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != c.perm {
			t.Errorf("%s: mode %v, want %v", c.path, st.Mode(), c.perm)
		}
		if c.path == w.runDir && st.Sys().(*syscall.Stat_t).Uid != 0 {
			t.Errorf("the run directory belongs to uid %d, not root", st.Sys().(*syscall.Stat_t).Uid)
		}
	}
	if _, err := os.Stat(filepath.Join(launch.VMMDir(w.runDir), launch.AgentName)); err != nil {
		t.Errorf("the VMM's end of the agent channel is not in its directory: %v", err)
	}
	if testing.Verbose() {
		con, _ := os.ReadFile(w.log)
		t.Logf("run's log:\n%s\nconsole:\n%s", errb, con)
	}
	var res struct {
		Version  string `json:"version"`
		Kind     string `json:"kind"`
		ExitCode int    `json:"exit_code"`
		Stdout   string `json:"stdout"`
		Stderr   string `json:"stderr"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Kind != "launch.exec" || res.ExitCode != 3 || res.Stdout != "out\n" || res.Stderr != "err\n" {
		t.Fatalf("exec result %q: %v", out, err)
	}

	// Streamed: stdin in, output out, the command's status as ours.
	if out, _, code := w.launchRaw(t, "line one\nline two\n", "exec", "-i", dir, "--", "cat"); out != "line one\nline two\n" || code != 0 {
		t.Fatalf("exec -i cat: %q %d", out, code)
	}
	if _, _, code := w.launchRaw(t, "", "exec", "-i", dir, "--", "sh", "-c", "exit 9"); code != 9 {
		t.Fatalf("exec -i exit 9: status %d", code)
	}
	if _, stderr, code := w.launchRaw(t, "", "exec", "-i", dir, "--", "no-such-command"); code != ExitCommandNotFound || !strings.Contains(stderr, `"NOT_FOUND"`) {
		t.Fatalf("exec -i of a missing command: %d %s", code, stderr)
	}
	if _, stderr, code := w.launchRaw(t, "", "exec", dir, "--", "no-such-command"); code != 4 || !strings.Contains(stderr, "command not found") {
		t.Fatalf("exec of a missing command: %d %s", code, stderr)
	}

	// cp both ways, checked by checksum.
	src := filepath.Join(t.TempDir(), "blob")
	data := make([]byte, 3<<20)
	rand.Read(data)
	os.WriteFile(src, data, 0o600)
	sum := sha256.Sum256(data)
	if out, stderr, code := w.launchRaw(t, "", "cp", dir, src, ":/tmp/"); code != 0 || !strings.Contains(out, `"direction":"in"`) {
		t.Fatalf("cp in: %d %s %s", code, out, stderr)
	}
	out, _, _ = w.launchRaw(t, "", "exec", dir, "--", "sha256sum", "/tmp/blob")
	if !strings.Contains(out, hex.EncodeToString(sum[:])) {
		t.Fatalf("checksum in the guest: %s", out)
	}
	back := filepath.Join(t.TempDir(), "back")
	if out, stderr, code := w.launchRaw(t, "", "cp", dir, name+":/tmp/blob", back); code != 0 {
		t.Fatalf("cp out: %d %s %s", code, out, stderr)
	}
	if got, _ := os.ReadFile(back); sha256.Sum256(got) != sum {
		t.Fatal("copied back with another checksum")
	}
	if _, stderr, code := w.launchRaw(t, "", "cp", dir, src, back); code != 2 || !strings.Contains(stderr, "USAGE") {
		t.Fatalf("cp with no guest path: %d %s", code, stderr)
	}

	// Logs: per stream, the last lines, with timestamps.
	var logs string
	deadline := time.Now().Add(30 * time.Second)
	for {
		logs, _, _ = w.launchRaw(t, "", "logs", dir, "--stream", "stderr", "--tail", "3", "--timestamps")
		if strings.Count(logs, "\n") == 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	lines := strings.Split(strings.TrimSuffix(logs, "\n"), "\n")
	for _, l := range lines {
		ts, text, _ := strings.Cut(l, " ")
		if _, err := time.Parse(time.RFC3339Nano, ts); err != nil || !strings.HasPrefix(text, "err ") {
			t.Fatalf("logs --stream stderr --tail 3 --timestamps:\n%s", logs)
		}
	}
	if len(lines) != 3 {
		t.Fatalf("tail 3 gave %d lines:\n%s", len(lines), logs)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	// After the VM: exec is refused, the logs remain.
	if _, stderr, code := w.launchRaw(t, "", "exec", dir, "--", "true"); code != 5 || !strings.Contains(stderr, "not_running") {
		t.Fatalf("exec into a stopped VM: %d %s", code, stderr)
	}
	all, _, code := w.launchRaw(t, "", "logs", "--name", name, "--stream", "stdout")
	if code != 0 || !strings.Contains(all, "out 0\nout 1\nout 2\n") || strings.Contains(all, "err") {
		t.Fatalf("logs of the stopped VM (%d):\n%.300s", code, all)
	}

	// The VM runs again (a new boot, whose workload counts from 0 again):
	// the log keeps the first boot's output and goes on after it.
	cmd, _, errb = w.start(t, name)
	var again string
	for deadline := time.Now().Add(120 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		again, _, _ = w.launchRaw(t, "", "logs", "--name", name, "--stream", "stdout")
		if strings.Count(again, "out 2\n") == 2 {
			break
		}
		if time.Now().After(deadline) {
			con, _ := os.ReadFile(w.log)
			t.Fatalf("the second boot's output never reached the log:\n%.600s\nrun: %s\nconsole:\n%s", again, errb, con)
		}
	}
	if !strings.HasPrefix(again, all) || !strings.HasPrefix(again[len(all):], "out 0\nout 1\n") {
		t.Fatalf("after a restart the log is not the first boot's followed by the second's:\nfirst (%d bytes): %.300s\nnow: %.600s", len(all), all, again)
	}
	t.Logf("after a restart the stdout log holds the first boot's %d bytes, then the second's %d", len(all), len(again)-len(all))
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
}
