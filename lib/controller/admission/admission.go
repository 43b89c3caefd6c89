// Package admission admits VM boots a few at a time (volantd's
// --max-booting): a Gate of slots, one per booting VM, each held from
// before its hypervisor starts until the guest is healthy, its run ends,
// or the boot timeout passes.
package admission

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Gate admits VM boots a few at a time. A start takes a slot before its
// hypervisor starts and holds it until the guest is healthy, its run ends,
// or the boot timeout passes. Booting is the expensive phase (kernel and
// kestrel start-up; seconds of CPU each under software emulation): started
// all at once on a small host, every boot slows down and none finishes in
// time (bench/density measured 0 of 36 healthy within 120 s on 2 cores).
// Admitted a few at a time, they finish one after another.
type Gate struct {
	slots   chan struct{} // nil: unlimited
	timeout time.Duration

	mu      sync.Mutex
	held    map[string]*hold              // by VM name
	waiting map[string]context.CancelFunc // starts waiting for a slot
	// canceled marks names whose start must not wait (a delete came
	// before the start reached the gate); the next Acquire consumes it.
	canceled map[string]bool
	// arrival holds OnArrival's callbacks by VM name.
	arrival map[string]*func()
}

type hold struct {
	once sync.Once
	gate *Gate
}

func (h *hold) free() { h.once.Do(func() { <-h.gate.slots }) }

// New returns a gate of n slots (n <= 0: unlimited, nothing ever waits);
// a slot is held at most timeout.
func New(n int, timeout time.Duration) *Gate {
	g := &Gate{timeout: timeout, held: map[string]*hold{}, waiting: map[string]context.CancelFunc{}, canceled: map[string]bool{},
		arrival: map[string]*func(){}}
	if n > 0 {
		g.slots = make(chan struct{}, n)
	}
	return g
}

// Acquire waits for a slot for name. The caller calls done(false) when the
// start failed (the slot frees at once) and done(true) once the hypervisor
// runs: the slot then stays held until Release(name) or the timeout.
func (g *Gate) Acquire(ctx context.Context, name string) (done func(started bool), err error) {
	g.arrived(name)
	if g.slots == nil {
		return func(bool) {}, nil
	}
	wctx, cancel := context.WithCancelCause(ctx)
	g.mu.Lock()
	if g.canceled[name] {
		delete(g.canceled, name)
		g.mu.Unlock()
		cancel(nil)
		return nil, ErrWaitCanceled
	}
	g.waiting[name] = func() { cancel(ErrWaitCanceled) }
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

// OnArrival calls fn once, when a start of name reaches the gate: it
// waits for a slot from then on, or takes a free one. A caller that
// bounds how many VMs it prepares at once (a deployment's replica
// creations) frees its own bound there, so that starts queue at the gate
// while the slots are held, and a freed slot goes to a queued start at
// once instead of waiting for the next VM's preparation. forget drops fn
// if it has not been called (the start failed before the gate). A second
// OnArrival for the same name replaces the first.
func (g *Gate) OnArrival(name string, fn func()) (forget func()) {
	p := &fn
	g.mu.Lock()
	g.arrival[name] = p
	g.mu.Unlock()
	return func() {
		g.mu.Lock()
		if g.arrival[name] == p {
			delete(g.arrival, name)
		}
		g.mu.Unlock()
	}
}

// arrived calls and drops name's OnArrival callback, if any.
func (g *Gate) arrived(name string) {
	g.mu.Lock()
	p := g.arrival[name]
	delete(g.arrival, name)
	g.mu.Unlock()
	if p != nil {
		(*p)()
	}
}

// ErrWaitCanceled ends a start that was still queued for a boot slot
// when its VM was deleted (or scaled away).
var ErrWaitCanceled = errors.New("the VM was deleted while it waited for a boot slot")

// CancelWait ends name's wait for a slot, or makes its next one fail at
// once if its start has not reached the gate yet: the start fails (and its
// create is undone) instead of booting a VM nobody wants. The deleter
// calls Uncancel once it holds the VM's lock, so a later create of the
// same name waits normally.
func (g *Gate) CancelWait(name string) {
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

// Uncancel drops a CancelWait mark no start consumed.
func (g *Gate) Uncancel(name string) {
	g.mu.Lock()
	delete(g.canceled, name)
	g.mu.Unlock()
}

// Release frees name's slot, if it holds one: the guest is healthy, or its
// run ended, or it was stopped.
func (g *Gate) Release(name string) {
	g.mu.Lock()
	h := g.held[name]
	delete(g.held, name)
	g.mu.Unlock()
	if h != nil {
		h.free()
	}
}

// Waiting is the number of starts queued for a slot.
func (g *Gate) Waiting() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.waiting)
}

// Booting is the number of slots taken.
func (g *Gate) Booting() int {
	if g.slots == nil {
		return 0
	}
	return len(g.slots)
}
