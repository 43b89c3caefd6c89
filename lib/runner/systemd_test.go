package runner_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/unit"
	"github.com/godbus/dbus/v5"

	systemdunits "github.com/volantvm/volant/contrib/systemd"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/runner"
	"github.com/volantvm/volant/lib/runner/systemd"
	"github.com/volantvm/volant/lib/testutil/netnstest"
	"github.com/volantvm/volant/lib/vmm/jail"
)

// fakeSystemd is systemd's Manager object as systemd.Starter uses it: jobs
// for StartUnit and StopUnit that end, a moment after the call returns,
// with a JobRemoved signal, as systemd's do. It serves on a real D-Bus
// daemon the test starts (PID 1 here is not systemd, and there is no
// system bus), so the runner's whole path runs: dial, authenticate, call,
// match the job's signal.
type fakeSystemd struct {
	conn *dbus.Conn

	mu     sync.Mutex
	calls  []string
	failed map[string]bool // units whose jobs end "failed"
	jobs   uint32
}

const systemdPath = dbus.ObjectPath("/org/freedesktop/systemd1")

func (f *fakeSystemd) job(method, unit string) dbus.ObjectPath {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, method+" "+unit)
	f.jobs++
	id := f.jobs
	p := dbus.ObjectPath(fmt.Sprintf("/org/freedesktop/systemd1/job/%d", id))
	result := "done"
	if f.failed[unit] {
		result = "failed"
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		f.conn.Emit(systemdPath, "org.freedesktop.systemd1.Manager.JobRemoved", id, p, unit, result)
	}()
	return p
}

func (f *fakeSystemd) StartUnit(unit, mode string) (dbus.ObjectPath, *dbus.Error) {
	return f.job("StartUnit/"+mode, unit), nil
}

func (f *fakeSystemd) StopUnit(unit, mode string) (dbus.ObjectPath, *dbus.Error) {
	return f.job("StopUnit/"+mode, unit), nil
}

// unitProperty is one (sv) of SetUnitProperties' a(sv).
type unitProperty struct {
	Name  string
	Value dbus.Variant
}

func (f *fakeSystemd) SetUnitProperties(unit string, runtime bool, props []unitProperty) *dbus.Error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var kv []string
	for _, p := range props {
		kv = append(kv, fmt.Sprintf("%s=%v", p.Name, p.Value.Value()))
	}
	f.calls = append(f.calls, fmt.Sprintf("SetUnitProperties %s runtime=%v %s", unit, runtime, strings.Join(kv, ",")))
	return nil
}

func (f *fakeSystemd) ResetFailedUnit(unit string) *dbus.Error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "ResetFailedUnit "+unit)
	return nil
}

func (f *fakeSystemd) takeCalls() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := strings.Join(f.calls, "; ")
	f.calls = nil
	return s
}

// startBus runs a private dbus-daemon and points the system bus address
// at it.
func startBus(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("dbus-daemon"); err != nil {
		netnstest.SkipOrFail(t, "dbus-daemon not installed (apt-get install dbus)")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "bus")
	conf := filepath.Join(dir, "bus.conf")
	os.WriteFile(conf, []byte(`<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:path=`+sock+`</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
`), 0o644)
	cmd := exec.Command("dbus-daemon", "--nofork", "--nopidfile", "--config-file="+conf)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dbus-daemon did not listen: %s", stderr.String())
		}
	}
	addr := "unix:path=" + sock
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", addr)
	return addr
}

func newFakeSystemd(t *testing.T, addr string) *fakeSystemd {
	t.Helper()
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	f := &fakeSystemd{conn: conn, failed: map[string]bool{}}
	if err := conn.Export(f, systemdPath, "org.freedesktop.systemd1.Manager"); err != nil {
		t.Fatal(err)
	}
	if reply, err := conn.RequestName("org.freedesktop.systemd1", dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("owning org.freedesktop.systemd1: %v (reply %v)", err, reply)
	}
	return f
}

