package bar

import (
	"bytes"
	"strings"
	"testing"
)

func TestBarWritesSomething(t *testing.T) {
	var buf bytes.Buffer
	s := New(&buf).Step("fetch", 100)
	s.Add(100)
	s.Done(nil)
	if !strings.Contains(buf.String(), "fetch") {
		t.Fatalf("bar output %q", buf.String())
	}
}
