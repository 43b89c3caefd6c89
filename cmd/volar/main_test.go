package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/cli/clitest"
	"github.com/volantvm/volant/lib/volar"
)

// TestMain lets the test binary be volar itself: started through a link
// named "volar" (volarBinary), it runs main. Shell tests (completion, the
// console under tmux) run it as a real program. Through a link named
// "fledge" it is the fake fledge that volantd asks about images (fakeFledge).
func TestMain(m *testing.M) {
	switch filepath.Base(os.Args[0]) {
	case "volar":
		main()
	case "fledge":
		os.Exit(fakeFledge(os.Args[1:], os.Stdout, os.Stderr))
	}
	code := m.Run()
	if vmBins != "" {
		os.RemoveAll(vmBins) // the binaries realBinaries built
	}
	os.Exit(code)
}

// volarBinary returns the path of a "volar" that is this test binary.
func volarBinary(t testing.TB) string {
	t.Helper()
	return selfAs(t, "volar")
}

// selfAs returns the path of a link named name to this test binary.
func selfAs(t testing.TB, name string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, name)
	if err := os.Symlink(self, p); err != nil {
		t.Fatal(err)
	}
	return p
}

type result struct {
	Stdout, Stderr string
	Code           int
}

// runVolar runs the command in memory with env as its environment.
func runVolar(t testing.TB, stdin string, env map[string]string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	e := &cli.Env{Args: args, Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb,
		Getenv: func(k string) string { return env[k] }}
	code := run(context.Background(), e)
	return result{Stdout: out.String(), Stderr: errb.String(), Code: code}
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\n-- stdout\n%s-- stderr\n%s", r.Code, r.Stdout, r.Stderr)
}

// commandPaths lists every command of volar, from the flag definitions.
func commandPaths(t *testing.T) [][]string {
	t.Helper()
	r := runVolar(t, "", nil, "--help")
	var paths [][]string
	var walk func(prefix []string, help string)
	walk = func(prefix []string, help string) {
		_, list, found := strings.Cut(help, "Available commands:\n")
		if !found {
			return
		}
		for _, line := range strings.Split(list, "\n") {
			f := strings.Fields(line)
			if len(f) == 0 {
				continue
			}
			p := append(append([]string{}, prefix...), f[0])
			paths = append(paths, p)
			sub := runVolar(t, "", nil, append(p, "--help")...)
			walk(p, sub.Stdout)
		}
	}
	walk(nil, r.Stdout)
	return paths
}

// TestHelpAtEveryLevel checks that every command has help that exits 0,
// names its usage and documents every flag it accepts; the whole text is a
// golden file, so a change in help shows up in review.
func TestHelpAtEveryLevel(t *testing.T) {
	paths := commandPaths(t)
	want := []string{"completion", "deployments", "deployments create", "deployments delete", "deployments list",
		"deployments rollout", "deployments rollout history", "deployments rollout status", "deployments rollout undo",
		"deployments scale", "deployments show", "deployments update", "events", "plugins", "plugins disable", "plugins enable",
		"plugins install", "plugins list", "plugins remove", "plugins show", "run", "setup", "snapshots", "snapshots delete",
		"snapshots list", "snapshots show", "tokens", "tokens create", "tokens list", "tokens revoke", "version", "vms",
		"vms console", "vms cp", "vms create", "vms delete", "vms exec", "vms list", "vms logs", "vms pause", "vms restart", "vms restore", "vms resume",
		"vms show", "vms snapshot", "vms start", "vms stop", "vms wait", "volumes", "volumes create", "volumes delete", "volumes list", "volumes resize", "volumes show"}
	var got []string
	for _, p := range paths {
		got = append(got, strings.Join(p, " "))
	}
	sort.Strings(got)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("commands:\n got %v\nwant %v", got, want)
	}
	var all strings.Builder
	r := runVolar(t, "", nil, "--help")
	fmt.Fprintf(&all, "$ volar --help\n%s", r)
	for _, p := range paths {
		r := runVolar(t, "", nil, append(p, "--help")...)
		if r.Code != 0 || r.Stderr != "" {
			t.Errorf("volar %s --help: %s", strings.Join(p, " "), r)
		}
		if !strings.Contains(r.Stdout, "volar [OPTIONS] "+strings.Join(p, " ")) {
			t.Errorf("volar %s --help has no usage line:\n%s", strings.Join(p, " "), r.Stdout)
		}
		// -h works too and prints the same.
		if h := runVolar(t, "", nil, append(p, "-h")...); h.Stdout != r.Stdout {
			t.Errorf("volar %s -h differs from --help", strings.Join(p, " "))
		}
		fmt.Fprintf(&all, "\n$ volar %s --help\n%s", strings.Join(p, " "), r)
	}
	clitest.Golden(t, "help", all.String())
}

