package ipam

import (
	"net/netip"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
)

func TestPoolDefaults(t *testing.T) {
	for _, tc := range []struct {
		cfg                       PoolConfig
		subnet, gw, start, end, s string
		size                      int
	}{
		{PoolConfig{}, "192.168.127.0/24", "192.168.127.1", "192.168.127.100", "192.168.127.254", "192.168.127.0/24 (.100-.254, gateway .1)", 155},
		{PoolConfig{Subnet: "192.168.127.1/24"}, "192.168.127.0/24", "192.168.127.1", "192.168.127.100", "192.168.127.254", "", 155},
		{PoolConfig{Subnet: "10.1.0.0/16"}, "10.1.0.0/16", "10.1.0.1", "10.1.0.100", "10.1.255.254", "10.1.0.0/16 (.100-10.1.255.254, gateway .1)", 65535 - 100},
		{PoolConfig{Subnet: "10.9.9.0/25"}, "10.9.9.0/25", "10.9.9.1", "10.9.9.100", "10.9.9.126", "", 27},
		// Too small for +100: the whole host range, minus the gateway.
		{PoolConfig{Subnet: "10.9.9.16/28"}, "10.9.9.16/28", "10.9.9.17", "10.9.9.17", "10.9.9.30", "", 13},
		{PoolConfig{Subnet: "10.9.9.0/30"}, "10.9.9.0/30", "10.9.9.1", "10.9.9.1", "10.9.9.2", "", 1},
		{PoolConfig{Subnet: "10.0.0.0/24", Gateway: "10.0.0.254", RangeStart: "10.0.0.2", RangeEnd: "10.0.0.9"}, "10.0.0.0/24", "10.0.0.254", "10.0.0.2", "10.0.0.9", "10.0.0.0/24 (.2-.9, gateway .254)", 8},
		// Gateway inside the range is skipped, not refused.
		{PoolConfig{Subnet: "10.0.0.0/24", RangeStart: "10.0.0.1", RangeEnd: "10.0.0.10"}, "10.0.0.0/24", "10.0.0.1", "10.0.0.1", "10.0.0.10", "", 9},
		{PoolConfig{Subnet: " 10.0.0.0/8 "}, "10.0.0.0/8", "10.0.0.1", "10.0.0.100", "10.255.255.254", "", 1<<24 - 2 - 99},
	} {
		p, err := tc.cfg.Pool()
		if err != nil {
			t.Errorf("%+v: %v", tc.cfg, err)
			continue
		}
		if p.Subnet.String() != tc.subnet || p.Gateway.String() != tc.gw || p.Start.String() != tc.start || p.End.String() != tc.end {
			t.Errorf("%+v: got %s gw %s range %s-%s", tc.cfg, p.Subnet, p.Gateway, p.Start, p.End)
		}
		if p.Size() != tc.size {
			t.Errorf("%+v: size %d, want %d", tc.cfg, p.Size(), tc.size)
		}
		if tc.s != "" && p.String() != tc.s {
			t.Errorf("%+v: String() = %q, want %q", tc.cfg, p.String(), tc.s)
		}
	}
	if DefaultPool().String() != "192.168.127.0/24 (.100-.254, gateway .1)" {
		t.Fatal(DefaultPool())
	}
}

