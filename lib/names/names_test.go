package names

import (
	"regexp"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
)

func TestValid(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"web1", true},
		{"my-service-1", true},
		{"ci_42", true},
		{"0", true},
		{"a", true},
		{strings.Repeat("a", 63), true},
		{strings.Repeat("a", 64), false},
		{"", false},
		{"-web", false},
		{"_web", false},
		{"Web1", false},
		{"web.1", false},
		{"web/1", false},
		{"web 1", false},
		{"wéb", false},
		{"web\n", false},
		{"..", false},
	} {
		if got := Valid(tc.name); got != tc.ok {
			t.Errorf("Valid(%q) = %v, want %v", tc.name, got, tc.ok)
		}
		err := Check("VM name", tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("Check(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !apierr.Is(err, apierr.InvalidInput) {
			t.Errorf("Check(%q) code = %s, want INVALID_INPUT", tc.name, apierr.CodeOf(err))
		}
	}
}

// The rule is the manifest's plugin-name rule; keep them identical.
func TestSameAsRegexp(t *testing.T) {
	re := regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	for c := 0; c < 256; c++ {
		for _, s := range []string{string(rune(c)), "a" + string(rune(c)), string([]byte{byte(c)}), "a" + string([]byte{byte(c)})} {
			if Valid(s) != re.MatchString(s) {
				t.Fatalf("Valid(%q) = %v, regexp says %v", s, Valid(s), re.MatchString(s))
			}
		}
	}
}
