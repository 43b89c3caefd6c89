package kestrel_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// pid1 is kestrel running as PID 1 of a new PID namespace (unshare), in a
// network namespace of its own.
type pid1 struct {
	t      *testing.T
	ns     *netnstest.NS
	cmd    *exec.Cmd
	stdout *lockedBuf
	stderr *lockedBuf
	done   chan struct{}
	err    error
}

func startPID1(t *testing.T, unshareArgs []string, kestrelArgs ...string) *pid1 {
	t.Helper()
	netnstest.Require(t, "unshare")
	kestrel := guesttest.Kestrel(t)
	ns := netnstest.New(t)
	p := &pid1{t: t, ns: ns, stdout: &lockedBuf{}, stderr: &lockedBuf{}, done: make(chan struct{})}
	argv := append(append([]string{}, unshareArgs...), append([]string{kestrel}, kestrelArgs...)...)
	p.cmd = ns.Cmd("unshare", argv...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	p.cmd.WaitDelay = 5 * time.Second // kestrel may outlive unshare holding the pipes
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			for _, pid := range ns.Pids() {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			<-p.done
		}
		if t.Failed() {
			t.Logf("kestrel stdout:\n%s\nkestrel stderr:\n%s", p.stdout, p.stderr)
		}
	})
	return p
}

func (p *pid1) wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		p.t.Fatalf("kestrel still running after %s\nstderr:\n%s", timeout, p.stderr)
		return nil
	}
}

// hostPID finds kestrel's pid as the host sees it: unshare's child.
func (p *pid1) hostPID() int {
	p.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, pid := range p.ns.Pids() {
			st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
			if err != nil {
				continue
			}
			if strings.Contains(string(st), "PPid:\t"+strconv.Itoa(p.cmd.Process.Pid)+"\n") &&
				strings.Contains(string(st), "NSpid:\t"+strconv.Itoa(pid)+"\t1\n") {
				return pid
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.t.Fatal("kestrel's pid not found")
	return 0
}

func (p *pid1) client() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := p.ns.Do(func() error {
				var d net.Dialer
				var err error
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}}}
}

func (p *pid1) status(cond func(agentapi.Status) bool) agentapi.Status {
	p.t.Helper()
	c := p.client()
	deadline := time.Now().Add(20 * time.Second)
	var st agentapi.Status
	for time.Now().Before(deadline) {
		resp, err := c.Get("http://127.0.0.1:8080/healthz")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if json.Unmarshal(b, &st) == nil && cond(st) {
				return st
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.t.Fatalf("status never matched; last %+v\nstderr:\n%s", st, p.stderr)
	return st
}

func writeManifest(t *testing.T, workload string, restart string) string {
	t.Helper()
	m := map[string]any{
		"name": "pid1", "version": "1", "initramfs": map[string]string{"url": "/unused"},
		"workload": map[string]any{"entrypoint": []string{"/bin/sh", "-c", workload}, "restart": restart},
	}
	b, _ := json.Marshal(m)
	f := filepath.Join(t.TempDir(), "manifest.json")
	os.WriteFile(f, b, 0o644)
	return f
}

// zombiesOf lists zombie children of pid.
func zombiesOf(pid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		st, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue
		}
		s := string(st)
		if strings.Contains(s, "State:\tZ") && strings.Contains(s, "PPid:\t"+strconv.Itoa(pid)+"\n") {
			n, _ := strconv.Atoi(e.Name())
			out = append(out, n)
		}
	}
	return out
}

