package server

import (
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/api"
)

// TestFrameCache: an event's SSE frame is encoded once and served again;
// an event that lands on the same slot gets its own frame.
func TestFrameCache(t *testing.T) {
	var c frameCache
	ev := api.Event{ID: 7, Type: "vm.created", ResourceID: "w1", Data: []byte(`{"name":"w1"}`)}
	f1, err := c.frame(ev)
	if err != nil {
		t.Fatal(err)
	}
	want := "id: 7\nevent: vm.created\ndata: " + `{"id":7,"type":"vm.created","resource_id":"w1","data":{"name":"w1"},"timestamp":"0001-01-01T00:00:00Z"}` + "\n\n"
	if string(f1) != want {
		t.Fatalf("frame %q, want %q", f1, want)
	}
	f2, _ := c.frame(ev)
	if &f1[0] != &f2[0] {
		t.Fatal("the frame was encoded again")
	}
	other := api.Event{ID: 7 + int64(len(c.ring)), Type: "vm.deleted", ResourceID: "w2"}
	f3, _ := c.frame(other)
	if !strings.HasPrefix(string(f3), "id: 1031\nevent: vm.deleted\n") {
		t.Fatalf("the slot's next event got %q", f3)
	}
}
