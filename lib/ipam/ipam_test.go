package ipam

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"reflect"
	"sort"
	"sync"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/names"
	"github.com/volantvm/volant/lib/store"
)

func newStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "volant.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func pool(t *testing.T, c PoolConfig) Pool {
	t.Helper()
	p, err := c.Pool()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func acquire(t *testing.T, st *store.Store, p Pool, vm string) Lease {
	t.Helper()
	l, err := Acquire(context.Background(), st, p, vm)
	if err != nil {
		t.Fatalf("Acquire(%s): %v", vm, err)
	}
	return l
}

// counts returns the number of lease rows and of ip.* events.
func counts(t *testing.T, st *store.Store) (leases, leased, released int) {
	t.Helper()
	err := st.Read(context.Background(), func(tx *sql.Tx) error {
		return tx.QueryRow(`SELECT (SELECT count(*) FROM ip_leases),
			(SELECT count(*) FROM events WHERE type = 'ip.leased'),
			(SELECT count(*) FROM events WHERE type = 'ip.released')`).Scan(&leases, &leased, &released)
	})
	if err != nil {
		t.Fatal(err)
	}
	return
}

func TestAllocationOrder(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	p := DefaultPool()
	want := map[string]string{"a": "192.168.127.100", "b": "192.168.127.101", "c": "192.168.127.102"}
	for _, vm := range []string{"a", "b", "c"} {
		l := acquire(t, st, p, vm)
		if l.IP.String() != want[vm] || l.Prefix != 24 || l.Gateway.String() != "192.168.127.1" || l.VM != vm {
			t.Fatalf("%s: %+v", vm, l)
		}
	}
	if r, err := Release(ctx, st, "b"); err != nil || r == nil || r.IP.String() != want["b"] {
		t.Fatalf("Release(b) = %+v, %v", r, err)
	}
	if l := acquire(t, st, p, "d"); l.IP.String() != "192.168.127.101" {
		t.Fatalf("d got %s, want the freed .101 (lowest free first)", l.IP)
	}
	if l := acquire(t, st, p, "e"); l.IP.String() != "192.168.127.103" {
		t.Fatalf("e got %s, want .103", l.IP)
	}
	all, err := List(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range all {
		got = append(got, l.VM+"="+l.IP.String())
	}
	if fmt.Sprint(got) != "[a=192.168.127.100 d=192.168.127.101 c=192.168.127.102 e=192.168.127.103]" {
		t.Fatalf("List: %v", got)
	}
}

// Numeric, not text, order: .99 comes before .100.
func TestNumericOrder(t *testing.T) {
	st := newStore(t)
	p := pool(t, PoolConfig{Subnet: "10.0.0.0/16", RangeStart: "10.0.0.98", RangeEnd: "10.0.1.2"})
	var got []string
	for i := range 8 {
		got = append(got, acquire(t, st, p, fmt.Sprintf("vm%d", i)).IP.String())
	}
	want := "[10.0.0.98 10.0.0.99 10.0.0.100 10.0.0.101]"
	if fmt.Sprint(got[:4]) != want {
		t.Fatalf("got %v", got)
	}
	// .255 and .0 of the /24 inside a /16 are ordinary host addresses.
	p2 := pool(t, PoolConfig{Subnet: "10.0.0.0/16", RangeStart: "10.0.0.255", RangeEnd: "10.0.1.0"})
	if a, b := acquire(t, st, p2, "x").IP.String(), acquire(t, st, p2, "y").IP.String(); a != "10.0.0.255" || b != "10.0.1.0" {
		t.Fatalf("x=%s y=%s", a, b)
	}
}

func TestGatewaySkipped(t *testing.T) {
	st := newStore(t)
	p := pool(t, PoolConfig{Subnet: "10.0.0.0/24", Gateway: "10.0.0.3", RangeStart: "10.0.0.1", RangeEnd: "10.0.0.5"})
	var got []string
	for i := range 4 {
		got = append(got, acquire(t, st, p, fmt.Sprintf("vm%d", i)).IP.String())
	}
	if fmt.Sprint(got) != "[10.0.0.1 10.0.0.2 10.0.0.4 10.0.0.5]" {
		t.Fatalf("got %v", got)
	}
	if _, err := Acquire(context.Background(), st, p, "vm9"); !apierr.Is(err, apierr.IPExhausted) {
		t.Fatalf("fifth lease of a 4-address pool: %v", err)
	}
}

func TestIdempotent(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	p := DefaultPool()
	first := acquire(t, st, p, "web1")
	again := acquire(t, st, p, "web1")
	if !reflect.DeepEqual(first, again) {
		t.Fatalf("second lease differs:\n%+v\n%+v", first, again)
	}
	got, err := Get(ctx, st, "web1")
	if err != nil || !reflect.DeepEqual(got, first) {
		t.Fatalf("Get = %+v, %v; want %+v", got, err, first)
	}
	if n, leased, _ := counts(t, st); n != 1 || leased != 1 {
		t.Fatalf("%d rows, %d ip.leased events after a repeated lease; want 1, 1", n, leased)
	}
	// A narrower range that still holds the address returns the same lease.
	narrow := pool(t, PoolConfig{RangeStart: first.IP.String(), RangeEnd: first.IP.String()})
	if l := acquire(t, st, narrow, "web1"); !reflect.DeepEqual(l, first) {
		t.Fatalf("narrow pool: %+v", l)
	}
}

func TestOtherPoolConflicts(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	held := acquire(t, st, DefaultPool(), "web1")
	for _, c := range []PoolConfig{
		{Subnet: "10.0.0.0/24"},
		{RangeStart: "192.168.127.200"},
		{Gateway: "192.168.127.254"},
		{Subnet: "192.168.127.0/23"},
	} {
		_, err := Acquire(ctx, st, pool(t, c), "web1")
		if !apierr.Is(err, apierr.Conflict) {
			t.Fatalf("%+v: want CONFLICT, got %v", c, err)
		}
		if d := apierr.From(err).Details; d["ip"] != held.IP.String() || d["vm"] != "web1" {
			t.Fatalf("%+v: details %v", c, d)
		}
	}
	// Release is by name, whatever the pool; afterwards the other pool works.
	if r, err := Release(ctx, st, "web1"); err != nil || r == nil {
		t.Fatal(r, err)
	}
	if l := acquire(t, st, pool(t, PoolConfig{Subnet: "10.0.0.0/24"}), "web1"); l.IP.String() != "10.0.0.100" {
		t.Fatal(l)
	}
}

// An address is leased once in the whole database, even when two pools
// overlap.
func TestOverlappingPoolsShareAddresses(t *testing.T) {
	st := newStore(t)
	a := pool(t, PoolConfig{Subnet: "10.0.0.0/24", RangeStart: "10.0.0.10", RangeEnd: "10.0.0.20"})
	b := pool(t, PoolConfig{Subnet: "10.0.0.0/25", RangeStart: "10.0.0.5", RangeEnd: "10.0.0.12"})
	if l := acquire(t, st, a, "x"); l.IP.String() != "10.0.0.10" {
		t.Fatal(l)
	}
	var got []string
	for _, vm := range []string{"y1", "y2", "y3", "y4", "y5", "y6", "y7"} {
		got = append(got, acquire(t, st, b, vm).IP.String())
	}
	if fmt.Sprint(got) != "[10.0.0.5 10.0.0.6 10.0.0.7 10.0.0.8 10.0.0.9 10.0.0.11 10.0.0.12]" {
		t.Fatalf("got %v", got)
	}
	if _, err := Acquire(context.Background(), st, b, "y8"); !apierr.Is(err, apierr.IPExhausted) {
		t.Fatal(err)
	}
}

func TestRelease(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	l := acquire(t, st, DefaultPool(), "web1")
	r, err := Release(ctx, st, "web1")
	if err != nil || r == nil || !reflect.DeepEqual(*r, l) {
		t.Fatalf("Release = %+v, %v", r, err)
	}
	for range 2 {
		r, err = Release(ctx, st, "web1")
		if err != nil || r != nil {
			t.Fatalf("repeated release = %+v, %v; want nil, nil", r, err)
		}
	}
	if r, err := Release(ctx, st, "never-leased"); err != nil || r != nil {
		t.Fatal(r, err)
	}
	if _, err := Get(ctx, st, "web1"); !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("Get after release: %v", err)
	}
	if n, leased, released := counts(t, st); n != 0 || leased != 1 || released != 1 {
		t.Fatalf("rows %d, leased %d, released %d", n, leased, released)
	}
	evs, err := st.EventsSince(ctx, 0, 0)
	if err != nil || len(evs) != 2 {
		t.Fatal(evs, err)
	}
	var data map[string]any
	json.Unmarshal(evs[1].Data, &data)
	if evs[1].Type != "ip.released" || evs[1].ResourceID != "web1" || data["ip"] != l.IP.String() || data["reason"] != "release" {
		t.Fatalf("release event: %+v %s", evs[1], evs[1].Data)
	}
}

