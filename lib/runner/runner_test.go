package runner_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/initramfs"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/runner"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/vmm"
	"github.com/volantvm/volant/lib/vmm/cloudhypervisor"
	"github.com/volantvm/volant/lib/vmm/cloudhypervisor/chtest"
	"github.com/volantvm/volant/lib/vmm/jail"
	"github.com/volantvm/volant/lib/vmm/supervise"
)

// The test binary is also the fake cloud-hypervisor.
func TestMain(m *testing.M) {
	if chtest.Impersonating() {
		os.Exit(chtest.Main(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func getenv(env []string) func(string) string {
	m := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return func(k string) string { return m[k] }
}

// TestEnvironRoundTrip: what a detached run gets in its environment is
// what volant-launch reads back, and the old data directory name still
// works.
func TestEnvironRoundTrip(t *testing.T) {
	o := launch.Options{KernelDir: "/k", Kestrel: "/bin/kestrel", RunRoot: "/r", StateDir: "/d", CacheDir: "/c",
		Jail: launch.JailOptions{Insecure: true, UIDs: jail.Range{First: 5000, Count: 10}, Cgroup: "unit", OverheadMB: 50}}
	env := runner.Environ(o)
	if !strings.HasPrefix(env[0], "PATH=") {
		t.Fatalf("no PATH first: %q", env)
	}
	if got := runner.OptionsFromEnv(getenv(env)); got.KernelDir != o.KernelDir || got.Kestrel != o.Kestrel ||
		got.RunRoot != o.RunRoot || got.StateDir != o.StateDir || got.CacheDir != o.CacheDir || got.Jail != o.Jail {
		t.Fatalf("OptionsFromEnv(Environ(%+v)) = %+v", o, got)
	}
	if got := runner.OptionsFromEnv(getenv([]string{"VOLANT_STATE_DIR=/old"})); got.StateDir != "/old" {
		t.Fatalf("VOLANT_STATE_DIR: StateDir %q", got.StateDir)
	}
	for _, kv := range env {
		if strings.HasPrefix(kv, "VOLANT_STATE_DIR=") {
			t.Fatalf("Environ writes the old name: %q", env)
		}
	}
}

// TestLastError: a recorded error comes back with its code, message and
// details; a run that ended well after an earlier failure has none; no
// file is no error.
func TestLastError(t *testing.T) {
	o := launch.Options{StateDir: t.TempDir()}
	if err := runner.ReadLastError(o, "web1"); err != nil {
		t.Fatalf("error from no file: %v", err)
	}
	cause := fmt.Errorf("running web1: %w", apierr.New(apierr.Unavailable, "the guest kernel panicked (see serial.log)").With("serial_log", "x"))
	if err := runner.WriteLastError(o, "web1", cause); err != nil {
		t.Fatal(err)
	}
	err := runner.ReadLastError(o, "web1")
	if !apierr.Is(err, apierr.Unavailable) || err.Error() != "running web1: the guest kernel panicked (see serial.log)" ||
		apierr.From(err).Details["serial_log"] != "x" {
		t.Fatalf("got %v", err)
	}
	if runner.ReadLastError(o, "web2") != nil {
		t.Fatal("another VM's error")
	}
	// The file is one whole JSON document in the VM's directory.
	b, _ := os.ReadFile(filepath.Join(o.StateDir, "vms", "web1", "last-error.json"))
	var doc map[string]json.RawMessage
	if json.Unmarshal(b, &doc) != nil || doc["at"] == nil || doc["error"] == nil {
		t.Fatalf("last-error.json: %s", b)
	}
	// Root's and its group's, as the VM's logs (docs/security.md).
	if fi, err := os.Stat(runner.LastErrorPath(o, "web1")); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("last-error.json: %v %v, want mode 0640", fi, err)
	}
	if ents, _ := os.ReadDir(filepath.Dir(runner.LastErrorPath(o, "web1"))); len(ents) != 1 {
		t.Fatalf("temp files left beside it: %v", ents)
	}
	if err := runner.WriteLastError(o, "web1", nil); err != nil {
		t.Fatal(err)
	}
	if err := runner.ReadLastError(o, "web1"); err != nil {
		t.Fatalf("a run that ended well still reports %v", err)
	}
	if err := runner.WriteLastError(o, "web1", nil); err != nil {
		t.Fatalf("clearing twice: %v", err)
	}
}

// kvmHost pretends the host has a KVM that runs stock kernels, so the
// Cloud Hypervisor backend is usable with the fake binary.
var kvmHost = fstest.MapFS{"dev/kvm": &fstest.MapFile{}}

type world struct {
	opts       launch.Options
	spec       launch.Spec
	badSpec    launch.Spec
	specPath   string
	dir        string
	kernel     string
	pluginPath string
}

// newWorld is a kernel stand-in (an ELF: this binary), an initramfs plugin
// and its manifest, with the fake Cloud Hypervisor as the only backend.
func newWorld(t *testing.T) *world {
	t.Helper()
	dir := t.TempDir()
	self, _ := os.Executable()
	b, _ := os.ReadFile(self)
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, b, 0o644)
	plugin := filepath.Join(dir, "plugin.cpio.gz")
	ib := initramfs.New()
	ib.File("/lib/modules/6.1.0-test/modules.dep", 0o644, []byte("\n"))
	ib.File("/bin/app", 0o755, []byte("app"))
	if err := ib.WriteFile(plugin, initramfs.Gzip); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(plugin)
	sum := sha256.Sum256(data)
	manifest := func(sum string) json.RawMessage {
		return json.RawMessage(fmt.Sprintf(`{"name":"web","version":"1.0.0","initramfs":{"url":%q,"checksum":"sha256:%s"},"workload":{"entrypoint":["/bin/app"]},"resources":{"cpu_cores":1,"memory_mb":128}}`, plugin, sum))
	}
	w := &world{
		dir: dir, kernel: kernel, pluginPath: plugin,
		opts: launch.Options{
			RunRoot: filepath.Join(dir, "run"), StateDir: filepath.Join(dir, "state"), CacheDir: filepath.Join(dir, "cache"),
			HostRoot: kvmHost,
			Backends: []vmm.Backend{&cloudhypervisor.Backend{Binary: chtest.Binary(t), HostRoot: kvmHost}},
		},
		spec:    launch.Spec{Name: "web1", Manifest: manifest(hex.EncodeToString(sum[:])), Kernel: kernel, StopTimeoutMS: 5000},
		badSpec: launch.Spec{Name: "web1", Manifest: manifest(strings.Repeat("0", 64)), Kernel: kernel},
	}
	w.specPath = filepath.Join(dir, "spec.json")
	js, _ := json.Marshal(w.spec)
	os.WriteFile(w.specPath, js, 0o600)
	return w
}

// foreground runs the VM in this process as `volant-launch run` would;
// the returned function stops it (as SIGTERM does) and returns how it
// ended.
func (w *world) foreground(t *testing.T) func() (*launch.Result, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	type out struct {
		res *launch.Result
		err error
	}
	done := make(chan out, 1)
	go func() {
		res, err := runner.Foreground(ctx, w.spec, w.opts, launch.RunOptions{ReadyTimeout: 20 * time.Second})
		done <- out{res, err}
	}()
	var once sync.Once
	var o out
	stop := func() (*launch.Result, error) {
		once.Do(func() { cancel(); o = <-done })
		return o.res, o.err
	}
	t.Cleanup(func() { stop() })
	r := &runner.Runner{Options: w.opts}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if st, err := r.Inspect(context.Background(), "web1"); err == nil && st.Answering() {
			return stop
		}
		select {
		case o := <-done:
			t.Fatalf("the run ended before it answered: %+v %v", o.res, o.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the run never answered")
		}
	}
}

// starterFunc is a Starter that records its calls.
type starterFunc struct {
	mu    sync.Mutex
	calls []string
	start func(name string) (<-chan struct{}, error)
}

func (s *starterFunc) Start(_ context.Context, name, _ string) (<-chan struct{}, error) {
	s.mu.Lock()
	s.calls = append(s.calls, "start "+name)
	s.mu.Unlock()
	if s.start == nil {
		return nil, apierr.New(apierr.Internal, "this test starts nothing")
	}
	return s.start(name)
}

func (s *starterFunc) Stop(_ context.Context, name string) (bool, error) {
	s.mu.Lock()
	s.calls = append(s.calls, "stop "+name)
	s.mu.Unlock()
	return false, nil
}

func (s *starterFunc) Name() string { return "test" }

func (s *starterFunc) taken() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.calls
	s.calls = nil
	return c
}

// TestForegroundRecordsHowItEnded: a run refused for a checksum records
// CHECKSUM_MISMATCH; a second run refused because the VM already runs
// does not touch the record of the one that runs; a run that ends well
// leaves none.
func TestForegroundRecordsHowItEnded(t *testing.T) {
	w := newWorld(t)
	r := &runner.Runner{Options: w.opts}
	if _, err := runner.Foreground(context.Background(), w.badSpec, w.opts, launch.RunOptions{}); !apierr.Is(err, apierr.ChecksumMismatch) {
		t.Fatalf("bad checksum: %v", err)
	}
	if err := r.LastError("web1"); !apierr.Is(err, apierr.ChecksumMismatch) || apierr.From(err).Details["role"] != "initramfs" {
		t.Fatalf("LastError after a refused run: %v", err)
	}

	stop := w.foreground(t)
	if err := r.LastError("web1"); err != nil {
		t.Fatalf("a running VM reports the earlier run's error: %v", err)
	}
	_, err := runner.Foreground(context.Background(), w.spec, w.opts, launch.RunOptions{})
	if !apierr.Is(err, apierr.Conflict) {
		t.Fatalf("a second run of a running VM: %v, want CONFLICT", err)
	}
	if err := r.LastError("web1"); err != nil {
		t.Fatalf("the refused second run wrote the running VM's last error: %v", err)
	}
	res, err := stop()
	if err != nil || res.Ended != "stopped" {
		t.Fatalf("stop: %+v %v", res, err)
	}
	if err := r.LastError("web1"); err != nil {
		t.Fatalf("a run that ended well left %v", err)
	}
}

// TestRunnerAdoptsControlsAndStops: a VM that already runs is adopted, not
// started again; pause, resume and counters reach its hypervisor; Stop
// ends it and Wait returns.
func TestRunnerAdoptsControlsAndStops(t *testing.T) {
	w := newWorld(t)
	disk := filepath.Join(w.dir, "data.img")
	os.WriteFile(disk, make([]byte, 1<<20), 0o644)
	w.spec.Disks = []vmm.Disk{{Path: disk}}
	st := &starterFunc{}
	r := &runner.Runner{Options: w.opts, Starter: st}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := r.Inspect(ctx, "web1"); !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("Inspect of no run: %v", err)
	}
	if _, err := r.Pause(ctx, "web1"); !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("Pause of no run: %v", err)
	}
	ended := w.foreground(t)
	info, adopted, err := r.Start(ctx, "web1", w.specPath)
	if err != nil || !adopted || !info.Answering() || info.Name != "web1" {
		t.Fatalf("Start of a running VM: %+v adopted %v, %v", info, adopted, err)
	}
	if c := st.taken(); len(c) != 0 {
		t.Fatalf("adopting called the starter: %v", c)
	}
	if info.SupervisorID().Pid != os.Getpid() || !info.VMMID().Alive() {
		t.Fatalf("identities %v %v", info.SupervisorID(), info.VMMID())
	}
	if runs, err := r.Runs(ctx); err != nil || len(runs) != 1 || runs[0] != "web1" {
		t.Fatalf("Runs: %v %v", runs, err)
	}

	p, err := r.Pause(ctx, "web1")
	if err != nil || p.State != vmm.StatePaused {
		t.Fatalf("Pause: %+v %v", p, err)
	}
	if s, _ := r.Inspect(ctx, "web1"); s.State != vmm.StatePaused {
		t.Fatalf("after Pause the VMM says %s", s.State)
	}
	if p, err := r.Resume(ctx, "web1"); err != nil || p.State != vmm.StateRunning {
		t.Fatalf("Resume: %+v %v", p, err)
	}
	c, err := r.Counters(ctx, "web1")
	if err != nil || c.Name != "web1" || c.VMM != "cloud-hypervisor" || len(c.Counters) != 1 || c.Counters["_disk0"]["read_bytes"] == 0 {
		t.Fatalf("Counters: %+v %v", c, err)
	}

	// The supervisor here is this test process, which Wait would wait for
	// forever: wait for the hypervisor, as Wait does for a run that has
	// not recorded its supervisor.
	vmmOnly := *info
	vmmOnly.Supervisor = nil
	waited := make(chan error, 1)
	go func() { waited <- r.Wait(context.Background(), &vmmOnly) }()
	select {
	case err := <-waited:
		t.Fatalf("Wait returned while the VM runs: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	method, err := r.Stop(ctx, "web1", 5*time.Second)
	if err != nil || method != supervise.StoppedPowerButton {
		t.Fatalf("Stop: %q %v", method, err)
	}
	if c := st.taken(); len(c) != 1 || c[0] != "stop web1" {
		t.Fatalf("Stop asked the starter %v", c)
	}
	// The VM powered off; the foreground run ends by itself.
	if res, err := ended(); err != nil || res.Ended != "poweroff" {
		t.Fatalf("the foreground run: %+v %v", res, err)
	}
	select {
	case err := <-waited:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return after the run ended")
	}
	if m, err := r.Stop(ctx, "web1", time.Second); err != nil || m != "not_running" {
		t.Fatalf("Stop again: %q %v", m, err)
	}
}

// TestRunnerStartsDetachedAndReportsItsError starts a real `volant-launch
// run` process detached, with QEMU as the hypervisor and a file that is no
// kernel: QEMU exits at once, volant-launch records why, and Start returns
// that error (code and details), not a guess from a log.
func TestRunnerStartsDetachedAndReportsItsError(t *testing.T) {
	guesttest.QEMU(t)
	if testing.Short() {
		t.Skip("builds and runs volant-launch")
	}
	w := newWorld(t)
	w.opts.Backends, w.opts.HostRoot = nil, nil
	spec := w.spec
	spec.VMM, spec.Accel = "qemu", vmm.AccelTCG
	js, _ := json.Marshal(spec)
	os.WriteFile(w.specPath, js, 0o600)
	d := &runner.Detached{Launcher: guesttest.Command(t, "volant-launch"), Options: w.opts, ReadyTimeout: 20 * time.Second}
	r := &runner.Runner{Options: w.opts, Starter: d, StartTimeout: 60 * time.Second}
	_, _, err := r.Start(context.Background(), "web1", w.specPath)
	e := apierr.From(err)
	if e == nil || e.Code != apierr.Unavailable || !strings.Contains(e.Message, "qemu exited while starting") {
		log, _ := os.ReadFile(runner.LaunchLogPath(w.opts, "web1"))
		t.Fatalf("Start: %v, want the run's own UNAVAILABLE error\nlaunch.log:\n%s", err, log)
	}
	if strings.Contains(e.Message, "ended before its hypervisor answered") {
		t.Fatalf("Start guessed instead of reading the run's error: %v", err)
	}
	log, _ := os.ReadFile(runner.LaunchLogPath(w.opts, "web1"))
	if !strings.Contains(string(log), runner.LaunchMarker+" web1") {
		t.Fatalf("launch.log has no start marker for people:\n%s", log)
	}
	if _, err := os.Stat(filepath.Join(w.opts.RunRoot, "web1")); err == nil {
		t.Fatal("the failed run left its run dir")
	}
}
