package hostnet

// Privileged tests: each works only inside network namespaces it creates
// (lib/testutil/netnstest), which are deleted also when a test fails. Under
// CI=true they fail rather than skip when they cannot run.

import (
	"context"
	"fmt"
	"net"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

var ctx = context.Background()

// newNS gives the test a namespace and checks the tools the tests use.
func newNS(t *testing.T) *netnstest.NS {
	t.Helper()
	netnstest.Require(t, "nft", "busybox")
	return netnstest.New(t)
}

// in runs fn inside ns and fails the test on error.
func in[T any](t *testing.T, ns *netnstest.NS, fn func() (T, error)) T {
	t.Helper()
	var v T
	if err := ns.Do(func() error {
		var err error
		v, err = fn()
		return err
	}); err != nil {
		t.Fatalf("in %s: %v", ns.Name, err)
	}
	return v
}

// inErr runs fn inside ns and returns its error, which the test expects.
func inErr(t *testing.T, ns *netnstest.NS, fn func() error) error {
	t.Helper()
	var inner error
	if err := ns.Do(func() error { inner = fn(); return nil }); err != nil {
		t.Fatalf("entering %s: %v", ns.Name, err)
	}
	return inner
}

// snapshot is everything about a namespace's network that setup, taps and
// teardown could touch, normalized for comparison.
func snapshot(t *testing.T, ns *netnstest.NS) string {
	t.Helper()
	var b strings.Builder
	for _, c := range [][]string{
		{"ip", "-d", "link", "show"},
		{"ip", "addr", "show"},
		{"ip", "route", "show", "table", "all"},
		{"ip", "neigh", "show", "nud", "permanent"},
		{"nft", "list", "ruleset"},
		{"cat", "/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv4/conf/all/forwarding", "/proc/sys/net/ipv4/conf/default/forwarding"},
	} {
		fmt.Fprintf(&b, "## %s\n%s", strings.Join(c, " "), ns.Run(c[0], c[1:]...))
	}
	// Timers move on their own, and a bridge recomputes its TSO limits from
	// its ports (65536 before the first port, 524280 after the last leaves).
	s := regexp.MustCompile(`(_timer)\s+[0-9.]+`).ReplaceAllString(b.String(), "$1 X")
	return regexp.MustCompile(`tso_max_(size|segs) [0-9]+`).ReplaceAllString(s, "tso_max_$1 X")
}

func sameSnapshot(t *testing.T, what, before, after string) {
	t.Helper()
	if before != after {
		t.Fatalf("%s: the namespace changed.\nbefore:\n%s\nafter:\n%s", what, before, after)
	}
}

func changedItems(items []Item) []string {
	var out []string
	for _, i := range items {
		if i.Changed {
			out = append(out, i.Item)
		}
	}
	return out
}

func wantCode(t *testing.T, err error, code apierr.Code) {
	t.Helper()
	if !apierr.Is(err, code) {
		t.Fatalf("error = %v, want %s", err, code)
	}
}

var host = &Host{}

func TestSetupIdempotentTeardownRestores(t *testing.T) {
	ns := newNS(t)
	before := snapshot(t, ns)
	cfg := Config{NAT: true}

	r1 := in(t, ns, func() (*SetupResult, error) { return host.Setup(ctx, cfg) })
	if !r1.Changed || !reflect.DeepEqual(changedItems(r1.Items), []string{"bridge", "address", "link", "forwarding", "nat"}) {
		t.Fatalf("first setup: %+v", r1)
	}
	link := ns.Run("ip", "-d", "link", "show", "vbr0")
	for _, want := range []string{"bridge", "alias volant-bridge:created", BridgeMAC("vbr0").String(), "state UP"} {
		if !strings.Contains(link, want) && !(want == "state UP" && strings.Contains(link, ",UP")) {
			t.Errorf("vbr0 lacks %q:\n%s", want, link)
		}
	}
	if a := ns.Run("ip", "-4", "addr", "show", "vbr0"); !strings.Contains(a, "inet 192.168.127.1/24") {
		t.Errorf("vbr0 address:\n%s", a)
	}
	if f := strings.TrimSpace(ns.Run("cat", "/proc/sys/net/ipv4/ip_forward")); f != "1" {
		t.Errorf("ip_forward = %s", f)
	}
	nat := ns.Run("nft", "list", "table", "ip", "volant-vbr0")
	for _, want := range []string{"type nat hook postrouting priority srcnat", "ip saddr 192.168.127.0/24 ip daddr != 192.168.127.0/24 masquerade", `comment "volant-net masquerade 192.168.127.0/24"`} {
		if !strings.Contains(nat, want) {
			t.Errorf("nft table lacks %q:\n%s", want, nat)
		}
	}
	if c := in(t, ns, func() (*CheckResult, error) { return host.Check(ctx, cfg) }); !c.OK {
		t.Fatalf("check after setup: %+v", c)
	}

	mid := snapshot(t, ns)
	r2 := in(t, ns, func() (*SetupResult, error) { return host.Setup(ctx, cfg) })
	if r2.Changed || len(changedItems(r2.Items)) != 0 {
		t.Fatalf("second setup changed something: %+v", r2)
	}
	sameSnapshot(t, "second setup", mid, snapshot(t, ns))

	td := in(t, ns, func() (*TeardownResult, error) { return host.Teardown(ctx, TeardownConfig{}) })
	if !td.Changed {
		t.Fatalf("teardown: %+v", td)
	}
	sameSnapshot(t, "setup + teardown", before, snapshot(t, ns))
	td2 := in(t, ns, func() (*TeardownResult, error) { return host.Teardown(ctx, TeardownConfig{}) })
	if td2.Changed {
		t.Fatalf("second teardown changed something: %+v", td2)
	}
}

// Teardown restores ip_forward only when setup changed it.
func TestTeardownKeepsForwardingItDidNotChange(t *testing.T) {
	ns := newNS(t)
	ns.Run("sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
	before := snapshot(t, ns)
	r := in(t, ns, func() (*SetupResult, error) { return host.Setup(ctx, Config{}) })
	if got := changedItems(r.Items); reflect.DeepEqual(got, []string{"bridge", "address", "link", "forwarding"}) || strings.Contains(strings.Join(got, ","), "forwarding") {
		t.Fatalf("setup changed forwarding that was already on: %v", got)
	}
	if strings.Contains(ns.Run("ip", "-d", "link", "show", "vbr0"), ",fwd") {
		t.Fatal("setup recorded a forwarding change it did not make")
	}
	in(t, ns, func() (*TeardownResult, error) { return host.Teardown(ctx, TeardownConfig{}) })
	sameSnapshot(t, "setup + teardown with forwarding already on", before, snapshot(t, ns))
}

func TestCheckReportsDriftAndSetupRepairsIt(t *testing.T) {
	ns := newNS(t)
	cfg := Config{NAT: true}
	in(t, ns, func() (*SetupResult, error) { return host.Setup(ctx, cfg) })

	ns.Run("ip", "addr", "del", "192.168.127.1/24", "dev", "vbr0")
	ns.Run("ip", "link", "set", "vbr0", "down")
	ns.Run("sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward")
	ns.Run("nft", "add", "rule", "ip", "volant-vbr0", "postrouting", "counter", "accept")

	var res *CheckResult
	err := inErr(t, ns, func() error {
		var err error
		res, err = host.Check(ctx, cfg)
		return err
	})
	wantCode(t, err, apierr.Conflict)
	var items []string
	for _, d := range res.Differences {
		items = append(items, d.Item)
	}
	if !reflect.DeepEqual(items, []string{"address", "link", "forwarding", "nat"}) {
		t.Fatalf("differences: %+v", res.Differences)
	}
	details := apierr.From(err).Details
	if diffs, ok := details["differences"].([]Difference); !ok || len(diffs) != 4 {
		t.Fatalf("error details: %#v", details)
	}

	r := in(t, ns, func() (*SetupResult, error) { return host.Setup(ctx, cfg) })
	if got := changedItems(r.Items); !reflect.DeepEqual(got, []string{"address", "link", "forwarding", "nat"}) {
		t.Fatalf("repair changed %v", got)
	}
	if c := in(t, ns, func() (*CheckResult, error) { return host.Check(ctx, cfg) }); !c.OK {
		t.Fatalf("check after repair: %+v", c)
	}
	if strings.Contains(ns.Run("nft", "list", "ruleset"), "counter") {
		t.Fatal("the foreign rule in volant's table survived the repair")
	}
	// The repaired forwarding stays recorded, so teardown still restores it.
	in(t, ns, func() (*TeardownResult, error) { return host.Teardown(ctx, TeardownConfig{}) })
	if f := strings.TrimSpace(ns.Run("cat", "/proc/sys/net/ipv4/ip_forward")); f != "0" {
		t.Fatalf("ip_forward after teardown = %s", f)
	}
}

func TestNATFollowsConfig(t *testing.T) {
	ns := newNS(t)
	ns.Run("ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1")
	in(t, ns, func() (*SetupResult, error) { return host.Setup(ctx, Config{}) })
	if out := ns.Run("nft", "list", "ruleset"); strings.Contains(out, "volant") {
		t.Fatalf("NAT table without --nat:\n%s", out)
	}
	in(t, ns, func() (*SetupResult, error) { return host.Setup(ctx, Config{NAT: true}) })
	if !strings.Contains(ns.Run("nft", "list", "table", "ip", "volant-vbr0"), "masquerade") {
		t.Fatal("no masquerade rule after --nat")
	}
	r := in(t, ns, func() (*SetupResult, error) { return host.Setup(ctx, Config{NAT: true, Uplink: "up0"}) })
	if got := changedItems(r.Items); !reflect.DeepEqual(got, []string{"nat"}) {
		t.Fatalf("uplink change changed %v", got)
	}
	out := ns.Run("nft", "list", "table", "ip", "volant-vbr0")
	if !strings.Contains(out, `oifname "up0" masquerade`) || strings.Count(out, "masquerade comment") != 1 {
		t.Fatalf("rule with uplink:\n%s", out)
	}
	// KeepNAT (volantd without --nat or --no-nat) leaves it exactly so.
	r = in(t, ns, func() (*SetupResult, error) { return host.Setup(ctx, Config{KeepNAT: true}) })
	if got := changedItems(r.Items); len(got) != 0 || !r.NAT {
		t.Fatalf("KeepNAT changed %v, reports nat=%v", got, r.NAT)
	}
	if again := ns.Run("nft", "list", "table", "ip", "volant-vbr0"); again != out {
		t.Fatalf("KeepNAT touched the NAT table:\n%s\nwas\n%s", again, out)
	}
	// A table of someone else's is never touched.
	ns.Run("nft", "add", "table", "ip", "theirs")
	ns.Run("nft", "add", "chain", "ip", "theirs", "post", "{ type nat hook postrouting priority 100; }")
	ns.Run("nft", "add", "rule", "ip", "theirs", "post", "ip saddr 192.168.127.0/24 masquerade")
	in(t, ns, func() (*SetupResult, error) { return host.Setup(ctx, Config{}) })
	out = ns.Run("nft", "list", "ruleset")
	if strings.Contains(out, "volant-vbr0") || !strings.Contains(out, "table ip theirs") || !strings.Contains(out, "masquerade") {
		t.Fatalf("setup without --nat must drop only volant's table:\n%s", out)
	}
	in(t, ns, func() (*TeardownResult, error) { return host.Teardown(ctx, TeardownConfig{}) })
	if !strings.Contains(ns.Run("nft", "list", "ruleset"), "table ip theirs") {
		t.Fatal("teardown removed a table it does not own")
	}
	err := inErr(t, ns, func() error { _, err := host.Setup(ctx, Config{NAT: true, Uplink: "nosuch0"}); return err })
	wantCode(t, err, apierr.NotFound)
}

func TestBadInputChangesNothing(t *testing.T) {
	ns := newNS(t)
	ns.Run("ip", "link", "add", "other0", "type", "bridge")
	ns.Run("ip", "addr", "add", "192.168.200.1/24", "dev", "other0")
	ns.Run("ip", "link", "add", "notabr", "type", "veth", "peer", "name", "notabr-p")
	ns.Run("ip", "tuntap", "add", "dev", "theirtap", "mode", "tap")
	before := snapshot(t, ns)

	for _, tc := range []struct {
		name string
		code apierr.Code
		fn   func() error
	}{
		{"cidr invalid", apierr.InvalidInput, func() error { _, err := host.Setup(ctx, Config{CIDR: "192.168.127.1/40"}); return err }},
		{"cidr is the network", apierr.InvalidInput, func() error { _, err := host.Setup(ctx, Config{CIDR: "192.168.127.0/24"}); return err }},
		{"bridge name too long", apierr.InvalidInput, func() error { _, err := host.Setup(ctx, Config{Bridge: "bridge-name-too-long"}); return err }},
		{"subnet taken by another link", apierr.Conflict, func() error { _, err := host.Setup(ctx, Config{CIDR: "192.168.200.9/16"}); return err }},
		{"foreign bridge", apierr.Conflict, func() error { _, err := host.Setup(ctx, Config{Bridge: "other0", CIDR: "10.1.0.1/24"}); return err }},
		{"not a bridge", apierr.Conflict, func() error { _, err := host.Setup(ctx, Config{Bridge: "notabr"}); return err }},
		{"uplink missing", apierr.NotFound, func() error { _, err := host.Setup(ctx, Config{NAT: true, Uplink: "wan9"}); return err }},
		{"check foreign bridge", apierr.Conflict, func() error { _, err := host.Check(ctx, Config{Bridge: "other0"}); return err }},
		{"tap bridge missing", apierr.NotFound, func() error { _, err := host.AddTap(ctx, TapConfig{VM: "web1"}); return err }},
		{"tap on a non-bridge", apierr.Conflict, func() error { _, err := host.AddTap(ctx, TapConfig{VM: "web1", Bridge: "notabr"}); return err }},
		{"tap name too long", apierr.InvalidInput, func() error {
			_, err := host.AddTap(ctx, TapConfig{Name: "vt-name-too-long", Bridge: "other0"})
			return err
		}},
		{"tap ip outside subnet", apierr.InvalidInput, func() error {
			_, err := host.AddTap(ctx, TapConfig{VM: "web1", Bridge: "other0", MAC: "52:54:00:00:00:01", IP: "10.9.9.9"})
			return err
		}},
		{"tap ip is the gateway", apierr.InvalidInput, func() error {
			_, err := host.AddTap(ctx, TapConfig{VM: "web1", Bridge: "other0", MAC: "52:54:00:00:00:01", IP: "192.168.200.1"})
			return err
		}},
		{"tap name taken by a foreign tap", apierr.Conflict, func() error {
			_, err := host.AddTap(ctx, TapConfig{Name: "theirtap", VM: "web1", Bridge: "other0"})
			return err
		}},
		{"tap name taken by a veth", apierr.Conflict, func() error {
			_, err := host.AddTap(ctx, TapConfig{Name: "notabr", VM: "web1", Bridge: "other0"})
			return err
		}},
		{"del foreign tap", apierr.Conflict, func() error { _, err := host.DelTap(ctx, TapRef{Name: "theirtap"}); return err }},
		{"del a veth", apierr.Conflict, func() error { _, err := host.DelTap(ctx, TapRef{Name: "notabr"}); return err }},
	} {
		err := inErr(t, ns, tc.fn)
		if !apierr.Is(err, tc.code) {
			t.Errorf("%s: error %v, want %s", tc.name, err, tc.code)
		} else if apierr.From(err).Message == "" {
			t.Errorf("%s: empty message", tc.name)
		}
	}
	sameSnapshot(t, "rejected requests", before, snapshot(t, ns))
}

func TestAdoptExistingBridge(t *testing.T) {
	ns := newNS(t)
	ns.Run("ip", "link", "add", "br9", "type", "bridge")
	// An operator's bridge that has been up before: a link never up has
	// qdisc noop, and the kernel keeps the default qdisc once it was up.
	ns.Run("ip", "link", "set", "br9", "up")
	ns.Run("ip", "link", "set", "br9", "down")
	before := snapshot(t, ns)
	cfg := Config{Bridge: "br9", CIDR: "10.77.0.1/24", Adopt: true}
	r := in(t, ns, func() (*SetupResult, error) { return host.Setup(ctx, cfg) })
	if got := changedItems(r.Items); !reflect.DeepEqual(got, []string{"bridge", "address", "link", "forwarding"}) {
		t.Fatalf("adopt changed %v", got)
	}
	if !strings.Contains(ns.Run("ip", "-d", "link", "show", "br9"), "alias volant-bridge:adopted,up,fwd,addr=10.77.0.1/24") {
		t.Fatalf("adopted record:\n%s", ns.Run("ip", "-d", "link", "show", "br9"))
	}
	if r := in(t, ns, func() (*SetupResult, error) { return host.Setup(ctx, cfg) }); r.Changed {
		t.Fatalf("second adopt setup: %+v", r)
	}
	td := in(t, ns, func() (*TeardownResult, error) { return host.Teardown(ctx, TeardownConfig{Bridge: "br9"}) })
	if !td.Changed {
		t.Fatalf("teardown: %+v", td)
	}
	sameSnapshot(t, "adopt + teardown (the bridge stays, as it was)", before, snapshot(t, ns))
}

// A bridge an interrupted setup left (our MAC, no alias yet) is recognized
// and finished; an unmarked tap with the reserved prefix likewise.
func TestInterruptedCreationsAreRecovered(t *testing.T) {
	ns := newNS(t)
	before := snapshot(t, ns)
	ns.Run("ip", "link", "add", "vbr0", "address", BridgeMAC("vbr0").String(), "type", "bridge")
	r := in(t, ns, func() (*SetupResult, error) { return host.Setup(ctx, Config{}) })
	if !r.Items[0].Changed || !strings.Contains(r.Items[0].Detail, "interrupted") {
		t.Fatalf("bridge item: %+v", r.Items[0])
	}
	ns.Run("ip", "tuntap", "add", "dev", "vt-web1", "mode", "tap")
	tr := in(t, ns, func() (*TapResult, error) { return host.AddTap(ctx, TapConfig{VM: "web1"}) })
	if tr.Bridge != "vbr0" || tr.VM != "web1" {
		t.Fatalf("recovered tap: %+v", tr)
	}
	in(t, ns, func() (*DelTapResult, error) { return host.DelTap(ctx, TapRef{VM: "web1"}) })
	in(t, ns, func() (*TeardownResult, error) { return host.Teardown(ctx, TeardownConfig{}) })
	sameSnapshot(t, "recovered setup + teardown", before, snapshot(t, ns))
}

func TestForwardingRecordHandedOver(t *testing.T) {
	ns := newNS(t)
	in(t, ns, func() (*SetupResult, error) { return host.Setup(ctx, Config{}) })
	in(t, ns, func() (*SetupResult, error) { return host.Setup(ctx, Config{Bridge: "vbr1", CIDR: "10.88.0.1/24"}) })
	in(t, ns, func() (*TeardownResult, error) { return host.Teardown(ctx, TeardownConfig{}) })
	if f := strings.TrimSpace(ns.Run("cat", "/proc/sys/net/ipv4/ip_forward")); f != "1" {
		t.Fatalf("ip_forward = %s while vbr1 still needs it", f)
	}
	if !strings.Contains(ns.Run("ip", "-d", "link", "show", "vbr1"), "fwd") {
		t.Fatalf("vbr1 did not inherit the forwarding record:\n%s", ns.Run("ip", "-d", "link", "show", "vbr1"))
	}
	in(t, ns, func() (*TeardownResult, error) { return host.Teardown(ctx, TeardownConfig{Bridge: "vbr1"}) })
	if f := strings.TrimSpace(ns.Run("cat", "/proc/sys/net/ipv4/ip_forward")); f != "0" {
		t.Fatalf("ip_forward = %s after the last teardown", f)
	}
}

func TestTapAttachDetach(t *testing.T) {
	ns := newNS(t)
	in(t, ns, func() (*SetupResult, error) { return host.Setup(ctx, Config{}) })
	before := snapshot(t, ns)
	uid := uint32(4242)
	cfg := TapConfig{VM: "web1", MAC: "52:54:00:aa:bb:01", IP: "192.168.127.100", Owner: &uid, MTU: 1400}

	r := in(t, ns, func() (*TapResult, error) { return host.AddTap(ctx, cfg) })
	want := Tap{Name: "vt-web1", VM: "web1", Bridge: "vbr0", MAC: "52:54:00:aa:bb:01", IP: "192.168.127.100",
		TapMAC: "fe:54:00:aa:bb:01", MTU: 1400, Owner: &uid, Up: true}
	if !r.Changed || !reflect.DeepEqual(r.Tap, want) {
		t.Fatalf("AddTap = %+v\nwant %+v", r.Tap, want)
	}
	link := ns.Run("ip", "-d", "link", "show", "vt-web1")
	for _, s := range []string{"master vbr0", "tun type tap", "persist on", "user 4242", "alias volant:web1 ip=192.168.127.100 mac=52:54:00:aa:bb:01", "fe:54:00:aa:bb:01", "mtu 1400"} {
		if !strings.Contains(link, s) {
			t.Errorf("vt-web1 lacks %q:\n%s", s, link)
		}
	}
	if n := ns.Run("ip", "neigh", "show", "192.168.127.100"); !strings.Contains(n, "lladdr 52:54:00:aa:bb:01 PERMANENT") {
		t.Errorf("neighbour entry: %q", n)
	}
	mid := snapshot(t, ns)
	r2 := in(t, ns, func() (*TapResult, error) { return host.AddTap(ctx, cfg) })
	if r2.Changed {
		t.Fatalf("second AddTap changed: %+v", r2.Items)
	}
	sameSnapshot(t, "second AddTap", mid, snapshot(t, ns))

	// Detached by someone: AddTap re-attaches.
	ns.Run("ip", "link", "set", "vt-web1", "nomaster")
	r3 := in(t, ns, func() (*TapResult, error) { return host.AddTap(ctx, cfg) })
	if got := changedItems(r3.Items); !reflect.DeepEqual(got, []string{"bridge"}) {
		t.Fatalf("re-attach changed %v", got)
	}

	// Same name, different owner or queue mode: refused, not silently kept.
	other := uint32(7)
	err := inErr(t, ns, func() error { _, err := host.AddTap(ctx, TapConfig{VM: "web1", Owner: &other}); return err })
	wantCode(t, err, apierr.Conflict)
	err = inErr(t, ns, func() error { _, err := host.AddTap(ctx, TapConfig{VM: "web1", Owner: &uid, Queues: 2}); return err })
	wantCode(t, err, apierr.Conflict)
	// Another VM whose derived name is taken: refused.
	err = inErr(t, ns, func() error { _, err := host.AddTap(ctx, TapConfig{Name: "vt-web1", VM: "web2"}); return err })
	wantCode(t, err, apierr.Conflict)

	st := in(t, ns, func() (*Status, error) { return host.Status(ctx, "") })
	if len(st.Taps) != 1 || st.Taps[0].Name != "vt-web1" || !reflect.DeepEqual(st.Bridge.Ports, []string{"vt-web1"}) {
		t.Fatalf("status: %+v", st)
	}
	// Teardown refuses while a tap is attached.
	err = inErr(t, ns, func() error { _, err := host.Teardown(ctx, TeardownConfig{}); return err })
	wantCode(t, err, apierr.Conflict)

	d := in(t, ns, func() (*DelTapResult, error) { return host.DelTap(ctx, TapRef{VM: "web1"}) })
	if !d.Changed {
		t.Fatalf("DelTap: %+v", d)
	}
	sameSnapshot(t, "AddTap + DelTap", before, snapshot(t, ns))
	d2 := in(t, ns, func() (*DelTapResult, error) { return host.DelTap(ctx, TapRef{VM: "web1"}) })
	if d2.Changed {
		t.Fatalf("second DelTap: %+v", d2)
	}

	// Multi-queue on request.
	mq := in(t, ns, func() (*TapResult, error) { return host.AddTap(ctx, TapConfig{VM: "mq", Queues: 4}) })
	if !mq.MultiQueue || !strings.Contains(ns.Run("ip", "-d", "link", "show", "vt-mq"), "multi_queue") {
		t.Fatalf("multi-queue tap: %+v\n%s", mq.Tap, ns.Run("ip", "-d", "link", "show", "vt-mq"))
	}
	// Teardown --force takes attached taps with it.
	td := in(t, ns, func() (*TeardownResult, error) { return host.Teardown(ctx, TeardownConfig{Force: true}) })
	if !strings.Contains(fmt.Sprint(changedItems(td.Items)), "tap:vt-mq") {
		t.Fatalf("teardown --force: %+v", td.Items)
	}
	if out := ns.Run("ip", "link", "show"); strings.Contains(out, "vt-") || strings.Contains(out, "vbr0") {
		t.Fatalf("left behind:\n%s", out)
	}
}

func TestTapInUseAndGC(t *testing.T) {
	ns := newNS(t)
	in(t, ns, func() (*SetupResult, error) { return host.Setup(ctx, Config{}) })
	for _, vm := range []string{"web1", "web2", "web3", "busy"} {
		in(t, ns, func() (*TapResult, error) { return host.AddTap(ctx, TapConfig{VM: vm}) })
	}
	busy := openTap(t, ns, "vt-busy")
	taps := in(t, ns, func() ([]Tap, error) { return host.ListTaps(ctx) })
	if len(taps) != 4 || taps[0].Name != "vt-busy" || !taps[0].InUse || taps[1].InUse {
		t.Fatalf("ListTaps: %+v", taps)
	}
	err := inErr(t, ns, func() error { _, err := host.DelTap(ctx, TapRef{VM: "busy"}); return err })
	wantCode(t, err, apierr.Conflict)

	gc := in(t, ns, func() (*GCResult, error) { return host.GCTaps(ctx, []string{"web2"}) })
	names := func(ts []Tap) (out []string) {
		for _, t := range ts {
			out = append(out, t.Name)
		}
		return out
	}
	if !reflect.DeepEqual(names(gc.Removed), []string{"vt-web1", "vt-web3"}) || !reflect.DeepEqual(names(gc.Skipped), []string{"vt-busy"}) ||
		!reflect.DeepEqual(names(gc.Kept), []string{"vt-web2"}) {
		t.Fatalf("gc: %+v", gc)
	}
	busy.Close()
	d := in(t, ns, func() (*DelTapResult, error) { return host.DelTap(ctx, TapRef{VM: "busy", Force: true}) })
	if !d.Changed {
		t.Fatal("forced delete did nothing")
	}
	left := in(t, ns, func() ([]Tap, error) { return host.ListTaps(ctx) })
	if !reflect.DeepEqual(names(left), []string{"vt-web2"}) {
		t.Fatalf("after gc: %v", names(left))
	}
}

// Two guests on the bridge reach each other and the gateway, and reach a
// network beyond the uplink only through NAT. Guests are namespaces joined
// to the bridge by veth pairs; the "internet" is a namespace behind a veth
// uplink with no route back to the guest subnet, so a reply arrives only
// when the guest's traffic was masqueraded.
func TestGuestsReachEachOtherAndNAT(t *testing.T) {
	h := newNS(t)
	g1, g2, inet := newNS(t), newNS(t), newNS(t)
	in(t, h, func() (*SetupResult, error) { return host.Setup(ctx, Config{}) })
	for i, g := range []*netnstest.NS{g1, g2} {
		port := fmt.Sprintf("vg%d", i+1)
		h.Run("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", g.Name)
		h.Run("ip", "link", "set", port, "master", "vbr0", "up")
		g.Run("ip", "addr", "add", fmt.Sprintf("192.168.127.%d/24", 100+i), "dev", "eth0")
		g.Run("ip", "link", "set", "eth0", "up")
		g.Run("ip", "route", "add", "default", "via", "192.168.127.1")
	}
	h.Run("ip", "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", inet.Name)
	h.Run("ip", "addr", "add", "10.99.0.1/24", "dev", "up0")
	h.Run("ip", "link", "set", "up0", "up")
	inet.Run("ip", "addr", "add", "10.99.0.2/24", "dev", "eth0")
	inet.Run("ip", "link", "set", "eth0", "up")

	ping := func(from *netnstest.NS, to string) error {
		_, err := from.Output("busybox", "ping", "-c", "1", "-W", "2", to)
		return err
	}
	mustPing := func(from *netnstest.NS, to string) {
		t.Helper()
		var err error
		for try := 0; try < 3; try++ { // the first ARP round may time out
			if err = ping(from, to); err == nil {
				return
			}
		}
		t.Fatalf("%s cannot reach %s: %v", from.Name, to, err)
	}
	mustPing(g1, "192.168.127.101")
	mustPing(g2, "192.168.127.100")
	mustPing(g1, "192.168.127.1")
	if err := ping(g1, "10.99.0.2"); err == nil {
		t.Fatal("guest reached the uplink network without NAT: the test cannot tell NAT from routing")
	}
	in(t, h, func() (*SetupResult, error) { return host.Setup(ctx, Config{NAT: true, Uplink: "up0"}) })
	mustPing(g1, "10.99.0.2")
	mustPing(g2, "10.99.0.2")
}

// openTap attaches the test process to a tap, as a VMM would.
func openTap(t *testing.T, ns *netnstest.NS, name string) *tapFile {
	t.Helper()
	f := in(t, ns, func() (*tapFile, error) { return attachTap(name) })
	t.Cleanup(func() { f.Close() })
	return f
}

func TestTapsCarryFramesAcrossTheBridge(t *testing.T) {
	ns := newNS(t)
	in(t, ns, func() (*SetupResult, error) { return host.Setup(ctx, Config{}) })
	m1, _ := net.ParseMAC("52:54:00:00:00:01")
	m2, _ := net.ParseMAC("52:54:00:00:00:02")
	in(t, ns, func() (*TapResult, error) {
		return host.AddTap(ctx, TapConfig{VM: "g1", MAC: m1.String(), IP: "192.168.127.100"})
	})
	in(t, ns, func() (*TapResult, error) {
		return host.AddTap(ctx, TapConfig{VM: "g2", MAC: m2.String(), IP: "192.168.127.101"})
	})
	t1, t2 := openTap(t, ns, "vt-g1"), openTap(t, ns, "vt-g2")
	ip1, ip2, gw := net.IPv4(192, 168, 127, 100), net.IPv4(192, 168, 127, 101), net.IPv4(192, 168, 127, 1)

	// Guest 1 asks for guest 2: the broadcast comes out of guest 2's tap.
	req := arpFrame(1, m1, ip1, nil, ip2)
	got := exchange(t, t1, req, t2, func(a arp) bool { return a.op == 1 && a.spa.Equal(ip1) && a.tpa.Equal(ip2) })
	if got.sha.String() != m1.String() {
		t.Fatalf("request arrived with sender %s", got.sha)
	}
	// Guest 2 answers: the unicast reply comes out of guest 1's tap.
	exchange(t, t2, arpFrame(2, m2, ip2, m1, ip1), t1, func(a arp) bool { return a.op == 2 && a.spa.Equal(ip2) && a.sha.String() == m2.String() })
	// Guest 1 asks for the gateway: the bridge answers with its fixed MAC.
	rep := exchange(t, t1, arpFrame(1, m1, ip1, nil, gw), t1, func(a arp) bool { return a.op == 2 && a.spa.Equal(gw) })
	if rep.sha.String() != BridgeMAC("vbr0").String() {
		t.Fatalf("gateway answered with %s, want %s", rep.sha, BridgeMAC("vbr0"))
	}
}

// Bug 6 of issue 14: after `setup --nat`, a bare `check` reported CONFLICT
// on nat. A check compares with what setup recorded on the bridge; what the
// request gives replaces the record.
func TestCheckComparesWithWhatSetupRecorded(t *testing.T) {
	ns := newNS(t)
	ns.Run("ip", "link", "add", "up0", "type", "bridge") // any link can be an uplink
	yes, no := true, false
	check := func(req CheckRequest) (*CheckResult, error) {
		var res *CheckResult
		err := inErr(t, ns, func() error {
			var err error
			res, err = host.CheckRecorded(ctx, req)
			return err
		})
		return res, err
	}

	// Nothing recorded: the defaults, which setup has not made yet.
	_, err := check(CheckRequest{})
	wantCode(t, err, apierr.Conflict)

	in(t, ns, func() (*SetupResult, error) {
		return host.Setup(ctx, Config{CIDR: "10.9.0.1/24", NAT: true, Uplink: "up0"})
	})
	for _, req := range []CheckRequest{{}, {Bridge: "vbr0"}, {NAT: &yes}, {CIDR: "10.9.0.1/24"}, {Uplink: "up0"}} {
		if res, err := check(req); err != nil || !res.OK {
			t.Fatalf("check %+v after setup --nat: %+v %v", req, res, err)
		}
	}
	// Asking for something else still reports it.
	res, err := check(CheckRequest{NAT: &no})
	wantCode(t, err, apierr.Conflict)
	if len(res.Differences) != 1 || res.Differences[0].Item != "nat" || res.Differences[0].Want != "absent" {
		t.Fatalf("check --no-nat: %+v", res)
	}
	if _, err := check(CheckRequest{CIDR: "10.8.0.1/24"}); !apierr.Is(err, apierr.Conflict) {
		t.Fatalf("check with another address: %v", err)
	}
	// The record follows setup: without --nat it removes NAT and says so.
	in(t, ns, func() (*SetupResult, error) { return host.Setup(ctx, Config{CIDR: "10.9.0.1/24"}) })
	if res, err := check(CheckRequest{}); err != nil || !res.OK {
		t.Fatalf("check after setup without NAT: %+v %v", res, err)
	}
	if _, err := check(CheckRequest{NAT: &yes}); !apierr.Is(err, apierr.Conflict) {
		t.Fatalf("check --nat after NAT was removed: %v", err)
	}
	// volantd's "leave NAT as it is" keeps the record as it is too.
	in(t, ns, func() (*SetupResult, error) { return host.Setup(ctx, Config{CIDR: "10.9.0.1/24", NAT: true}) })
	in(t, ns, func() (*SetupResult, error) { return host.Setup(ctx, Config{CIDR: "10.9.0.1/24", KeepNAT: true}) })
	if res, err := check(CheckRequest{}); err != nil || !res.OK {
		t.Fatalf("check after a setup that kept NAT: %+v %v", res, err)
	}
	if link := ns.Run("ip", "-d", "link", "show", "vbr0"); !strings.Contains(link, "volant-bridge:created,fwd,addr=10.9.0.1/24,nat") {
		t.Fatalf("record: %s", link)
	}
}

// A bridge set up before setup recorded NAT (an older build) has the NAT
// table without the record: setup --nat adds the record and says so, and
// check reports the gap until then.
func TestSetupRecordsNATMadeBeforeTheRecord(t *testing.T) {
	ns := newNS(t)
	in(t, ns, func() (*SetupResult, error) { return host.Setup(ctx, Config{NAT: true}) })
	ns.Run("ip", "link", "set", "vbr0", "alias", "volant-bridge:created,fwd,addr=192.168.127.1/24")
	res, err := func() (*CheckResult, error) {
		var res *CheckResult
		err := inErr(t, ns, func() error { var err error; res, err = host.Check(ctx, Config{NAT: true}); return err })
		return res, err
	}()
	wantCode(t, err, apierr.Conflict)
	if len(res.Differences) != 1 || res.Differences[0].Item != "nat" || !strings.Contains(res.Differences[0].Got, "not recorded") {
		t.Fatalf("check: %+v", res)
	}
	r := in(t, ns, func() (*SetupResult, error) { return host.Setup(ctx, Config{NAT: true}) })
	if !reflect.DeepEqual(changedItems(r.Items), []string{"nat"}) {
		t.Fatalf("setup: %+v", r)
	}
	if c := in(t, ns, func() (*CheckResult, error) { return host.CheckRecorded(ctx, CheckRequest{}) }); !c.OK {
		t.Fatalf("bare check: %+v", c)
	}
}
