// Package vmmtest is the conformance suite every vmm.Backend runs, in the
// manner of go-containerregistry's pkg/v1/validate: one Run call checks that
// a backend's argv builder is pure and validating, that what it cannot do is
// refused early with NOT_SUPPORTED, and that a real process started from its
// argv (through lib/vmm/supervise, as Volant starts it) answers its control
// socket and goes through the whole lifecycle: ready, running, pause,
// resume, counters, power button or hard stop, quit; and where the backend
// can, saving a paused VM's state and running it again in a new VMM.
//
// Cloud Hypervisor runs it against the fake CH (the test binary
// impersonating cloud-hypervisor); QEMU runs it against real QEMU booting
// Debian's kernel with a small test init that honours the power button.
package vmmtest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/vmm"
	"github.com/volantvm/volant/lib/vmm/supervise"
)

// Harness says how to run the suite for one backend.
type Harness struct {
	Backend vmm.Backend
	// Config returns a VM config that starts on this host, with every
	// socket and file under dir (a fresh directory per call).
	Config func(t testing.TB, dir string) vmm.Config
	// Env is the VMM's environment (nil inherits).
	Env []string
	// GuestReady, when set, waits until the guest can act on the power
	// button (its init is up), e.g. by watching the serial log.
	GuestReady func(ctx context.Context, cfg vmm.Config) error
	// PowerButtonStops says the guest powers off on the ACPI power button
	// and the VMM exits with it.
	PowerButtonStops bool
	// Timeout bounds each VM's life in the suite (default 90s).
	Timeout time.Duration
}

// Run runs the suite.
func Run(t *testing.T, h Harness) {
	if h.Timeout == 0 {
		h.Timeout = 90 * time.Second
	}
	t.Run("Argv", func(t *testing.T) { testArgv(t, h) })
	t.Run("NotSupported", func(t *testing.T) { testNotSupported(t, h) })
	t.Run("EarlyExit", func(t *testing.T) { testEarlyExit(t, h) })
	t.Run("Lifecycle", func(t *testing.T) { testLifecycle(t, h) })
	t.Run("Stop", func(t *testing.T) { testStop(t, h) })
	t.Run("Snapshot", func(t *testing.T) { testSnapshot(t, h) })
}

func listDir(t testing.TB, dir string) []string {
	var out []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		out = append(out, p)
		return nil
	})
	sort.Strings(out)
	return out
}

func testArgv(t *testing.T, h Harness) {
	dir := t.TempDir()
	cfg := h.Config(t, dir)
	before := listDir(t, dir)
	a, err := h.Backend.Argv(cfg)
	if err != nil {
		t.Fatalf("Argv of the harness config: %v", err)
	}
	b, _ := h.Backend.Argv(cfg)
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("Argv is not deterministic:\n%q\n%q", a, b)
	}
	if len(a) < 2 || a[0] == "" {
		t.Fatalf("argv %q has no program", a)
	}
	if after := listDir(t, dir); !reflect.DeepEqual(before, after) {
		t.Fatalf("Argv touched the file system: %v -> %v", before, after)
	}
	joined := strings.Join(a, "\x00")
	for _, want := range []string{cfg.Kernel, cfg.APISocket} {
		if !strings.Contains(joined, want) {
			t.Errorf("argv lacks %q: %q", want, a)
		}
	}
	if !slices.Contains(a, cfg.Cmdline) {
		t.Errorf("argv does not pass the kernel command line as one argument: %q", a)
	}

	// Invalid configs are INVALID_INPUT, naming what is wrong.
	bad := cfg
	bad.CPUs, bad.MemoryMB, bad.Kernel = 0, 1, ""
	_, err = h.Backend.Argv(bad)
	if !apierr.Is(err, apierr.InvalidInput) {
		t.Fatalf("invalid config: %v, want INVALID_INPUT", err)
	}
	for _, w := range []string{"cpus", "memory", "kernel"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error does not name %s: %v", w, err)
		}
	}
	unresolved := cfg
	unresolved.Accel = vmm.AccelAuto
	if _, err := h.Backend.Argv(unresolved); err == nil {
		t.Error("Argv accepted an unresolved accel (auto)")
	}
}