// TestPID1ReapsSupervisesAndStopsOnSignals runs `kestrel run` as PID 1 of a
// new PID and mount namespace. The workload crashes once (restart
// on-failure), then orphans five short-lived processes that only PID 1 can
// reap, and traps SIGTERM. Each of SIGTERM, SIGINT and SIGPWR to kestrel
// must stop the workload gracefully and end kestrel with status 0.
func TestPID1ReapsSupervisesAndStopsOnSignals(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGPWR} {
		t.Run(sig.String(), func(t *testing.T) {
			state := t.TempDir()
			workload := `if [ ! -e ` + state + `/crashed ]; then touch ` + state + `/crashed; echo crashing; exit 3; fi
for i in 1 2 3 4 5; do sh -c 'sleep 0.3 &'; done
trap 'echo got-term; exit 0' TERM
echo serving
while true; do sleep 0.05; done`
			p := startPID1(t, []string{"--pid", "--fork", "--mount-proc"},
				"run", "--manifest", writeManifest(t, workload, "on-failure"), "--listen", "127.0.0.1:8080", "--debug")
			pid := p.hostPID()
			st := p.status(func(s agentapi.Status) bool {
				return s.Workload.State == agentapi.WorkloadRunning && s.Workload.Restarts == 1
			})
			if st.Workload.ExitCode == nil || *st.Workload.ExitCode != 3 {
				t.Fatalf("first exit not recorded: %+v", st.Workload)
			}
			self := "/proc/" + strconv.Itoa(pid) + "/mountinfo"
			mountsBefore := mountinfo(t, self)
			// The orphans live 0.3 s; give PID 1 time to reap them.
			deadline := time.Now().Add(10 * time.Second)
			for strings.Count(p.stderr.String(), "reaped orphan") < 5 && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			if n := strings.Count(p.stderr.String(), "reaped orphan"); n < 5 {
				t.Fatalf("reaped %d orphans, want 5", n)
			}
			if z := zombiesOf(pid); len(z) > 0 {
				t.Fatalf("zombies left under kestrel: %v", z)
			}
			mountsAfter := mountinfo(t, self)
			if mountsBefore != mountsAfter || mountsBefore == "" {
				t.Fatalf("kestrel changed its mount table outside a guest:\n%s\n---\n%s", mountsBefore, mountsAfter)
			}

			if err := syscall.Kill(pid, sig); err != nil {
				t.Fatal(err)
			}
			if err := p.wait(20 * time.Second); err != nil {
				t.Fatalf("kestrel exited with %v after %s\nstderr:\n%s", err, sig, p.stderr)
			}
			out := p.stdout.String()
			if !strings.Contains(out, "crashing\n") || !strings.Contains(out, "serving\n") || !strings.Contains(out, "got-term\n") {
				t.Fatalf("workload output %q: it must have crashed, served and received SIGTERM", out)
			}
			if !strings.Contains(p.stderr.String(), "stopping workload") {
				t.Fatalf("no graceful stop:\n%s", p.stderr)
			}
		})
	}
}

// mountinfo is a mount table (a /proc/<pid>/mountinfo file) without network
// namespace bind mounts (/run/netns/*), which this and other tests, in this
// and other packages, add and remove at any time; /run/netns is a shared
// mount, so they show up in kestrel's copied mount namespace too.
func mountinfo(t *testing.T, file string) string {
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var keep []string
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.Contains(l, " /run/netns/") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// TestPID1OutsideAGuestRefusesGuestDuties runs a bare `kestrel` as PID 1 of
// a new PID namespace that shares the host's mount namespace (so any mount
// would land on the host), and as PID 1 with /proc unmounted (which makes
// kestrel mount proc to look, then undo it). Both times kestrel must
// refuse, change nothing, and exit 2.
func TestPID1OutsideAGuestRefusesGuestDuties(t *testing.T) {
	t.Run("host mount namespace", func(t *testing.T) {
		before := mountinfo(t, "/proc/self/mountinfo")
		p := startPID1(t, []string{"--pid", "--fork"})
		err := p.wait(20 * time.Second)
		var ee *exec.ExitError
		if err == nil || !asExit(err, &ee) || ee.ExitCode() != 2 {
			t.Fatalf("exit %v, want status 2\nstderr:\n%s", err, p.stderr)
		}
		if !strings.Contains(p.stderr.String(), "pid 1 of a child PID namespace") || !strings.Contains(p.stderr.String(), "refusing guest duties") {
			t.Fatalf("stderr:\n%s", p.stderr)
		}
		if after := mountinfo(t, "/proc/self/mountinfo"); after != before {
			t.Fatalf("the host's mount table changed:\n%s\n---\n%s", before, after)
		}
	})
	t.Run("no /proc", func(t *testing.T) {
		// startPID1 appends kestrel's path: it is the shell's $0.
		p := startPID1(t, []string{"--pid", "--fork", "--mount", "--propagation", "private", "/bin/sh", "-c", `umount -l /proc && exec "$0"`})
		err := p.wait(20 * time.Second)
		var ee *exec.ExitError
		if err == nil || !asExit(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(p.stderr.String(), "pid 1 of a child PID namespace") {
			t.Fatalf("exit %v\nstderr:\n%s", err, p.stderr)
		}
	})
}

func asExit(err error, target **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	if ok {
		*target = e
	}
	return ok
}
