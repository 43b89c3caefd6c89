package admission_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/controller/admission"
)

func TestGateSlots(t *testing.T) {
	g := admission.New(2, time.Hour)
	ctx := context.Background()
	a, err := g.Acquire(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	a(true)
	b, _ := g.Acquire(ctx, "b")
	b(true)
	if g.Booting() != 2 {
		t.Fatalf("booting %d", g.Booting())
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := g.Acquire(short, "c"); err == nil {
		t.Fatal("a third boot was admitted with two slots held")
	}
	// a is healthy: its slot goes to c.
	g.Release("a")
	g.Release("a") // idempotent
	c, err := g.Acquire(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	// c's start fails: the slot frees at once.
	c(false)
	if g.Booting() != 1 {
		t.Fatalf("booting %d after a failed start", g.Booting())
	}
	// Unlimited gates never wait.
	u := admission.New(-1, time.Hour)
	for i := 0; i < 100; i++ {
		d, err := u.Acquire(short, "x")
		if err != nil {
			t.Fatal(err)
		}
		d(true)
	}
}

func TestGateTimeoutFreesTheSlot(t *testing.T) {
	g := admission.New(1, 50*time.Millisecond)
	ctx := context.Background()
	a, _ := g.Acquire(ctx, "a")
	a(true) // never reported healthy
	waitCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	t0 := time.Now()
	b, err := g.Acquire(waitCtx, "b")
	if err != nil {
		t.Fatalf("the timed-out boot kept its slot: %v", err)
	}
	if time.Since(t0) < 40*time.Millisecond {
		t.Fatal("admitted before the timeout")
	}
	b(true)
	// A late release of a's name must not free b's slot.
	g.Release("a")
	if g.Booting() != 1 {
		t.Fatalf("booting %d", g.Booting())
	}
}

// TestGateOnArrival: the callback runs when a start reaches the gate,
// whether it takes a free slot or waits for one; forgotten, it never runs.
func TestGateOnArrival(t *testing.T) {
	g := admission.New(1, time.Hour)
	ctx := context.Background()
	arrived := map[string]int{}
	var mu sync.Mutex
	count := func(name string) func() {
		return func() { mu.Lock(); arrived[name]++; mu.Unlock() }
	}
	g.OnArrival("a", count("a"))
	a, err := g.Acquire(ctx, "a") // takes the free slot
	if err != nil {
		t.Fatal(err)
	}
	a(true)
	g.OnArrival("b", count("b"))
	got := make(chan error, 1)
	go func() {
		b, err := g.Acquire(ctx, "b") // waits for a's slot
		if err == nil {
			b(true)
		}
		got <- err
	}()
	for g.Waiting() != 1 {
		time.Sleep(time.Millisecond)
	}
	mu.Lock()
	if arrived["a"] != 1 || arrived["b"] != 1 {
		t.Fatalf("arrivals %v while b waits; want a and b once", arrived)
	}
	mu.Unlock()
	g.Release("a")
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	forget := g.OnArrival("c", count("c"))
	forget()
	g.Release("b")
	c, err := g.Acquire(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	c(false)
	mu.Lock()
	defer mu.Unlock()
	if arrived["a"] != 1 || arrived["b"] != 1 || arrived["c"] != 0 {
		t.Fatalf("arrivals %v; want a and b once, c (forgotten) never", arrived)
	}
}
