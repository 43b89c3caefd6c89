package main

import (
	"bufio"
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentchan"
)

// signalExec runs `volant-launch args...`, waits for the command's first
// line "started", sends our process sig (again every interval until it
// exits when repeat is set) and returns the rest of its stdout, its stderr
// and its status.
func (w *vmWorld) signalExec(t *testing.T, sig syscall.Signal, repeat bool, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(w.bin, args...)
	cmd.Env = w.env
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
	if line, err := r.ReadString('\n'); line != "started\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("volant-launch %q printed %q (%v): %s", args, line, err, errb.String())
	}
	cmd.Process.Signal(sig)
	done := make(chan struct{})
	if repeat {
		// Signals sent back to back may merge into one: one at a time.
		go func() {
			for {
				select {
				case <-done:
					return
				case <-time.After(500 * time.Millisecond):
					cmd.Process.Signal(sig)
				}
			}
		}()
	}
	rest, _ := io.ReadAll(r)
	cmd.Wait()
	close(done)
	return string(rest), errb.String(), cmd.ProcessState.ExitCode()
}

// TestVMExecSignals sends signals to volant-launch exec without a TTY, in
// a real guest (QEMU, kestrel as PID 1): they reach the command as
// signals and its own status comes back. A command that traps SIGINT
// prints and exits 42, one that does not ends with 130 (its pipeline
// too), SIGTERM in the JSON mode reaches a command that traps it, and
// after the third SIGINT to a command that ignores them volant-launch gives
// up: the command is hung up and killed in the guest.
func TestVMExecSignals(t *testing.T) {
	const name = "signals1"
	w := newWorld(t, name)
	w.plugin(t, guestPlugin{name: "signals", applets: []string{"sh", "cat", "sleep", "echo", "true"},
		workload: `{"entrypoint":["/bin/sleep","1000000"]}`})
	_, _, runErr := w.start(t, name)
	w.waitAgent(t, runErr)

	// A trapped SIGINT: the trap's output and its status.
	out, stderr, code := w.signalExec(t, syscall.SIGINT, false, "exec", "-i", "--dir", w.runDir, "--",
		"sh", "-c", `trap "echo trapped; exit 42" INT; echo started; while :; do sleep 0.1; done`)
	if code != 42 || out != "trapped\n" {
		t.Errorf("exec -i of a command trapping SIGINT, sent SIGINT: status %d, output %q, want 42 and \"trapped\\n\"; stderr: %s", code, out, stderr)
	}
	// An untrapped one: 130, and the whole command (sh and its sleep) ends.
	out, stderr, code = w.signalExec(t, syscall.SIGINT, false, "exec", "-i", "--dir", w.runDir, "--",
		"sh", "-c", `echo started; sleep 1003 | cat; echo survived`)
	if code != 130 || out != "" {
		t.Errorf("exec -i of a command not trapping SIGINT, sent SIGINT: status %d, output %q, want 130; stderr: %s", code, out, stderr)
	}
	w.waitGone(t, "sleep 1003 ", 30*time.Second)

	// The JSON mode: the result carries the command's status after SIGTERM.
	// The command says "started" on stdout through a marker file, since
	// the JSON arrives at the end.
	jsonOut, stderr, code := w.signalExecJSON(t, syscall.SIGTERM,
		`trap "echo trapped TERM; exit 42" TERM; : > /tmp/started; while :; do sleep 0.1; done`)
	var res execJSON
	if code != 0 || json.Unmarshal([]byte(jsonOut), &res) != nil || res.ExitCode != 42 || res.Stdout != "trapped TERM\n" {
		t.Errorf("exec (JSON) of a command trapping SIGTERM, sent SIGTERM: status %d %s %s", code, jsonOut, stderr)
	}

	// A command that ignores SIGINT and SIGHUP: the third SIGINT ends
	// volant-launch (CANCELED, 125), the guest hangs the command up and
	// kills it after the grace.
	out, stderr, code = w.signalExec(t, syscall.SIGINT, true, "exec", "-i", "--dir", w.runDir, "--",
		"sh", "-c", `trap "" INT HUP; echo started; sleep 1002; echo survived`)
	if code != ExitCommandFailed || !strings.Contains(stderr, `"CANCELED"`) || strings.Contains(out, "survived") {
		t.Errorf("exec -i of a command ignoring SIGINT, sent SIGINT until it ended: status %d, output %q, stderr %s", code, out, stderr)
	}
	took := w.waitGone(t, "sleep 1002 ", agentchan.HangupGrace+30*time.Second)
	t.Logf("gave up after %d SIGINTs; the command ignoring SIGHUP was gone within %s (grace %s); volant-launch said %s",
		3, took.Round(time.Millisecond), agentchan.HangupGrace, strings.TrimSpace(stderr))
}

// signalExecJSON runs `volant-launch exec -- sh -c script` (the JSON
// mode), waits until the guest has /tmp/started, sends sig and returns
// volant-launch's stdout, stderr and status.
func (w *vmWorld) signalExecJSON(t *testing.T, sig syscall.Signal, script string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(w.bin, "exec", "--dir", w.runDir, "--", "sh", "-c", script)
	cmd.Env = w.env
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	kill := time.AfterFunc(2*time.Minute, func() { cmd.Process.Kill() })
	defer kill.Stop()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if w.execGuest(t, "sh", "-c", "[ -e /tmp/started ]").ExitCode == 0 {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("the command never started: %s", errb.String())
		}
	}
	cmd.Process.Signal(sig)
	cmd.Wait()
	return out.String(), errb.String(), cmd.ProcessState.ExitCode()
}
