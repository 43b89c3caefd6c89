package controller

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
)

// reps makes replicas named <prefix><index> from a spec like "HHs": H a
// healthy one, s one that is not.
func reps(prefix string, from int, spec string) []rolloutReplica {
	var out []rolloutReplica
	for k, ch := range spec {
		i := from + k
		out = append(out, rolloutReplica{Name: fmt.Sprintf("%s%d", prefix, i), Index: i, Healthy: ch == 'H'})
	}
	return out
}

// TestPlanRollout: one pass's batch from the replicas alone, for the
// limits' corners: surge only (an old one goes only once a new one is
// healthy), unavailable only (in place), both, sick old replicas going
// first and at once, done, and more new replicas than wanted.
func TestPlanRollout(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		want, surge, unavail int
		news, olds           []rolloutReplica
		create               int
		remove               []string
		done                 bool
	}{
		{"surge 1: start", 3, 1, 0, nil, reps("o", 1, "HHH"), 1, nil, false},
		{"surge 1: new one starting", 3, 1, 0, reps("n", 4, "s"), reps("o", 1, "HHH"), 0, nil, false},
		{"surge 1: new one healthy", 3, 1, 0, reps("n", 4, "H"), reps("o", 1, "HHH"), 1, []string{"o3"}, false},
		{"surge 1: two new healthy", 3, 1, 0, reps("n", 4, "HH"), reps("o", 1, "HH"), 1, []string{"o2"}, false},
		{"surge 1: all new healthy", 3, 1, 0, reps("n", 4, "HHH"), reps("o", 1, "H"), 0, []string{"o1"}, false},
		{"surge 1: done", 3, 1, 0, reps("n", 4, "HHH"), nil, 0, nil, true},
		{"surge 1: last new one starting", 3, 1, 0, reps("n", 4, "HHs"), reps("o", 1, "H"), 0, nil, false},
		{"unavailable 1: in place", 3, 0, 1, nil, reps("o", 1, "HHH"), 1, []string{"o3"}, false},
		{"unavailable 1: waits for the new one", 3, 0, 1, reps("n", 3, "s"), reps("o", 1, "HH"), 0, nil, false},
		{"unavailable 1: next", 3, 0, 1, reps("n", 3, "H"), reps("o", 1, "HH"), 1, []string{"o2"}, false},
		{"surge 2 unavailable 1: a batch of 3", 4, 2, 1, nil, reps("o", 1, "HHHH"), 3, []string{"o4"}, false},
		{"sick old ones go at once", 3, 1, 0, nil, reps("o", 1, "HsH"), 2, []string{"o2"}, false},
		{"all old sick: all go", 2, 1, 0, reps("n", 3, "H"), reps("o", 1, "ss"), 1, []string{"o1", "o2"}, false},
		{"enough new ones: every old goes", 2, 1, 0, reps("n", 3, "HHH"), reps("o", 1, "HH"), 0, []string{"o2", "o1"}, false},
		{"zero replicas", 0, 1, 0, nil, reps("o", 1, "H"), 0, []string{"o1"}, false},
		{"more new than wanted: done", 2, 1, 0, reps("n", 1, "HHs"), nil, 0, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := planRollout(tc.want, tc.surge, tc.unavail, tc.news, tc.olds)
			if p.Create != tc.create || !slices.Equal(p.Remove, tc.remove) || p.Done != tc.done {
				t.Fatalf("plan %+v, want create %d remove %v done %v", p, tc.create, tc.remove, tc.done)
			}
		})
	}
}

// TestPlanRolloutInvariants walks whole updates pass by pass, new
// replicas turning healthy between passes, for every small count and
// limit: the healthy count never drops below want−unavailable, the total
// never exceeds want+surge, and it ends with want new replicas.
func TestPlanRolloutInvariants(t *testing.T) {
	for want := 1; want <= 5; want++ {
		for surge := 0; surge <= 3; surge++ {
			for unavail := 0; unavail <= 3; unavail++ {
				if surge == 0 && unavail == 0 {
					continue
				}
				olds := reps("o", 1, "HHHHH"[:want])
				var news []rolloutReplica
				next := want + 1
				for pass := 0; ; pass++ {
					if pass > 50 {
						t.Fatalf("want %d surge %d unavailable %d: no end after 50 passes", want, surge, unavail)
					}
					p := planRollout(want, surge, unavail, news, olds)
					if p.Done {
						break
					}
					olds = slices.DeleteFunc(olds, func(r rolloutReplica) bool { return slices.Contains(p.Remove, r.Name) })
					healthy := 0
					for _, r := range append(slices.Clone(news), olds...) {
						if r.Healthy {
							healthy++
						}
					}
					if healthy < want-unavail {
						t.Fatalf("want %d surge %d unavailable %d, pass %d: %d healthy", want, surge, unavail, pass, healthy)
					}
					news = append(news, reps("n", next, "ssssssssss"[:p.Create])...)
					next += p.Create
					if total := len(news) + len(olds); total > want+surge {
						t.Fatalf("want %d surge %d unavailable %d, pass %d: %d replicas", want, surge, unavail, pass, total)
					}
					for i := range news {
						news[i].Healthy = true // they boot between passes
					}
				}
				if len(news) != want || len(olds) != 0 {
					t.Fatalf("want %d surge %d unavailable %d: ended with %d new, %d old", want, surge, unavail, len(news), len(olds))
				}
			}
		}
	}
}

func TestRolloutLimits(t *testing.T) {
	n := func(i int) *int { return &i }
	for _, tc := range []struct {
		req            api.UpdateDeploymentRequest
		templates      bool
		surge, unavail int
		deadline       time.Duration
		field          string
	}{
		{api.UpdateDeploymentRequest{}, false, 1, 0, api.DefaultRolloutDeadline, ""},
		{api.UpdateDeploymentRequest{}, true, 0, 1, api.DefaultRolloutDeadline, ""},
		{api.UpdateDeploymentRequest{MaxSurge: n(0)}, false, 0, 1, api.DefaultRolloutDeadline, ""},
		{api.UpdateDeploymentRequest{MaxSurge: n(2), MaxUnavailable: n(1), DeadlineMS: 1500}, false, 2, 1, 1500 * time.Millisecond, ""},
		{api.UpdateDeploymentRequest{MaxSurge: n(0), MaxUnavailable: n(0)}, false, 0, 0, 0, "max_unavailable"},
		{api.UpdateDeploymentRequest{MaxSurge: n(1)}, true, 0, 0, 0, "max_surge"},
		{api.UpdateDeploymentRequest{MaxSurge: n(-1)}, false, 0, 0, 0, "max_surge"},
		{api.UpdateDeploymentRequest{DeadlineMS: -5}, false, 0, 0, 0, "deadline_ms"},
	} {
		s, u, d, err := rolloutLimits(tc.req, tc.templates)
		if tc.field != "" {
			if apierr.CodeOf(err) != apierr.InvalidInput || apierr.From(err).Details["field"] != tc.field {
				t.Errorf("%+v templates %v: %v, want INVALID_INPUT on %s", tc.req, tc.templates, err, tc.field)
			}
			continue
		}
		if err != nil || s != tc.surge || u != tc.unavail || d != tc.deadline {
			t.Errorf("%+v templates %v: %d %d %s %v", tc.req, tc.templates, s, u, d, err)
		}
	}
}
