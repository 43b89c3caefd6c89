package events_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/volantvm/volant/lib/controller/events"
	"github.com/volantvm/volant/lib/store"
)

func openStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "volant.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestEventPruningKeepsIDs(t *testing.T) {
	st, ctx := openStore(t), context.Background()
	log := events.New(st, nil)
	for i := 0; i < 50; i++ {
		if _, err := st.AppendEvent(ctx, "test", "x", nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := log.Prune(ctx, 10); err != nil {
		t.Fatal(err)
	}
	evs, _ := st.EventsSince(ctx, 0, 0)
	if len(evs) != 10 || evs[0].ID != 41 {
		t.Fatalf("kept %d from %d", len(evs), evs[0].ID)
	}
	if err := log.Prune(ctx, 0); err != nil {
		t.Fatal(err)
	}
	last, err := log.Last(ctx)
	if err != nil || last != 50 {
		t.Fatalf("last id after pruning all: %d %v", last, err)
	}
	e, _ := st.AppendEvent(ctx, "test", "x", nil)
	if e.ID != 51 {
		t.Fatalf("id after pruning: %d", e.ID)
	}
}

func TestMatchType(t *testing.T) {
	for _, tc := range []struct {
		pats []string
		typ  string
		want bool
	}{
		{nil, "vm.created", true},
		{[]string{"vm.*"}, "vm.created", true},
		{[]string{"vm.*"}, "vmx.created", false},
		{[]string{"vm.created"}, "vm.created", true},
		{[]string{"vm.created"}, "vm.crashed", false},
		{[]string{"plugin.*", "ip.leased"}, "ip.leased", true},
		{[]string{"*"}, "anything", true},
	} {
		if got := events.MatchType(tc.pats, tc.typ); got != tc.want {
			t.Errorf("MatchType(%v, %s) = %v", tc.pats, tc.typ, got)
		}
	}
}
