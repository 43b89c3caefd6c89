package manifest

import (
	"slices"
	"testing"
)

func TestResolveCommand(t *testing.T) {
	image := Workload{Entrypoint: []string{"/bin/app", "--serve", "x"}}
	labels := CommandLabels([]string{"/bin/app"}, []string{"--serve", "x"})
	cmdOnly := CommandLabels(nil, []string{"/bin/sh", "-c", "run"})
	for _, tc := range []struct {
		name          string
		w             Workload
		labels        map[string]string
		command, args []string
		want          []string
	}{
		{"as built", image, labels, nil, nil, []string{"/bin/app", "--serve", "x"}},
		{"args replace Cmd", image, labels, nil, []string{"--check"}, []string{"/bin/app", "--check"}},
		{"command replaces both", image, labels, []string{"/bin/other"}, nil, []string{"/bin/other"}},
		{"command and args", image, labels, []string{"/bin/other"}, []string{"-v"}, []string{"/bin/other", "-v"}},
		{"no Entrypoint: args are the command", Workload{Entrypoint: []string{"/bin/sh", "-c", "run"}}, cmdOnly, nil, []string{"/bin/date"}, []string{"/bin/date"}},
		// A manifest whose entrypoint no longer matches the labels (set by
		// hand) is one Entrypoint: args are appended.
		{"labels stale", Workload{Entrypoint: []string{"/bin/mine"}}, labels, nil, []string{"-q"}, []string{"/bin/mine", "-q"}},
		{"no labels", Workload{Entrypoint: []string{"/bin/httpd", "-f"}}, nil, nil, []string{"-p", "80"}, []string{"/bin/httpd", "-f", "-p", "80"}},
	} {
		if got := tc.w.ResolveCommand(tc.labels, tc.command, tc.args); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	long := make([]string, 100)
	for i := range long {
		long[i] = "argument"
	}
	if CommandLabels(long, nil) != nil {
		t.Error("labels longer than 256 characters were made")
	}
}
