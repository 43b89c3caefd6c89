package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/controller/controllertest"
	"github.com/volantvm/volant/lib/server"
	"github.com/volantvm/volant/lib/store"
)

// daemon is volantd — its real controller, HTTP server and state
// database — serving its API on a unix socket, with the controller's
// in-memory runtime, network and health prober (lib/controller/
// controllertest) in place of hypervisors, taps and guests. volar talks to
// it exactly as to the real daemon: over the socket, through lib/client.
type daemon struct {
	t    *testing.T
	dir  string // data dir
	sock string
	ctl  *controller.Controller
	srv  *server.Server
	rt   *controllertest.Runtime
	nw   *controllertest.Network
	pr   *controllertest.Prober
	c    *client.Client
	ctx  context.Context

	mu   sync.Mutex
	http *http.Server
}

const testToken = "s3cret-token"

func startDaemon(t *testing.T) *daemon {
	t.Helper()
	return startDaemonWith(t, nil)
}

// startDaemonWith is startDaemon whose controller's configuration set
// changes first (nil: none).
func startDaemonWith(t *testing.T, set func(*controller.Config)) *daemon {
	t.Helper()
	dir := t.TempDir()
	// A short directory for the socket: unix socket paths have 107 bytes.
	sockDir, err := os.MkdirTemp("", "volar-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	ctx, cancel := context.WithCancel(context.Background())
	st, err := store.Open(ctx, filepath.Join(dir, "volant.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{t: t, dir: dir, sock: filepath.Join(sockDir, "volantd.sock"), rt: controllertest.NewRuntime(),
		nw: controllertest.NewNetwork(), pr: controllertest.NewProber(), ctx: ctx}
	cfg := controller.Config{Store: st, DataDir: dir, Runtime: d.rt, Network: d.nw,
		Prober: d.pr, HealthInterval: 50 * time.Millisecond, ReconcileInterval: 100 * time.Millisecond,
		ArtifactDirs: []string{dir}, // manifest() writes the artifacts there
		Logger:       slog.New(slog.DiscardHandler)}
	if set != nil {
		set(&cfg)
	}
	d.ctl, err = controller.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.ctl.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { d.ctl.Run(ctx); close(done) }()
	d.srv = server.New(d.ctl, server.Options{Token: testToken})
	d.listen()
	d.c, err = client.New(d.sock, client.Options{Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.stopListening()
		cancel()
		<-done
		st.Close()
	})
	return d
}

// listen serves the API on the socket (again, after stopListening).
func (d *daemon) listen() {
	d.t.Helper()
	os.Remove(d.sock)
	ln, err := net.Listen("unix", d.sock)
	if err != nil {
		d.t.Fatal(err)
	}
	hs := &http.Server{Handler: d.srv.Handler(false)}
	go hs.Serve(ln)
	d.mu.Lock()
	d.http = hs
	d.mu.Unlock()
}

// stopListening closes the socket and every connection, as a daemon
// restart does; the controller keeps running (and recording events).
func (d *daemon) stopListening() {
	d.mu.Lock()
	hs := d.http
	d.http = nil
	d.mu.Unlock()
	if hs != nil {
		hs.Close()
	}
}

// listenTCP serves the API on loopback TCP with the bearer token, as
// volantd --listen does.
func (d *daemon) listenTCP() string {
	d.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		d.t.Fatal(err)
	}
	hs := &http.Server{Handler: d.srv.Handler(true)}
	go hs.Serve(ln)
	d.t.Cleanup(func() { hs.Close() })
	return "http://" + ln.Addr().String()
}

func (d *daemon) env() map[string]string { return map[string]string{"VOLANT_HOST": d.sock} }

// volar runs a volar command against the daemon.
func (d *daemon) volar(args ...string) result {
	d.t.Helper()
	return runVolar(d.t, "", d.env(), args...)
}

// manifest writes a plugin's artifact and manifest and returns the
// manifest's path.
func (d *daemon) manifest(name, version, extra string) string {
	d.t.Helper()
	art := filepath.Join(d.dir, name+".cpio")
	data := []byte("initramfs of " + name)
	if err := os.WriteFile(art, data, 0o644); err != nil {
		d.t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	m := fmt.Sprintf(`{"name":%q,"version":%q,"initramfs":{"url":%q,"checksum":"sha256:%s"},
  "workload":{"entrypoint":["/bin/app"],"base_url":"http://127.0.0.1:80"},
  "resources":{"cpu_cores":1,"memory_mb":128},"health_check":{"endpoint":"/healthz"}%s}`,
		name, version, art, hex.EncodeToString(sum[:]), extra)
	p := filepath.Join(d.dir, name+".json")
	if err := os.WriteFile(p, []byte(m), 0o644); err != nil {
		d.t.Fatal(err)
	}
	return p
}

// healthy makes the guest at ip answer the health probe, as kestrel does.
func (d *daemon) healthy(ip, vm string) {
	st := controllertest.Healthy(vm)
	d.pr.Set(netip.MustParseAddr(ip), &st)
}

// serialLog appends to a VM's serial log, as the guest's console does.
func (d *daemon) serialLog(vm, text string) {
	d.t.Helper()
	p := d.ctl.SerialLog(vm)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		d.t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		d.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		d.t.Fatal(err)
	}
}

// waitVM waits (through the API) until a VM is in a state.
func (d *daemon) waitVM(name string, state api.VMState) {
	d.t.Helper()
	if _, err := d.c.WaitVM(d.ctx, name, state, 20*time.Second); err != nil {
		d.t.Fatalf("waiting for %s to be %s: %v", name, state, err)
	}
}

// waitDeployment waits until a deployment's replicas are all running.
// waitRollout waits for a deployment's update revision to reach state.
func (d *daemon) waitRollout(name string, revision int, state api.RolloutState) {
	d.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r, err := d.c.Rollout(d.ctx, name)
		if err == nil && r.Revision == revision && r.State == state {
			return
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("deployment %s: update %+v %v, want revision %d %s", name, r, err, revision, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *daemon) waitDeployment(name string, replicas int) {
	d.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		dep, err := d.c.Deployment(d.ctx, name)
		if err == nil && dep.Current == replicas && len(dep.VMs) == replicas {
			vms, err := d.c.ListVMs(d.ctx, api.VMFilter{Deployment: name})
			if err == nil && len(vms) == replicas {
				return
			}
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("deployment %s never reached %d running replicas: %+v %v", name, replicas, dep, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// masker replaces what differs between runs: times, ages, the temp dirs.
type masker struct{ repl []string }

var (
	reTime    = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)`)
	reAgo     = regexp.MustCompile(`\(\d+[smhd] ago\)`)
	reAgeCell = regexp.MustCompile(`(?m) \d+[smhd]$`)
	reVersion = regexp.MustCompile(`"(server|client|version|agent)": "[^"]*"`)
	reUptime  = regexp.MustCompile(`"uptime_ms": \d+`)
)

func (d *daemon) mask(s string) string {
	s = strings.ReplaceAll(s, d.dir, "$DATA")
	s = strings.ReplaceAll(s, d.sock, "$SOCK")
	s = reTime.ReplaceAllString(s, "$$TIME")
	s = reAgo.ReplaceAllString(s, "($$AGE ago)")
	s = reAgeCell.ReplaceAllString(s, " $$AGE")
	s = reUptime.ReplaceAllString(s, `"uptime_ms": $$N`)
	return s
}

// transcript records commands and their masked results for a golden file.
type transcript struct {
	d *daemon
	b strings.Builder
	// maskIPs hides guest addresses, for replicas created in parallel.
	maskIPs bool
}

var reGuestIP = regexp.MustCompile(`192\.168\.127\.\d+`)

// run runs volar, checks the exit status and records the result.
func (tr *transcript) run(code int, args ...string) result {
	tr.d.t.Helper()
	r := tr.d.volar(args...)
	if r.Code != code {
		tr.d.t.Fatalf("volar %s: %s\nwant exit %d", strings.Join(args, " "), r, code)
	}
	tr.record(args, r)
	return r
}

func (tr *transcript) record(args []string, r result) {
	cmd := strings.ReplaceAll(strings.Join(args, " "), tr.d.dir, "$DATA")
	out := tr.d.mask(r.String())
	if tr.maskIPs {
		out = reGuestIP.ReplaceAllString(out, "$$IP")
	}
	fmt.Fprintf(&tr.b, "$ volar %s\n%s\n", cmd, out)
}

// all runs a read-only command in table, JSON and quiet form.
func (tr *transcript) all(args ...string) {
	tr.d.t.Helper()
	tr.run(0, args...)
	tr.run(0, append([]string{"-o", "json"}, args...)...)
	tr.run(0, append([]string{"-q"}, args...)...)
}

// stream runs a following volar command in the background with its
// stdout readable while it runs; stop cancels it and returns the result.
type stream struct {
	out  *lockedBuffer
	done chan result
	stop context.CancelFunc
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (d *daemon) start(env map[string]string, args ...string) *stream {
	ctx, cancel := context.WithCancel(context.Background())
	s := &stream{out: &lockedBuffer{}, done: make(chan result, 1), stop: cancel}
	var errb lockedBuffer
	e := &cli.Env{Args: args, Stdin: strings.NewReader(""), Stdout: s.out, Stderr: &errb,
		Getenv: func(k string) string { return env[k] }}
	go func() {
		code := run(ctx, e)
		s.done <- result{Stdout: s.out.String(), Stderr: errb.String(), Code: code}
	}()
	return s
}

// waitOutput waits until the stream's stdout satisfies ok.
func (s *stream) waitOutput(t *testing.T, what string, ok func(string) bool) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		out := s.out.String()
		if ok(out) {
			return out
		}
		select {
		case r := <-s.done:
			t.Fatalf("stream ended while waiting for %s: %s", what, r)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s; stdout so far:\n%s", what, out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// end stops the stream (as Ctrl-C does) and returns its result.
func (s *stream) end(t *testing.T) result {
	t.Helper()
	s.stop()
	select {
	case r := <-s.done:
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("the command did not end when interrupted")
	}
	return result{}
}

// ended waits for the stream to end by itself.
func (s *stream) ended(t *testing.T) result {
	t.Helper()
	select {
	case r := <-s.done:
		return r
	case <-time.After(20 * time.Second):
		s.stop()
		t.Fatal("the command did not end by itself")
	}
	return result{}
}
