package manifest

import (
	"regexp"
	"strings"
	"testing"
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
