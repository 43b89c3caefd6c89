package supervise

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"syscall"
	"time"

	"github.com/volantvm/volant/lib/vmm"
)

// Target is a VMM process Stop can wait for and kill: a child (*Process) or
// another process's VMM (*Handle).
type Target interface {
	// WaitExit returns nil once the process has exited, or ctx's error.
	WaitExit(ctx context.Context) error
	Kill() error
}

// WaitExit implements Target.
func (p *Process) WaitExit(ctx context.Context) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// WaitExit implements Target.
func (h *Handle) WaitExit(ctx context.Context) error { return h.Wait(ctx) }

// Kill implements Target.
func (h *Handle) Kill() error { return h.Signal(syscall.SIGKILL) }

// Stop methods, in escalation order.
const (
	StoppedAlready     = "already_exited"
	StoppedPowerButton = "power_button"
	StoppedHard        = "hard_stop"
	StoppedKill        = "kill"
)

// StopOptions tune Stop.
type StopOptions struct {
	// Grace is how long the guest gets to power off after the ACPI power
	// button (default 10s; negative skips the power button).
	Grace time.Duration
	// Repress is how long after a press the power button is pressed again
	// while the guest is still up, doubling after each press (default 1s):
	// a guest that was not listening yet misses a press (kestrel loads
	// the button's driver once its workload is up, and the kernel drops a
	// press that comes before it).
	Repress time.Duration
	// Hard is how long the VMM gets to exit after a hard stop before it is
	// killed (default 3s).
	Hard   time.Duration
	Logger *slog.Logger
}

// StopResult says how the VMM ended.
type StopResult struct {
	Method  string        `json:"method"`
	Elapsed time.Duration `json:"elapsed_ns"`
}

// Dialer connects to the VMM's control socket.
type Dialer func(ctx context.Context) (vmm.Control, error)

// Stop ends a VMM gracefully, escalating: the ACPI power button (the guest
// shuts down cleanly: disks synced, workload told; pressed again after
// Repress, 2×Repress, ... while the guest is up), then after Grace a hard
// stop through the control socket (Shutdown, then Quit), then after Hard
// SIGKILL. If ctx ends first, Stop skips to SIGKILL. A VMM that already
// exited is success (StoppedAlready).
func Stop(ctx context.Context, t Target, dial Dialer, o StopOptions) (StopResult, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.Grace == 0 {
		o.Grace = 10 * time.Second
	}
	if o.Hard <= 0 {
		o.Hard = 3 * time.Second
	}
	if o.Repress <= 0 {
		o.Repress = time.Second
	}
	start := time.Now()
	res := func(m string) StopResult { return StopResult{Method: m, Elapsed: time.Since(start)} }
	if exited(t, 0) {
		return res(StoppedAlready), nil
	}

	var ctl vmm.Control
	connect := func() vmm.Control {
		if ctl != nil {
			return ctl
		}
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		c, err := dial(dctx)
		if err != nil {
			log.Debug("control socket unreachable", "err", err)
			return nil
		}
		ctl = c
		return ctl
	}
	defer func() {
		if ctl != nil {
			ctl.Close()
		}
	}()
	call := func(name string, f func(context.Context) error) error {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		err := f(cctx)
		if err != nil {
			log.Debug(name+" failed", "err", err)
		}
		return err
	}

	if o.Grace > 0 && ctx.Err() == nil {
		if c := connect(); c != nil {
			err := call("power button", c.PowerButton)
			if err == nil {
				log.Info("pressed the ACPI power button; waiting for the guest to power off", "grace", o.Grace)
				if waitPressing(ctx, t, o.Grace, o.Repress, func() { _ = call("power button", c.PowerButton) }) {
					return res(StoppedPowerButton), nil
				}
				log.Warn("guest did not power off in time; stopping it hard", "grace", o.Grace)
			} else if !errors.Is(err, vmm.ErrNotSupported) {
				log.Warn("power button failed; stopping hard", "err", err)
			}
		}
	}
	if exited(t, 0) {
		return res(StoppedPowerButton), nil
	}
	if ctx.Err() == nil {
		if c := connect(); c != nil {
			_ = call("shutdown", c.Shutdown)
			if !exited(t, 50*time.Millisecond) {
				_ = call("quit", c.Quit)
			}
			if waitCtx(ctx, t, o.Hard) {
				return res(StoppedHard), nil
			}
			log.Warn("VMM did not exit after a hard stop; killing it", "wait", o.Hard)
		}
	}
	if err := t.Kill(); err != nil {
		return res(StoppedKill), err
	}
	wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := t.WaitExit(wctx); err != nil {
		return res(StoppedKill), fmt.Errorf("VMM still running 10s after SIGKILL: %w", err)
	}
	return res(StoppedKill), nil
}

func exited(t Target, d time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return t.WaitExit(ctx) == nil
}

// waitPressing waits up to grace for t to exit, calling press again
// after every, then after twice as long, and so on.
func waitPressing(ctx context.Context, t Target, grace, every time.Duration, press func()) bool {
	deadline := time.Now().Add(grace)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		if waitCtx(ctx, t, min(every, left)) {
			return true
		}
		if ctx.Err() != nil || time.Until(deadline) <= 0 {
			return false
		}
		press()
		every *= 2
	}
}

func waitCtx(ctx context.Context, t Target, d time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return t.WaitExit(ctx) == nil
}