func testNotSupported(t *testing.T, h Harness) {
	caps := h.Backend.Capabilities()
	base := h.Config(t, t.TempDir())
	type probe struct {
		name string
		mod  func(*vmm.Config)
	}
	var probes []probe
	for _, a := range []vmm.Accel{vmm.AccelKVM, vmm.AccelTCG} {
		if !slices.Contains(caps.Accels, a) {
			probes = append(probes, probe{"accel " + string(a), func(c *vmm.Config) { c.Accel = a }})
		}
	}
	for _, m := range []string{"microvm", "pc"} {
		if !slices.Contains(caps.Machines, m) {
			probes = append(probes, probe{"machine " + m, func(c *vmm.Config) { c.Machine = m }})
		}
	}
	if !caps.AgentChannel {
		probes = append(probes, probe{"agent channel", func(c *vmm.Config) { c.AgentSocket = filepath.Join(filepath.Dir(c.APISocket), "agent.sock") }})
	}
	if !caps.SerialSocket {
		probes = append(probes, probe{"logged serial socket", func(c *vmm.Config) {
			c.Serial = vmm.Serial{LogFile: filepath.Join(filepath.Dir(c.APISocket), "serial.log"), Socket: filepath.Join(filepath.Dir(c.APISocket), "console.sock")}
		}})
	}
	for _, p := range probes {
		cfg := base
		p.mod(&cfg)
		_, err := h.Backend.Argv(cfg)
		if !apierr.Is(err, apierr.NotSupported) || !errors.Is(err, vmm.ErrNotSupported) {
			t.Errorf("%s: Argv returned %v, want NOT_SUPPORTED", p.name, err)
		}
	}
	// Everything the capabilities claim must be accepted.
	for _, a := range caps.Accels {
		cfg := base
		cfg.Accel = a
		if _, err := h.Backend.Argv(cfg); err != nil {
			t.Errorf("accel %s is in the capabilities but Argv refuses it: %v", a, err)
		}
	}
	for _, m := range caps.Machines {
		cfg := base
		cfg.Machine = m
		if _, err := h.Backend.Argv(cfg); err != nil {
			t.Errorf("machine %s is in the capabilities but Argv refuses it: %v", m, err)
		}
	}
}

