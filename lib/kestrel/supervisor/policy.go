package supervisor

import (
	"fmt"
	"time"
)

// Restart is a manifest's workload.restart.
type Restart string

const (
	RestartNo        Restart = "no"
	RestartOnFailure Restart = "on-failure"
	RestartAlways    Restart = "always"
)

// Policy decides what happens after the workload exits.
//
// The give-up rule: a run shorter than Stable is a crash; after MaxCrashes
// crashes in a row the workload is left stopped (state "failed"), whatever
// the mode. A run of at least Stable resets the count and the backoff. The
// delay before restart n of a crash streak is Initial·2^(n-1), at most Max.
// With the defaults (0.5 s, 30 s, 10 s, 10) a workload that dies at once is
// retried for about two minutes before kestrel gives up.
type Policy struct {
	Mode       Restart
	Initial    time.Duration
	Max        time.Duration
	Stable     time.Duration
	MaxCrashes int
}

// Policy defaults.
const (
	DefaultInitialBackoff = 500 * time.Millisecond
	DefaultMaxBackoff     = 30 * time.Second
	DefaultStableRun      = 10 * time.Second
	DefaultMaxCrashes     = 10
)

// DefaultPolicy returns the default policy for a mode.
func DefaultPolicy(mode Restart) Policy {
	return Policy{
		Mode:       mode,
		Initial:    DefaultInitialBackoff,
		Max:        DefaultMaxBackoff,
		Stable:     DefaultStableRun,
		MaxCrashes: DefaultMaxCrashes,
	}
}

// ParseRestart checks a restart mode ("" means on-failure).
func ParseRestart(s string) (Restart, error) {
	switch Restart(s) {
	case "":
		return RestartOnFailure, nil
	case RestartNo, RestartOnFailure, RestartAlways:
		return Restart(s), nil
	}
	return "", fmt.Errorf("restart policy %q: want no, on-failure or always", s)
}

// Decision is what to do after one exit.
type Decision struct {
	Restart bool
	Delay   time.Duration
	// GiveUp is set when a restart was wanted but the crash cap was hit.
	GiveUp bool
	// Streak is the crash streak after this exit, to pass to the next call.
	Streak int
}

// Next decides after an exit. success is a zero exit status; ran is how long
// the process ran (0 when it could not be started); streak is the previous
// Decision's Streak (0 at first).
func (p Policy) Next(success bool, ran time.Duration, streak int) Decision {
	switch p.Mode {
	case RestartNo:
		return Decision{}
	case RestartOnFailure:
		if success {
			return Decision{}
		}
	}
	if ran >= p.Stable {
		streak = 0
	}
	streak++
	if p.MaxCrashes > 0 && streak > p.MaxCrashes {
		return Decision{GiveUp: true, Streak: streak}
	}
	d := p.Initial
	for i := 1; i < streak && d < p.Max; i++ {
		d *= 2
	}
	if p.Max > 0 && d > p.Max {
		d = p.Max
	}
	return Decision{Restart: true, Delay: d, Streak: streak}
}