// TestSystemdRunnerOverDBus: the systemd runner starts and stops the VM's
// volant-vm@ unit through the Manager API, resets a failed unit and sets
// the VM's limits (the jail's: guest memory + VMM overhead, tasks, CPU,
// plus volant-launch's share) as runtime properties before a start, waits
// for each job's end, and reports a failed job or a missing bus as
// UNAVAILABLE with the unit named.
func TestSystemdRunnerOverDBus(t *testing.T) {
	addr := startBus(t)
	sd := newFakeSystemd(t, addr)
	w := newWorld(t)
	r := systemd.Starter{Options: w.opts}
	r.Options.Jail.OverheadMB = 100
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	if _, err := r.Start(ctx, "web1", w.specPath); err != nil {
		t.Fatal(err)
	}
	// 128 MiB of guest memory + 100 + 64 for volant-launch; 256+1 tasks
	// for the VMM + 64; one vCPU: weight 100, 1.5 cores.
	props := "MemoryAccounting=true,MemoryMax=306184192,TasksAccounting=true,TasksMax=321,CPUWeight=100,CPUQuotaPerSecUSec=1500000"
	if got, want := sd.takeCalls(), "ResetFailedUnit volant-vm@web1.service; SetUnitProperties volant-vm@web1.service runtime=true "+props+"; StartUnit/replace volant-vm@web1.service"; got != want {
		t.Fatalf("start called %q; want %q", got, want)
	}
	// A spec that cannot run starts nothing.
	if _, err := r.Start(ctx, "web1", filepath.Join(t.TempDir(), "none.json")); err == nil || strings.Contains(sd.takeCalls(), "StartUnit") {
		t.Fatalf("a missing spec: %v", err)
	}
	ok, err := r.Stop(ctx, "web1")
	if err != nil || !ok {
		t.Fatalf("stop: %v, %v", ok, err)
	}
	if got, want := sd.takeCalls(), "StopUnit/replace volant-vm@web1.service"; got != want {
		t.Fatalf("stop called %q; want %q", got, want)
	}

	sd.mu.Lock()
	sd.failed["volant-vm@bad.service"] = true
	sd.mu.Unlock()
	_, err = r.Start(ctx, "bad", w.specPath)
	if !apierr.Is(err, apierr.Unavailable) || !strings.Contains(err.Error(), "job failed") || !strings.Contains(err.Error(), "journalctl -u volant-vm@bad.service") {
		t.Fatalf("a failed start job gave %v", err)
	}
	if _, err := r.Stop(ctx, "bad"); !apierr.Is(err, apierr.Unavailable) {
		t.Fatalf("a failed stop job gave %v", err)
	}

	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path="+filepath.Join(t.TempDir(), "none"))
	if _, err := r.Start(ctx, "web1", w.specPath); !apierr.Is(err, apierr.Unavailable) || !strings.Contains(err.Error(), "D-Bus") {
		t.Fatalf("no bus gave %v", err)
	}
}

// unitEnvironment is the environment systemd gives volant-vm@.service's
// ExecStart: its Environment= assignments, then the files its
// EnvironmentFile= names (which override them; a leading "-" lets a file
// be missing), with envFile read in place of the runner's
// SystemdEnvFile. It fails the test if the unit names no such file.
func unitEnvironment(t *testing.T, envFile string) map[string]string {
	t.Helper()
	f, err := systemdunits.Units.Open("volant-vm@.service")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	opts, err := unit.DeserializeOptions(f)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	var files []string
	for _, o := range opts {
		if o.Section != "Service" {
			continue
		}
		switch o.Name {
		case "Environment":
			for _, kv := range strings.Fields(o.Value) {
				k, v, _ := strings.Cut(kv, "=")
				env[k] = v
			}
		case "EnvironmentFile":
			files = append(files, o.Value)
		}
	}
	found := false
	for _, p := range files {
		optional := strings.HasPrefix(p, "-")
		p = strings.TrimPrefix(p, "-")
		if p != runner.SystemdEnvFile {
			t.Fatalf("the unit reads %s, which volantd does not write", p)
		}
		found = true
		b, err := os.ReadFile(envFile)
		if err != nil {
			if optional && os.IsNotExist(err) {
				continue
			}
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if line = strings.TrimSpace(line); line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			k, v, _ := strings.Cut(line, "=")
			env[k] = v
		}
	}
	if !found {
		t.Errorf("volant-vm@.service has no EnvironmentFile=-%s: volantd's settings do not reach its volant-launch", runner.SystemdEnvFile)
	}
	return env
}

// A custom --vmm-uids (and --insecure-vmm, --vmm-overhead-mb) reaches the
// volant-launch of each volant-vm@ unit: the runner writes them to the
// file the unit's EnvironmentFile= names before each start, and the
// environment systemd builds from the unit and that file gives
// volant-launch (runner.OptionsFromEnv, as its main reads it) the range,
// while the unit's own VOLANT_VMM_CGROUP=unit stays.
func TestSystemdUnitGetsVMMUIDs(t *testing.T) {
	addr := startBus(t)
	newFakeSystemd(t, addr)
	w := newWorld(t)
	envFile := filepath.Join(t.TempDir(), "vm.env")
	r := systemd.Starter{Options: w.opts, EnvFile: envFile}
	custom := jail.Range{First: 200000, Count: 500}
	r.Options.Jail.UIDs = custom
	r.Options.Jail.OverheadMB = 120
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := r.Start(ctx, "web1", w.specPath); err != nil {
		t.Fatal(err)
	}
	env := unitEnvironment(t, envFile)
	o := runner.OptionsFromEnv(func(k string) string { return env[k] })
	if o.Jail.UIDs != custom || o.Jail.OverheadMB != 120 || o.Jail.Cgroup != launch.CgroupUnit || o.Jail.Insecure {
		t.Fatalf("the unit's volant-launch gets jail options %+v, want uids %s, overhead 120, cgroup %q", o.Jail, custom, launch.CgroupUnit)
	}
	if st, err := os.Stat(envFile); err != nil || st.Mode().Perm() != 0o644 {
		t.Fatalf("the environment file: %v", err)
	}

	// The defaults again: the file no longer names a range.
	r.Options.Jail = launch.JailOptions{Insecure: true}
	if _, err := r.Start(ctx, "web1", w.specPath); err != nil {
		t.Fatal(err)
	}
	env = unitEnvironment(t, envFile)
	o = runner.OptionsFromEnv(func(k string) string { return env[k] })
	if o.Jail.UIDs != (jail.Range{}) || !o.Jail.Insecure || o.Jail.Cgroup != launch.CgroupUnit {
		t.Fatalf("after a restart with defaults: %+v", o.Jail)
	}
}
