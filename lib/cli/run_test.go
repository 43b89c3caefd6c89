package cli

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
)

// A small command: global flags, verbs with and without them, a verb with
// subverbs, positional arguments.
type toolOpts struct {
	DB      string    `long:"db"`
	Verbose bool      `short:"v" long:"verbose"`
	Lease   toolLease `command:"lease"`
	Show    toolShow  `command:"show"`
	Tap     struct {
		Add toolTapAdd `command:"add"`
	} `command:"tap"`
	Version VersionCommand `command:"version"`
}

type toolLease struct {
	VM    string   `long:"vm"`
	Keep  []string `short:"k" long:"keep"`
	Out   string   `short:"o"`
	Quiet bool     `short:"q"`
	ran   string
}

func (c *toolLease) Execute(_ context.Context, env *Env, g *toolOpts) error {
	c.ran = env.Name + "/" + env.Verb + " vm=" + c.VM + " db=" + g.DB
	return nil
}

type toolShow struct {
	Args struct {
		Name string `positional-arg-name:"NAME"`
	} `positional-args:"yes"`
	ran bool
}

func (c *toolShow) Execute(context.Context, *Env) error { c.ran = true; return nil }

type toolTapAdd struct {
	Name string `long:"name"`
	ran  bool
}

func (c *toolTapAdd) Execute(context.Context, *Env) error { c.ran = true; return nil }

func runTool(args ...string) (*toolOpts, *Env, error) {
	e, _, _ := env("")
	e.Args = args
	var o toolOpts
	return &o, e, Run(context.Background(), e, "volant-tool", &o)
}

func TestRunExecutesTheNamedVerb(t *testing.T) {
	o, _, err := runTool("--db", "x.db", "lease", "--vm", "web1")
	if err != nil || o.Lease.ran != "volant-tool/lease vm=web1 db=x.db" {
		t.Fatalf("lease: %v, ran %q", err, o.Lease.ran)
	}
	o, _, err = runTool("-v", "tap", "add", "--name", "t0")
	if err != nil || !o.Tap.Add.ran || o.Lease.ran != "" {
		t.Fatalf("tap add: %v, ran %v", err, o.Tap.Add.ran)
	}
	o, _, err = runTool("show", "web1")
	if err != nil || !o.Show.ran || o.Show.Args.Name != "web1" {
		t.Fatalf("show: %v %+v", err, o.Show)
	}
}

func TestRunRefusesWhatTheCommandLineCannotMean(t *testing.T) {
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{nil, "Please specify one command"},
		{[]string{"tap"}, "Please specify the add command"},
		{[]string{"show", "web1", "garbage.bin"}, `unexpected argument "garbage.bin"`},
		{[]string{"lease", "web1"}, `unexpected argument "web1"`},
		{[]string{"version", "x"}, `unexpected argument "x"`},
		{[]string{"lease", "--vm", "a1", "--vm", "a2"}, "--vm given twice (--vm a1, then --vm a2)"},
		{[]string{"lease", "--vm=a1", "--vm", "a2"}, "--vm given twice"},
		{[]string{"--db", "a", "lease", "--db", "b"}, "--db given twice"},
		{[]string{"--db=a", "--db=b", "lease"}, "--db given twice"},
		{[]string{"lease", "-o", "a", "-ob"}, "-o given twice (-o a, then -ob)"},
		{[]string{"lease", "-q", "-oa", "-qo", "b"}, "-o given twice (-oa, then -o b)"},
		{[]string{"tap", "add", "--name", "a", "--name", "b"}, "--name given twice"},
	} {
		o, e, err := runTool(tc.args...)
		if !apierr.Is(err, apierr.Usage) || Exit(e, err) != 2 || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%q: err %v, want USAGE containing %q", tc.args, err, tc.msg)
		}
		if o.Lease.ran != "" || o.Show.ran || o.Tap.Add.ran {
			t.Errorf("%q: a verb ran although the command line was refused", tc.args)
		}
	}
}

func TestRunAllowsRepeatingWhatCollectsOrSwitches(t *testing.T) {
	for _, args := range [][]string{
		{"lease", "--keep", "a", "--keep", "b", "-k", "c"},
		{"-v", "-v", "lease", "-q", "-q", "--verbose"},
		{"lease", "--vm", "a", "--", "ignored"}, // after --, nothing is a flag...
	} {
		_, _, err := runTool(args...)
		if args[len(args)-1] == "ignored" {
			// ...but the leftover argument is still refused.
			if !apierr.Is(err, apierr.Usage) || !strings.Contains(err.Error(), `"ignored"`) {
				t.Errorf("%q: %v", args, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", args, err)
		}
	}
}

func TestRunHelpExitsZero(t *testing.T) {
	o, e, err := runTool("lease", "--help")
	if Exit(e, err) != 0 || o.Lease.ran != "" {
		t.Fatalf("help: exit %d ran %q", Exit(e, err), o.Lease.ran)
	}
}

func TestVersionKindFollowsTheCommandName(t *testing.T) {
	for name, kind := range map[string]string{"volant-ipam": "ipam.version", "fledge": "fledge.version", "volantd": "volantd.version"} {
		e, out, _ := env("")
		e.Args = []string{"version"}
		if err := Run(context.Background(), e, name, &toolOpts{}); err != nil {
			t.Fatal(err)
		}
		var v map[string]any
		if err := json.Unmarshal(out.Bytes(), &v); err != nil || v["kind"] != kind || v["build"] == "" || v["version"] != "1" {
			t.Fatalf("%s version: %s", name, out)
		}
	}
	e, out, _ := env("")
	e.Name = "volant-ipam"
	if err := WriteVersion(e, struct {
		Schema int `json:"schema_version"`
	}{7}); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), `{"version":"1","kind":"ipam.version","build":"`) || !strings.HasSuffix(out.String(), `","schema_version":7}`+"\n") {
		t.Fatalf("version with extra fields: %s", out)
	}
}

