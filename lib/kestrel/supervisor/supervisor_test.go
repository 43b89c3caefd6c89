package supervisor

import (
	"bytes"
	"context"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/kestrel/reaper"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type recorder struct {
	mu     sync.Mutex
	states []agentapi.WorkloadState
}

func (r *recorder) add(st agentapi.WorkloadStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if n := len(r.states); n == 0 || r.states[n-1] != st.State {
		r.states = append(r.states, st.State)
	}
}

func (r *recorder) get() []agentapi.WorkloadState {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]agentapi.WorkloadState(nil), r.states...)
}

func setup(t *testing.T) *reaper.Reaper {
	t.Helper()
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("needs /bin/sh")
	}
	r := reaper.New(nil)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go r.Run(ctx)
	return r
}

func spec(t *testing.T, w manifest.Workload) Spec {
	t.Helper()
	s, err := SpecFromManifest(w)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func run(t *testing.T, s *Supervisor, ctx context.Context) {
	t.Helper()
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("supervisor did not return; status %+v", s.Status())
	}
}

func TestOnFailureRestartsThenGivesUp(t *testing.T) {
	r := setup(t)
	sp := spec(t, manifest.Workload{Entrypoint: []string{"sh", "-c", "echo run; exit 7"}, Restart: "on-failure"})
	sp.Policy.Initial, sp.Policy.Max, sp.Policy.MaxCrashes = 10*time.Millisecond, 40*time.Millisecond, 3
	out, rec := &syncBuf{}, &recorder{}
	s := New(sp, r, both(out), nil, rec.add)
	run(t, s, context.Background())
	st := s.Status()
	if st.State != agentapi.WorkloadFailed || st.Restarts != 3 || st.ExitCode == nil || *st.ExitCode != 7 {
		t.Fatalf("status %+v", st)
	}
	if !strings.Contains(st.Error, "gave up after 3 crashes") {
		t.Fatalf("error %q", st.Error)
	}
	// Give the copier a moment: output may trail the exit.
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(out.String(), "run\n") < 4 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := strings.Count(out.String(), "run\n"); n != 4 {
		t.Fatalf("ran %d times, want 4: %q", n, out.String())
	}
	want := []agentapi.WorkloadState{"running", "restarting", "starting", "running", "restarting", "starting", "running", "restarting", "starting", "running", "failed"}
	if got := rec.get(); strings.Join(states(got), ",") != strings.Join(states(want), ",") {
		t.Fatalf("states %v\nwant   %v", got, want)
	}
}

func states(s []agentapi.WorkloadState) []string {
	out := make([]string, len(s))
	for i, x := range s {
		out[i] = string(x)
	}
	return out
}

func TestOnFailureSuccessIsFinal(t *testing.T) {
	r := setup(t)
	s := New(spec(t, manifest.Workload{Entrypoint: []string{"true"}}), r, both(&syncBuf{}), nil, nil)
	run(t, s, context.Background())
	st := s.Status()
	if st.State != agentapi.WorkloadExited || st.Restarts != 0 || *st.ExitCode != 0 || st.Error != "" {
		t.Fatalf("status %+v", st)
	}
}

func TestStartFailureIsReported(t *testing.T) {
	r := setup(t)
	s := New(spec(t, manifest.Workload{Entrypoint: []string{"/no/such/program"}, Restart: "no"}), r, both(&syncBuf{}), nil, nil)
	run(t, s, context.Background())
	st := s.Status()
	if st.State != agentapi.WorkloadFailed || !strings.Contains(st.Error, "/no/such/program") {
		t.Fatalf("status %+v", st)
	}
}

