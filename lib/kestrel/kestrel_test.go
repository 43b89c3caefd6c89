package kestrel

import (
	"bytes"
	"strings"
	"testing"
)

func runMain(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := Main("test-version", Env{Args: args, Stdout: &out, Stderr: &errb, Stdin: strings.NewReader("")})
	return code, out.String(), errb.String()
}

func TestMainOutsideAGuest(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{nil, ExitUsage, "", "not the init of a guest"},
		{[]string{"version"}, ExitOK, "test-version\n", ""},
		{[]string{"frobnicate"}, ExitUsage, "", `unknown command "frobnicate"`},
		{[]string{"help"}, ExitOK, "-manifest FILE", ""},
		{[]string{"run", "--nope"}, ExitUsage, "", "flag provided but not defined: -nope"},
		{[]string{"run", "extra"}, ExitUsage, "", `unexpected argument "extra"`},
		{[]string{"run", "--cmdline", "volant.api_port=99999"}, ExitUsage, "", "want a port number"},
		{[]string{"run", "--listen", "127.0.0.1:0", "--manifest", "/no/such.json"}, ExitError, "", "reading the manifest"},
		{[]string{"run", "--listen", "127.0.0.1:0"}, ExitError, "", "no manifest: volant.manifest"},
	} {
		code, stdout, stderr := runMain(tc.args...)
		if code != tc.code || !strings.Contains(stdout, tc.stdout) || !strings.Contains(stderr, tc.stderr) {
			t.Errorf("kestrel %v: exit %d\nstdout %q\nstderr %q", tc.args, code, stdout, stderr)
		}
	}
}