func TestGC(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	for _, vm := range []string{"a", "b", "c", "d"} {
		acquire(t, st, DefaultPool(), vm)
	}
	dry, err := GC(ctx, st, []string{"a", "c", "not-leased"}, true)
	if err != nil || len(dry.Freed) != 2 || dry.Kept != 2 || !dry.DryRun {
		t.Fatalf("dry run: %+v %v", dry, err)
	}
	if n, _, _ := counts(t, st); n != 4 {
		t.Fatalf("dry run freed leases: %d left", n)
	}
	if _, err := GC(ctx, st, []string{"a", "Bad Name"}, false); !apierr.Is(err, apierr.InvalidInput) {
		t.Fatalf("invalid keep name: %v", err)
	}
	if n, _, _ := counts(t, st); n != 4 {
		t.Fatalf("a refused gc freed leases: %d left", n)
	}
	res, err := GC(ctx, st, []string{"a", "c", "not-leased"}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Freed) != 2 || res.Freed[0].VM != "b" || res.Freed[1].VM != "d" || res.Kept != 2 || res.DryRun {
		t.Fatalf("gc: %+v", res)
	}
	left, _ := List(ctx, st)
	if len(left) != 2 || left[0].VM != "a" || left[1].VM != "c" {
		t.Fatalf("left: %+v", left)
	}
	again, err := GC(ctx, st, []string{"a", "c"}, false)
	if err != nil || len(again.Freed) != 0 || again.Kept != 2 {
		t.Fatalf("repeated gc: %+v %v", again, err)
	}
	all, err := GC(ctx, st, nil, false)
	if err != nil || len(all.Freed) != 2 || all.Kept != 0 {
		t.Fatalf("gc with nothing live: %+v %v", all, err)
	}
	if _, leased, released := counts(t, st); leased != 4 || released != 4 {
		t.Fatalf("events: leased %d released %d", leased, released)
	}
}

