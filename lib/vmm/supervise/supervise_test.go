package supervise

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/vmm"
)

// The test binary doubles as a supervisor process (the os/exec helper trick):
// with SUPERVISE_HELPER=parent it starts `sleep 300` through Start, prints
// the child's pid, retires a few OS threads the way a locked goroutine that
// ends does, and waits to be killed.
func TestMain(m *testing.M) {
	if os.Getenv("SUPERVISE_HELPER") == "parent" {
		helperParent()
		return
	}
	os.Exit(m.Run())
}

func helperParent() {
	p, err := Start(Options{Argv: []string{"sleep", "300"}})
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	// Goroutines that lock a thread and end without unlocking make the Go
	// runtime terminate that thread. Had the fork come from one of them,
	// Pdeathsig would fire now.
	for range 8 {
		done := make(chan struct{})
		go func() { runtime.LockOSThread(); close(done) }()
		<-done
	}
	fmt.Println("CHILD", p.Pid)
	select {}
}

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		line  string
		state byte
		ppid  int
		start uint64
		err   bool
	}{
		{"1234 (qemu-system-x86) S 1 1234 1234 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 98765 100 200", 'S', 1, 98765, false},
		{"77 (a b) c)) Z 5 77 77 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 42 0 0", 'Z', 5, 42, false},
		{"garbage", 0, 0, 0, true},
		{"1 (x) S 0 1", 0, 0, 0, true},
	} {
		st, err := parseStat([]byte(tc.line))
		if (err != nil) != tc.err {
			t.Fatalf("%q: err %v", tc.line, err)
		}
		if !tc.err && (st.state != tc.state || st.ppid != tc.ppid || st.start != tc.start) {
			t.Fatalf("%q: got %+v", tc.line, st)
		}
	}
}

func TestIdentityDetectsReuse(t *testing.T) {
	self, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	if !self.Alive() {
		t.Fatal("own identity not alive")
	}
	stranger := self
	stranger.StartTime++
	if stranger.Alive() {
		t.Fatal("an identity with another start time must not be alive (pid reuse)")
	}
	if _, err := stranger.Open(); !errors.Is(err, ErrGone) {
		t.Fatalf("Open of a reused pid: %v, want ErrGone", err)
	}
	otherBoot := self
	otherBoot.BootID = "00000000-0000-0000-0000-000000000000"
	if otherBoot.Alive() {
		t.Fatal("an identity from another boot must not be alive")
	}
}

func TestStartKillAndHandle(t *testing.T) {
	p, err := Start(Options{Argv: []string{"sleep", "300"}})
	if err != nil {
		t.Fatal(err)
	}
	if !p.Identity.Alive() {
		t.Fatal("child not alive")
	}
	pgid, _ := syscall.Getpgid(p.Pid)
	if pgid != p.Pid {
		t.Fatalf("child pgid %d, want its own group %d", pgid, p.Pid)
	}
	h, err := p.Identity.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if h.Exited() {
		t.Fatal("handle says exited")
	}
	if err := h.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	<-p.Done()
	var ee *ExitError
	if err := p.ExitError(); !errors.As(err, &ee) || !strings.Contains(err.Error(), "terminated") {
		t.Fatalf("exit error %v", err)
	}
	if p.Identity.Alive() {
		t.Fatal("identity alive after exit")
	}
	if err := p.Kill(); err != nil {
		t.Fatalf("kill after exit must be a no-op: %v", err)
	}
}