func TestEnvWorkdirAndUser(t *testing.T) {
	if os.Geteuid() != 0 {
		netnstest.SkipOrFail(t, "needs root to change user")
	}
	r := setup(t)
	dir, err := os.MkdirTemp("", "kestrel-workdir-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	out := &syncBuf{}
	s := New(spec(t, manifest.Workload{
		Entrypoint: []string{"sh", "-c", `echo "foo=$FOO home=$HOME pwd=$(pwd) id=$(id -u):$(id -g) groups=$(id -G)"`},
		Env:        map[string]string{"FOO": "bar baz"},
		Workdir:    dir,
		User:       "65534:65533",
		Restart:    "no",
	}), r, both(out), nil, nil)
	run(t, s, context.Background())
	want := "foo=bar baz home=/ pwd=" + dir + " id=65534:65533 groups=65533\n"
	deadline := time.Now().Add(5 * time.Second)
	for out.String() != want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if out.String() != want {
		t.Fatalf("output %q, want %q (status %+v)", out.String(), want, s.Status())
	}
}

func TestGracefulStop(t *testing.T) {
	r := setup(t)
	s := New(spec(t, manifest.Workload{Entrypoint: []string{"sleep", "600"}, Restart: "always"}), r, both(&syncBuf{}), nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for s.Status().State != agentapi.WorkloadRunning {
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
	}()
	t0 := time.Now()
	run(t, s, ctx)
	st := s.Status()
	if st.State != agentapi.WorkloadExited || st.Signal != "SIGTERM" || time.Since(t0) > 5*time.Second {
		t.Fatalf("status %+v after %s", st, time.Since(t0))
	}
}

func TestStopEscalatesToSIGKILL(t *testing.T) {
	r := setup(t)
	// The shell ignores SIGTERM and so does its child sleep (ignored
	// dispositions survive exec): only SIGKILL ends them.
	sp := spec(t, manifest.Workload{Entrypoint: []string{"sh", "-c", `trap "" TERM; sleep 600; echo unreachable`}})
	sp.StopGrace = 300 * time.Millisecond
	s := New(sp, r, both(&syncBuf{}), nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for s.Status().State != agentapi.WorkloadRunning {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(100 * time.Millisecond) // let the trap be installed
		cancel()
	}()
	t0 := time.Now()
	run(t, s, ctx)
	took := time.Since(t0)
	st := s.Status()
	if st.Signal != "SIGKILL" || took < 300*time.Millisecond {
		t.Fatalf("status %+v after %s", st, took)
	}
}

func TestSpecFromManifest(t *testing.T) {
	s := spec(t, manifest.Workload{Entrypoint: []string{"/x"}, User: "1000", Env: map[string]string{"PATH": "/opt/bin"}})
	if s.Cred.Uid != 1000 || s.Cred.Gid != 1000 || len(s.Cred.Groups) != 0 {
		t.Fatalf("cred %+v", s.Cred)
	}
	if strings.Join(s.Env, " ") != "HOME=/ PATH=/opt/bin" || s.Dir != "/" || s.Policy.Mode != RestartOnFailure {
		t.Fatalf("spec %+v", s)
	}
	for _, bad := range []manifest.Workload{{}, {Entrypoint: []string{"/x"}, User: "root"}, {Entrypoint: []string{"/x"}, Restart: "maybe"}} {
		if _, err := SpecFromManifest(bad); err == nil {
			t.Errorf("accepted %+v", bad)
		}
	}
}

// TestLastWordsAreKept: when Run returns, everything the workload wrote,
// up to its SIGTERM handler's last line, has reached the output.
func TestLastWordsAreKept(t *testing.T) {
	r := setup(t)
	for i := 0; i < 5; i++ {
		out := &syncBuf{}
		s := New(spec(t, manifest.Workload{Entrypoint: []string{"sh", "-c", `trap 'echo bye; exit 0' TERM; echo hi; while :; do sleep 0.02; done`}}), r, both(out), nil, nil)
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			for !strings.Contains(out.String(), "hi") {
				time.Sleep(5 * time.Millisecond)
			}
			cancel()
		}()
		run(t, s, ctx)
		// (The shell may also report its sleep child's "Terminated".)
		if got := out.String(); !strings.HasPrefix(got, "hi\n") || !strings.HasSuffix(got, "bye\n") {
			t.Fatalf("run %d: output %q when Run returned", i, got)
		}
	}
}

// both sends both streams to w through one pipe.
func both(w io.Writer) Output { return Output{Stdout: w, Stderr: w} }

func TestStreamsApart(t *testing.T) {
	r := reaper.New(nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	stdout, stderr := &syncBuf{}, &syncBuf{}
	done := make(chan struct{})
	s := New(spec(t, manifest.Workload{Entrypoint: []string{"sh", "-c", "echo out1; echo err1 >&2; echo out2; echo err2 >&2"}, Restart: "no"}),
		r, Output{Stdout: stdout, Stderr: stderr}, nil, nil)
	go func() { s.Run(ctx); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("workload did not end")
	}
	if got := stdout.String(); got != "out1\nout2\n" {
		t.Errorf("stdout = %q", got)
	}
	if got := stderr.String(); got != "err1\nerr2\n" {
		t.Errorf("stderr = %q", got)
	}
}

// TestWorkloadDescriptors: the workload gets stdin, stdout and stderr and
// no descriptor of kestrel's besides, and its output streams are blocking
// (a program that does not expect EAGAIN on stdout must not see it), both
// with a pipe per stream and with one shared pipe.
func TestWorkloadDescriptors(t *testing.T) {
	r := setup(t)
	// Descriptors this test process inherited without close-on-exec are
	// the environment's, passed on to every child: not kestrel's doing.
	inherited := map[string]bool{}
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		fd, _ := strconv.Atoi(e.Name())
		if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil && flags&unix.FD_CLOEXEC == 0 {
			inherited[e.Name()] = true
		}
	}
	script := `for fd in 1 2; do grep '^flags:' /proc/self/fdinfo/$fd; done; exec ls -l /proc/self/fd`
	for name, out := range map[string]func() Output{
		"a pipe per stream": func() Output { return Output{Stdout: &syncBuf{}, Stderr: &syncBuf{}} },
		"one pipe":          func() Output { b := &syncBuf{}; return Output{Stdout: b, Stderr: b} },
	} {
		t.Run(name, func(t *testing.T) {
			o := out()
			s := New(spec(t, manifest.Workload{Entrypoint: []string{"sh", "-c", script}, Restart: "no"}), r, o, nil, nil)
			run(t, s, context.Background())
			got := o.Stdout.(*syncBuf).String()
			lines := strings.Split(strings.TrimSpace(got), "\n")
			if len(lines) < 3 {
				t.Fatalf("output %q", got)
			}
			for _, l := range lines[:2] {
				flags, err := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(l, "flags:")), 8, 32)
				if err != nil || flags&unix.O_NONBLOCK != 0 {
					t.Errorf("an output stream has flags %q (%v): want blocking", l, err)
				}
			}
			var fds []string
			for _, l := range lines[2:] {
				// "lr-x------ 1 root root 64 Dec  6 10:04 0 -> /dev/null"
				name, target, ok := strings.Cut(l, " -> ")
				if !ok {
					continue
				}
				f := strings.Fields(name)
				fd := f[len(f)-1]
				if fd == "0" || fd == "1" || fd == "2" || inherited[fd] || strings.HasPrefix(target, "/proc/") {
					continue // stdio, the environment's, ls's own directory
				}
				fds = append(fds, fd+" -> "+target)
			}
			if len(fds) > 0 {
				t.Errorf("the workload got kestrel's descriptors %v:\n%s", fds, got)
			}
		})
	}
}