// TestUsageErrors: exit 2, nothing sent (the daemon address is one that
// would fail with exit 3 if anything were).
func TestUsageErrors(t *testing.T) {
	env := map[string]string{"VOLANT_HOST": "/nonexistent/volantd.sock"}
	cases := []struct {
		name string
		args []string
	}{
		{"no-command", nil},
		{"unknown-command", []string{"vmz"}},
		{"unknown-flag", []string{"vms", "list", "--colour"}},
		{"bad-output", []string{"-o", "yaml", "vms", "list"}},
		{"show-no-name", []string{"vms", "show"}},
		{"show-two-names", []string{"vms", "show", "a", "b"}},
		{"create-no-plugin", []string{"vms", "create", "web1"}},
		{"create-bad-name", []string{"vms", "create", "Web_1!", "--plugin", "caddy"}},
		{"create-negative-cpu", []string{"vms", "create", "web1", "--plugin", "caddy", "--cpu", "-1"}},
		{"list-bad-state", []string{"vms", "list", "--state", "sleeping"}},
		{"wait-bad-state", []string{"vms", "wait", "web1", "--state", "sleeping"}},
		{"console-bad-escape", []string{"vms", "console", "web1", "--escape", "q"}},
		{"logs-negative-tail", []string{"vms", "logs", "web1", "--tail", "-3"}},
		{"deploy-no-replicas", []string{"deployments", "create", "web", "--plugin", "caddy"}},
		{"deploy-too-many", []string{"deployments", "create", "web", "--plugin", "caddy", "--replicas", "1001"}},
		{"deploy-no-plugin", []string{"deployments", "create", "web", "--replicas", "2"}},
		{"scale-no-replicas", []string{"deployments", "scale", "web"}},
		{"scale-negative", []string{"deployments", "scale", "web", "--replicas", "-1"}},
		{"events-negative-since", []string{"events", "--since", "-4"}},
		{"events-bad-since", []string{"events", "--since", "x"}},
		{"completion-fish", []string{"completion", "fish"}},
		{"bad-host", []string{"--host", "tcp://x:1", "vms", "list"}},
		{"json-usage", []string{"-o", "json", "vms", "show"}},
		{"flag-given-twice", []string{"vms", "create", "web1", "--plugin", "caddy", "--cpu", "1", "--cpu", "2"}},
		{"host-given-twice", []string{"-H", "/a.sock", "vms", "list", "--host", "/b.sock"}},
	}
	var all strings.Builder
	for _, c := range cases {
		r := runVolar(t, "", env, c.args...)
		if r.Code != 2 || r.Stdout != "" {
			t.Errorf("%s: %s", c.name, r)
		}
		fmt.Fprintf(&all, "$ volar %s\n%s\n", strings.Join(c.args, " "), r)
	}
	clitest.Golden(t, "usage-errors", all.String())
}

// TestUnreachable: every command that talks to volantd says where it
// looked and how to start it, and exits 3.
func TestUnreachable(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "volantd.sock")
	mask := func(s string) string { return strings.ReplaceAll(s, sock, "$SOCK") }
	var all strings.Builder
	for _, c := range []struct {
		env  map[string]string
		args []string
	}{
		{map[string]string{"VOLANT_HOST": sock}, []string{"vms", "list"}},
		{nil, []string{"--host", sock, "plugins", "show", "caddy"}},
		{nil, []string{"-H", "unix://" + sock, "-o", "json", "deployments", "list"}},
		{map[string]string{"VOLANT_HOST": "http://127.0.0.1:1", "VOLANT_TOKEN": "t"}, []string{"events"}},
		{map[string]string{"VOLANT_HOST": sock}, []string{"vms", "logs", "web1", "--follow"}},
		{map[string]string{"VOLANT_HOST": sock}, []string{"vms", "console", "web1"}},
		{map[string]string{"VOLANT_HOST": sock}, []string{"vms", "create", "web1", "--plugin", "caddy", "--wait"}},
	} {
		r := runVolar(t, "", c.env, c.args...)
		if r.Code != 3 || r.Stdout != "" {
			t.Errorf("volar %v: %s", c.args, r)
		}
		fmt.Fprintf(&all, "$ volar %s\n%s\n", mask(strings.Join(c.args, " ")), mask(r.String()))
	}
	// version reports an unreachable daemon without failing.
	r := runVolar(t, "", map[string]string{"VOLANT_HOST": sock}, "version")
	if r.Code != 0 || !strings.Contains(r.Stdout, "cannot reach volantd") {
		t.Errorf("version: %s", r)
	}
	fmt.Fprintf(&all, "$ volar version\n%s\n", regexp.MustCompile(`(volar:\s+)\S+`).ReplaceAllString(mask(r.String()), "${1}$$VERSION"))
	clitest.Golden(t, "unreachable", all.String())
}

