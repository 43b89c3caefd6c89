package controller

import (
	"fmt"
	"sync"
	"time"
)

// Replica retry delays unless Config says otherwise.
const (
	DefaultReplicaBackoff    = time.Second
	DefaultReplicaBackoffMax = 5 * time.Minute
)

// retries holds, per replica (by VM name), how often it failed in a row
// and when the reconciler may try it again: after a create that failed, or
// once it is seen crashed or failed, it waits ReplicaBackoff, doubled with
// every failure in a row up to ReplicaBackoffMax; a replica seen running
// for longer than ReplicaBackoffMax starts over. The waits keep a replica that cannot come up (no bridge, a
// guest that dies at boot) from being recreated as fast as its own undo
// wakes the reconciler.
type retries struct {
	mu      sync.Mutex
	base    time.Duration
	ceiling time.Duration
	m       map[string]*retry
	kick    func() // wakes the reconciler when a wait ends
}

type retry struct {
	failures int
	last     string // the last failure, for the deployment's error
	next     time.Time
	// waiting: a failure was counted and the next try waits for next.
	waiting bool
}

func newRetries(base, ceiling time.Duration, kick func()) *retries {
	if base <= 0 {
		base = DefaultReplicaBackoff
	}
	if ceiling <= 0 {
		ceiling = DefaultReplicaBackoffMax
	}
	return &retries{base: base, ceiling: max(ceiling, base), m: map[string]*retry{}, kick: kick}
}

// failed counts a failure of the replica; it waits before its next try.
func (r *retries) failed(name, why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.m[name]
	if e == nil {
		e = &retry{}
		r.m[name] = e
	}
	e.failures++
	d := r.base
	for i := 1; i < e.failures && d < r.ceiling; i++ {
		d *= 2
	}
	d = min(d, r.ceiling)
	e.last, e.next, e.waiting = why, time.Now().Add(d), true
	time.AfterFunc(d, r.kick)
}

// due reports whether the replica may be tried now; when not, note says
// why, in words that stay the same while it waits. failedNow, when set,
// says the replica is seen crashed or failed: unless that failure is
// counted already (it waits for its retry), it is counted now.
func (r *retries) due(name, failedNow string) (ok bool, note string) {
	r.mu.Lock()
	e := r.m[name]
	if e != nil && e.waiting {
		if time.Now().Before(e.next) {
			note = fmt.Sprintf("%s failed %d time(s) in a row, retrying with a backoff: %s", name, e.failures, e.last)
			r.mu.Unlock()
			return false, note
		}
		e.waiting = false // this try uses up the wait
		r.mu.Unlock()
		return true, ""
	}
	r.mu.Unlock()
	if failedNow != "" {
		r.failed(name, failedNow)
		return r.due(name, "")
	}
	return true, ""
}

// stable says a replica started at started has run long enough to
// forget its failures: for longer than the longest wait.
func (r *retries) stable(started *time.Time) bool {
	return started != nil && time.Since(*started) >= r.ceiling
}

// reset forgets the replica's failures (it has run long enough, or it is
// gone).
func (r *retries) reset(name string) {
	r.mu.Lock()
	delete(r.m, name)
	r.mu.Unlock()
}

// forget drops the entries of a deployment's replicas.
func (r *retries) forget(deployment string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for n := range r.m {
		if replicaIndex(deployment, n) > 0 {
			delete(r.m, n)
		}
	}
}
