// Package names holds the one rule for names Volant gives to things it runs:
// VMs, deployments and the leases that follow them. volant-ipam, volantd and
// the launcher all check names here, so a name one accepts the others accept.
// It holds the rule for plugin versions too (ValidVersion), which end up in
// the same places.
//
// A name is 1 to 63 characters of lowercase ASCII letters, digits, '-' and
// '_', starting with a letter or a digit: "web1", "my-service-3", "ci_42".
// That is the plugin-name rule of lib/manifest, short enough to be a DNS
// label (kestrel sets it as the guest's hostname), free of '/', '.' and
// spaces (it becomes a path component under /var/lib/volant/vms and
// /run/volant/vms), and stable under lowercasing.
//
// The package has no dependencies beyond lib/apierr and the standard library,
// so kestrel may import it.
package names

import "github.com/volantvm/volant/lib/apierr"

// MaxLen is the longest name accepted.
const MaxLen = 63

// Valid reports whether s follows the rule in the package comment.
func Valid(s string) bool {
	if len(s) == 0 || len(s) > MaxLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '-' || c == '_') && i > 0:
		default:
			return false
		}
	}
	return true
}

// Check returns nil for a valid name and an INVALID_INPUT error naming what
// (for example "VM name") otherwise.
func Check(what, s string) error {
	if Valid(s) {
		return nil
	}
	if s == "" {
		return apierr.New(apierr.InvalidInput, "%s is empty", what).With("rule", Rule)
	}
	return apierr.New(apierr.InvalidInput, "invalid %s %q: %s", what, s, Rule).With("name", s).With("rule", Rule)
}

// Rule is the rule in words, for error messages and help texts.
const Rule = "use 1-63 lowercase letters, digits, '-' and '_', starting with a letter or digit"

// MaxVersionLen is the longest plugin version accepted.
const MaxVersionLen = 64

// ValidVersion reports whether s is a plugin version: 1 to 64 ASCII
// letters, digits, '.', '_', '+' and '-', starting with a letter or a
// digit: "1", "v2", "1.0.0", "1.0.0-rc.1", "2024.01+build.3", "1.27-alpine",
// "17.0.9_9-jre". That takes semantic versions (pre-release and build
// metadata) and every OCI image tag that starts with a letter or digit and
// fits (fledge gives a plugin built from an image its tag as version).
//
// A version is a path component (<data>/plugins/<name>/@<version>/), part
// of URL paths (/api/v1/plugins/<name>@<version>), of events, of volar's
// output and of a signature's trusted comment: so no '/', '@', '%', spaces
// or control characters, never "." or "..", and no leading '-' that a
// command would read as an option.
func ValidVersion(s string) bool {
	if len(s) == 0 || len(s) > MaxVersionLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case (c == '.' || c == '_' || c == '+' || c == '-') && i > 0:
		default:
			return false
		}
	}
	return true
}

// VersionRule is the version rule in words, for error messages and help
// texts.
const VersionRule = "use 1-64 ASCII letters, digits, '.', '_', '+' and '-', starting with a letter or digit"
