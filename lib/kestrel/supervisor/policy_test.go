package supervisor

import (
	"testing"
	"time"
)

func TestPolicyModes(t *testing.T) {
	for _, tc := range []struct {
		mode    Restart
		success bool
		restart bool
	}{
		{RestartNo, true, false},
		{RestartNo, false, false},
		{RestartOnFailure, true, false},
		{RestartOnFailure, false, true},
		{RestartAlways, true, true},
		{RestartAlways, false, true},
	} {
		d := DefaultPolicy(tc.mode).Next(tc.success, time.Second, 0)
		if d.Restart != tc.restart || d.GiveUp {
			t.Errorf("%s success=%v: %+v", tc.mode, tc.success, d)
		}
	}
}

func TestPolicyBackoffAndGiveUp(t *testing.T) {
	p := DefaultPolicy(RestartAlways)
	var delays []time.Duration
	streak := 0
	var d Decision
	for i := 0; i < 20; i++ {
		d = p.Next(false, 100*time.Millisecond, streak)
		if !d.Restart {
			break
		}
		delays = append(delays, d.Delay)
		streak = d.Streak
	}
	want := []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second,
		16 * time.Second, 30 * time.Second, 30 * time.Second, 30 * time.Second, 30 * time.Second}
	if len(delays) != len(want) {
		t.Fatalf("delays %v, want %v", delays, want)
	}
	for i := range want {
		if delays[i] != want[i] {
			t.Fatalf("delays %v, want %v", delays, want)
		}
	}
	if !d.GiveUp || d.Restart {
		t.Fatalf("after %d crashes want give-up, got %+v", len(want), d)
	}
}

func TestPolicyStableRunResets(t *testing.T) {
	p := DefaultPolicy(RestartOnFailure)
	d := p.Next(false, 0, 7)
	if d.Delay != 30*time.Second || d.Streak != 8 {
		t.Fatalf("deep streak: %+v", d)
	}
	d = p.Next(false, p.Stable, d.Streak)
	if !d.Restart || d.Delay != p.Initial || d.Streak != 1 {
		t.Fatalf("a stable run must reset the backoff: %+v", d)
	}
}

func TestParseRestart(t *testing.T) {
	for in, want := range map[string]Restart{"": RestartOnFailure, "no": RestartNo, "always": RestartAlways, "on-failure": RestartOnFailure} {
		got, err := ParseRestart(in)
		if err != nil || got != want {
			t.Errorf("ParseRestart(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseRestart("sometimes"); err == nil {
		t.Error("bad mode accepted")
	}
}
