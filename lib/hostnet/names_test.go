package hostnet

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/names"
)

func TestTapName(t *testing.T) {
	for _, tc := range []struct{ vm, want string }{
		{"web1", "vt-web1"},
		{"a", "vt-a"},
		{"exactly12chr", "vt-exactly12chr"},
		{"my_vm-2", "vt-my_vm-2"},
	} {
		if got := TapName(tc.vm); got != tc.want {
			t.Errorf("TapName(%q) = %q, want %q", tc.vm, got, tc.want)
		}
	}
	// Hashed forms: within the limit, valid, prefix kept, '.' present.
	for _, vm := range []string{"thirteen-char", "my-deployment-12", "Web1", "web.1", "ünïcode-vm", "a b", strings.Repeat("x", names.MaxLen)} {
		got := TapName(vm)
		if err := ValidateIfName(got); err != nil {
			t.Errorf("TapName(%q) = %q is not a valid interface name: %v", vm, got, err)
		}
		if !strings.HasPrefix(got, TapPrefix) || !strings.Contains(got, ".") || len(got) < 11 {
			t.Errorf("TapName(%q) = %q: want a hashed name", vm, got)
		}
		if TapName(vm) != got {
			t.Errorf("TapName(%q) is not deterministic", vm)
		}
	}
	if got := TapName("my-deployment-12"); !strings.HasPrefix(got, "vt-my-d.") {
		t.Errorf("hashed name keeps the first 4 characters: %q", got)
	}
	if got := TapName("Web1"); !strings.HasPrefix(got, "vt-web1.") {
		t.Errorf("hashed name lower-cases its head: %q", got)
	}
}

// No two VM names of a realistic population share a tap name, and the
// verbatim and hashed forms never meet.
func TestTapNameNoCollisions(t *testing.T) {
	seen := map[string]string{}
	add := func(vm string) {
		n := TapName(vm)
		if prev, ok := seen[n]; ok && prev != vm {
			t.Fatalf("TapName collision: %q and %q both map to %q", prev, vm, n)
		}
		seen[n] = vm
	}
	for i := 0; i < 20000; i++ {
		add(fmt.Sprintf("vm%d", i))                      // verbatim
		add(fmt.Sprintf("my-deployment-%d", i))          // hashed, shared head
		add(fmt.Sprintf("my-d.%d", i))                   // would-be look-alike of a hashed name
		add(fmt.Sprintf("replica-of-service-x-%05d", i)) // hashed
	}
}

