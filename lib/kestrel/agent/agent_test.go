package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/kestrel/reaper"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/testutil/netnstest"
	"github.com/volantvm/volant/lib/testutil/wait"
)

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func getStatus(t *testing.T, base string) agentapi.Status {
	t.Helper()
	resp, err := http.Get(base + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st agentapi.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	wait.Until(t, 20*time.Second, what, cond)
}

// TestAgentOnHost runs the whole agent outside a guest with busybox httpd
// as the workload: API, proxy, health, restart, reports, graceful stop.
func TestAgentOnHost(t *testing.T) {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		netnstest.SkipOrFail(t, "needs busybox (apt-get install busybox-static)")
	}
	srvDir := t.TempDir()
	os.WriteFile(filepath.Join(srvDir, "index.html"), []byte("hello from the workload\n"), 0o644)
	port := freePort(t)
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	m := &manifest.Manifest{
		Name: "web", Version: "1",
		Initramfs: &manifest.Artifact{URL: "/x.cpio"},
		Workload: manifest.Workload{
			Entrypoint: []string{bb, "httpd", "-f", "-vv", "-p", "127.0.0.1:" + strconv.Itoa(port), "-h", srvDir},
			BaseURL:    base, Restart: "always",
		},
		HealthCheck: &manifest.HealthCheck{Endpoint: "/index.html", IntervalMS: 100, TimeoutMS: 500, Retries: 2},
	}
	m.Normalize()
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var reports []agentapi.Status
	cp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var st agentapi.Status
		json.NewDecoder(r.Body).Decode(&st)
		mu.Lock()
		reports = append(reports, st)
		mu.Unlock()
	}))
	defer cp.Close()

	r := reaper.New(nil)
	rctx, stopReaper := context.WithCancel(context.Background())
	defer stopReaper()
	go r.Run(rctx)

	a := New(Config{VM: "vm1", Plugin: "web", Boot: "none", Version: "test", Listen: "127.0.0.1:0",
		ReportURL: cp.URL + agentapi.ReportPath("vm1")})
	ln, err := a.Listen()
	if err != nil {
		t.Fatal(err)
	}
	api := "http://" + ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- a.Run(ctx, ln, r, func(context.Context) (*manifest.Manifest, error) { return m, nil })
	}()
	var stopOnce sync.Once
	var runErr error
	stop := func() error {
		stopOnce.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(30 * time.Second):
				runErr = errors.New("agent did not stop within 30s")
			}
		})
		return runErr
	}
	defer stop()

	waitFor(t, "healthy", func() bool { return getStatus(t, api).Health.State == agentapi.HealthHealthy })
	resp, err := http.Get(api + "/v1/index.html")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "hello from the workload\n" {
		t.Fatalf("proxy: %d %q", resp.StatusCode, body)
	}
	st := getStatus(t, api)
	if st.VM != "vm1" || st.Workload.State != agentapi.WorkloadRunning || st.Memory == nil || st.Memory.AgentRSSKiB == 0 {
		t.Fatalf("status %+v", st)
	}
	// httpd -vv logs each request to stderr: it reaches the log ring.
	waitFor(t, "request in logs", func() bool {
		resp, err := http.Get(api + "/v1/logs")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), "index.html")
	})

	// Kill the workload: it is restarted and health recovers.
	pid := st.Workload.PID
	syscall.Kill(pid, syscall.SIGKILL)
	waitFor(t, "restart", func() bool {
		s := getStatus(t, api)
		return s.Workload.Restarts == 1 && s.Workload.State == agentapi.WorkloadRunning && s.Workload.PID != pid
	})
	if s := getStatus(t, api); s.Workload.Signal != "SIGKILL" {
		t.Fatalf("last exit not recorded: %+v", s.Workload)
	}
	waitFor(t, "healthy again", func() bool { return getStatus(t, api).Health.State == agentapi.HealthHealthy })
	newPID := getStatus(t, api).Workload.PID

	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(newPID, 0); err == nil {
		t.Fatalf("workload %d still running after stop", newPID)
	}
	mu.Lock()
	defer mu.Unlock()
	var states []string
	for _, r := range reports {
		states = append(states, string(r.Workload.State)+"/"+string(r.Health.State))
	}
	joined := strings.Join(states, " ")
	for _, want := range []string{"running/healthy", "restarting/", "exited/"} {
		if !strings.Contains(joined, want) {
			t.Fatalf("reports %s lack %s", joined, want)
		}
	}
	if last := reports[len(reports)-1]; last.Workload.State != agentapi.WorkloadExited {
		t.Fatalf("last report %s", states[len(states)-1])
	}
}

