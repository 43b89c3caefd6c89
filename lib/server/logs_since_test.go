package server_test

import (
	"bufio"
	"context"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/workloadlog"
)

// sinceLine is one line of a VM's workload output, read at At.
type sinceLine struct {
	At     time.Time
	Stream string
	Text   string
}

// writeWorkloadLog writes lines to the workload log at path as the VM's
// supervisor does (lib/workloadlog), flushed.
func writeWorkloadLog(t *testing.T, path string, lines ...sinceLine) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	w, err := workloadlog.Open(path, workloadlog.Rotation{})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range lines {
		if err := w.Write(l.Stream, l.At, []byte(l.Text)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestWorkloadLogsSince: GET /api/v1/vms/{name}/logs?since=T on the
// workload's streams leaves out what the workload wrote before T (in the
// rotated file and in the live one), keeps a line written at T and what
// came after, with --tail, --stream and --timestamps and while following;
// T is RFC 3339 (with or without fractions) or a duration before now. A T
// that is neither, or a since on the console, is INVALID_INPUT naming the
// field.
func TestWorkloadLogsSince(t *testing.T) {
	e := newEnv(t)
	e.install("web")
	if _, err := e.c.CreateVM(e.ctx, api.CreateVMRequest{Name: "web1", Plugin: "web"}); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	T := now.Add(-time.Hour).Truncate(time.Second).Add(123456789) // with a fraction
	path := e.ctl.WorkloadLog("web1")
	// Hours old, in the file the log rotated to.
	writeWorkloadLog(t, path+".1",
		sinceLine{now.Add(-3 * time.Hour), "stdout", "old out 1\n"},
		sinceLine{now.Add(-3 * time.Hour), "stderr", "old err 1\n"})
	writeWorkloadLog(t, path,
		sinceLine{T.Add(-time.Nanosecond), "stdout", "just before T\n"},
		sinceLine{T, "stdout", "at T\n"},
		sinceLine{T.Add(time.Millisecond), "stderr", "err after T\n"},
		sinceLine{now.Add(-30 * time.Second), "stdout", "out recent\n"})

	read := func(o api.LogOptions) string {
		t.Helper()
		rc, err := e.c.VMLogs(e.ctx, "web1", o)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	// Without since: everything, so the lines since leaves out are there.
	if got, want := read(api.LogOptions{Stream: api.LogWorkload}),
		"old out 1\nold err 1\njust before T\nat T\nerr after T\nout recent\n"; got != want {
		t.Fatalf("without since: %q, want %q", got, want)
	}
	for _, c := range []struct {
		name string
		o    api.LogOptions
		want string
	}{
		{"workload", api.LogOptions{Stream: api.LogWorkload, Since: T}, "at T\nerr after T\nout recent\n"},
		{"stdout", api.LogOptions{Stream: api.LogStdout, Since: T}, "at T\nout recent\n"},
		{"stderr", api.LogOptions{Stream: api.LogStderr, Since: T}, "err after T\n"},
		// --tail counts the lines since T, not the file's.
		{"tail 2", api.LogOptions{Stream: api.LogWorkload, Since: T, Tail: 2}, "err after T\nout recent\n"},
		{"tail 10", api.LogOptions{Stream: api.LogWorkload, Since: T, Tail: 10}, "at T\nerr after T\nout recent\n"},
		{"timestamps", api.LogOptions{Stream: api.LogStdout, Since: T, Timestamps: true},
			T.Format(time.RFC3339Nano) + " at T\n" + now.Add(-30*time.Second).Format(time.RFC3339Nano) + " out recent\n"},
		{"after the last line", api.LogOptions{Stream: api.LogWorkload, Since: now}, ""},
	} {
		if got := read(c.o); got != c.want {
			t.Errorf("%s since %s: %q, want %q", c.name, c.o.Since.Format(time.RFC3339Nano), got, c.want)
		}
	}

	// The query as people write it.
	get := func(q string) (int, string) {
		t.Helper()
		code, body := e.do("GET", "/api/v1/vms/web1/logs?"+q, "", nil)
		return code, string(body)
	}
	for _, c := range []struct{ q, want string }{
		// Whole seconds: from T's second on, which T's last-but-one line
		// is in too.
		{"stream=workload&since=" + url.QueryEscape(T.Truncate(time.Second).Format(time.RFC3339)), "just before T\nat T\nerr after T\nout recent\n"},
		// Another zone's offset is the same instant.
		{"stream=stdout&since=" + url.QueryEscape(T.In(time.FixedZone("", 5*3600+1800)).Format(time.RFC3339Nano)), "at T\nout recent\n"},
		// A duration before now.
		{"stream=workload&since=90m", "just before T\nat T\nerr after T\nout recent\n"},
		{"stream=workload&since=10m", "out recent\n"},
		{"stream=workload&since=1s", ""},
	} {
		if code, got := get(c.q); code != 200 || got != c.want {
			t.Errorf("?%s: %d %q, want 200 %q", c.q, code, got, c.want)
		}
	}
	for _, q := range []string{
		"stream=workload&since=yesterday",
		"stream=stdout&since=2026-13-45T00:00:00Z",
		"stream=stderr&since=1700000000",
		"stream=workload&since=2026-12-05",
		"since=10m",                // the console, by default
		"stream=console&since=10m", // the console, asked for
	} {
		code, body := e.do("GET", "/api/v1/vms/web1/logs?"+q, "", nil)
		ae := e.apiErr(code, body, 400, apierr.InvalidInput)
		if ae.Details["field"] != "since" || !strings.Contains(ae.Message, "since") {
			t.Errorf("?%s: %s %v, want a message and details naming since", q, ae.Message, ae.Details)
		}
	}

	// Following: what the log gets later comes when it is from T on; a
	// line stamped before T (a guest whose clock was behind) does not.
	ctx, cancel := context.WithTimeout(e.ctx, 20*time.Second)
	defer cancel()
	rc, err := e.c.VMLogs(ctx, "web1", api.LogOptions{Stream: api.LogWorkload, Since: T, Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	br := bufio.NewReader(rc)
	expect := func(want string) {
		t.Helper()
		line, err := br.ReadString('\n')
		if err != nil || line != want {
			t.Fatalf("follow: got %q %v, want %q", line, err, want)
		}
	}
	expect("at T\n")
	expect("err after T\n")
	expect("out recent\n")
	writeWorkloadLog(t, path,
		sinceLine{T.Add(-time.Minute), "stdout", "late, from before T\n"},
		sinceLine{time.Now(), "stderr", "followed\n"})
	expect("followed\n")
}
