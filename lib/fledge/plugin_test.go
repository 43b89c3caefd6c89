package fledge

import "testing"

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
