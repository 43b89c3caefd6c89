package didyoumean

import "testing"

func TestClosest(t *testing.T) {
	keys := []string{"entrypoint", "base_url", "env", "workdir", "restart"}
	for _, tc := range []struct {
		word, want string
		ok         bool
	}{
		{"entrypint", "entrypoint", true},
		{"base_ur", "base_url", true},
		{"ENV", "env", true},
		{"restrat", "restart", true},
		{"completely", "", false},
	} {
		got, ok := Closest(tc.word, keys)
		if got != tc.want || ok != tc.ok {
			t.Errorf("Closest(%q) = %q, %v; want %q, %v", tc.word, got, ok, tc.want, tc.ok)
		}
	}
	if Distance("kitten", "sitting") != 3 || Distance("", "abc") != 3 || Distance("same", "same") != 0 {
		t.Fatal("Distance")
	}
}