func TestExhaustionWritesNothing(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	p := pool(t, PoolConfig{RangeStart: "192.168.127.100", RangeEnd: "192.168.127.102"})
	for _, vm := range []string{"a", "b", "c"} {
		acquire(t, st, p, vm)
	}
	before, _ := st.EventsSince(ctx, 0, 0)
	_, err := Acquire(ctx, st, p, "d")
	if !apierr.Is(err, apierr.IPExhausted) {
		t.Fatalf("want IP_EXHAUSTED, got %v", err)
	}
	e := apierr.From(err)
	if e.Details["pool"] != "192.168.127.0/24" || e.Details["size"] != 3 || e.Code.ExitCode() != 6 {
		t.Fatalf("error: %+v", e)
	}
	if want := "leasing ip for d: pool 192.168.127.0/24 (.100-.102, gateway .1) has no free address"; e.Message != want {
		t.Fatalf("message %q, want %q", e.Message, want)
	}
	after, _ := st.EventsSince(ctx, 0, 0)
	if n, _, _ := counts(t, st); n != 3 || len(after) != len(before) {
		t.Fatalf("exhaustion wrote something: %d leases, %d events (before %d)", n, len(after), len(before))
	}
	// Existing leases are still returned from a full pool.
	if l := acquire(t, st, p, "b"); l.IP.String() != "192.168.127.101" {
		t.Fatal(l)
	}
}