func TestOverride(t *testing.T) {
	s, n, b := "stdin", 5, true
	Override(&s, "")
	Override(&n, 0)
	Override(&b, false)
	if s != "stdin" || n != 5 || !b {
		t.Fatalf("zero flags changed the request: %q %d %v", s, n, b)
	}
	Override(&s, "flag")
	Override(&n, 7)
	if s != "flag" || n != 7 {
		t.Fatalf("given flags lost: %q %d", s, n)
	}
}

func TestReadGCRequest(t *testing.T) {
	noB := func(s string) error {
		if s == "B" {
			return apierr.New(apierr.InvalidInput, "bad name %q", s)
		}
		return nil
	}
	for _, tc := range []struct {
		name   string
		stdin  string
		flags  []string
		dryRun bool
		want   GCRequest
		code   apierr.Code
	}{
		{name: "array", stdin: `["a","b"]`, want: GCRequest{Keep: []string{"a", "b"}}},
		{name: "empty array removes everything", stdin: ` [] `, want: GCRequest{Keep: []string{}}},
		{name: "object", stdin: `{"keep":["a"],"dry_run":true}`, want: GCRequest{Keep: []string{"a"}, DryRun: true}},
		{name: "flags", flags: []string{"a", "c"}, want: GCRequest{Keep: []string{"a", "c"}}},
		{name: "flags replace stdin", stdin: `["a","b"]`, flags: []string{"c"}, dryRun: true, want: GCRequest{Keep: []string{"c"}, DryRun: true}},
		{name: "no list at all", code: apierr.Usage},
		{name: "only a dry run", dryRun: true, code: apierr.Usage},
		{name: "object without keep", stdin: `{"dry_run":true}`, code: apierr.InvalidInput},
		{name: "null", stdin: `null`, code: apierr.InvalidInput},
		{name: "not strings", stdin: `["a",1]`, code: apierr.InvalidInput},
		{name: "trailing", stdin: `["a"] ["b"]`, code: apierr.InvalidInput},
		{name: "unknown field", stdin: `{"keep":[],"kepp":[]}`, code: apierr.InvalidInput},
		{name: "checked entry", stdin: `["a","B"]`, code: apierr.InvalidInput},
		{name: "checked flag", flags: []string{"B"}, code: apierr.InvalidInput},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, _, _ := env(tc.stdin)
			e.Name, e.Verb = "volant-x", "gc"
			got, err := ReadGCRequest(e, "names", tc.flags, tc.dryRun, noB)
			if tc.code != "" {
				if apierr.CodeOf(err) != tc.code {
					t.Fatalf("err %v, want %s", err, tc.code)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			g, _ := json.Marshal(got)
			w, _ := json.Marshal(tc.want)
			if string(g) != string(w) || (got.Keep == nil) != (tc.want.Keep == nil) {
				t.Fatalf("got %s, want %s", g, w)
			}
		})
	}
}

func TestRunReportsAVerbWithoutExecute(t *testing.T) {
	var o struct {
		Broken struct{} `command:"broken"`
	}
	e, _, _ := env("")
	e.Args = []string{"broken"}
	err := Run(context.Background(), e, "volant-x", &o)
	if err == nil || errors.Is(err, errHelp) || apierr.CodeOf(err) != apierr.Internal {
		t.Fatalf("err %v", err)
	}
}

func TestDefaultVerb(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "serve"},
		{[]string{"--socket", "s"}, "serve --socket s"},
		{[]string{"-v"}, "serve -v"},
		{[]string{"check", "--full"}, "check --full"},
		{[]string{"serve"}, "serve"},
	} {
		env := &Env{Args: c.args}
		got := DefaultVerb(env, "serve")
		if s := strings.Join(got.Args, " "); s != c.want {
			t.Errorf("DefaultVerb(%q) = %q, want %q", c.args, s, c.want)
		}
		if strings.Join(env.Args, " ") != strings.Join(c.args, " ") {
			t.Errorf("DefaultVerb(%q) changed its argument to %q", c.args, env.Args)
		}
	}
}
