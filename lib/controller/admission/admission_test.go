package admission_test

import (
	"context"
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