func TestInvalidInputWritesNothing(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	for _, vm := range []string{"", "Web1", "web 1", "../x", "a.b"} {
		if _, err := Acquire(ctx, st, DefaultPool(), vm); !apierr.Is(err, apierr.InvalidInput) {
			t.Errorf("Acquire(%q): %v", vm, err)
		}
		if _, err := Release(ctx, st, vm); !apierr.Is(err, apierr.InvalidInput) {
			t.Errorf("Release(%q): %v", vm, err)
		}
		if _, err := Get(ctx, st, vm); !apierr.Is(err, apierr.InvalidInput) {
			t.Errorf("Get(%q): %v", vm, err)
		}
	}
	if _, err := Acquire(ctx, st, Pool{}, "web1"); !apierr.Is(err, apierr.InvalidInput) {
		t.Errorf("zero pool: %v", err)
	}
	if n, _, _ := counts(t, st); n != 0 {
		t.Fatalf("%d rows written by invalid requests", n)
	}
	evs, _ := st.EventsSince(ctx, 0, 0)
	if len(evs) != 0 {
		t.Fatalf("events written by invalid requests: %+v", evs)
	}
}

// Stable across restarts: a lease keeps its MAC when the store is reopened,
// and a released and re-leased VM gets the same MAC again.
func TestMACStable(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "volant.db")
	st, err := store.Open(ctx, path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	l := acquire(t, st, DefaultPool(), "web1")
	if l.MAC != names.MAC("web1", 0) {
		t.Fatalf("mac %s, want %s", l.MAC, names.MAC("web1", 0))
	}
	st.Close()
	st = newStoreAt(t, path)
	if again := acquire(t, st, DefaultPool(), "web1"); again.MAC != l.MAC {
		t.Fatalf("after reopen: %s, want %s", again.MAC, l.MAC)
	}
	Release(ctx, st, "web1")
	if again := acquire(t, st, DefaultPool(), "web1"); again.MAC != l.MAC {
		t.Fatalf("after release and lease: %s, want %s", again.MAC, l.MAC)
	}
}

