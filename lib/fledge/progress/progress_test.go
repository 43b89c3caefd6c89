package progress

import (
	"bytes"
	"errors"
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

func TestBarWritesSomething(t *testing.T) {
	var buf bytes.Buffer
	s := Bar(&buf).Step("fetch", 100)
	s.Add(100)
	s.Done(nil)
	if !strings.Contains(buf.String(), "fetch") {
		t.Fatalf("bar output %q", buf.String())
	}
	Or(nil).Step("x", 1).Done(nil) // Discard does nothing and does not panic
}
