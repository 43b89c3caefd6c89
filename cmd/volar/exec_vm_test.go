package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/initramfs"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// TestVMExecUnderTmux runs `volar vms exec -it VM -- /bin/sh` in a real
// terminal (tmux) against a VM that a real volantd runs under QEMU with
// kestrel as PID 1: the guest's shell sees the terminal's size (stty
// size) and a resize of the terminal, Ctrl-C interrupts the guest's
// foreground job and not volar, `exit 7` ends volar with status 7 and the
// terminal is as it was. Then, without a terminal: statuses of commands
// (their own, 127 for a missing one), cp both ways with a checksum, a
// client killed mid-command (its command is gone from the guest), and a
// stopped VM's clear refusal.
func TestVMExecUnderTmux(t *testing.T) {
	netnstest.Require(t, "tmux")
	k, _ := guesttest.Kernel(t)
	guesttest.QEMU(t)
	kestrel := guesttest.Kestrel(t)
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		netnstest.SkipOrFail(t, "busybox not installed (apt-get install busybox-static)")
	}
	bins := realBinaries(t)
	dir, sock, c, _ := startVolantdVMs(t, bins, k.Dir, kestrel)
	env := map[string]string{"VOLANT_HOST": sock}

	// A plugin with busybox's shell and tools, no network (exec does not
	// need the guest's network).
	b := initramfs.New()
	b.CopyFile("/bin/busybox", busybox, 0o755)
	for _, a := range []string{"sh", "stty", "sleep", "sha256sum", "true", "cat", "id"} {
		b.Symlink("/bin/"+a, "busybox")
	}
	b.Dir("/tmp", 0o1777)
	art := filepath.Join(dir, "shell.cpio.gz")
	if err := b.WriteFile(art, initramfs.Gzip); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(art)
	sum := sha256.Sum256(data)
	man := filepath.Join(dir, "shell.json")
	os.WriteFile(man, []byte(fmt.Sprintf(`{"name":"shell","version":"1","initramfs":{"url":%q,"checksum":"sha256:%s"},
		"workload":{"entrypoint":["/bin/busybox","sleep","3600"]},"network":{"mode":"none"},"resources":{"cpu_cores":1,"memory_mb":192}}`,
		art, hex.EncodeToString(sum[:]))), 0o644)
	if r := runVolar(t, "", env, "plugins", "install", "--manifest", man); r.Code != 0 {
		t.Fatal(r)
	}
	if r := runVolar(t, "", env, "vms", "create", "ex1", "--plugin", "shell"); r.Code != 0 {
		t.Fatal(r)
	}
	// The first exec that runs tells that the guest's agent is up.
	deadline := time.Now().Add(120 * time.Second)
	for {
		r := runVolar(t, "", env, "vms", "exec", "ex1", "--", "true")
		if r.Code == 0 {
			break
		}
		if time.Now().After(deadline) {
			l := runVolar(t, "", env, "vms", "logs", "--console", "ex1")
			t.Fatalf("no exec into ex1: %s\nconsole:\n%s", r, l.Stdout)
		}
		time.Sleep(500 * time.Millisecond)
	}

	// The terminal: volar in a shell that reports how volar ended and the
	// terminal's mode afterwards.
	tm := newTmux(t, dir, fmt.Sprintf(`%s vms exec -it -e PS1=guest# ex1 -- /bin/sh; echo "EXIT=$?"; stty -a | tr ' ;' '\n\n' | grep -x -e icanon -e -icanon -e echo -e -echo | sed 's/^/MODE /'; exec sleep 600`, volarBinary(t)),
		"VOLANT_HOST="+sock)
	tm.waitScreen("the guest's prompt", func(s string) bool { return strings.Contains(s, "guest#") })
	// stty size prints "ROWS COLS": the pane's size (tmux's status line
	// takes a row of the window).
	paneSize := func() string {
		out, err := exec.Command("tmux", "-S", tm.sock, "display-message", "-p", "-t", "volar", "#{pane_height} #{pane_width}").Output()
		if err != nil {
			t.Fatalf("tmux display-message: %v", err)
		}
		return strings.TrimSpace(string(out))
	}
	size := paneSize()
	tm.literal("stty size")
	tm.keys("Enter")
	tm.waitScreen("the guest's terminal size "+size, func(s string) bool { return strings.Contains(s, "\n"+size+"\n") })
	if out, err := exec.Command("tmux", "-S", tm.sock, "resize-window", "-t", "volar", "-x", "100", "-y", "30").CombinedOutput(); err != nil {
		t.Fatalf("tmux resize-window: %v: %s", err, out)
	}
	resized := paneSize()
	if resized == size {
		t.Fatalf("tmux did not resize the pane (%s)", size)
	}
	// The resize reaches the guest asynchronously: ask until it shows.
	deadline = time.Now().Add(60 * time.Second)
	for {
		tm.literal("stty size")
		tm.keys("Enter")
		time.Sleep(time.Second)
		s := tm.screen()
		if strings.Contains(s, "\n"+resized+"\n") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest never saw the resize from %s to %s:\n%s", size, resized, s)
		}
	}
	t.Logf("the guest's stty size: %s, after the resize %s", size, resized)

	// Ctrl-C goes to the guest's foreground job (the terminal is raw).
	// A Ctrl-C that reaches the guest before the shell has made sleep its
	// foreground job goes to the shell, which ignores it (seen in CI under
	// load): press it until the prompt is back, as a person would. At the
	// prompt a Ctrl-C does nothing, and all this takes far less than 60 s.
	tm.literal("echo sleeping; sleep 60; echo slept")
	tm.keys("Enter")
	tm.waitScreen("the sleep to start", func(s string) bool { return strings.Contains(s, "\nsleeping\n") })
	for deadline := time.Now().Add(40 * time.Second); ; {
		time.Sleep(time.Second)
		tm.keys("C-c")
		time.Sleep(500 * time.Millisecond)
		if strings.HasSuffix(strings.TrimRight(tm.screen(), "\n "), "guest#") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Ctrl-C never brought the prompt back:\n%s", tm.screen())
		}
	}
	tm.literal("echo after=$((1+1))")
	tm.keys("Enter")
	s := tm.waitScreen("the answer after Ctrl-C", func(s string) bool { return strings.Contains(s, "after=2") })
	if strings.Contains(s, "EXIT=") {
		t.Fatalf("Ctrl-C ended volar:\n%s", s)
	}
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) == "slept" {
			t.Errorf("Ctrl-C did not interrupt the guest's sleep:\n%s", s)
		}
	}
	// The shell's status is volar's; the terminal is restored.
	tm.literal("exit 7")
	tm.keys("Enter")
	s = tm.waitScreen("volar to end", func(s string) bool { return strings.Contains(s, "MODE ") })
	for _, want := range []string{"EXIT=7", "MODE icanon", "MODE echo"} {
		if !strings.Contains(s, want) {
			t.Errorf("after the shell exited, the screen lacks %q:\n%s", want, s)
		}
	}
	t.Logf("the terminal:\n%s", strings.TrimRight(s, "\n"))

	// Without a terminal.
	if r := runVolar(t, "", env, "vms", "exec", "ex1", "--", "sh", "-c", "echo out; echo err >&2; exit 3"); r.Code != 3 || r.Stdout != "out\n" || r.Stderr != "err\n" {
		t.Errorf("exec exit 3: %s", r)
	}
	if r := runVolar(t, "", env, "vms", "exec", "ex1", "--", "no-such-command"); r.Code != 127 || !strings.Contains(r.Stderr, "NOT_FOUND") {
		t.Errorf("exec of a missing command: %s", r)
	}
	// -e, -w and -u reach the guest, streamed and with -o json; --timeout
	// kills the command and says TIMEOUT.
	flagged := []string{"vms", "exec", "-e", "GREETING=hi there", "-w", "/tmp", "-u", "65534:65533", "ex1", "--",
		"sh", "-c", `echo "$GREETING|$(pwd)|$(id -u):$(id -g)"`}
	if r := runVolar(t, "", env, flagged...); r.Code != 0 || r.Stdout != "hi there|/tmp|65534:65533\n" {
		t.Errorf("exec -e -w -u: %s", r)
	}
	var jres struct {
		Stdout string `json:"stdout"`
	}
	if r := runVolar(t, "", env, append([]string{"-o", "json"}, flagged...)...); r.Code != 0 || json.Unmarshal([]byte(r.Stdout), &jres) != nil || jres.Stdout != "hi there|/tmp|65534:65533\n" {
		t.Errorf("exec -o json -e -w -u: %s", r)
	}
	if r := runVolar(t, "", env, "vms", "exec", "--timeout", "2s", "ex1", "--", "sleep", "1008"); r.Code != 125 || !strings.Contains(r.Stderr, "TIMEOUT") {
		t.Errorf("exec --timeout 2s of sleep 1008: %s", r)
	}
	src := filepath.Join(dir, "blob")
	blob := make([]byte, 8<<20)
	rand.Read(blob)
	os.WriteFile(src, blob, 0o640)
	want := sha256.Sum256(blob)
	if r := runVolar(t, "", env, "vms", "cp", src, "ex1:/tmp/"); r.Code != 0 {
		t.Fatalf("cp in: %s", r)
	}
	if r := runVolar(t, "", env, "vms", "exec", "ex1", "--", "sha256sum", "/tmp/blob"); !strings.HasPrefix(r.Stdout, hex.EncodeToString(want[:])) {
		t.Fatalf("the guest's checksum: %s", r)
	}
	back := filepath.Join(dir, "back")
	if r := runVolar(t, "", env, "vms", "cp", "ex1:/tmp/blob", back); r.Code != 0 {
		t.Fatalf("cp out: %s", r)
	}
	if got, _ := os.ReadFile(back); sha256.Sum256(got) != want {
		t.Fatal("the file came back with another checksum")
	}
	if st, err := os.Stat(back); err != nil || st.Mode().Perm() != 0o640 {
		t.Errorf("the copy's mode: %v %v", st.Mode(), err)
	}
	// A directory both ways (`volar vms cp ./site web:/srv/`): its tree,
	// modes and symlinks as they were.
	site := filepath.Join(dir, "site")
	os.MkdirAll(filepath.Join(site, "private"), 0o755)
	os.Chmod(filepath.Join(site, "private"), 0o700)
	os.WriteFile(filepath.Join(site, "index.html"), []byte("hello\n"), 0o644)
	os.WriteFile(filepath.Join(site, "run.sh"), []byte("#!/bin/sh\necho run\n"), 0o755)
	os.WriteFile(filepath.Join(site, "private", "key"), []byte("secret\n"), 0o600)
	os.Symlink("index.html", filepath.Join(site, "home.html"))
	if r := runVolar(t, "", env, "vms", "cp", site, "ex1:/tmp/"); r.Code != 0 {
		t.Fatalf("cp of a directory in: %s", r)
	}
	if r := runVolar(t, "", env, "vms", "exec", "ex1", "--", "cat", "/tmp/site/home.html", "/tmp/site/private/key"); r.Stdout != "hello\nsecret\n" {
		t.Fatalf("the directory in the guest: %s", r)
	}
	backDir := filepath.Join(dir, "back-dir")
	os.Mkdir(backDir, 0o755)
	if r := runVolar(t, "", env, "vms", "cp", "ex1:/tmp/site", backDir+"/"); r.Code != 0 {
		t.Fatalf("cp of a directory out: %s", r)
	}
	for _, c := range []struct {
		path string
		mode os.FileMode
		data string
	}{
		{"private", os.ModeDir | 0o700, ""}, {"index.html", 0o644, "hello\n"}, {"run.sh", 0o755, "#!/bin/sh\necho run\n"},
		{"private/key", 0o600, "secret\n"}, {"home.html", os.ModeSymlink | 0o777, ""},
	} {
		p := filepath.Join(backDir, "site", c.path)
		st, err := os.Lstat(p)
		if err != nil {
			t.Errorf("the directory came back without %s: %v", c.path, err)
			continue
		}
		if st.Mode()&(os.ModeType|os.ModePerm) != c.mode {
			t.Errorf("%s came back with mode %v, want %v", c.path, st.Mode(), c.mode)
		}
		if c.data != "" {
			if b, _ := os.ReadFile(p); string(b) != c.data {
				t.Errorf("%s came back holding %q", c.path, b)
			}
		}
	}
	if l, _ := os.Readlink(filepath.Join(backDir, "site", "home.html")); l != "index.html" {
		t.Errorf("the symlink came back pointing to %q", l)
	}

	// Without a terminal volar's signals go to the command (through
	// volantd's upgraded connection): a trapped SIGINT runs the trap and
	// its status is volar's; an untrapped one ends the command with 130.
	for _, tc := range []struct {
		script, out string
		code        int
	}{
		{`trap "echo trapped; exit 42" INT; echo started; while :; do sleep 0.1; done`, "started\ntrapped\n", 42},
		{`echo started; sleep 1006; echo survived`, "started\n", 130},
	} {
		out, stderr, code := signalVolar(t, sock, syscall.SIGINT, "vms", "exec", "ex1", "--", "sh", "-c", tc.script)
		if code != tc.code || out != tc.out {
			t.Errorf("exec %q, sent SIGINT: status %d, output %q; want %d, %q; stderr: %s", tc.script, code, out, tc.code, tc.out, stderr)
		}
	}

	// With -o json too: nothing is printed before the end, so the command
	// says it started in a file of the guest. SIGINT runs the trap, SIGTERM
	// ends an untrapping command; the object and volar's status are the
	// command's.
	for i, tc := range []struct {
		sig            syscall.Signal
		script, out    string
		code           int
		killedBySignal string
	}{
		{syscall.SIGINT, `trap "echo trapped; exit 42" INT; echo started; : > /tmp/json-0; while :; do sleep 0.1; done`, "started\ntrapped\n", 42, ""},
		{syscall.SIGTERM, `echo started; : > /tmp/json-1; sleep 1007; echo survived`, "started\n", 143, "SIGTERM"},
	} {
		marker := fmt.Sprintf("/tmp/json-%d", i)
		cmd := exec.Command(volarBinary(t), "-o", "json", "vms", "exec", "ex1", "--", "sh", "-c", tc.script)
		cmd.Env = append(os.Environ(), "VOLANT_HOST="+sock)
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		kill := time.AfterFunc(2*time.Minute, func() { cmd.Process.Kill() })
		deadline := time.Now().Add(60 * time.Second)
		for runVolar(t, "", env, "vms", "exec", "ex1", "--", "cat", marker).Code != 0 {
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("-o json exec %q never started: %s", tc.script, errb.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
		cmd.Process.Signal(tc.sig)
		cmd.Wait()
		kill.Stop()
		var res struct {
			ExitCode int    `json:"exit_code"`
			Signal   string `json:"signal"`
			Stdout   string `json:"stdout"`
		}
		err := json.Unmarshal([]byte(out.String()), &res)
		if code := cmd.ProcessState.ExitCode(); err != nil || code != tc.code || res.ExitCode != tc.code || res.Stdout != tc.out || res.Signal != tc.killedBySignal {
			t.Errorf("exec -o json %q, sent %s: status %d, output %q (%v); want %d, stdout %q, signal %q; stderr: %s",
				tc.script, tc.sig, code, out.String(), err, tc.code, tc.out, tc.killedBySignal, errb.String())
		}
	}

	// A client killed mid-command (its HTTP connection to volantd drops):
	// nothing it ran is left in the guest.
	client := exec.Command(volarBinary(t), "vms", "exec", "-i", "ex1", "--", "sh", "-c", "echo started; exec sleep 1004")
	client.Env = append(os.Environ(), "VOLANT_HOST="+sock)
	stdout, _ := client.StdoutPipe()
	stdin, _ := client.StdinPipe()
	defer stdin.Close()
	if err := client.Start(); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(stdout).ReadString('\n'); line != "started\n" {
		client.Process.Kill()
		client.Wait()
		t.Fatalf("exec -i printed %q: %v", line, err)
	}
	client.Process.Kill()
	client.Wait()
	t0 := time.Now()
	for {
		r := runVolar(t, "", env, "vms", "exec", "ex1", "--", "sh", "-c", "for p in /proc/[0-9]*; do cat $p/cmdline; echo; done")
		if r.Code != 0 {
			t.Fatalf("listing the guest's processes: %s", r)
		}
		if !strings.Contains(r.Stdout, "sleep\x001004") {
			break
		}
		if time.Since(t0) > 30*time.Second {
			t.Fatalf("sleep 1004 still runs in the guest 30 s after its client was killed")
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("a killed client's command was gone from the guest %s later", time.Since(t0).Round(time.Millisecond))

	// A stopped VM: a clear refusal, status 125.
	if _, err := c.StopVM(context.Background(), "ex1"); err != nil {
		t.Fatal(err)
	}
	if r := runVolar(t, "", env, "vms", "exec", "ex1", "--", "true"); r.Code != 125 || !strings.Contains(r.Stderr, "CONFLICT") {
		t.Errorf("exec into a stopped VM: %s", r)
	}
}

// signalVolar runs volar with args against the volantd at sock, sends it
// sig once the command printed its first line and returns volar's whole
// stdout, its stderr and its status.
func signalVolar(t *testing.T, sock string, sig syscall.Signal, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(volarBinary(t), args...)
	cmd.Env = append(os.Environ(), "VOLANT_HOST="+sock)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errb strings.Builder
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	kill := time.AfterFunc(2*time.Minute, func() { cmd.Process.Kill() })
	defer kill.Stop()
	r := bufio.NewReader(stdout)
	first, err := r.ReadString('\n')
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("volar %q printed %q (%v): %s", args, first, err, errb.String())
	}
	cmd.Process.Signal(sig)
	rest, _ := io.ReadAll(r)
	cmd.Wait()
	return first + string(rest), errb.String(), cmd.ProcessState.ExitCode()
}