func newStoreAt(t *testing.T, path string) *store.Store {
	st, err := store.Open(context.Background(), path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// Two names whose sha256 share their first 40 bits (found by a birthday
// search over "vm-N") must still get different MACs, deterministically.
func TestMACCollision(t *testing.T) {
	a, b := "vm-117852", "vm-1532487"
	if names.MAC(a, 0) != names.MAC(b, 0) {
		t.Fatalf("precondition: %s and %s should collide: %s %s", a, b, names.MAC(a, 0), names.MAC(b, 0))
	}
	st := newStore(t)
	la := acquire(t, st, DefaultPool(), a)
	lb := acquire(t, st, DefaultPool(), b)
	if la.MAC != names.MAC(a, 0) || lb.MAC != names.MAC(b, 1) {
		t.Fatalf("macs %s %s; want %s %s", la.MAC, lb.MAC, names.MAC(a, 0), names.MAC(b, 1))
	}
	// The order decides who gets attempt 0; with a freed, b keeps its MAC.
	Release(context.Background(), st, a)
	if again := acquire(t, st, DefaultPool(), b); again.MAC != lb.MAC {
		t.Fatal(again)
	}
}

func TestLeaseJSON(t *testing.T) {
	l := Lease{VM: "web1", IP: netip.MustParseAddr("192.168.127.100"), Prefix: 24,
		Gateway: netip.MustParseAddr("192.168.127.1"), MAC: names.MAC("web1", 0)}
	b, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(b, &m)
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if fmt.Sprint(keys) != "[gateway ip leased_at mac prefix vm]" || m["ip"] != "192.168.127.100" || m["prefix"] != 24.0 {
		t.Fatalf("JSON: %s", b)
	}
	var back Lease
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, l) {
		t.Fatalf("round trip: %+v %v", back, err)
	}
	if l.Addr().String() != "192.168.127.100/24" || l.Subnet().String() != "192.168.127.0/24" {
		t.Fatal(l.Addr(), l.Subnet())
	}
}

func TestLeaseValidate(t *testing.T) {
	good := Lease{VM: "web1", IP: netip.MustParseAddr("192.168.127.100"), Prefix: 24,
		Gateway: netip.MustParseAddr("192.168.127.1"), MAC: "02:00:00:00:00:01"}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*Lease){
		"vm":        func(l *Lease) { l.VM = "Web1" },
		"ip v6":     func(l *Lease) { l.IP = netip.MustParseAddr("fd00::1") },
		"no ip":     func(l *Lease) { l.IP = netip.Addr{} },
		"prefix":    func(l *Lease) { l.Prefix = 31 },
		"gateway":   func(l *Lease) { l.Gateway = netip.MustParseAddr("10.0.0.1") },
		"gw is ip":  func(l *Lease) { l.Gateway = l.IP },
		"mac":       func(l *Lease) { l.MAC = "nope" },
		"multicast": func(l *Lease) { l.MAC = "03:00:00:00:00:01" },
		"global":    func(l *Lease) { l.MAC = "00:11:22:33:44:55" },
		"upper":     func(l *Lease) { l.MAC = "02:AA:00:00:00:01" },
		"short":     func(l *Lease) { l.MAC = "02:00:00:00:00" },
		"dashes":    func(l *Lease) { l.MAC = "02-00-00-00-00-01" },
		"long":      func(l *Lease) { l.MAC = "02:00:00:00:00:01:02" },
	} {
		l := good
		mut(&l)
		if err := l.Validate(); !apierr.Is(err, apierr.InvalidInput) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// Leasing and releasing at random, against a model that knows the lowest
// free address, in a pool whose gateway sits in the middle of the range.
func TestRandomAgainstModel(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	p := pool(t, PoolConfig{Subnet: "10.0.0.0/24", Gateway: "10.0.0.20", RangeStart: "10.0.0.10", RangeEnd: "10.0.0.40"})
	rng := rand.New(rand.NewPCG(1, 2))
	held := map[string]netip.Addr{} // vm -> ip
	used := map[netip.Addr]bool{}
	lowest := func() (netip.Addr, bool) {
		for n := num(p.Start); n <= num(p.End); n++ {
			if a := addr(n); a != p.Gateway && !used[a] {
				return a, true
			}
		}
		return netip.Addr{}, false
	}
	for step := range 2000 {
		vm := fmt.Sprintf("vm-%d", rng.IntN(45))
		if rng.IntN(2) == 0 {
			l, err := Acquire(ctx, st, p, vm)
			if ip, ok := held[vm]; ok {
				if err != nil || l.IP != ip {
					t.Fatalf("step %d: re-lease of %s = %v %v, want %s", step, vm, l.IP, err, ip)
				}
				continue
			}
			want, ok := lowest()
			if !ok {
				if !apierr.Is(err, apierr.IPExhausted) {
					t.Fatalf("step %d: full pool: %v", step, err)
				}
				continue
			}
			if err != nil || l.IP != want {
				t.Fatalf("step %d: lease %s = %v %v, want %s", step, vm, l.IP, err, want)
			}
			held[vm], used[want] = want, true
		} else {
			r, err := Release(ctx, st, vm)
			if err != nil {
				t.Fatal(err)
			}
			if ip, ok := held[vm]; ok != (r != nil) || (ok && r.IP != ip) {
				t.Fatalf("step %d: release %s = %+v, model %v %v", step, vm, r, ip, ok)
			}
			delete(used, held[vm])
			delete(held, vm)
		}
	}
	if err := st.Check(ctx); err != nil {
		t.Fatal(err)
	}
}

// Goroutines of two Stores on one file (two "processes" in one) never get
// the same address.
func TestConcurrentStores(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "volant.db")
	stores := []*store.Store{newStoreAt(t, path), newStoreAt(t, path)}
	var mu sync.Mutex
	got := map[netip.Addr]string{}
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			vm := fmt.Sprintf("vm-%d", i)
			l, err := Acquire(ctx, stores[i%2], DefaultPool(), vm)
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if o, dup := got[l.IP]; dup {
				errs <- fmt.Errorf("%s and %s both got %s", o, vm, l.IP)
			}
			got[l.IP] = vm
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(got) != 100 {
		t.Fatalf("%d addresses", len(got))
	}
	for n := num(netip.MustParseAddr("192.168.127.100")); n < num(netip.MustParseAddr("192.168.127.200")); n++ {
		if _, ok := got[addr(n)]; !ok {
			t.Fatalf("%s skipped: allocation is not lowest-first under concurrency", addr(n))
		}
	}
}
