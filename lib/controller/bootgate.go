package controller

import (
	"context"
	"errors"
	"sync"
	"time"
)

// bootGate admits VM boots a few at a time. A start takes a slot before its
// hypervisor starts and holds it until the guest is healthy, its run ends,
// or the boot timeout passes. Booting is the expensive phase (kernel and
// kestrel start-up; seconds of CPU each under software emulation): started
// all at once on a small host, every boot slows down and none finishes in
// time (bench/density measured 0 of 36 healthy within 120 s on 2 cores).
// Admitted a few at a time, they finish one after another.
type bootGate struct {
	slots   chan struct{} // nil: unlimited
	timeout time.Duration

	mu      sync.Mutex
	held    map[string]*hold              // by VM name
	waiting map[string]context.CancelFunc // starts waiting for a slot
	// canceled marks names whose start must not wait (a delete came
	// before the start reached the gate); the next acquire consumes it.
	canceled map[string]bool
}

type hold struct {
	once sync.Once
	gate *bootGate
}

func (h *hold) free() { h.once.Do(func() { <-h.gate.slots }) }

func newBootGate(n int, timeout time.Duration) *bootGate {
	g := &bootGate{timeout: timeout, held: map[string]*hold{}, waiting: map[string]context.CancelFunc{}, canceled: map[string]bool{}}
	if n > 0 {
		g.slots = make(chan struct{}, n)
	}
	return g
}

// acquire waits for a slot for name. The caller calls done(false) when the
// start failed (the slot frees at once) and done(true) once the hypervisor
// runs: the slot then stays held until release(name) or the timeout.
func (g *bootGate) acquire(ctx context.Context, name string) (done func(started bool), err error) {
	if g.slots == nil {
		return func(bool) {}, nil
	}
	wctx, cancel := context.WithCancelCause(ctx)
	g.mu.Lock()
	if g.canceled[name] {
		delete(g.canceled, name)
		g.mu.Unlock()
		cancel(nil)
		return nil, errBootWaitCanceled
	}
	g.waiting[name] = func() { cancel(errBootWaitCanceled) }
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		delete(g.waiting, name)
		g.mu.Unlock()
		cancel(nil)
	}()
	select {
	case g.slots <- struct{}{}:
	case <-wctx.Done():
		return nil, context.Cause(wctx)
	}
	h := &hold{gate: g}
	return func(started bool) {
		if !started {
			h.free()
			return
		}
		g.mu.Lock()
		old := g.held[name]
		g.held[name] = h
		g.mu.Unlock()
		if old != nil {
			old.free()
		}
		time.AfterFunc(g.timeout, func() {
			g.mu.Lock()
			if g.held[name] == h {
				delete(g.held, name)
			}
			g.mu.Unlock()
			h.free()
		})
	}, nil
}

// errBootWaitCanceled ends a start that was still queued for a boot slot
// when its VM was deleted (or scaled away).
var errBootWaitCanceled = errors.New("the VM was deleted while it waited for a boot slot")

// cancelWait ends name's wait for a slot, or makes its next one fail at
// once if its start has not reached the gate yet: the start fails (and its
// create is undone) instead of booting a VM nobody wants. The deleter
// calls uncancel once it holds the VM's lock, so a later create of the
// same name waits normally.
func (g *bootGate) cancelWait(name string) {
	if g.slots == nil {
		return
	}
	g.mu.Lock()
	cancel := g.waiting[name]
	if cancel == nil {
		g.canceled[name] = true
	}
	g.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// uncancel drops a cancelWait mark no start consumed.
func (g *bootGate) uncancel(name string) {
	g.mu.Lock()
	delete(g.canceled, name)
	g.mu.Unlock()
}

// release frees name's slot, if it holds one: the guest is healthy, or its
// run ended, or it was stopped.
func (g *bootGate) release(name string) {
	g.mu.Lock()
	h := g.held[name]
	delete(g.held, name)
	g.mu.Unlock()
	if h != nil {
		h.free()
	}
}

// booting is the number of slots taken.
func (g *bootGate) booting() int {
	if g.slots == nil {
		return 0
	}
	return len(g.slots)
}
