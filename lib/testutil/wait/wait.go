// Package wait is the one "eventually" helper of Volant's tests: poll a
// condition until it holds or a deadline passes.
package wait

import (
	"fmt"
	"runtime"
	"testing"
	"time"
)

// Interval is how often conditions are polled.
const Interval = 10 * time.Millisecond

// For calls cond every Interval until it returns true, and returns nil
// then; when timeout passes first it returns an error saying how long it
// waited. cond is called at least once, and once more after the deadline.
func For(timeout time.Duration, cond func() bool) error {
	return ForEvery(timeout, Interval, cond)
}

// ForEvery is For polling every interval: for a condition that costs a
// round trip to a server (an API server, a guest) and need not be asked
// a hundred times a second.
func ForEvery(timeout, interval time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			if cond() {
				return nil
			}
			return fmt.Errorf("timed out after %s", timeout)
		}
		time.Sleep(interval)
	}
	return nil
}

// Until is For that fails the test when the deadline passes, naming what
// it waited for and logging every goroutine's stack (a condition that
// never comes is often a goroutine stuck somewhere).
func Until(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if err := For(timeout, cond); err != nil {
		buf := make([]byte, 256<<10)
		t.Logf("goroutines:\n%s", buf[:runtime.Stack(buf, true)])
		t.Fatalf("%v waiting for %s", err, what)
	}
}