// TestCompletionInProcess: GO_FLAGS_COMPLETION turns a run into a list of
// candidates for the last word.
func TestCompletionInProcess(t *testing.T) {
	t.Setenv("GO_FLAGS_COMPLETION", "1")
	t.Setenv("VOLANT_HOST", "/nonexistent/volantd.sock") // no names to offer
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{""}, "completion\ndeployments\nevents\nplugins\nrun\nsetup\nsnapshots\ntokens\nversion\nvms\nvolumes\n"},
		{[]string{"v"}, "version\nvms\nvolumes\n"},
		{[]string{"vms", "st"}, "start\nstop\n"},
		{[]string{"vms", "create", "--pl"}, "--plugin\n"},
		{[]string{"vms", "logs", "--f"}, "--follow\n"},
		{[]string{"-o", ""}, ""},
		{[]string{"vms", "show", ""}, ""}, // names come from volantd, which is not there
		{[]string{"completion", ""}, ""},
	} {
		r := runVolar(t, "", nil, c.args...)
		if r.Code != 0 || r.Stdout != c.want {
			t.Errorf("complete %q: %s, want %q", c.args, r, c.want)
		}
	}
	t.Setenv("GO_FLAGS_COMPLETION", "verbose")
	r := runVolar(t, "", nil, "vms", "st")
	if !strings.Contains(r.Stdout, "start  # Start a stopped, crashed or failed VM\n") {
		t.Errorf("verbose completion: %s", r)
	}
}

// bashComplete completes line the way bash does when Tab is pressed: it
// sources the generated script in a real bash and calls its function with
// COMP_WORDS/COMP_CWORD. It returns `complete -p volar` and the candidates.
func bashComplete(t *testing.T, line string, env ...string) string {
	t.Helper()
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	bin := volarBinary(t)
	script := filepath.Join(t.TempDir(), "volar.bash")
	if r := runVolar(t, "", nil, "completion", "bash"); r.Code != 0 {
		t.Fatal(r)
	} else if err := os.WriteFile(script, []byte(r.Stdout), 0o644); err != nil {
		t.Fatal(err)
	}
	// Split like readline: words, plus an empty current word after a
	// trailing space.
	words := strings.Fields(line)
	if strings.HasSuffix(line, " ") {
		words = append(words, "")
	}
	var quoted []string
	for _, w := range words {
		quoted = append(quoted, fmt.Sprintf("%q", w))
	}
	prog := fmt.Sprintf(`source %q
complete -p volar
COMP_WORDS=(%s); COMP_CWORD=%d; COMP_LINE=%q; COMP_POINT=${#COMP_LINE}
_volar_complete
printf '%%s\n' "${COMPREPLY[@]}"`, script, strings.Join(quoted, " "), len(words)-1, line)
	cmd := exec.Command(bash, "--norc", "--noprofile", "-c", prog)
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(bin)+":"+os.Getenv("PATH"), "VOLANT_HOST=/nonexistent/volantd.sock")
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bash: %v\n%s", err, out)
	}
	return string(out)
}

// TestBashCompletion: the generated script registers itself and completes
// commands, subcommands, flags and file names.
func TestBashCompletion(t *testing.T) {
	reg := "complete -o default -F _volar_complete volar\n"
	for _, c := range []struct{ line, want string }{
		{"volar ", "completion\ndeployments\nevents\nplugins\nrun\nsetup\nsnapshots\ntokens\nversion\nvms\nvolumes\n"},
		{"volar de", "deployments\n"},
		{"volar vms ", "console\ncp\ncreate\ndelete\nexec\nlist\nlogs\npause\nrestart\nrestore\nresume\nshow\nsnapshot\nstart\nstop\nwait\n"},
		{"volar vms create web1 --", "--cpu\n--from-snapshot\n--help\n--host\n--kernel-arg\n--memory\n--output\n--plugin\n--publish\n--quiet\n--secret-env\n--secret-file\n--timeout\n--token\n--volume\n--wait\n"},
		{"volar deployments scale web --r", "--replicas\n"},
	} {
		if got := bashComplete(t, c.line); got != reg+c.want {
			t.Errorf("completing %q:\n got %q\nwant %q", c.line, got, reg+c.want)
		}
	}
	// File names for --manifest, from volar's own completion.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "caddy.json"), []byte("{}"), 0o644)
	if got := bashComplete(t, "volar plugins install --manifest "+dir+"/ca"); got != reg+dir+"/caddy.json\n" {
		t.Errorf("completing a manifest path: %q", got)
	}
}

// `vms exec -i -o json` sends its stdin whole: more than it takes is
// refused before volantd is asked anything, never cut short.
func TestExecJSONStdinTooLarge(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "volantd.sock") // nobody listens
	env := map[string]string{"VOLANT_HOST": sock}
	r := runVolar(t, strings.Repeat("x", volar.MaxJSONStdin+1), env, "-o", "json", "vms", "exec", "-i", "web1", "--", "cat")
	if r.Code != 125 || r.Stdout != "" || !strings.Contains(r.Stderr, `"TOO_LARGE"`) {
		t.Errorf("1 MiB + 1 of stdin: %s", r)
	}
	// At the bound the stdin is taken: what fails then is reaching volantd.
	r = runVolar(t, strings.Repeat("x", volar.MaxJSONStdin), env, "-o", "json", "vms", "exec", "-i", "web1", "--", "cat")
	if r.Code != 125 || strings.Contains(r.Stderr, "TOO_LARGE") || !strings.Contains(r.Stderr, `"UNAVAILABLE"`) {
		t.Errorf("1 MiB of stdin: %s", r)
	}
}
