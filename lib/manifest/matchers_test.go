package manifest

import (
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/names"
)

// TestMatchersAgreeWithPatterns checks the hand-written syntax checks
// against the regular expressions they replace, on edge cases and on every
// string of up to three characters over an alphabet that exercises each
// character class.
func TestMatchersAgreeWithPatterns(t *testing.T) {
	hex := strings.Repeat("0123456789abcdef", 4)
	cases := []struct {
		name string
		re   *regexp.Regexp
		fn   func(string) bool
		more []string
	}{
		{"checksum", regexp.MustCompile(`^sha256:[0-9a-f]{64}$`), isChecksum,
			[]string{"sha256:" + hex, "sha256:" + strings.ToUpper(hex), "sha256:" + hex[1:], "sha256:" + hex + "0", "sha512:" + hex, hex, "sha256:" + hex[:63] + "g"}},
		{"hex64", regexp.MustCompile(`^[0-9a-fA-F]{64}$`), isHex64,
			[]string{hex, strings.ToUpper(hex), hex[1:], hex + "a", hex[:63] + "G", hex[:63] + "é"}},
		{"label key", regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/-]*$`), isLabelKey,
			[]string{"app", "a.b/c-d_e", "-a", ".a", "a b", "é", "9z"}},
		{"env key", regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`), isEnvKey,
			[]string{"PATH", "_x", "x9", "9x", "A-B", "", "ÄB"}},
		{"user", regexp.MustCompile(`^[0-9]+(:[0-9]+)?$`), isUser,
			[]string{"0", "1000:1000", "1000:", ":1000", "a", "1:2:3", "", "١"}},
	}
	alphabet := []string{"", "a", "Z", "0", "9", "_", "-", ".", "/", ":", " ", "g", "é"}
	var short []string
	for _, a := range alphabet {
		for _, b := range alphabet {
			for _, c := range alphabet {
				short = append(short, a+b+c)
			}
		}
	}
	for _, c := range cases {
		for _, s := range append(c.more, short...) {
			if got, want := c.fn(s), c.re.MatchString(s); got != want {
				t.Errorf("%s(%q) = %v, the pattern says %v", c.name, s, got, want)
			}
		}
	}
}

// TestSchemaPatternsAreTheRules checks the JSON Schema's patterns of name
// and version (struct tags, so the schema document) against lib/names,
// which the validator uses.
func TestSchemaPatternsAreTheRules(t *testing.T) {
	for field, rule := range map[string]func(string) bool{"Name": names.Valid, "Version": names.ValidVersion} {
		f, _ := reflect.TypeOf(Manifest{}).FieldByName(field)
		var pattern string
		for _, kv := range strings.Split(strings.ReplaceAll(f.Tag.Get("jsonschema"), `\,`, "\x00"), ",") {
			if p, ok := strings.CutPrefix(kv, "pattern="); ok {
				pattern = strings.ReplaceAll(p, "\x00", ",")
			}
		}
		if pattern == "" {
			t.Fatalf("%s has no pattern in its jsonschema tag", field)
		}
		re := regexp.MustCompile(pattern)
		more := []string{strings.Repeat("a", 63), strings.Repeat("a", 64), strings.Repeat("a", 65), "1.0.0", "v2", "2024.01+build.3", "../../etc", "1/2"}
		for c := 0; c < 256; c++ {
			more = append(more, string(rune(c)), "a"+string(rune(c)), string([]byte{byte(c)}), "a"+string([]byte{byte(c)}))
		}
		for _, s := range more {
			if got, want := rule(s), re.MatchString(s); got != want {
				t.Errorf("%s: the rule says %v for %q, the schema's pattern %s says %v", field, got, s, pattern, want)
			}
		}
	}
}
