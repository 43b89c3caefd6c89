package controller

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/agentapi"
)

func TestTailOffset(t *testing.T) {
	for _, tc := range []struct {
		content string
		n       int
		want    string
	}{
		{"a\nb\nc\n", 1, "c\n"},
		{"a\nb\nc\n", 2, "b\nc\n"},
		{"a\nb\nc\n", 3, "a\nb\nc\n"},
		{"a\nb\nc\n", 9, "a\nb\nc\n"},
		{"a\nb\nc", 1, "c"},
		{"a\nb\nc", 2, "b\nc"},
		{"", 3, ""},
		{"\n\n", 1, "\n"},
		{strings.Repeat("x", 20000) + "\nlast\n", 1, "last\n"},
		{"first\n" + strings.Repeat("y", 20000) + "\n", 1, strings.Repeat("y", 20000) + "\n"},
	} {
		p := filepath.Join(t.TempDir(), "log")
		os.WriteFile(p, []byte(tc.content), 0o644)
		f, _ := os.Open(p)
		off, err := tailOffset(f, tc.n)
		f.Close()
		if err != nil || tc.content[off:] != tc.want {
			t.Errorf("tail %d of %.20q: got %.20q (%v), want %.20q", tc.n, tc.content, tc.content[off:], err, tc.want)
		}
	}
}

func TestVerdict(t *testing.T) {
	st := func(w agentapi.WorkloadState, h agentapi.HealthState) *agentapi.Status {
		return &agentapi.Status{Workload: agentapi.WorkloadStatus{State: w}, Health: agentapi.HealthStatus{State: h}}
	}
	for _, tc := range []struct {
		st    *agentapi.Status
		check bool
		want  agentapi.HealthState
	}{
		{st(agentapi.WorkloadRunning, agentapi.HealthUnknown), false, agentapi.HealthHealthy},
		{st(agentapi.WorkloadRunning, agentapi.HealthUnknown), true, agentapi.HealthUnknown},
		{st(agentapi.WorkloadRunning, agentapi.HealthHealthy), true, agentapi.HealthHealthy},
		{st(agentapi.WorkloadRunning, agentapi.HealthUnhealthy), true, agentapi.HealthUnhealthy},
		{st(agentapi.WorkloadRunning, agentapi.HealthUnhealthy), false, agentapi.HealthUnhealthy},
		{st(agentapi.WorkloadStarting, agentapi.HealthUnknown), false, agentapi.HealthUnknown},
		{st(agentapi.WorkloadRestarting, agentapi.HealthUnknown), false, agentapi.HealthUnknown},
		{st(agentapi.WorkloadFailed, agentapi.HealthHealthy), true, agentapi.HealthUnhealthy},
		{st(agentapi.WorkloadExited, agentapi.HealthUnknown), false, agentapi.HealthUnhealthy},
	} {
		if got := verdict(tc.st, tc.check); got != tc.want {
			t.Errorf("verdict(%s/%s, check %v) = %s, want %s", tc.st.Workload.State, tc.st.Health.State, tc.check, got, tc.want)
		}
	}
}

// A version's directory is one component under the plugin's: the version
// itself, or for a version installed before the version rule that breaks
// it, its digest (as then, so installed files stay where they are).
func TestPluginVersionDir(t *testing.T) {
	c := &Controller{cfg: Config{DataDir: "/d"}}
	for version, want := range map[string]string{
		"1.0.0":           "/d/plugins/web/@1.0.0",
		"2024.01+build.3": "/d/plugins/web/@2024.01+build.3",
		"v2":              "/d/plugins/web/@v2",
		"17.0.9_9-jre":    "/d/plugins/web/@17.0.9_9-jre",
		"1.0/beta":        "/d/plugins/web/@df3abc1822d35936",
		"../../etc":       "/d/plugins/web/@74ccf3c5b4c19a81",
	} {
		if got := c.pluginVersionDir("web", version); got != want {
			t.Errorf("pluginVersionDir(web, %q) = %s, want %s", version, got, want)
		}
	}
}
