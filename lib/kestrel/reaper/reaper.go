// Package reaper is kestrel's only caller of wait(2). As PID 1 (or as a
// child subreaper) kestrel inherits every orphan in the guest and must reap
// them, and a second waiter anywhere in the process would steal exit
// statuses from the first. So processes are started through Reaper.Start,
// which registers the child under the same lock the reap loop takes: an exit
// can never be reaped before someone is waiting for it, and every other pid
// is reaped as an orphan.
package reaper

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Exit is how a process ended.
type Exit struct {
	PID    int
	Status unix.WaitStatus
	Time   time.Time
}

// Code returns the exit code, or -1 when the process was killed by a signal.
func (e Exit) Code() int {
	if e.Status.Exited() {
		return e.Status.ExitStatus()
	}
	return -1
}

// Signal returns the signal that killed the process, or 0.
func (e Exit) Signal() unix.Signal {
	if e.Status.Signaled() {
		return e.Status.Signal()
	}
	return 0
}

// Success reports a zero exit code.
func (e Exit) Success() bool { return e.Status.Exited() && e.Status.ExitStatus() == 0 }

// String describes the exit: "exit status 1", "killed by SIGKILL".
func (e Exit) String() string {
	if s := e.Signal(); s != 0 {
		return "killed by " + unix.SignalName(s)
	}
	return "exit status " + itoa(e.Code())
}

func itoa(n int) string {
	if n < 0 {
		return "-" + itoa(-n)
	}
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}

// Reaper reaps children. Create it with New and run Run for the process's
// life.
type Reaper struct {
	log     *slog.Logger
	mu      sync.Mutex
	waiters map[int]chan Exit
	orphans int
}

// New returns a reaper. log may be nil.
func New(log *slog.Logger) *Reaper {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Reaper{log: log, waiters: map[int]chan Exit{}}
}

// Start runs start (which must fork a child and return its pid, e.g.
// syscall.ForkExec) and returns a channel that receives the child's exit
// exactly once.
func (r *Reaper) Start(start func() (int, error)) (int, <-chan Exit, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := start()
	if err != nil {
		return 0, nil, err
	}
	c := make(chan Exit, 1)
	r.waiters[pid] = c
	return pid, c, nil
}

// Orphans is the number of processes reaped that nobody waited for.
func (r *Reaper) Orphans() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.orphans
}

// SweepInterval is how often Run reaps without a SIGCHLD.
const SweepInterval = 30 * time.Second

// Run reaps on every SIGCHLD until ctx is done. It installs a SIGCHLD
// handler (signal.Notify): run it only in kestrel's own process. Signals
// that arrive while one is pending merge into it, which loses no exit:
// each reap collects every child that has exited. A sweep every
// SweepInterval is the safety net; it is not more frequent because each
// wake-up of an idle guest costs host CPU under software emulation.
func (r *Reaper) Run(ctx context.Context) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, unix.SIGCHLD)
	defer signal.Stop(sig)
	tick := time.NewTicker(SweepInterval)
	defer tick.Stop()
	for {
		r.Reap()
		select {
		case <-ctx.Done():
			return
		case <-sig:
		case <-tick.C:
		}
	}
}

// Reap collects every child that has exited, without blocking.
func (r *Reaper) Reap() {
	for {
		r.mu.Lock()
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			r.mu.Unlock()
			continue
		}
		if err != nil || pid <= 0 {
			r.mu.Unlock()
			return // ECHILD: no children; 0: none exited
		}
		e := Exit{PID: pid, Status: ws, Time: time.Now()}
		c, ok := r.waiters[pid]
		if ok {
			delete(r.waiters, pid)
		} else {
			r.orphans++
		}
		r.mu.Unlock()
		if ok {
			c <- e
		} else {
			r.log.Debug("reaped orphan", "pid", pid, "status", e.String())
		}
	}
}
