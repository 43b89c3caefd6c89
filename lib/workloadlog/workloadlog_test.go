package workloadlog

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/apierr"
)

func collect(t *testing.T, path string, o ReadOptions) []Entry {
	t.Helper()
	var out []Entry
	if err := Read(context.Background(), path, o, func(e Entry) error { out = append(out, e); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func text(es []Entry) string {
	var b strings.Builder
	for _, e := range es {
		if e.Gap > 0 {
			fmt.Fprintf(&b, "<gap %d>", e.Gap)
			continue
		}
		b.WriteString(e.Stream[:3] + ":" + string(e.Data()))
		if e.Partial {
			b.WriteString("~")
		}
		b.WriteString("|")
	}
	return b.String()
}

func TestWriteRead(t *testing.T) {
	p := filepath.Join(t.TempDir(), "workload.log")
	w, err := Open(p, Rotation{})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	w.Write("stdout", t0, []byte("one\ntwo\nhalf"))
	w.Write("stderr", t0.Add(time.Second), []byte("err\n"))
	w.Gap(t0.Add(2*time.Second), 4096)
	w.Write("stdout", t0.Add(3*time.Second), []byte("\xff\xfebinary\n"))
	w.Write("stdout", t0.Add(4*time.Second), []byte(strings.Repeat("x", MaxLine+10)+"\n"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	all := collect(t, p, ReadOptions{})
	long := "std:" + strings.Repeat("x", MaxLine) + "~|std:xxxxxxxxxx\n|"
	if got, want := text(all), "std:one\n|std:two\n|std:half~|std:err\n|<gap 4096>std:\xff\xfebinary\n|"+long; got != want {
		t.Errorf("all:\n%q\nwant\n%q", got, want)
	}
	if !all[0].Time.Equal(t0) {
		t.Errorf("time %v", all[0].Time)
	}
	if got := text(collect(t, p, ReadOptions{Stream: "stderr"})); got != "std:err\n|<gap 4096>" {
		t.Errorf("stderr only: %q", got)
	}
	if got := text(collect(t, p, ReadOptions{Since: t0.Add(2 * time.Second), Stream: "stdout"})); got != "<gap 4096>std:\xff\xfebinary\n|"+long {
		t.Errorf("since: %q", got)
	}
	// Tail counts lines: the long line's two entries are one line.
	if got := text(collect(t, p, ReadOptions{Tail: 2, Stream: "stdout"})); got != "std:\xff\xfebinary\n|"+long {
		t.Errorf("tail 2: %q", got)
	}
	raw, _ := os.ReadFile(p)
	if !bytes.Contains(raw, []byte(`"log_b64":`)) || !bytes.Contains(raw, []byte(`"gap":4096`)) {
		t.Errorf("file:\n%s", raw)
	}
}

func TestRotation(t *testing.T) {
	p := filepath.Join(t.TempDir(), "workload.log")
	w, err := Open(p, Rotation{MaxBytes: 1000, Files: 3})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i := 0; i < 100; i++ {
		w.Write("stdout", now, []byte(fmt.Sprintf("line %03d\n", i)))
	}
	w.Close()
	for _, f := range []string{p, p + ".1", p + ".2"} {
		st, err := os.Stat(f)
		if err != nil || st.Size() > 1000 {
			t.Errorf("%s: %v %v", f, st, err)
		}
	}
	if _, err := os.Stat(p + ".3"); err == nil {
		t.Error("more files than Files")
	}
	es := collect(t, p, ReadOptions{})
	last := string(es[len(es)-1].Data())
	if last != "line 099\n" || len(es) >= 100 {
		t.Errorf("%d entries, last %q", len(es), last)
	}
	for i := 1; i < len(es); i++ {
		if string(es[i].Data()) <= string(es[i-1].Data()) {
			t.Fatalf("out of order at %d: %q after %q", i, es[i].Data(), es[i-1].Data())
		}
	}
}

// A follower sees everything written after it started, through rotations.
func TestFollow(t *testing.T) {
	p := filepath.Join(t.TempDir(), "workload.log")
	w, err := Open(p, Rotation{MaxBytes: 2000, Files: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var got []string
	done := make(chan error)
	go func() {
		done <- Read(ctx, p, ReadOptions{Follow: true, Poll: 5 * time.Millisecond}, func(e Entry) error {
			mu.Lock()
			got = append(got, string(e.Data()))
			mu.Unlock()
			return nil
		})
	}()
	for i := 0; i < 300; i++ {
		w.Write("stdout", time.Now(), []byte(fmt.Sprintf("n%03d\n", i)))
		w.Flush()
		if i%10 == 0 {
			time.Sleep(6 * time.Millisecond) // let the follower keep up across rotations
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= 300 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	w.Close()
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 300 {
		t.Fatalf("follower saw %d of 300 lines (first %q)", len(got), got[:min(3, len(got))])
	}
	for i, s := range got {
		if s != fmt.Sprintf("n%03d\n", i) {
			t.Fatalf("line %d = %q", i, s)
		}
	}
}

// A follower that falls behind by whole files (a reader slower than a
// flood of output) reads the files it missed in order, and one lapped by
// the whole rotation goes on from the oldest file still there after a gap
// entry for exactly the bytes it missed: what it received plus the gap is
// all that was written.
func TestFollowBehindRotation(t *testing.T) {
	for _, tc := range []struct {
		name     string
		lines    int // written while the follower is held
		wantLost bool
	}{
		// An entry takes about 75 bytes: a file holds 13.
		{"two files behind", 30, false},
		{"lapped", 60, true},
		{"lapped many times", 400, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "workload.log")
			w, err := Open(p, Rotation{MaxBytes: 1000, Files: 3})
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			line := func(i int) string { return fmt.Sprintf("n%04d\n", i) }
			w.Write("stdout", time.Now(), []byte(line(0)))
			w.Flush()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			held, release := make(chan struct{}), make(chan struct{})
			got := make(chan Entry, 1000)
			done := make(chan error, 1)
			go func() {
				first := true
				done <- Read(ctx, p, ReadOptions{Follow: true, Poll: 5 * time.Millisecond}, func(e Entry) error {
					if first {
						first = false
						close(held)
						<-release
					}
					got <- e
					return nil
				})
			}()
			<-held
			for i := 1; i <= tc.lines; i++ {
				w.Write("stdout", time.Now(), []byte(line(i)))
			}
			w.Flush()
			close(release)
			var gaps, lost int64
			for i := 0; i <= tc.lines; {
				select {
				case e := <-got:
					if e.Gap > 0 {
						gaps++
						lost += e.Gap
						// The gap is whole lines: skip them.
						n := int(e.Gap) / len(line(0))
						if int64(n*len(line(0))) != e.Gap {
							t.Fatalf("gap of %d bytes before line %d is not whole lines of %d bytes", e.Gap, i, len(line(0)))
						}
						i += n
						continue
					}
					if s := string(e.Data()); s != line(i) {
						t.Fatalf("line %d = %q (after %d gap entries for %d bytes)", i, s, gaps, lost)
					}
					i++
				case err := <-done:
					t.Fatalf("follower ended at line %d: %v", i, err)
				case <-time.After(10 * time.Second):
					t.Fatalf("follower stopped at line %d of %d", i, tc.lines+1)
				}
			}
			if tc.wantLost != (gaps > 0) {
				t.Fatalf("%d gap entries for %d bytes; want a gap: %v", gaps, lost, tc.wantLost)
			}
			// It goes on following.
			w.Write("stdout", time.Now(), []byte(line(tc.lines+1)))
			w.Flush()
			select {
			case e := <-got:
				if string(e.Data()) != line(tc.lines+1) {
					t.Fatalf("after the flood: %+v", e)
				}
			case err := <-done:
				t.Fatalf("follower ended: %v", err)
			case <-time.After(10 * time.Second):
				t.Fatal("follower stopped after the flood")
			}
		})
	}
}

// BenchmarkWrite is the supervisor's cost per 100-byte line of output, as
// the logs stream delivers it (a record of many lines).
func BenchmarkWrite(b *testing.B) {
	w, err := Open(filepath.Join(b.TempDir(), "workload.log"), Rotation{MaxBytes: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	var rec []byte
	for i := 0; len(rec) < 32<<10; i++ {
		rec = fmt.Appendf(rec, "out %09d %s\n", i, strings.Repeat("x", 85))
	}
	now := time.Now()
	b.SetBytes(int64(len(rec)))
	for b.Loop() {
		if err := w.Write("stdout", now, rec); err != nil {
			b.Fatal(err)
		}
	}
}

// appendJSONString writes what encoding/json writes, byte for byte.
func TestAppendJSONString(t *testing.T) {
	cases := []string{"", "\n", "hello\n", "a\nb\n\n", "no newline", "tab\there", "quote\" and \\ back", "<html>&amp;</html>\n",
		"\x00\x01\x1f\x7f", "é ü 日本\n", "\u2028\u2029", strings.Repeat("x", 100) + "\n"}
	for c := 0; c < 0x80; c++ {
		cases = append(cases, string([]byte{'a', byte(c), 'b', '\n'}))
	}
	for _, s := range cases {
		want, _ := json.Marshal(s)
		if got := appendJSONString([]byte("prefix"), []byte(s)); string(got) != "prefix"+string(want) {
			t.Errorf("%q: got %s, want %s", s, got[len("prefix"):], want)
		}
	}
}

// ParseSince takes RFC 3339 or a duration before now; a negative duration
// would be a bound in the future (no lines at all, silently), so it is
// refused like any other bad value, with the field named.
func TestParseSince(t *testing.T) {
	now := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		in   string
		want time.Time
	}{
		{"", time.Time{}},
		{"10m", now.Add(-10 * time.Minute)},
		{"0s", now},
		{"2026-12-05T10:00:00Z", time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)},
	} {
		got, err := ParseSince(c.in, now)
		if err != nil || !got.Equal(c.want) {
			t.Errorf("ParseSince(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"-10m", "-1s", "yesterday", "10"} {
		_, err := ParseSince(in, now)
		if !apierr.Is(err, apierr.InvalidInput) {
			t.Errorf("ParseSince(%q): %v, want an invalid-input error", in, err)
		}
	}
}

// Each file's offset entry counts the output before it, across a reopen of
// the log (a supervisor restart): what a lapped follower's gap is made of.
func TestOffsetEntries(t *testing.T) {
	p := filepath.Join(t.TempDir(), "workload.log")
	var total int64
	for range 2 {
		w, err := Open(p, Rotation{MaxBytes: 1000, Files: 3})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 20 {
			s := fmt.Sprintf("line %d\n", i)
			w.Write("stderr", time.Now(), []byte(s))
			total += int64(len(s))
		}
		w.Gap(time.Now(), 4096)
		total += 4096
		w.Close()
	}
	var before, after int64
	offset := int64(-1)
	if err := scanFile(p, func(e Entry) error {
		if e.Offset != nil {
			offset = *e.Offset
			return nil
		}
		after += e.size()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	before = offset
	if offset < 0 || before+after != total {
		t.Fatalf("live file: offset %d + %d bytes in it = %d, want the %d written", offset, after, before+after, total)
	}
}