func TestLoadFailureIsReturnedAndShown(t *testing.T) {
	a := New(Config{Listen: "127.0.0.1:0"})
	ln, err := a.Listen()
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- a.Run(context.Background(), ln, reaper.New(nil), func(context.Context) (*manifest.Manifest, error) {
			<-release
			return nil, io.ErrUnexpectedEOF
		})
	}()
	api := "http://" + ln.Addr().String()
	if st := getStatus(t, api); st.Workload.State != agentapi.WorkloadStarting {
		t.Fatalf("status while loading: %+v", st)
	}
	close(release)
	if err := <-done; err != io.ErrUnexpectedEOF {
		t.Fatalf("err %v", err)
	}
}

// TestAfterStart: the hook runs once: when the health check first passes,
// or (no check) when the workload's first start had its outcome, whether it
// runs or cannot start at all, or when the wait for health runs out. The
// guest's late boot work (the power button's modules) happens either way.
func TestAfterStart(t *testing.T) {
	ok := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer ok.Close()
	closed := "http://127.0.0.1:" + strconv.Itoa(freePort(t))
	sleep := []string{"/bin/sh", "-c", "sleep 0.2; exit 3"}
	for _, tc := range []struct {
		name       string
		entrypoint []string
		restart    string
		baseURL    string // with a health check when set
		wait       time.Duration
		state      agentapi.WorkloadState
		health     agentapi.HealthState
	}{
		{"no check, restarting workload", sleep, "always", "", 0, agentapi.WorkloadRunning, ""},
		{"no check, missing executable", []string{"/nonexistent/app"}, "no", "", 0, agentapi.WorkloadFailed, ""},
		{"check passes", sleep, "always", ok.URL, time.Minute, "", agentapi.HealthHealthy},
		{"check never passes", sleep, "always", closed, 300 * time.Millisecond, "", agentapi.HealthUnknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &manifest.Manifest{Name: "app", Version: "1", Initramfs: &manifest.Artifact{URL: "/x.cpio"},
				Workload: manifest.Workload{Entrypoint: tc.entrypoint, Restart: tc.restart, BaseURL: tc.baseURL}}
			if tc.baseURL != "" {
				m.HealthCheck = &manifest.HealthCheck{Endpoint: "/", IntervalMS: 100, TimeoutMS: 500, Retries: 100}
			}
			m.Normalize()
			r := reaper.New(nil)
			rctx, stopReaper := context.WithCancel(context.Background())
			defer stopReaper()
			go r.Run(rctx)
			first := make(chan agentapi.Status, 1)
			var mu sync.Mutex
			n := 0
			var a *Agent
			a = New(Config{Listen: "127.0.0.1:0", AfterStartWait: tc.wait, AfterStart: func() {
				mu.Lock()
				n++
				if n == 1 {
					first <- a.Status()
				}
				mu.Unlock()
			}})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				done <- a.Run(ctx, nil, r, func(context.Context) (*manifest.Manifest, error) { return m, nil })
			}()
			var st agentapi.Status
			select {
			case st = <-first:
			case <-time.After(10 * time.Second):
				t.Fatal("AfterStart never ran")
			}
			time.Sleep(700 * time.Millisecond) // a restart or two, more checks
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if n != 1 {
				t.Fatalf("AfterStart ran %d times", n)
			}
			if tc.state != "" && st.Workload.State != tc.state {
				t.Fatalf("AfterStart ran with the workload %q; want %q", st.Workload.State, tc.state)
			}
			if tc.health != "" && st.Health.State != tc.health {
				t.Fatalf("AfterStart ran with health %+v; want %q", st.Health, tc.health)
			}
		})
	}
}