func TestValidateIfName(t *testing.T) {
	for _, ok := range []string{"vbr0", "vt-web1", "a", "x234567890abcde", "br_0.1"} {
		if err := ValidateIfName(ok); err != nil {
			t.Errorf("ValidateIfName(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "x234567890abcdef", ".", "..", "a/b", "a:b", "a b", "tap%d", "a\tb"} {
		err := ValidateIfName(bad)
		if !apierr.Is(err, apierr.InvalidInput) {
			t.Errorf("ValidateIfName(%q) = %v, want INVALID_INPUT", bad, err)
		}
	}
}

func TestParseGateway(t *testing.T) {
	p, err := ParseGateway("192.168.127.1/24")
	if err != nil || p != netip.MustParsePrefix("192.168.127.1/24") {
		t.Fatalf("ParseGateway default: %v %v", p, err)
	}
	for _, bad := range []string{"", "192.168.127.1", "192.168.127.0/24", "192.168.127.255/24", "192.168.127.1/31",
		"10.0.0.1/7", "fd00::1/64", "300.1.1.1/24", "127.0.0.1/8", "169.254.1.1/16", "nonsense",
		"0.0.0.1/8", "240.0.0.1/24", "224.0.0.1/24"} { // the ranges lib/subnet refuses
		if _, err := ParseGateway(bad); !apierr.Is(err, apierr.InvalidInput) {
			t.Errorf("ParseGateway(%q) = %v, want INVALID_INPUT", bad, err)
		}
	}
}

func TestMACs(t *testing.T) {
	guest, err := ParseGuestMAC("52:54:00:12:34:56")
	if err != nil {
		t.Fatal(err)
	}
	if got := TapMAC(guest).String(); got != "fe:54:00:12:34:56" {
		t.Errorf("TapMAC = %s", got)
	}
	fe, _ := ParseGuestMAC("fe:54:00:12:34:56")
	if got := TapMAC(fe).String(); got != "fa:54:00:12:34:56" {
		t.Errorf("TapMAC of an fe: guest = %s, must differ from the guest's", got)
	}
	for _, m := range []net.HardwareAddr{TapMAC(guest), TapMAC(fe), BridgeMAC("vbr0"), BridgeMAC("x")} {
		if m[0]&1 != 0 || m[0]&2 == 0 {
			t.Errorf("%s is not a locally administered unicast address", m)
		}
	}
	if BridgeMAC("vbr0").String() == BridgeMAC("vbr1").String() {
		t.Error("BridgeMAC does not depend on the name")
	}
	for _, bad := range []string{"", "01:00:5e:00:00:01", "00:00:00:00:00:00", "52:54:00:12:34", "zz:54:00:12:34:56"} {
		if _, err := ParseGuestMAC(bad); !apierr.Is(err, apierr.InvalidInput) {
			t.Errorf("ParseGuestMAC(%q) = %v, want INVALID_INPUT", bad, err)
		}
	}
}

func TestRecords(t *testing.T) {
	r := bridgeRecord{Created: true, Fwd: true, Addr: netip.MustParsePrefix("192.168.127.1/24")}
	if s := r.String(); s != "volant-bridge:created,fwd,addr=192.168.127.1/24" {
		t.Fatalf("bridge record = %q", s)
	}
	back, ok := parseBridgeRecord(r.String() + ",future-token")
	if !ok || back != r {
		t.Fatalf("bridge record round trip: %+v %v", back, ok)
	}
	if _, ok := parseBridgeRecord("some operator's note"); ok {
		t.Fatal("a foreign alias parsed as a record")
	}
	if _, ok := parseBridgeRecord(""); ok {
		t.Fatal("an empty alias parsed as a record")
	}
	a, _ := parseBridgeRecord("volant-bridge:adopted,up")
	if !a.Adopted || !a.Up || a.Created || a.Fwd || a.Addr.IsValid() || a.Ownership() != "adopted" {
		t.Fatalf("adopted record: %+v", a)
	}

	mac, _ := net.ParseMAC("52:54:00:00:00:01")
	tr := tapRecord{VM: "web1", IP: netip.MustParseAddr("192.168.127.100"), MAC: mac}
	if s := tr.String(); s != "volant:web1 ip=192.168.127.100 mac=52:54:00:00:00:01" {
		t.Fatalf("tap record = %q", s)
	}
	if len(tr.String()) > 255 {
		t.Fatal("tap record longer than an alias may be")
	}
	back2, ok := parseTapRecord(tr.String())
	if !ok || back2.VM != "web1" || back2.IP != tr.IP || back2.MAC.String() != mac.String() {
		t.Fatalf("tap record round trip: %+v", back2)
	}
	bare, ok := parseTapRecord("volant:")
	if !ok || bare.VM != "" {
		t.Fatalf("bare tap record: %+v %v", bare, ok)
	}
	if _, ok := parseTapRecord("volant-bridge:created"); ok {
		t.Fatal("a bridge record parsed as a tap record")
	}
	long := tapRecord{VM: strings.Repeat("v", names.MaxLen), IP: netip.MustParseAddr("255.255.255.255"), MAC: mac}
	if len(long.String()) > 255 {
		t.Fatalf("longest tap record is %d bytes; IFLA_IFALIAS holds 255", len(long.String()))
	}
}

func TestNATComment(t *testing.T) {
	gw := netip.MustParsePrefix("192.168.127.1/24")
	if got := natComment(gw, ""); got != "volant-net masquerade 192.168.127.0/24" {
		t.Errorf("natComment = %q", got)
	}
	if got := natComment(gw, "eth0"); got != "volant-net masquerade 192.168.127.0/24 oif eth0" {
		t.Errorf("natComment = %q", got)
	}
	if m := prefixMask(24); m != [4]byte{255, 255, 255, 0} {
		t.Errorf("prefixMask(24) = %v", m)
	}
	if m := prefixMask(12); m != [4]byte{255, 240, 0, 0} {
		t.Errorf("prefixMask(12) = %v", m)
	}
}

func TestTapConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  TapConfig
	}{
		{"neither name nor vm", TapConfig{}},
		{"name too long", TapConfig{Name: "vt-this-is-too-long"}},
		{"bad mac", TapConfig{VM: "web1", MAC: "nope"}},
		{"multicast mac", TapConfig{VM: "web1", MAC: "01:00:5e:00:00:01"}},
		{"bad ip", TapConfig{VM: "web1", IP: "fd00::1"}},
		{"mtu", TapConfig{VM: "web1", MTU: 20}},
		{"queues", TapConfig{VM: "web1", Queues: 1000}},
		{"vm with space", TapConfig{VM: "web 1"}},
		{"bridge name", TapConfig{VM: "web1", Bridge: "bridge/0"}},
	} {
		if _, err := tc.cfg.spec(); !apierr.Is(err, apierr.InvalidInput) {
			t.Errorf("%s: %v, want INVALID_INPUT", tc.name, err)
		}
	}
	s, err := TapConfig{VM: "web1", Queues: 4}.spec()
	if err != nil || s.name != "vt-web1" || s.bridge != DefaultBridge || !s.multiQueue {
		t.Fatalf("spec: %+v %v", s, err)
	}
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"cidr", Config{CIDR: "192.168.127.0/33"}},
		{"bridge too long", Config{Bridge: "a-very-long-bridge-name"}},
		{"uplink is bridge", Config{NAT: true, Uplink: "vbr0"}},
		{"uplink without nat", Config{Uplink: "eth0"}},
	} {
		if _, err := tc.cfg.spec(); !apierr.Is(err, apierr.InvalidInput) {
			t.Errorf("%s: %v, want INVALID_INPUT", tc.name, err)
		}
	}
}

// VM names follow lib/names' rule here too (issue 14: this package used to
// accept 128 bytes of anything without whitespace).
func TestVMNamesFollowTheOneRule(t *testing.T) {
	for _, vm := range []string{"Web1", "web.1", "ünïcode-vm", "-web", strings.Repeat("a", 64), "web 1", "a/b"} {
		if _, err := (TapConfig{VM: vm}).spec(); !apierr.Is(err, apierr.InvalidInput) {
			t.Errorf("tap add --vm %q: %v, want INVALID_INPUT", vm, err)
		}
		if _, err := (&Host{}).DelTap(context.Background(), TapRef{VM: vm}); !apierr.Is(err, apierr.InvalidInput) {
			t.Errorf("tap del --vm %q: %v, want INVALID_INPUT", vm, err)
		}
	}
	for _, vm := range []string{"web1", "my-deployment-12", strings.Repeat("a", 63)} {
		if _, err := (TapConfig{VM: vm}).spec(); err != nil {
			t.Errorf("tap add --vm %q: %v", vm, err)
		}
	}
}
