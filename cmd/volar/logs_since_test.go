package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/workloadlog"
)

// TestLogsSince: `volar vms logs NAME --since T` prints the workload's
// lines from T on and none before, with --stream, --tail and --follow; T
// is RFC 3339 or a duration before now. A T that is neither, or --since
// with --console, is a usage error (exit 2) naming --since, which reaches
// no daemon.
func TestLogsSince(t *testing.T) {
	d := startDaemon(t)
	if r := d.volar("plugins", "install", "--manifest", d.manifest("caddy", "2.8.4", "")); r.Code != 0 {
		t.Fatal(r)
	}
	if r := d.volar("vms", "create", "web1", "--plugin", "caddy"); r.Code != 0 {
		t.Fatal(r)
	}
	now := time.Now().UTC()
	T := now.Add(-2 * time.Hour).Truncate(time.Second)
	path := d.ctl.WorkloadLog("web1")
	write := func(at time.Time, stream, text string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		w, err := workloadlog.Open(path, workloadlog.Rotation{})
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Write(stream, at, []byte(text)); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	write(now.Add(-3*time.Hour), "stdout", "three hours ago\n")
	write(T.Add(-time.Millisecond), "stderr", "just before T\n")
	write(T, "stdout", "at T\n")
	write(now.Add(-time.Hour), "stderr", "an hour ago\n")
	write(now.Add(-time.Minute), "stdout", "a minute ago\n")

	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "three hours ago\njust before T\nat T\nan hour ago\na minute ago\n"},
		{[]string{"--since", T.Format(time.RFC3339)}, "at T\nan hour ago\na minute ago\n"},
		{[]string{"--since", T.Format(time.RFC3339), "--stream", "stderr"}, "an hour ago\n"},
		{[]string{"--since", T.Format(time.RFC3339), "--tail", "1"}, "a minute ago\n"},
		{[]string{"--since", "150m"}, "just before T\nat T\nan hour ago\na minute ago\n"},
		{[]string{"--since", "30m"}, "a minute ago\n"},
		{[]string{"--since", "10s"}, ""},
	} {
		r := d.volar(append([]string{"vms", "logs", "web1"}, c.args...)...)
		if r.Code != 0 || r.Stdout != c.want || r.Stderr != "" {
			t.Errorf("vms logs web1 %s: %s\nwant stdout %q", strings.Join(c.args, " "), r, c.want)
		}
	}

	// --follow from T: the lines so far from T on, then what comes.
	s := d.start(d.env(), "vms", "logs", "web1", "-f", "--since", T.Format(time.RFC3339Nano))
	s.waitOutput(t, "the lines since T", func(o string) bool { return o == "at T\nan hour ago\na minute ago\n" })
	write(time.Now(), "stderr", "new\n")
	s.waitOutput(t, "a new line", func(o string) bool { return strings.HasSuffix(o, "a minute ago\nnew\n") })
	if r := s.end(t); r.Code != 0 || r.Stdout != "at T\nan hour ago\na minute ago\nnew\n" {
		t.Fatalf("logs -f --since: %s", r)
	}

	for _, args := range [][]string{
		{"--since", "yesterday"},
		{"--since", "2026-12-05"},
		{"--since", "1700000000"},
		{"--since", "10m", "--console"},
	} {
		r := d.volar(append([]string{"vms", "logs", "web1"}, args...)...)
		if r.Code != 2 || r.Stdout != "" || !strings.Contains(r.Stderr, "since") {
			t.Errorf("vms logs web1 %s: %s\nwant exit 2 and a message naming --since", strings.Join(args, " "), r)
		}
	}
}