// TestWorkloadOrAPIFirst: with the manifest known before Run (it came with
// the boot) the workload has started when the API begins to serve and the
// load function is not called; without it the API serves first, while the
// manifest loads. Either way the API answers and the first report says
// the workload runs.
func TestWorkloadOrAPIFirst(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	m := &manifest.Manifest{Name: "w", Version: "1", Initramfs: &manifest.Artifact{URL: "/x.cpio"},
		Workload: manifest.Workload{Entrypoint: []string{sh, "-c", "sleep 60"}}}
	m.Normalize()
	r := reaper.New(nil)
	rctx, stopReaper := context.WithCancel(context.Background())
	defer stopReaper()
	go r.Run(rctx)
	for _, preloaded := range []bool{true, false} {
		t.Run(map[bool]string{true: "preloaded", false: "loaded"}[preloaded], func(t *testing.T) {
			var mu sync.Mutex
			var reports []agentapi.Status
			cp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				var st agentapi.Status
				json.NewDecoder(r.Body).Decode(&st)
				mu.Lock()
				reports = append(reports, st)
				mu.Unlock()
			}))
			defer cp.Close()
			var a *Agent
			atReady := make(chan agentapi.WorkloadState, 1)
			cfg := Config{VM: "vm1", Listen: "127.0.0.1:0", ReportURL: cp.URL + agentapi.ReportPath("vm1"),
				Ready: func() { atReady <- a.Status().Workload.State }}
			loaded := make(chan struct{})
			load := func(context.Context) (*manifest.Manifest, error) {
				if preloaded {
					t.Error("load was called although the manifest was known")
				}
				<-loaded
				return m, nil
			}
			if preloaded {
				cfg.Manifest = m
				close(loaded)
			}
			a = New(cfg)
			ln, err := a.Listen()
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- a.Run(ctx, ln, r, load) }()
			var st agentapi.WorkloadState
			select {
			case st = <-atReady:
			case <-time.After(20 * time.Second):
				t.Fatal("the API never served")
			}
			if preloaded && st != agentapi.WorkloadRunning {
				t.Errorf("the API served while the workload was %q, want it started first", st)
			}
			if !preloaded && st != agentapi.WorkloadStarting {
				t.Errorf("the API served only once the workload was %q, want while the manifest loads", st)
			}
			if !preloaded {
				close(loaded)
			}
			base := "http://" + ln.Addr().String()
			waitFor(t, "the workload to run", func() bool { return getStatus(t, base).Workload.State == agentapi.WorkloadRunning })
			waitFor(t, "a report of the running workload", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(reports) > 0 && reports[len(reports)-1].Workload.State == agentapi.WorkloadRunning
			})
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestPreloadedAPIWaitsForWorkloadUp: with the manifest known at boot and
// a health check, the API and the reports begin once the check first
// passes, not while the workload starts; a request made meanwhile waits
// on the open listener and is answered then. A check that never passes
// holds them back only for AfterStartWait.
func TestPreloadedAPIWaitsForWorkloadUp(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	r := reaper.New(nil)
	rctx, stopReaper := context.WithCancel(context.Background())
	defer stopReaper()
	go r.Run(rctx)
	for _, healthy := range []bool{true, false} {
		t.Run(map[bool]string{true: "check passes", false: "check never passes"}[healthy], func(t *testing.T) {
			var up sync.Mutex
			up.Lock() // the workload answers 503 until unlocked
			workload := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				if !up.TryLock() {
					w.WriteHeader(http.StatusServiceUnavailable)
					return
				}
				up.Unlock()
			}))
			defer workload.Close()
			var reports sync.Map
			cp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				reports.Store("any", true)
			}))
			defer cp.Close()
			m := &manifest.Manifest{Name: "w", Version: "1", Initramfs: &manifest.Artifact{URL: "/x.cpio"},
				Workload:    manifest.Workload{Entrypoint: []string{sh, "-c", "sleep 60"}, BaseURL: workload.URL},
				HealthCheck: &manifest.HealthCheck{Endpoint: "/", IntervalMS: 100, TimeoutMS: 500, Retries: 100}}
			m.Normalize()
			var a *Agent
			ready := make(chan agentapi.Status, 1)
			wait := time.Minute
			if !healthy {
				wait = 600 * time.Millisecond
			}
			a = New(Config{VM: "vm1", Listen: "127.0.0.1:0", Manifest: m, AfterStartWait: wait,
				ReportURL: cp.URL + agentapi.ReportPath("vm1"), Ready: func() { ready <- a.Status() }})
			ln, err := a.Listen()
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			t0 := time.Now()
			go func() { done <- a.Run(ctx, ln, r, nil) }()
			early := make(chan agentapi.Status, 1)
			go func() {
				var st agentapi.Status
				if resp, err := http.Get("http://" + ln.Addr().String() + "/healthz"); err == nil {
					json.NewDecoder(resp.Body).Decode(&st)
					resp.Body.Close()
				}
				early <- st
			}()
			waitFor(t, "the workload to run", func() bool { return a.Status().Workload.State == agentapi.WorkloadRunning })
			time.Sleep(300 * time.Millisecond) // several failing checks
			select {
			case st := <-ready:
				t.Fatalf("the API served while the workload was not up: %+v", st)
			case st := <-early:
				t.Fatalf("a request was answered while the workload was not up: %+v", st)
			default:
			}
			if _, ok := reports.Load("any"); ok {
				t.Fatal("a report went out while the workload was not up")
			}
			if healthy {
				up.Unlock()
			}
			var st agentapi.Status
			select {
			case st = <-ready:
			case <-time.After(20 * time.Second):
				t.Fatal("the API never served")
			}
			if healthy && st.Health.State != agentapi.HealthHealthy {
				t.Fatalf("the API served with health %+v, want healthy", st.Health)
			}
			if !healthy && (st.Health.State != agentapi.HealthUnknown || time.Since(t0) < wait) {
				t.Fatalf("the API served after %s with health %+v, want unknown after %s", time.Since(t0), st.Health, wait)
			}
			select {
			case st := <-early:
				if st.Workload.State != agentapi.WorkloadRunning {
					t.Fatalf("the early request got %+v", st)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("the early request was never answered")
			}
			waitFor(t, "a report", func() bool { _, ok := reports.Load("any"); return ok })
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestListenPlainTCP: the API's socket is plain TCP whatever the
// multipathtcp GODEBUG says (Go's listeners default to Multipath TCP),
// and choosing it does not consult that setting: a non-default GODEBUG
// consulted makes the runtime build its metrics table at boot.
func TestListenPlainTCP(t *testing.T) {
	for _, godebug := range []string{"", "multipathtcp=0"} {
		t.Run("GODEBUG="+godebug, func(t *testing.T) {
			t.Setenv("GODEBUG", godebug)
			before := nonDefaultMPTCP()
			a := New(Config{Listen: "127.0.0.1:0"})
			ln, err := a.Listen()
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			// The protocol of an accepted connection is the listener's.
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			conn, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			raw, err := conn.(*net.TCPConn).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			proto, serr := -1, error(nil)
			if err := raw.Control(func(fd uintptr) {
				proto, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PROTOCOL)
			}); err != nil || serr != nil {
				t.Fatal(err, serr)
			}
			if proto != syscall.IPPROTO_TCP {
				t.Errorf("the API's socket has protocol %d, want plain TCP (%d)", proto, syscall.IPPROTO_TCP)
			}
			if n := nonDefaultMPTCP() - before; n != 0 {
				t.Errorf("Listen consulted the multipathtcp GODEBUG (%d non-default uses)", n)
			}
		})
	}
}

func nonDefaultMPTCP() uint64 {
	s := []metrics.Sample{{Name: "/godebug/non-default-behavior/multipathtcp:events"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}
