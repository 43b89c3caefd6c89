package controller

import (
	"sync"
	"time"
)

// DefaultLivenessGrace is how long a running replica may stay unhealthy
// before it is replaced, unless Config says otherwise.
const DefaultLivenessGrace = 2 * time.Minute

// liveness remembers, per replica, since when the reconciler has seen it
// running and unhealthy. It lives in memory: after a volantd restart the
// grace starts over, which delays a replacement and never hastens one.
type liveness struct {
	mu    sync.Mutex
	grace time.Duration // <= 0: replicas are never replaced for their health
	since map[string]time.Time
	kick  func() // wakes the reconciler when a grace ends
}

func newLiveness(grace time.Duration, kick func()) *liveness {
	return &liveness{grace: grace, since: map[string]time.Time{}, kick: kick}
}

// unhealthy records that the replica is seen unhealthy now and says
// whether it has been for longer than the grace (and for how long).
func (l *liveness) unhealthy(name string, now time.Time) (bool, time.Duration) {
	if l.grace <= 0 {
		return false, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	t, ok := l.since[name]
	if !ok {
		l.since[name] = now
		time.AfterFunc(l.grace, l.kick) // the pass that will replace it
		return false, 0
	}
	return now.Sub(t) >= l.grace, now.Sub(t)
}

// healthy forgets the replica: it is healthy, or not running, or gone.
func (l *liveness) healthy(name string) {
	l.mu.Lock()
	delete(l.since, name)
	l.mu.Unlock()
}