// start starts the VMM for cfg and waits until its control socket answers.
func start(t *testing.T, h Harness, cfg vmm.Config) (*supervise.Process, vmm.Control) {
	t.Helper()
	argv, err := h.Backend.Argv(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p, err := supervise.Start(supervise.Options{Argv: argv, Env: h.Env})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Kill()
		<-p.Done()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var ctl vmm.Control
	err = p.WaitReady(ctx, 5*time.Millisecond, func(ctx context.Context) error {
		c, err := h.Backend.Dial(ctx, cfg.APISocket)
		if err != nil {
			return err
		}
		if err := c.Ping(ctx); err != nil {
			c.Close()
			return err
		}
		ctl = c
		return nil
	})
	if err != nil {
		t.Fatalf("VMM never answered on %s: %v\nstderr: %s", cfg.APISocket, err, p.Stderr())
	}
	return p, ctl
}

func waitState(t *testing.T, ctx context.Context, ctl vmm.Control, want vmm.State) {
	t.Helper()
	var got vmm.State
	var err error
	for ctx.Err() == nil {
		got, err = ctl.State(ctx)
		if err == nil && got == want {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("state %q (err %v), want %q", got, err, want)
}

func waitExit(t *testing.T, p *supervise.Process, d time.Duration, what string) {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(d):
		t.Fatalf("VMM still running %v after %s\nstderr: %s", d, what, p.Stderr())
	}
}

func testEarlyExit(t *testing.T, h Harness) {
	cfg := h.Config(t, t.TempDir())
	cfg.Kernel = filepath.Join(t.TempDir(), "no-such-vmlinux")
	argv, err := h.Backend.Argv(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p, err := supervise.Start(supervise.Options{Argv: argv, Env: h.Env})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t0 := time.Now()
	err = p.WaitReady(ctx, 5*time.Millisecond, func(ctx context.Context) error {
		c, err := h.Backend.Dial(ctx, cfg.APISocket)
		if err != nil {
			return err
		}
		defer c.Close()
		// Answering is not enough: a VMM that cannot load its kernel
		// must exit rather than sit there.
		return errors.New("waiting for the VMM to give up on the missing kernel")
	})
	if !errors.Is(err, supervise.ErrExited) {
		t.Fatalf("a VMM with a missing kernel: WaitReady = %v, want ErrExited", err)
	}
	if !strings.Contains(err.Error(), "no-such-vmlinux") {
		t.Errorf("early-exit error does not carry the VMM's complaint about the kernel: %v", err)
	}
	t.Logf("early exit noticed after %v: %v", time.Since(t0).Round(time.Millisecond), err)
}

func testLifecycle(t *testing.T, h Harness) {
	caps := h.Backend.Capabilities()
	cfg := h.Config(t, t.TempDir())
	p, ctl := start(t, h, cfg)
	defer ctl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), h.Timeout)
	defer cancel()

	waitState(t, ctx, ctl, vmm.StateRunning)
	if caps.Counters {
		c, err := ctl.Counters(ctx)
		if err != nil || c == nil {
			t.Errorf("Counters: %v %v", c, err)
		}
	} else if _, err := ctl.Counters(ctx); !errors.Is(err, vmm.ErrNotSupported) {
		t.Errorf("Counters without the capability: %v, want NOT_SUPPORTED", err)
	}
	if caps.Pause {
		if err := ctl.Pause(ctx); err != nil {
			t.Fatalf("Pause: %v", err)
		}
		waitState(t, ctx, ctl, vmm.StatePaused)
		if err := ctl.Resume(ctx); err != nil {
			t.Fatalf("Resume: %v", err)
		}
		waitState(t, ctx, ctl, vmm.StateRunning)
	} else if err := ctl.Pause(ctx); !errors.Is(err, vmm.ErrNotSupported) {
		t.Errorf("Pause without the capability: %v, want NOT_SUPPORTED", err)
	}

	if h.PowerButtonStops {
		if h.GuestReady != nil {
			if err := h.GuestReady(ctx, cfg); err != nil {
				t.Fatalf("guest never got ready: %v", err)
			}
		}
		if err := ctl.PowerButton(ctx); err != nil {
			t.Fatalf("PowerButton: %v", err)
		}
		waitExit(t, p, h.Timeout, "the power button")
		if err := p.ExitError(); err != nil {
			t.Errorf("VMM exit after the guest powered off: %v", err)
		}
		if err := ctl.Quit(ctx); err != nil {
			t.Errorf("Quit of a VMM that already exited must succeed: %v", err)
		}
		return
	}
	if caps.PowerButton {
		if err := ctl.PowerButton(ctx); err != nil {
			t.Fatalf("PowerButton: %v", err)
		}
	}
	if err := ctl.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	select {
	case <-p.Done():
	default:
		waitState(t, ctx, ctl, vmm.StateShutdown)
		if err := ctl.Quit(ctx); err != nil {
			t.Fatalf("Quit: %v", err)
		}
	}
	waitExit(t, p, 10*time.Second, "Quit")
	if err := p.ExitError(); err != nil {
		t.Errorf("VMM exit after Quit: %v", err)
	}
}

// testStop runs the supervisor's escalating stop through the backend's
// control socket: the power button when the guest honours it, else the
// hard stop, never the SIGKILL.
func testStop(t *testing.T, h Harness) {
	cfg := h.Config(t, t.TempDir())
	p, ctl := start(t, h, cfg)
	ctl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), h.Timeout)
	defer cancel()
	want := supervise.StoppedHard
	grace := 500 * time.Millisecond
	if h.PowerButtonStops {
		want, grace = supervise.StoppedPowerButton, h.Timeout
		if h.GuestReady != nil {
			if err := h.GuestReady(ctx, cfg); err != nil {
				t.Fatalf("guest never got ready: %v", err)
			}
		}
	}
	res, err := supervise.Stop(ctx, p, func(ctx context.Context) (vmm.Control, error) {
		return h.Backend.Dial(ctx, cfg.APISocket)
	}, supervise.StopOptions{Grace: grace})
	if err != nil {
		t.Fatal(err)
	}
	if res.Method != want {
		t.Fatalf("stopped by %s, want %s", res.Method, want)
	}
	t.Logf("stopped by %s in %v", res.Method, res.Elapsed.Round(time.Millisecond))
}

