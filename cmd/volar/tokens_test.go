package main

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/cli/clitest"
)

var reSecret = regexp.MustCompile(`volant_[A-Za-z0-9_-]{43}`)

// TestTokensWithDaemon: an admin (root on the unix socket) creates named
// tokens with roles; a viewer's token reads over TCP and is refused
// (PERMISSION_DENIED) what needs more; revoked, it is UNAUTHORIZED.
func TestTokensWithDaemon(t *testing.T) {
	d := startDaemon(t)
	url := d.listenTCP()
	tr := &transcript{d: d}
	secrets := map[string]string{}
	masked := func(s string) string {
		s = strings.ReplaceAll(s, url, "$URL")
		for name, sec := range secrets {
			s = strings.ReplaceAll(s, sec, "$SECRET_"+strings.ToUpper(name))
		}
		return reSecret.ReplaceAllString(s, "$$SECRET")
	}
	create := func(name string, args ...string) {
		r := tr.run(0, append([]string{"-q", "tokens", "create", name}, args...)...)
		sec := strings.TrimSpace(r.Stdout)
		if !reSecret.MatchString(sec) || strings.Count(r.Stdout, "\n") != 1 {
			t.Fatalf("tokens create -q printed %q, want the secret alone", r.Stdout)
		}
		secrets[name] = sec
	}
	create("ci", "--role", "viewer")
	create("deployer", "--role", "operator", "--expires-in", "30d")
	tr.run(0, "tokens", "create", "ops", "--role", "admin")
	tr.run(1, "tokens", "create", "ci", "--role", "admin")
	tr.run(2, "tokens", "create", "bad", "--role", "root")
	tr.run(1, "tokens", "create", "soon", "--role", "viewer", "--expires-in", "forever")
	tr.all("tokens", "list")

	as := func(name string, code int, args ...string) {
		t.Helper()
		r := runVolar(t, "", map[string]string{"VOLANT_HOST": url, "VOLANT_TOKEN": secrets[name]}, args...)
		if r.Code != code {
			t.Fatalf("as %s: volar %v: %s\nwant exit %d", name, args, r, code)
		}
		fmt.Fprintf(&tr.b, "$ VOLANT_TOKEN=$SECRET_%s volar %s\n%s\n", strings.ToUpper(name), strings.Join(args, " "), masked(d.mask(r.String())))
	}
	as("ci", 0, "vms", "list")
	as("ci", 1, "vms", "create", "web1", "--plugin", "caddy")
	as("ci", 1, "tokens", "list")
	as("deployer", 1, "vms", "create", "web1", "--plugin", "caddy") // passes the role, the plugin is missing
	as("deployer", 1, "plugins", "remove", "caddy")
	tr.run(0, "tokens", "revoke", "ci")
	tr.run(0, "-o", "json", "tokens", "revoke", "ci")
	tr.run(1, "tokens", "revoke", "nobody")
	as("ci", 1, "vms", "list")
	clitest.Golden(t, "session-tokens", masked(tr.b.String()))
}
