package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
)

type lease struct {
	VM  string `json:"vm"`
	IP  string `json:"ip"`
	MAC string `json:"mac"`
}

type tapReq struct {
	Name   string `json:"name,omitempty"`
	Bridge string `json:"bridge,omitempty"`
	Lease  *lease `json:"lease,omitempty"`
}

func (tapReq) Accepts() map[string]string { return map[string]string{"ipam.lease": "lease"} }

type plainReq struct {
	Name string `json:"name"`
}

func env(stdin string) (*Env, *bytes.Buffer, *bytes.Buffer) {
	var out, errb bytes.Buffer
	return &Env{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }}, &out, &errb
}

func TestReadRequest(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in       string
		want     any
		code     apierr.Code
		field    string
		provided bool
	}{
		{name: "empty stdin is no request", in: "  \n", want: &plainReq{}},
		{name: "plain", in: `{"version":"1","name":"web1"}`, want: &plainReq{Name: "web1"}, provided: true},
		{name: "no version is fine", in: `{"name":"web1"}`, want: &plainReq{Name: "web1"}, provided: true},
		{name: "unknown field", in: `{"name":"web1","nmae":"x"}`, code: apierr.InvalidInput, field: "nmae"},
		{name: "wrong type", in: `{"name":5}`, code: apierr.InvalidInput, field: "name"},
		{name: "bad version", in: `{"version":"2","name":"x"}`, code: apierr.UnsupportedVersion},
		{name: "numeric version", in: `{"version":1}`, code: apierr.UnsupportedVersion},
		{name: "not an object", in: `["web1"]`, code: apierr.InvalidInput},
		{name: "not json", in: `name=web1`, code: apierr.InvalidInput},
		{name: "trailing data", in: `{"name":"a"} {"name":"b"}`, code: apierr.InvalidInput},
		{name: "result not accepted", in: `{"version":"1","kind":"ipam.lease","vm":"a"}`, code: apierr.InvalidInput},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, _, _ := env(tc.in)
			var got plainReq
			ok, err := ReadRequest(e, &got)
			if tc.code != "" {
				if !apierr.Is(err, tc.code) {
					t.Fatalf("err = %v, want code %s", err, tc.code)
				}
				if tc.field != "" && apierr.From(err).Details["field"] != tc.field {
					t.Fatalf("details = %v, want field %s", apierr.From(err).Details, tc.field)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ok != tc.provided {
				t.Fatalf("provided = %v, want %v", ok, tc.provided)
			}
			if got != *tc.want.(*plainReq) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestChainingMovesResultIntoField(t *testing.T) {
	prev, err := MarshalResult("ipam.lease", lease{VM: "web1", IP: "192.168.127.100", MAC: "02:00:00:00:00:01"})
	if err != nil {
		t.Fatal(err)
	}
	e, _, _ := env(string(prev))
	var req tapReq
	if _, err := ReadRequest(e, &req); err != nil {
		t.Fatal(err)
	}
	if req.Lease == nil || req.Lease.VM != "web1" || req.Lease.IP != "192.168.127.100" {
		t.Fatalf("lease not chained: %+v", req)
	}

	e, _, _ = env(`{"version":"1","kind":"net.status","bridge":"vbr0"}`)
	_, err = ReadRequest(e, &tapReq{})
	if !apierr.Is(err, apierr.InvalidInput) || !strings.Contains(err.Error(), "ipam.lease") {
		t.Fatalf("unaccepted kind must name what is accepted, got %v", err)
	}
}

func TestOversizeRequestRefused(t *testing.T) {
	big := `{"name":"` + strings.Repeat("a", MaxRequestBytes) + `"}`
	e, _, _ := env(big)
	_, err := ReadRequest(e, &plainReq{})
	if !apierr.Is(err, apierr.TooLarge) {
		t.Fatalf("err = %v, want TOO_LARGE", err)
	}
}

func TestMarshalResultHeaderFirst(t *testing.T) {
	b, err := MarshalResult("ipam.lease", lease{VM: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(b), `{"version":"1","kind":"ipam.lease","vm":"a"`) {
		t.Fatalf("got %s", b)
	}
	b, err = MarshalResult("x.empty", struct{}{})
	if err != nil || string(b) != `{"version":"1","kind":"x.empty"}` {
		t.Fatalf("empty object: %s %v", b, err)
	}
	if _, err := MarshalResult("x.list", []int{1}); err == nil {
		t.Fatal("non-object results must be refused")
	}
}

func TestWriteResultOneLineOnPipe(t *testing.T) {
	e, out, _ := env("")
	if err := WriteResult(e, "ipam.lease", lease{VM: "a"}); err != nil {
		t.Fatal(err)
	}
	if strings.Count(out.String(), "\n") != 1 {
		t.Fatalf("want one line, got %q", out.String())
	}
	var m map[string]any
	if err := json.Unmarshal(out.Bytes(), &m); err != nil || m["kind"] != "ipam.lease" {
		t.Fatalf("bad result %q: %v", out.String(), err)
	}
}

func TestExitWritesErrorObjectAndStatus(t *testing.T) {
	e, out, errb := env("")
	code := Exit(e, fmt.Errorf("leasing: %w", apierr.New(apierr.IPExhausted, "pool full").With("pool", "10.0.0.0/30")))
	if code != apierr.IPExhausted.ExitCode() {
		t.Fatalf("exit = %d", code)
	}
	if out.Len() != 0 {
		t.Fatalf("stdout must stay empty on error, got %q", out.String())
	}
	var got apierr.Error
	if err := json.Unmarshal(errb.Bytes(), &got); err != nil {
		t.Fatalf("stderr is not one error object: %q", errb.String())
	}
	if got.Code != apierr.IPExhausted || got.Message != "leasing: pool full" || got.Details["pool"] != "10.0.0.0/30" {
		t.Fatalf("got %+v", got)
	}
	if Exit(e, nil) != 0 {
		t.Fatal("nil error must exit 0")
	}
}

type verbs struct {
	Verbose bool `short:"v" long:"verbose" description:"log more"`
	Lease   struct {
		VM string `long:"vm" description:"VM name"`
	} `command:"lease" description:"lease an address"`
	Tap struct {
		Add struct {
			Name string `long:"name"`
		} `command:"add"`
	} `command:"tap"`
}

func TestParseReturnsActivePath(t *testing.T) {
	for _, tc := range []struct {
		args []string
		path string
	}{
		{[]string{"lease", "--vm", "web1"}, "lease"},
		{[]string{"-v", "tap", "add", "--name", "t0"}, "tap add"},
	} {
		e, _, _ := env("")
		e.Args = tc.args
		var o verbs
		path, _, err := Parse(e, "volant-x", &o)
		if err != nil || path != tc.path {
			t.Fatalf("%v: path %q err %v", tc.args, path, err)
		}
	}

	e, out, _ := env("")
	e.Args = []string{"--help"}
	_, _, err := Parse(e, "volant-x", &verbs{})
	if Exit(e, err) != 0 || !strings.Contains(out.String(), "lease") {
		t.Fatalf("help: exit %d, out %q", Exit(e, err), out.String())
	}

	e, _, _ = env("")
	e.Args = []string{"lease", "--nope"}
	_, _, err = Parse(e, "volant-x", &verbs{})
	if !apierr.Is(err, apierr.Usage) || Exit(e, err) != 2 {
		t.Fatalf("unknown flag: %v", err)
	}
}

func TestMainShapeWithContext(t *testing.T) {
	// A run function sees its Env only; cancellation comes through ctx.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	run := func(ctx context.Context, env *Env) error { return ctx.Err() }
	e, _, _ := env("")
	if got := Exit(e, run(ctx, e)); got != apierr.Canceled.ExitCode() {
		t.Fatalf("exit = %d", got)
	}
	if !errors.Is(run(ctx, e), context.Canceled) {
		t.Fatal("ctx error lost")
	}
}
