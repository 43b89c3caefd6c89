package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/volantvm/volant/lib/api"
)

// TestVMListCache: an answer is read once per generation and filter, by
// one request however many arrive together, and read again as soon as the
// generation moves; failures are not kept.
func TestVMListCache(t *testing.T) {
	var c vmListCache
	var gen atomic.Uint64
	var reads atomic.Int32
	fail := false
	read := func(_ context.Context, f api.VMFilter) ([]api.VM, error) {
		reads.Add(1)
		if fail {
			return nil, errors.New("disk on fire")
		}
		return []api.VM{{Name: fmt.Sprintf("g%d-%s", gen.Load(), f.Plugin)}}, nil
	}
	list := func(f api.VMFilter) string {
		t.Helper()
		b, err := c.list(context.Background(), gen.Load, read, f)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	all, web := api.VMFilter{}, api.VMFilter{Plugin: "web"}

	if got := list(all); got != `{"vms":[{"name":"g0-","plugin":"","state":"","resources":{"cpu_cores":0,"memory_mb":0},"created_at":"0001-01-01T00:00:00Z","updated_at":"0001-01-01T00:00:00Z"}]}`+"\n" {
		t.Fatalf("body %s", got)
	}
	list(all)
	list(web)
	list(web)
	if n := reads.Load(); n != 2 {
		t.Fatalf("%d reads for two filters at one generation, want 2", n)
	}

	gen.Add(1)
	reads.Store(0)
	var wg sync.WaitGroup
	bodies := make([]string, 16)
	for i := range bodies {
		wg.Add(1)
		go func() { defer wg.Done(); bodies[i] = list(all) }()
	}
	wg.Wait()
	for _, b := range bodies {
		if b != bodies[0] || !strings.Contains(b, `"g1-"`) {
			t.Fatalf("after the generation moved: %s", b)
		}
	}
	if n := reads.Load(); n != 1 {
		t.Fatalf("%d reads for 16 concurrent requests, want 1", n)
	}
	if got := list(web); !strings.Contains(got, `"g1-web"`) {
		t.Fatalf("a filter cached at the old generation was served: %s", got)
	}

	gen.Add(1)
	fail = true
	if _, err := c.list(context.Background(), gen.Load, read, all); err == nil {
		t.Fatal("no error from a failed read")
	}
	fail = false
	if got := list(all); !strings.Contains(got, `"g2-"`) {
		t.Fatalf("after a failed read: %s", got)
	}
}
