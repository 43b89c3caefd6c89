package controller

import (
	"context"
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

	mu   sync.Mutex
	held map[string]*hold // by VM name
}

type hold struct {
	once sync.Once
	gate *bootGate
}

func (h *hold) free() { h.once.Do(func() { <-h.gate.slots }) }

func newBootGate(n int, timeout time.Duration) *bootGate {
	g := &bootGate{timeout: timeout, held: map[string]*hold{}}
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
	select {
	case g.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
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
