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

func TestValidVersion(t *testing.T) {
	for _, tc := range []struct {
		version string
		ok      bool
	}{
		// Versions in examples, docs, tests and image tags.
		{"1", true},
		{"1.0", true},
		{"1.0.0", true},
		{"v2", true},
		{"v53.0", true},
		{"2024.01+build.3", true},
		{"1.0.0-rc.1+sha.5114f85", true},
		{"1.27-alpine", true},
		{"17.0.9_9-jre", true},
		{"1.1.1+ds1-3+b5", true},
		{"latest", true},
		{strings.Repeat("9", 64), true},
		// What would be a path, an option or not one word.
		{"", false},
		{strings.Repeat("9", 65), false},
		{".", false},
		{"..", false},
		{"../../etc", false},
		{".hidden", false},
		{"1.0/beta", false},
		{"1.0\\beta", false},
		{"-rc1", false},
		{"+1", false},
		{"_1", false},
		{"web@1", false},
		{"1 0", false},
		{"1.0\x00", false},
		{"1.0\n", false},
		{"1.0\x1b[31m", false},
		{"1%2F2", false},
		{"1:2.0", false},
		{"1.0~rc1", false},
		{"1.0é", false},
	} {
		if got := ValidVersion(tc.version); got != tc.ok {
			t.Errorf("ValidVersion(%q) = %v, want %v", tc.version, got, tc.ok)
		}
	}
}

// The version rule is the JSON Schema's pattern of a manifest's version
// (lib/manifest); keep them identical.
func TestVersionSameAsRegexp(t *testing.T) {
	re := regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$`)
	for c := 0; c < 256; c++ {
		for _, s := range []string{string(rune(c)), "a" + string(rune(c)), string([]byte{byte(c)}), "a" + string([]byte{byte(c)})} {
			if ValidVersion(s) != re.MatchString(s) {
				t.Fatalf("ValidVersion(%q) = %v, regexp says %v", s, ValidVersion(s), re.MatchString(s))
			}
		}
	}
}
