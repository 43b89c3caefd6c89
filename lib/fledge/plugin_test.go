package fledge

import (
	"strings"
	"testing"
)

func TestAgentPortFor(t *testing.T) {
	for _, tc := range []struct {
		exposed, baseURL string
		want             int
	}{
		{"", "", 8080},
		{"80/tcp", "http://127.0.0.1:80", 8080},
		{"8080/tcp", "http://127.0.0.1:8080", 8081},
		{"80/tcp,8080/tcp,8081/tcp", "http://127.0.0.1:80", 8082},
		{"8080/udp", "", 8080},
		{"", "http://127.0.0.1:8080", 8081},
		{"8080/tcp", "http://127.0.0.1:8081", 8082},
	} {
		if got := agentPortFor(tc.exposed, tc.baseURL); got != tc.want {
			t.Errorf("agentPortFor(%q, %q) = %d, want %d", tc.exposed, tc.baseURL, got, tc.want)
		}
	}
}

// An image's tag becomes the plugin's version when it is a valid one;
// a version the config gives is kept for the manifest's validation to
// judge.
func TestNamesVersion(t *testing.T) {
	for _, tc := range []struct {
		given, tag, want string
	}{
		{"", "1.27-alpine", "1.27-alpine"},
		{"", "17.0.9_9-jre", "17.0.9_9-jre"},
		{"", "", "0.0.0"},
		{"", "_private", "0.0.0"},
		{"", "../../etc", "0.0.0"},
		{"", "a/b", "0.0.0"},
		{"", strings.Repeat("1", 65), "0.0.0"},
		{"2.0", "1.27-alpine", "2.0"},
		{"../x", "1.27-alpine", "../x"},
	} {
		c := &Config{Plugin: Plugin{Version: tc.given}}
		if _, got := c.names("web", tc.tag); got != tc.want {
			t.Errorf("names with version %q and tag %q: version %q, want %q", tc.given, tc.tag, got, tc.want)
		}
	}
}