func TestWaitReady(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// Exits early: the error carries the status and stderr.
	p, err := Start(Options{Argv: []string{"sh", "-c", "echo 'qemu: could not open tap vt0' >&2; exit 1"}})
	if err != nil {
		t.Fatal(err)
	}
	err = p.WaitReady(ctx, 5*time.Millisecond, func(context.Context) error { return errors.New("not yet") })
	if !errors.Is(err, ErrExited) || !strings.Contains(err.Error(), "could not open tap vt0") || !strings.Contains(err.Error(), "exit status 1") {
		t.Fatalf("early exit: %v", err)
	}

	// Becomes ready.
	flag := filepath.Join(t.TempDir(), "ready")
	p, err = Start(Options{Argv: []string{"sh", "-c", "sleep 0.2; touch " + flag + "; sleep 300"}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill()
	err = p.WaitReady(ctx, 5*time.Millisecond, func(context.Context) error {
		_, err := os.Stat(flag)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}

	// Never ready: the deadline wins and names the last probe error.
	short, cancel2 := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel2()
	err = p.WaitReady(short, 5*time.Millisecond, func(context.Context) error { return errors.New("socket missing") })
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "socket missing") {
		t.Fatalf("deadline: %v", err)
	}
}

// Killing the supervisor with SIGKILL must take the VMM with it, even after
// the supervisor's runtime retired threads.
func TestSupervisorKilledLeavesNoOrphan(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "SUPERVISE_HELPER=parent")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	if !sc.Scan() {
		cmd.Process.Kill()
		t.Fatalf("helper printed nothing: %v", sc.Err())
	}
	f := strings.Fields(sc.Text())
	if len(f) != 2 || f[0] != "CHILD" {
		cmd.Process.Kill()
		t.Fatalf("helper: %q", sc.Text())
	}
	pid, _ := strconv.Atoi(f[1])
	child, err := Of(pid)
	if err != nil {
		cmd.Process.Kill()
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if !child.Alive() {
		cmd.Process.Kill()
		t.Fatal("child died while its supervisor lives: Pdeathsig fired from a retired thread")
	}
	cmd.Process.Kill()
	cmd.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for child.Alive() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if child.Alive() {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatal("child outlived its SIGKILLed supervisor")
	}
}

func TestPidFileRoundTrip(t *testing.T) {
	self, _ := Self()
	path := filepath.Join(t.TempDir(), "pid")
	want := PidFile{Supervisor: self, VMM: self, Backend: "qemu", Socket: "/run/x/ctl.sock", StartedAt: time.Unix(1700000000, 0).UTC()}
	if err := WritePidFile(path, want); err != nil {
		t.Fatal(err)
	}
	got, err := ReadPidFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("got %+v", got)
	}
	os.WriteFile(path, []byte("{"), 0o644)
	if _, err := ReadPidFile(path); err == nil {
		t.Fatal("corrupt pid file accepted")
	}
}

// fakeControl plays a VMM's control socket for Stop's escalation.
type fakeControl struct {
	p            *Process
	honourButton bool
	honourQuit   bool
	// missed is how many presses the guest misses before it listens
	// (its button driver is not loaded yet).
	missed int
	calls  *[]string
}

func (f fakeControl) rec(s string) { *f.calls = append(*f.calls, s) }
func (f fakeControl) Ping(context.Context) error {
	return nil
}
func (f fakeControl) State(context.Context) (vmm.State, error) { return vmm.StateRunning, nil }
func (f fakeControl) PowerButton(context.Context) error {
	f.rec("power_button")
	if f.honourButton && strings.Count(strings.Join(*f.calls, " "), "power_button") > f.missed {
		f.p.Signal(syscall.SIGTERM)
	}
	return nil
}
func (f fakeControl) Shutdown(context.Context) error { f.rec("shutdown"); return nil }
func (f fakeControl) Quit(context.Context) error {
	f.rec("quit")
	if f.honourQuit {
		f.p.Signal(syscall.SIGTERM)
	}
	return nil
}
func (f fakeControl) Pause(context.Context) error  { return nil }
func (f fakeControl) Resume(context.Context) error { return nil }
func (f fakeControl) Counters(context.Context) (map[string]map[string]int64, error) {
	return nil, nil
}
func (f fakeControl) SaveState(context.Context, string) error   { return nil }
func (f fakeControl) Restore(context.Context, vmm.Config) error { return nil }
func (f fakeControl) Close() error                              { return nil }

func TestStopEscalates(t *testing.T) {
	for _, tc := range []struct {
		name         string
		button, quit bool
		missed       int
		want         string
		calls        string
	}{
		{"guest powers off", true, false, 0, StoppedPowerButton, "power_button"},
		// Presses again after 100 ms, then 200 ms: the third press is heard.
		{"guest misses the first presses", true, false, 2, StoppedPowerButton, "power_button power_button power_button"},
		// The button is pressed again until the grace period ends (how
		// often depends on the machine's load: "power_button+" is one or
		// more presses).
		{"guest ignores the button", false, true, 0, StoppedHard, "power_button+ shutdown quit"},
		{"vmm ignores everything", false, false, 0, StoppedKill, "power_button+ shutdown quit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// trap '' TERM: the process ignores SIGTERM unless the fake says otherwise.
			p, err := Start(Options{Argv: []string{"sleep", "300"}})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Kill()
			var calls []string
			fc := fakeControl{p: p, honourButton: tc.button, honourQuit: tc.quit, missed: tc.missed, calls: &calls}
			grace := 500 * time.Millisecond
			if tc.button {
				grace = 10 * time.Second // ends at the press that is heard
			}
			r, err := Stop(context.Background(), p, func(context.Context) (vmm.Control, error) { return fc, nil },
				StopOptions{Grace: grace, Repress: 100 * time.Millisecond, Hard: 300 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			want := regexp.MustCompile("^" + strings.ReplaceAll(tc.calls, "power_button+ ", "(power_button )+") + "$")
			if r.Method != tc.want || !want.MatchString(strings.Join(calls, " ")) {
				t.Fatalf("method %s calls %v", r.Method, calls)
			}
			select {
			case <-p.Done():
			default:
				t.Fatal("process still running after Stop")
			}
			again, err := Stop(context.Background(), p, nil, StopOptions{})
			if err != nil || again.Method != StoppedAlready {
				t.Fatalf("second stop: %+v %v", again, err)
			}
		})
	}
}

func TestStopWithoutSocketKills(t *testing.T) {
	p, err := Start(Options{Argv: []string{"sleep", "300"}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill()
	r, err := Stop(context.Background(), p, func(context.Context) (vmm.Control, error) {
		return nil, errors.New("connection refused")
	}, StopOptions{Grace: time.Second})
	if err != nil || r.Method != StoppedKill {
		t.Fatalf("%+v %v", r, err)
	}
	if r.Elapsed > 5*time.Second {
		t.Fatalf("took %v; an unreachable socket must not wait out the grace period", r.Elapsed)
	}
}

// TestWaitHoldsNoThread: 64 handles waited on at once hold no OS thread
// each (the pidfds wait in the runtime's poller), each Wait returns when
// its process exits, and a cancelled context ends a Wait.
func TestWaitHoldsNoThread(t *testing.T) {
	const n = 64
	threads := func() int {
		b, err := os.ReadFile("/proc/self/status")
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "Threads:"); ok {
				k, _ := strconv.Atoi(strings.TrimSpace(v))
				return k
			}
		}
		t.Fatal("no Threads: in /proc/self/status")
		return 0
	}
	var procs []*Process
	var handles []*Handle
	for range n {
		p, err := Start(Options{Argv: []string{"sleep", "300"}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Kill() })
		h, err := p.Identity.Open()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		procs, handles = append(procs, p), append(handles, h)
	}
	time.Sleep(100 * time.Millisecond)
	before := threads() // Start's own waiters (wait4) hold threads too
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errs := make(chan error, n)
	for _, h := range handles {
		go func() { errs <- h.Wait(ctx) }()
	}
	time.Sleep(300 * time.Millisecond) // the waiters are parked
	if got := threads(); got > before+n/4 {
		t.Errorf("%d threads while %d handles are waited on (%d before)", got, n, before)
	}
	select {
	case err := <-errs:
		t.Fatalf("a Wait returned while its process runs: %v", err)
	default:
	}
	for _, p := range procs {
		p.Kill()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Errorf("Wait after the process exited: %v", err)
		}
	}

	// A cancelled wait.
	p, err := Start(Options{Argv: []string{"sleep", "300"}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill()
	h, err := p.Identity.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	cctx, ccancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Wait(cctx) }()
	time.Sleep(100 * time.Millisecond)
	ccancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled Wait: %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a cancelled Wait did not return")
	}
	if !p.Identity.Alive() {
		t.Error("the process died of a cancelled Wait")
	}
}
