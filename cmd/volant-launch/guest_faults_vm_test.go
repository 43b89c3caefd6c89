package main

import (
	"archive/tar"
	"bufio"
	"bytes"
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
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/workloadlog"
)

// execJSON is `volant-launch exec`'s result.
type execJSON struct {
	ExitCode int    `json:"exit_code"`
	Signal   string `json:"signal"`
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
}

// execGuest runs `volant-launch exec --dir RUN -- argv` and decodes its
// result; it fails the test unless the exec itself worked.
func (w *vmWorld) execGuest(t testing.TB, argv ...string) execJSON {
	t.Helper()
	out, stderr, code := w.launchRaw(t, "", append([]string{"exec", "--dir", w.runDir, "--"}, argv...)...)
	var res execJSON
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil {
		t.Fatalf("exec %q: status %d %s %s", argv, code, out, stderr)
	}
	return res
}

// waitAgent waits until a command runs in the guest.
func (w *vmWorld) waitAgent(t testing.TB, run *strings.Builder) {
	t.Helper()
	deadline := time.Now().Add(120 * time.Second)
	for {
		out, stderr, code := w.launchRaw(t, "", "exec", "--dir", w.runDir, "--", "true")
		if code == 0 && strings.Contains(out, `"exit_code":0`) {
			return
		}
		if time.Now().After(deadline) {
			con, _ := os.ReadFile(w.log)
			t.Fatalf("the guest's agent never ran a command: %d %s\nrun: %s\nconsole:\n%s", code, stderr, run, con)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// guestCommandLines lists the command lines of the guest's processes
// (arguments separated by spaces).
func (w *vmWorld) guestCommandLines(t *testing.T) []string {
	t.Helper()
	res := w.execGuest(t, "sh", "-c", `for p in /proc/[0-9]*; do cat $p/cmdline 2>/dev/null; echo; done`)
	return strings.Split(strings.ReplaceAll(res.Stdout, "\x00", " "), "\n")
}

// waitGone waits until no guest process's command line is cmdline and
// returns how long that took.
func (w *vmWorld) waitGone(t *testing.T, cmdline string, within time.Duration) time.Duration {
	t.Helper()
	t0 := time.Now()
	for {
		if !slices.Contains(w.guestCommandLines(t), cmdline) {
			return time.Since(t0)
		}
		if time.Since(t0) > within {
			t.Fatalf("%q still runs in the guest %s after its client left", cmdline, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startExec starts a streamed `volant-launch exec -i` and returns once the
// command printed "started".
func (w *vmWorld) startExec(t *testing.T, argv ...string) (*exec.Cmd, *strings.Builder) {
	t.Helper()
	cmd := exec.Command(w.bin, append([]string{"exec", "-i", "--dir", w.runDir, "--"}, argv...)...)
	cmd.Env = w.env
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errb strings.Builder
	cmd.Stderr = &errb
	stdin, _ := cmd.StdinPipe() // held open: the command keeps its stdin
	t.Cleanup(func() { stdin.Close() })
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if line != "started\n" {
		t.Fatalf("exec %q printed %q (%v): %s", argv, line, err, errb.String())
	}
	go io.Copy(io.Discard, stdout)
	return cmd, &errb
}

// rssKiB is the VmRSS of the guest's PID 1, kestrel (what its agent status
// reports as agent_rss_kib).
func rssKiB(t *testing.T, status string) int {
	t.Helper()
	m := regexp.MustCompile(`(?m)^VmRSS:\s+(\d+) kB`).FindStringSubmatch(status)
	if m == nil {
		t.Fatalf("no VmRSS in /proc/1/status:\n%s", status)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// TestVMExecFaults drives a real guest (QEMU, kestrel as PID 1) through
// what goes wrong around exec and cp, with volant-launch as a shell uses
// it: statuses of commands ended by signals, a missing working directory,
// an archive with "..", clients that vanish mid-command (the guest's
// processes are gone afterwards, also ones that ignore SIGHUP), 100
// concurrent execs (kestrel's RSS measured during them), a large cp both
// ways with checksums (throughput logged), 1 GiB copied out (a sparse
// guest file, so the guest needs no memory for it), and a guest that reboots while
// a command runs (a clear UNAVAILABLE, the supervisor ends with the VM).
func TestVMExecFaults(t *testing.T) {
	const name = "faults1"
	mib := 64
	if v, err := strconv.Atoi(os.Getenv("VOLANT_TEST_CP_MIB")); err == nil && v > 0 {
		mib = v
	}
	w := newWorld(t, name)
	// An initramfs guest keeps its files in RAM: room for the big file
	// twice (copied in, then read back out) and the rest.
	w.plugin(t, guestPlugin{name: "faults", applets: []string{"sh", "cat", "sha256sum", "sleep", "echo", "true", "reboot", "kill", "truncate", "rm"},
		workload: `{"entrypoint":["/bin/sleep","1000000"]}`,
		extra:    fmt.Sprintf(`,"resources":{"cpu_cores":1,"memory_mb":%d}`, 256+2*mib)})
	run, _, runErr := w.start(t, name)
	w.waitAgent(t, runErr)

	// Commands ended by a signal: 128 + the signal's number, and its name.
	if res := w.execGuest(t, "sh", "-c", "kill -TERM $$"); res.ExitCode != 143 || !strings.Contains(res.Signal, "TERM") {
		t.Errorf("a command killed by SIGTERM: %+v", res)
	}
	if _, _, code := w.launchRaw(t, "", "exec", "-i", "--dir", w.runDir, "--", "sh", "-c", "kill -KILL $$"); code != 137 {
		t.Errorf("exec -i of a command killed by SIGKILL: status %d, want 137", code)
	}
	// A working directory that is not there.
	if _, stderr, code := w.launchRaw(t, "", "exec", "--dir", w.runDir, "-w", "/no/such/dir", "--", "true"); code != 4 || !strings.Contains(stderr, `"NOT_FOUND"`) {
		t.Errorf("exec -w /no/such/dir: %d %s", code, stderr)
	}
	// An archive whose entry climbs out of the destination.
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	tw.WriteHeader(&tar.Header{Name: "../../escaped", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1})
	tw.Write([]byte("x"))
	tw.Close()
	if _, stderr, code := w.launchRaw(t, tb.String(), "cp", "--dir", w.runDir, "-", ":/tmp/"); code != 3 || !strings.Contains(stderr, `"INVALID_INPUT"`) {
		t.Errorf("cp of an archive with ../../escaped: %d %s", code, stderr)
	}
	if res := w.execGuest(t, "sh", "-c", "[ -e /escaped ] || [ -e /tmp/../escaped ]"); res.ExitCode == 0 {
		t.Error("the archive's ../../escaped was written in the guest")
	}

	// A client killed outright: the guest hangs up its command.
	client, _ := w.startExec(t, "sh", "-c", "echo started; exec sleep 1001")
	client.Process.Kill()
	client.Wait()
	took := w.waitGone(t, "sleep 1001 ", 30*time.Second)
	t.Logf("client killed: its command ended in the guest within %s", took.Round(time.Millisecond))
	// A client interrupted (Ctrl-C outside a terminal) forwards the
	// signal and gives up at the third: TestVMExecSignals.

	// 100 concurrent execs, each its own client of the supervisor.
	idle := rssKiB(t, w.execGuest(t, "cat", "/proc/1/status").Stdout)
	const n = 100
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, n)
	outs := make([]string, n)
	t0 := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sess, err := launch.DialGuest(ctx, w.runDir)
			if err != nil {
				errs[i] = err
				return
			}
			defer sess.Close()
			res, err := sess.Run(ctx, agentchan.ExecRequest{Argv: []string{"sh", "-c", "sleep 8; echo $0", strconv.Itoa(i)}}, nil, 0)
			if err == nil && res.ExitCode != 0 {
				err = fmt.Errorf("exit %d: %s", res.ExitCode, res.Stderr)
			}
			errs[i] = err
			if res != nil {
				outs[i] = res.Stdout
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	peak, samples, running := 0, 0, 0
sample:
	for {
		select {
		case <-done:
			break sample
		default:
		}
		sess, err := launch.DialGuest(ctx, w.runDir)
		if err != nil {
			t.Fatal(err)
		}
		res, err := sess.Run(ctx, agentchan.ExecRequest{Argv: []string{"sh", "-c", "cat /proc/1/status; ls -d /proc/[0-9]* | wc -l"}}, nil, 0)
		sess.Close()
		if err != nil {
			t.Fatalf("sampling kestrel's RSS during the 100 execs: %v", err)
		}
		if r := rssKiB(t, res.Stdout); r > peak {
			peak = r
		}
		lines := strings.Split(strings.TrimSpace(res.Stdout), "\n")
		if p, _ := strconv.Atoi(strings.TrimSpace(lines[len(lines)-1])); p > running {
			running = p
		}
		samples++
		time.Sleep(250 * time.Millisecond)
	}
	elapsed := time.Since(t0)
	failed := 0
	for i := range n {
		if errs[i] != nil || outs[i] != strconv.Itoa(i)+"\n" {
			failed++
			if failed <= 5 {
				t.Errorf("exec %d of %d: %q %v", i, n, outs[i], errs[i])
			}
		}
	}
	after := rssKiB(t, w.execGuest(t, "cat", "/proc/1/status").Stdout)
	t.Logf("%d concurrent execs (sleep 8 each) done in %s, %d failed; kestrel RSS %d KiB idle, %d KiB peak over %d samples (up to %d guest processes), %d KiB after",
		n, elapsed.Round(time.Millisecond), failed, idle, peak, samples, running, after)
	if peak > 64<<10 {
		t.Errorf("kestrel's RSS reached %d KiB during %d execs", peak, n)
	}
	for _, l := range w.guestCommandLines(t) {
		if strings.HasPrefix(l, "sleep 8 ") {
			t.Errorf("left running after the 100 execs: %q", l)
		}
	}

	// A large file both ways, checked by checksum.
	src := filepath.Join(t.TempDir(), "big")
	data := make([]byte, mib<<20)
	rand.Read(data)
	os.WriteFile(src, data, 0o600)
	sum := sha256.Sum256(data)
	data = nil
	t0 = time.Now()
	if out, stderr, code := w.launchRaw(t, "", "cp", "--dir", w.runDir, src, ":/tmp/big"); code != 0 {
		t.Fatalf("cp of %d MiB in: %d %s %s", mib, code, out, stderr)
	}
	in := time.Since(t0)
	if res := w.execGuest(t, "sha256sum", "/tmp/big"); !strings.HasPrefix(res.Stdout, hex.EncodeToString(sum[:])) {
		t.Fatalf("the guest's checksum of the %d MiB file: %+v", mib, res)
	}
	back := filepath.Join(t.TempDir(), "back")
	t0 = time.Now()
	if out, stderr, code := w.launchRaw(t, "", "cp", "--dir", w.runDir, ":/tmp/big", back); code != 0 {
		t.Fatalf("cp of %d MiB out: %d %s %s", mib, code, out, stderr)
	}
	out := time.Since(t0)
	f, _ := os.Open(back)
	h := sha256.New()
	io.Copy(h, f)
	f.Close()
	if !bytes.Equal(h.Sum(nil), sum[:]) {
		t.Fatalf("the %d MiB file came back with another checksum", mib)
	}
	t.Logf("cp %d MiB: in %s (%.1f MiB/s), out %s (%.1f MiB/s)", mib, in.Round(time.Millisecond), float64(mib)/in.Seconds(),
		out.Round(time.Millisecond), float64(mib)/out.Seconds())

	// 1 GiB out of the guest, streamed; the session ends with the copy.
	hugeTook := w.copyOutSparse(t, 1<<30)
	t.Logf("cp 1 GiB out: %s (%.1f MiB/s)", hugeTook.Round(time.Millisecond), 1024/hugeTook.Seconds())

	// The guest reboots while a command runs: the client gets UNAVAILABLE
	// (status 125), the supervisor ends with the VM, exec is refused after.
	client, errb := w.startExec(t, "sh", "-c", "echo started; sleep 1003")
	rebooted := make(chan error, 1)
	go func() { rebooted <- client.Wait() }()
	// reboot(2) does not return: that exec's status never arrives either.
	if _, stderr, code := w.launchRaw(t, "", "exec", "--dir", w.runDir, "--", "reboot", "-f"); code != 9 || !strings.Contains(stderr, `"UNAVAILABLE"`) {
		t.Errorf("exec of reboot -f: status %d %s", code, stderr)
	}
	select {
	case <-rebooted:
	case <-time.After(60 * time.Second):
		t.Fatal("the exec did not end when the guest rebooted")
	}
	if code := client.ProcessState.ExitCode(); code != ExitCommandFailed || !strings.Contains(errb.String(), `"UNAVAILABLE"`) {
		t.Errorf("an exec through a reboot: status %d %s", code, errb)
	}
	t.Logf("an exec through a reboot said: %s", strings.TrimSpace(errb.String()))
	ended := make(chan struct{})
	go func() { run.Wait(); close(ended) }()
	select {
	case <-ended:
	case <-time.After(60 * time.Second):
		t.Fatal("volant-launch run still runs after the guest rebooted")
	}
	if _, stderr, code := w.launchRaw(t, "", "exec", "--dir", w.runDir, "--", "true"); code != 5 || !strings.Contains(stderr, "not_running") {
		t.Errorf("exec after the reboot: %d %s", code, stderr)
	}
}

// floodRound is one round of the logflood workload as the host's workload
// log showed it.
type floodRound struct {
	written, received, lost int64 // bytes
	gaps                    int   // gap entries
	missing                 map[string]int
	seconds                 float64 // the workload's own time
	first, last             time.Time
}

// countFlood reads entries of one logflood round until its summary arrived
// and every byte the summary counts is accounted for, as received or as
// lost in a counted gap. It fails the test on a damaged line or a line
// missing where no gap entry is.
func countFlood(t *testing.T, entries <-chan workloadlog.Entry, round int) floodRound {
	t.Helper()
	type streamCount struct {
		bytes    int64
		next     int  // the next line number expected
		missing  int  // lines skipped over a gap
		afterGap bool // a gap entry came since this stream's last whole line
		pending  []byte
	}
	counts := map[string]*streamCount{"stdout": {}, "stderr": {}}
	var r floodRound
	var summaryLen int64
	lineRE := regexp.MustCompile(`^(out|err) (\d{9}) x{85}\n$`)
	received := func() int64 { return counts["stdout"].bytes + counts["stderr"].bytes - summaryLen }
	for summaryLen == 0 || received()+r.lost < r.written {
		var e workloadlog.Entry
		var ok bool
		select {
		case e, ok = <-entries:
		case <-time.After(90 * time.Second):
			t.Fatalf("round %d: no log entry for 90 s (received %d, lost %d of %d)", round, received(), r.lost, r.written)
		}
		if !ok {
			t.Fatalf("round %d: logs -f ended", round)
		}
		if e.Gap > 0 {
			r.lost += e.Gap
			r.gaps++
			// The store is shared by both streams: either may have lost
			// lines, and a line cut by the gap is whole on neither side.
			for _, c := range counts {
				c.afterGap, c.pending = true, nil
			}
			continue
		}
		if r.first.IsZero() {
			r.first = e.Time
		}
		r.last = e.Time
		c := counts[e.Stream]
		if c == nil {
			t.Fatalf("an entry of stream %q", e.Stream)
		}
		d := e.Data()
		c.bytes += int64(len(d))
		if e.Partial {
			c.pending = append(c.pending, d...)
			continue
		}
		line := string(append(c.pending, d...))
		c.pending = nil
		if strings.HasPrefix(line, "flood-done ") {
			var n int
			var out, errs int64
			if _, err := fmt.Sscanf(line, "flood-done round=%d stdout=%d stderr=%d seconds=%g\n", &n, &out, &errs, &r.seconds); err != nil || n != round {
				t.Fatalf("round %d: summary %q: %v", round, line, err)
			}
			r.written, summaryLen = out+errs, int64(len(line))
			continue
		}
		m := lineRE.FindStringSubmatch(line)
		if m == nil {
			if c.afterGap {
				continue // the tail of a line whose head was dropped
			}
			t.Fatalf("round %d: a %s line arrived damaged: %q", round, e.Stream, line)
		}
		seq, _ := strconv.Atoi(m[2])
		switch {
		case seq == c.next:
		case seq > c.next && c.afterGap:
			c.missing += seq - c.next
		default:
			t.Fatalf("round %d: %s: line %d after line %d with no gap entry between", round, e.Stream, seq, c.next-1)
		}
		c.next, c.afterGap = seq+1, false
	}
	r.received = received()
	r.missing = map[string]int{}
	for s, c := range counts {
		r.missing[s] = c.missing
	}
	if r.received+r.lost != r.written {
		t.Errorf("round %d: received %d + lost %d (counted) != written %d", round, r.received, r.lost, r.written)
	}
	for s, n := range r.missing {
		if int64(n)*100 > r.lost {
			t.Errorf("round %d: %s: %d lines missing, more than the gaps' %d bytes", round, s, n, r.lost)
		}
	}
	return r
}

// TestVMWorkloadLogFlood runs a workload that writes 100-byte numbered
// lines to stdout and stderr as `volant-launch logs -f --json` follows the
// host's workload log, and accounts for every byte: what arrived plus what
// counted gap entries say was dropped equals what the workload wrote,
// lines arrive whole and in order per stream, and lines are missing only
// where a gap entry is. Round 1 asks for 10 MB/s for 10 s
// ($VOLANT_TEST_FLOOD_RATE, bytes/s) with the host reading, and logs the
// rate the workload reached and the host received. Round 2 writes 24 MiB
// while the VM's supervisor is stopped (SIGSTOP), so kestrel's 4 MiB
// store overflows: the loss must show up as gap entries.
func TestVMWorkloadLogFlood(t *testing.T) {
	const name = "flood1"
	rate := 10_000_000
	if v, err := strconv.Atoi(os.Getenv("VOLANT_TEST_FLOOD_RATE")); err == nil && v > 0 {
		rate = v
	}
	w := newWorld(t, name)
	flood := guesttest.StaticInit(t, "cmd/volant-launch/testdata/logflood")
	w.plugin(t, guestPlugin{name: "flood", applets: []string{"sh", "echo", "true", "cat", "dmesg"},
		files:    map[string]string{"/bin/logflood": flood},
		workload: `{"entrypoint":["/bin/logflood"]}`})
	run, _, runErr := w.start(t, name)
	w.waitAgent(t, runErr)

	follow := exec.Command(w.bin, "logs", "-f", "--json", "--dir", w.runDir)
	follow.Env = w.env
	stdout, _ := follow.StdoutPipe()
	var ferr strings.Builder
	follow.Stderr = &ferr
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		follow.Process.Kill()
		follow.Wait()
		if t.Failed() {
			t.Logf("logs -f said: %s", ferr.String())
		}
	}()
	entries := make(chan workloadlog.Entry, 1024)
	go func() {
		defer close(entries)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var e workloadlog.Entry
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				t.Errorf("logs --json printed %q: %v", sc.Text(), err)
				return
			}
			entries <- e
		}
	}()

	// Round 1: the host reads all along.
	w.execGuest(t, "sh", "-c", fmt.Sprintf("echo %d 10 0 > /tmp/flood", rate))
	t0 := time.Now()
	r := countFlood(t, entries, 1)
	t.Logf("round 1: the workload wrote %d bytes in %.2f s (%.2f MB/s; asked %.2f MB/s); the host's log received %d bytes (%.2f MB/s over %.2f s of entry times, all in %.2f s after the trigger); %d gap entries for %d bytes; lines missing %v",
		r.written, r.seconds, float64(r.written)/r.seconds/1e6, float64(rate)/1e6, r.received, float64(r.received)/r.last.Sub(r.first).Seconds()/1e6,
		r.last.Sub(r.first).Seconds(), time.Since(t0).Seconds(), r.gaps, r.lost, r.missing)

	// Round 2: nobody reads on the host while 24 MiB are written.
	w.execGuest(t, "sh", "-c", fmt.Sprintf("echo %d 0 %d > /tmp/flood", rate, 24<<20))
	run.Process.Signal(syscall.SIGSTOP)
	stopped := true
	defer func() {
		if stopped {
			run.Process.Signal(syscall.SIGCONT)
		}
	}()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		con, _ := os.ReadFile(w.log)
		if bytes.Contains(con, []byte("flood-done round=2")) {
			break
		}
		if bytes.Contains(con, []byte("kestrel: restarting workload")) {
			// The new workload would wait for the trigger the first
			// one took: say why it died instead of waiting.
			run.Process.Signal(syscall.SIGCONT)
			stopped = false
			res := w.execGuest(t, "sh", "-c", "dmesg | tail -n 60; cat /proc/meminfo")
			var died []string
			for _, l := range strings.Split(string(con), "\n") {
				if strings.Contains(l, "kestrel: workload exited") || strings.Contains(l, "Out of memory") || strings.Contains(l, "kestrel: restarting") {
					died = append(died, l)
				}
			}
			t.Fatalf("round 2: the workload died and kestrel restarted it:\n%s\nguest dmesg and meminfo:\n%s", strings.Join(died, "\n"), res.Stdout)
		}
		if time.Now().After(deadline) {
			t.Fatalf("round 2 did not end with the supervisor stopped (kestrel waited for the host?); console:\n%s", con)
		}
		time.Sleep(200 * time.Millisecond)
	}
	run.Process.Signal(syscall.SIGCONT)
	stopped = false
	r = countFlood(t, entries, 2)
	t.Logf("round 2 (supervisor stopped): the workload wrote %d bytes in %.2f s (%.2f MB/s); the host's log received %d bytes; %d gap entries for %d bytes; lines missing %v",
		r.written, r.seconds, float64(r.written)/r.seconds/1e6, r.received, r.gaps, r.lost, r.missing)
	// What the host got is what the store held plus what was in flight.
	if r.gaps == 0 || r.received > 8<<20 {
		t.Errorf("round 2: %d of %d bytes lost in %d gap entries: the guest's 4 MiB store should have overflowed", r.lost, r.written, r.gaps)
	}
	if r.missing["stdout"]+r.missing["stderr"] == 0 {
		t.Error("round 2: no lines missing although bytes were lost")
	}
}

// copyOutSparse copies a file of size bytes out of the guest with
// `volant-launch cp` and checks that all of it arrived: the file is sparse
// in the guest's tmpfs (its holes take no guest memory), so it reads back
// as zeros. An exec afterwards removes it (the guest still answers).
func (w *vmWorld) copyOutSparse(t *testing.T, size int64) time.Duration {
	t.Helper()
	w.execGuest(t, "truncate", "-s", strconv.FormatInt(size, 10), "/tmp/sparse")
	dst := filepath.Join(t.TempDir(), "sparse")
	defer os.Remove(dst)
	t0 := time.Now()
	if out, stderr, code := w.launchRaw(t, "", "cp", "--dir", w.runDir, ":/tmp/sparse", dst); code != 0 {
		t.Fatalf("cp of %d bytes out: %d %s %s", size, code, out, stderr)
	}
	took := time.Since(t0)
	f, err := os.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var n int64
	buf := make([]byte, 1<<20)
	for {
		k, err := f.Read(buf)
		if i := bytes.IndexFunc(buf[:k], func(r rune) bool { return r != 0 }); i >= 0 {
			t.Fatalf("the copy holds a non-zero byte at offset %d", n+int64(i))
		}
		n += int64(k)
		if err != nil {
			break
		}
	}
	if n != size {
		t.Fatalf("the copy of %d bytes came back with %d", size, n)
	}
	if res := w.execGuest(t, "rm", "/tmp/sparse"); res.ExitCode != 0 {
		t.Errorf("an exec after the copy: %+v", res)
	}
	return took
}