// testSnapshot saves a running guest's state (paused), resumes it, then
// runs the saved state in a second VMM process started for it, whose guest
// must be alive: it honours the power button (or at least runs).
func testSnapshot(t *testing.T, h Harness) {
	caps := h.Backend.Capabilities()
	cfg := h.Config(t, t.TempDir())
	if !caps.Snapshot {
		r := cfg
		r.RestoreFrom = t.TempDir()
		if _, err := h.Backend.Argv(r); !errors.Is(err, vmm.ErrNotSupported) {
			t.Errorf("Argv with restore_from without the capability: %v, want NOT_SUPPORTED", err)
		}
		return
	}
	p, ctl := start(t, h, cfg)
	defer ctl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), h.Timeout)
	defer cancel()
	waitState(t, ctx, ctl, vmm.StateRunning)
	if h.GuestReady != nil {
		if err := h.GuestReady(ctx, cfg); err != nil {
			t.Fatalf("guest never got ready: %v", err)
		}
	}
	stateDir := t.TempDir()
	if err := ctl.SaveState(ctx, stateDir); err == nil {
		t.Error("SaveState of a running VM succeeded; it must be paused first")
	}
	for _, e := range listDir(t, stateDir)[1:] {
		os.RemoveAll(e)
	}
	if err := ctl.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := ctl.SaveState(ctx, stateDir); err != nil {
		t.Fatalf("SaveState: %v", err)
	}
	var total int64
	for _, e := range listDir(t, stateDir)[1:] {
		if st, err := os.Stat(e); err == nil && st.Mode().IsRegular() {
			total += st.Size()
		}
	}
	if total == 0 {
		t.Fatalf("SaveState wrote nothing into %s", stateDir)
	}
	t.Logf("state of a %d MiB guest saved in %v: %d bytes", cfg.MemoryMB, time.Since(t0).Round(time.Millisecond), total)
	if err := ctl.Resume(ctx); err != nil {
		t.Fatalf("Resume after SaveState: %v", err)
	}
	waitState(t, ctx, ctl, vmm.StateRunning)
	// The source goes: its state lives on in the directory.
	ctl.Quit(ctx)
	waitExit(t, p, 10*time.Second, "Quit")

	r := h.Config(t, t.TempDir())
	r.RestoreFrom = stateDir
	p2, ctl2 := start(t, h, r)
	defer ctl2.Close()
	t0 = time.Now()
	if err := ctl2.Restore(ctx, r); err != nil {
		t.Fatalf("Restore: %v\nstderr: %s", err, p2.Stderr())
	}
	waitState(t, ctx, ctl2, vmm.StateRunning)
	t.Logf("restored and running after %v", time.Since(t0).Round(time.Millisecond))
	if h.PowerButtonStops {
		// Only a guest that runs powers off.
		if err := ctl2.PowerButton(ctx); err != nil {
			t.Fatalf("PowerButton: %v", err)
		}
		waitExit(t, p2, h.Timeout, "the power button pressed in the restored guest")
		if err := p2.ExitError(); err != nil {
			t.Errorf("the restored VMM's exit: %v", err)
		}
	}
}
