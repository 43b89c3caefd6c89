// Package subnet holds the one rule for the IPv4 subnet Volant's guests
// live on: volant-ipam's pools, volantd's --subnet and the bridge address
// of volant-net setup all check it here, so a subnet one accepts the
// others accept.
//
// A guest subnet is IPv4 with a prefix length of /8 to /30 (a /30 is the
// smallest that holds a gateway and one guest), lying outside the ranges
// that cannot carry guests: 0.0.0.0/8 ("this network"), 127.0.0.0/8
// (loopback), 169.254.0.0/16 (link-local), 224.0.0.0/4 (multicast) and
// 240.0.0.0/4 (reserved, with the broadcast address). Any other range is
// allowed; private ones (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16,
// 100.64.0.0/10) are the usual choice.
//
// The package depends on the standard library only.
package subnet

import (
	"fmt"
	"net/netip"
)

// Rule is the rule in words, for error messages and help texts.
const Rule = "an IPv4 subnet of /8 to /30 outside 0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16, 224.0.0.0/4 and 240.0.0.0/4"

// reserved are the ranges no guest subnet may overlap, with their names.
var reserved = []struct {
	net  netip.Prefix
	name string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), `"this network"`},
	{netip.MustParsePrefix("127.0.0.0/8"), "the loopback range"},
	{netip.MustParsePrefix("169.254.0.0/16"), "the link-local range"},
	{netip.MustParsePrefix("224.0.0.0/4"), "the multicast range"},
	{netip.MustParsePrefix("240.0.0.0/4"), "the reserved range"},
}

// Check returns nil when p (host bits are ignored) is a subnet guests can
// live on, and otherwise an error saying why, to be wrapped by the caller
// with the field it came from.
func Check(p netip.Prefix) error {
	if !p.IsValid() || !p.Addr().Is4() {
		return fmt.Errorf("%s is not an IPv4 subnet", p)
	}
	if p.Bits() < 8 || p.Bits() > 30 {
		return fmt.Errorf("prefix length /%d is outside /8 to /30", p.Bits())
	}
	p = p.Masked()
	for _, r := range reserved {
		if r.net.Overlaps(p) {
			return fmt.Errorf("%s lies in %s (%s)", p, r.name, r.net)
		}
	}
	return nil
}
