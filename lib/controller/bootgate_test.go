package controller

import (
	"context"
	"testing"
	"time"
)

func TestBootGateSlots(t *testing.T) {
	g := newBootGate(2, time.Hour)
	ctx := context.Background()
	a, err := g.acquire(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	a(true)
	b, _ := g.acquire(ctx, "b")
	b(true)
	if g.booting() != 2 {
		t.Fatalf("booting %d", g.booting())
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := g.acquire(short, "c"); err == nil {
		t.Fatal("a third boot was admitted with two slots held")
	}
	// a is healthy: its slot goes to c.
	g.release("a")
	g.release("a") // idempotent
	c, err := g.acquire(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	// c's start fails: the slot frees at once.
	c(false)
	if g.booting() != 1 {
		t.Fatalf("booting %d after a failed start", g.booting())
	}
	// Unlimited gates never wait.
	u := newBootGate(-1, time.Hour)
	for i := 0; i < 100; i++ {
		d, err := u.acquire(short, "x")
		if err != nil {
			t.Fatal(err)
		}
		d(true)
	}
}

func TestBootGateTimeoutFreesTheSlot(t *testing.T) {
	g := newBootGate(1, 50*time.Millisecond)
	ctx := context.Background()
	a, _ := g.acquire(ctx, "a")
	a(true) // never reported healthy
	waitCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	t0 := time.Now()
	b, err := g.acquire(waitCtx, "b")
	if err != nil {
		t.Fatalf("the timed-out boot kept its slot: %v", err)
	}
	if time.Since(t0) < 40*time.Millisecond {
		t.Fatal("admitted before the timeout")
	}
	b(true)
	// A late release of a's name must not free b's slot.
	g.release("a")
	if g.booting() != 1 {
		t.Fatalf("booting %d", g.booting())
	}
}