func TestPoolErrors(t *testing.T) {
	for _, tc := range []struct {
		cfg   PoolConfig
		field string
	}{
		{PoolConfig{Subnet: "192.168.127.0"}, "subnet"},
		{PoolConfig{Subnet: "banana"}, "subnet"},
		{PoolConfig{Subnet: "fd00::/64"}, "subnet"},
		{PoolConfig{Subnet: "10.0.0.0/31"}, "subnet"},
		{PoolConfig{Subnet: "10.0.0.0/32"}, "subnet"},
		// issue 21: 0.0.0.0/0 leased 0.0.0.100. lib/subnet's rule.
		{PoolConfig{Subnet: "0.0.0.0/0"}, "subnet"},
		{PoolConfig{Subnet: "0.0.0.0/8"}, "subnet"},
		{PoolConfig{Subnet: "10.0.0.0/7"}, "subnet"},
		{PoolConfig{Subnet: "127.0.0.0/24"}, "subnet"},
		{PoolConfig{Subnet: "224.0.0.0/24"}, "subnet"},
		{PoolConfig{Subnet: "169.254.0.0/16"}, "subnet"},
		{PoolConfig{Gateway: "10.0.0.1"}, "gateway"},
		{PoolConfig{Gateway: "192.168.127.0"}, "gateway"},   // network address
		{PoolConfig{Gateway: "192.168.127.255"}, "gateway"}, // broadcast
		{PoolConfig{Gateway: "fe80::1"}, "gateway"},
		{PoolConfig{Gateway: "192.168.127.300"}, "gateway"},
		{PoolConfig{RangeStart: "192.168.128.1"}, "range_start"},
		{PoolConfig{RangeEnd: "192.168.127.255"}, "range_end"},
		{PoolConfig{RangeStart: "192.168.127.200", RangeEnd: "192.168.127.100"}, "range_end"},
		{PoolConfig{RangeStart: "192.168.127.1", RangeEnd: "192.168.127.1"}, "range_start"}, // only the gateway
		{PoolConfig{RangeEnd: "x"}, "range_end"},
	} {
		_, err := tc.cfg.Pool()
		if !apierr.Is(err, apierr.InvalidInput) {
			t.Errorf("%+v: want INVALID_INPUT, got %v", tc.cfg, err)
			continue
		}
		if f := apierr.From(err).Details["field"]; f != tc.field {
			t.Errorf("%+v: field %v, want %s (%v)", tc.cfg, f, tc.field, err)
		}
	}
	// A Pool built by hand is checked too.
	bad := Pool{Subnet: netip.MustParsePrefix("10.0.0.5/24"), Gateway: netip.MustParseAddr("10.0.0.1"),
		Start: netip.MustParseAddr("10.0.0.2"), End: netip.MustParseAddr("10.0.0.3")}
	if bad.Validate() == nil {
		t.Fatal("unmasked subnet accepted")
	}
	if (Pool{}).Validate() == nil {
		t.Fatal("zero pool accepted")
	}
	loop := Pool{Subnet: netip.MustParsePrefix("127.0.0.0/24"), Gateway: netip.MustParseAddr("127.0.0.1"),
		Start: netip.MustParseAddr("127.0.0.2"), End: netip.MustParseAddr("127.0.0.3")}
	if loop.Validate() == nil {
		t.Fatal("loopback pool accepted")
	}
}

func TestSegments(t *testing.T) {
	mk := func(gw, lo, hi string) Pool {
		p, err := PoolConfig{Subnet: "10.0.0.0/24", Gateway: gw, RangeStart: lo, RangeEnd: hi}.Pool()
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	n := func(s string) uint32 { return num(netip.MustParseAddr(s)) }
	for _, tc := range []struct {
		p    Pool
		want [][2]uint32
	}{
		{mk("10.0.0.1", "10.0.0.2", "10.0.0.9"), [][2]uint32{{n("10.0.0.2"), n("10.0.0.9")}}},
		{mk("10.0.0.1", "10.0.0.1", "10.0.0.9"), [][2]uint32{{n("10.0.0.2"), n("10.0.0.9")}}},
		{mk("10.0.0.9", "10.0.0.1", "10.0.0.9"), [][2]uint32{{n("10.0.0.1"), n("10.0.0.8")}}},
		{mk("10.0.0.5", "10.0.0.1", "10.0.0.9"), [][2]uint32{{n("10.0.0.1"), n("10.0.0.4")}, {n("10.0.0.6"), n("10.0.0.9")}}},
	} {
		got := tc.p.segments()
		if len(got) != len(tc.want) {
			t.Fatalf("%s: %v, want %v", tc.p, got, tc.want)
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Fatalf("%s: %v, want %v", tc.p, got, tc.want)
			}
		}
		if tc.p.Contains(tc.p.Gateway) {
			t.Fatalf("%s contains its gateway", tc.p)
		}
	}
}
