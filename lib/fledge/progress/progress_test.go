package progress

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

func TestBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 5 << 20: "5.0 MiB", 3 << 30: "3.0 GiB"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestLines(t *testing.T) {
	var buf bytes.Buffer
	r := Lines(&buf)
	s := r.Step("fetch layer 1/2", 2048)
	io.Copy(io.Discard, Reader(strings.NewReader(strings.Repeat("x", 2048)), s))
	s.Done(nil)
	r.Step("mkfs", -1).Done(errors.New("boom"))
	got := buf.String()
	for _, want := range []string{
		"fledge: fetch layer 1/2 (2.0 KiB)\n",
		"fledge: fetch layer 1/2 done: 2.0 KiB in ",
		"fledge: mkfs\n",
		"fledge: mkfs failed after ",
		": boom\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("%q missing from:\n%s", want, got)
		}
	}
}

func TestDiscard(t *testing.T) {
	Or(nil).Step("x", 1).Done(nil) // Discard does nothing and does not panic
}

// record is a Reporter that writes what it is told, for comparing.
type record struct{ calls []string }

type recordStep struct {
	r    *record
	name string
}

func (r *record) Step(name string, total int64) Step {
	r.calls = append(r.calls, fmt.Sprintf("step %s %d", name, total))
	return &recordStep{r, name}
}
func (s *recordStep) Add(n int64) { s.r.calls = append(s.r.calls, fmt.Sprintf("add %s %d", s.name, n)) }
func (s *recordStep) Done(err error) {
	s.r.calls = append(s.r.calls, fmt.Sprintf("done %s %v", s.name, err))
}

// TestJSONReplay: what JSON writes, a Replayer reading it line by line
// turns into the same steps, sizes and errors.
func TestJSONReplay(t *testing.T) {
	var buf bytes.Buffer
	j := JSON(&buf)
	a := j.Step("fetch layer 1/2", 2048)
	b := j.Step("resolve x", -1)
	io.Copy(io.Discard, Reader(strings.NewReader(strings.Repeat("x", 2048)), a))
	b.Done(errors.New("boom"))
	a.Done(nil)
	j.Step("empty", 0).Done(nil)

	var rec record
	rp := NewReplayer(&rec)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 6 {
		t.Fatalf("%d lines:\n%s", len(lines), buf.String())
	}
	for _, l := range lines {
		var ev Event
		if err := json.Unmarshal([]byte(l), &ev); err != nil || ev.Kind != EventKind || ev.Version != "1" {
			t.Fatalf("line %q: %+v %v", l, ev, err)
		}
		rp.Replay(ev)
	}
	want := []string{
		"step fetch layer 1/2 2048", "step resolve x -1",
		"done resolve x boom",
		"add fetch layer 1/2 2048", "done fetch layer 1/2 <nil>",
		"step empty 0", "done empty <nil>",
	}
	if strings.Join(rec.calls, "|") != strings.Join(want, "|") {
		t.Fatalf("replayed\n%q\nwant\n%q", rec.calls, want)
	}
}
