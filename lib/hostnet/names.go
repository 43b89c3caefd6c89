package hostnet

import (
	"crypto/sha256"
	"encoding/base32"
	"net"
	"net/netip"
	"strings"
	"unicode"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/subnet"
)

// Defaults of the spec: bridge vbr0 with 192.168.127.1/24.
const (
	DefaultBridge = "vbr0"
	DefaultCIDR   = "192.168.127.1/24"
)

// TapPrefix starts every tap name TapName derives. The prefix is reserved
// for Volant: a tap named vt-* that carries no Volant alias is taken to be
// one whose creation was interrupted (see AddTap).
const TapPrefix = "vt-"

// MaxIfNameLen is the longest interface name Linux accepts (IFNAMSIZ - 1).
const MaxIfNameLen = 15

// directVMChars are the characters a VM name may use to appear verbatim in
// its tap name. '.' is not among them, so a hashed name (which contains a
// '.') never equals a verbatim one.
const directVMChars = "abcdefghijklmnopqrstuvwxyz0123456789_-"

// hashEncoding is base32 (RFC 4648) in lower case: valid in interface names.
var hashEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// TapName derives the tap device name of a VM, within the kernel's 15-byte
// limit:
//
//   - a VM name of at most 12 characters from [a-z0-9_-] appears verbatim:
//     "web1" → "vt-web1";
//   - any other name becomes "vt-" + its first 4 characters (lower-cased,
//     any character outside [a-z0-9_-] replaced by '-') + "." + the first 7
//     base32 characters of the SHA-256 of the whole name:
//     "my-deployment-12" → "vt-my-d.<7 chars>".
//
// Verbatim names never contain '.', hashed ones always do, so the two forms
// cannot collide; two hashed names collide only when their 35-bit hashes do
// (for 1,000 long names sharing a 4-character prefix, odds about 1 in 70,000).
// AddTap detects that case (the tap's alias names another VM) and refuses
// with CONFLICT rather than sharing a tap; pass an explicit name then.
func TapName(vm string) string {
	const room = MaxIfNameLen - len(TapPrefix) // 12
	if len(vm) > 0 && len(vm) <= room && onlyChars(vm, directVMChars) {
		return TapPrefix + vm
	}
	sum := sha256.Sum256([]byte(vm))
	hash := hashEncoding.EncodeToString(sum[:])[:7]
	var head strings.Builder
	for _, r := range vm {
		if head.Len() == 4 {
			break
		}
		if r < unicode.MaxASCII && strings.ContainsRune(directVMChars, unicode.ToLower(r)) {
			head.WriteRune(unicode.ToLower(r))
		} else {
			head.WriteByte('-')
		}
	}
	return TapPrefix + head.String() + "." + hash
}

func onlyChars(s, chars string) bool {
	for _, r := range s {
		if !strings.ContainsRune(chars, r) {
			return false
		}
	}
	return true
}

// ValidateIfName checks an interface name the way the kernel does
// (dev_valid_name), and also refuses '%', which TUNSETIFF would expand as a
// name template.
func ValidateIfName(name string) error {
	switch {
	case name == "":
		return apierr.New(apierr.InvalidInput, "interface name is empty")
	case len(name) > MaxIfNameLen:
		return apierr.New(apierr.InvalidInput, "interface name %q is %d bytes; Linux allows at most %d", name, len(name), MaxIfNameLen).
			With("name", name).With("max_bytes", MaxIfNameLen)
	case name == "." || name == "..":
		return apierr.New(apierr.InvalidInput, "interface name %q is not allowed", name).With("name", name)
	}
	for _, r := range name {
		if r == '/' || r == ':' || r == '%' || unicode.IsSpace(r) || r < 0x20 || r == 0x7f {
			return apierr.New(apierr.InvalidInput, "interface name %q contains %q, which is not allowed", name, r).With("name", name)
		}
	}
	return nil
}

// ParseGateway parses the bridge address with its prefix length, e.g.
// "192.168.127.1/24": an IPv4 host address (not the network or broadcast
// address) in a subnet that follows lib/subnet's rule (/8 to /30, outside
// the loopback, link-local, multicast, reserved and 0.0.0.0/8 ranges).
func ParseGateway(cidr string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(strings.TrimSpace(cidr))
	if err != nil {
		return netip.Prefix{}, apierr.New(apierr.InvalidInput, "cidr %q is not an address with a prefix length like %s", cidr, DefaultCIDR).
			With("cidr", cidr)
	}
	a := p.Addr()
	if !a.Is4() {
		return netip.Prefix{}, apierr.New(apierr.InvalidInput, "cidr %q is not IPv4; volant-net manages an IPv4 subnet", cidr).With("cidr", cidr)
	}
	if err := subnet.Check(p); err != nil {
		return netip.Prefix{}, apierr.New(apierr.InvalidInput, "cidr %q: %s; use %s", cidr, err, subnet.Rule).With("cidr", cidr)
	}
	if a == p.Masked().Addr() || a == lastAddr(p) {
		return netip.Prefix{}, apierr.New(apierr.InvalidInput, "cidr %q names the network or broadcast address; give the bridge's own address, e.g. %s", cidr, DefaultCIDR).
			With("cidr", cidr)
	}
	return p, nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v |= host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// ParseGuestMAC parses the MAC address of a guest NIC: 6 bytes, unicast, not
// all zero.
func ParseGuestMAC(s string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(s)
	if err != nil || len(mac) != 6 {
		return nil, apierr.New(apierr.InvalidInput, "mac %q is not a 6-byte MAC address like 52:54:00:12:34:56", s).With("mac", s)
	}
	if mac[0]&1 != 0 {
		return nil, apierr.New(apierr.InvalidInput, "mac %q is a multicast address; a NIC needs a unicast one", s).With("mac", s)
	}
	if mac.String() == "00:00:00:00:00:00" {
		return nil, apierr.New(apierr.InvalidInput, "mac %q is all zero", s).With("mac", s)
	}
	return mac, nil
}

// TapMAC is the address of the host end of a guest's tap. It must differ
// from the guest's: the bridge records a port's own address as local, so a
// tap wearing the guest's MAC would swallow every frame meant for the guest.
// The tap takes the guest's MAC with the first byte replaced by 0xfe (0xfa
// when the guest's already starts with 0xfe): locally administered, unicast,
// and easy to match with its guest in `bridge fdb` (libvirt's convention).
func TapMAC(guest net.HardwareAddr) net.HardwareAddr {
	m := make(net.HardwareAddr, len(guest))
	copy(m, guest)
	if len(m) == 0 {
		return m
	}
	if m[0] == 0xfe {
		m[0] = 0xfa
	} else {
		m[0] = 0xfe
	}
	return m
}

// BridgeMAC is the fixed address setup gives a bridge it creates. Without
// one a Linux bridge takes the lowest address among its ports, so the
// gateway's MAC would change as taps come and go and guests' ARP caches
// would go stale. It is derived from the bridge name (locally administered,
// unicast), which also lets an interrupted setup recognize its own bridge.
func BridgeMAC(bridge string) net.HardwareAddr {
	sum := sha256.Sum256([]byte("volant-net bridge " + bridge))
	m := net.HardwareAddr(sum[:6])
	m[0] = m[0]&^1 | 2
	return m
}

// NATTable is the name of the nftables table (family ip) that holds the
// masquerade rule of a bridge. The whole table belongs to volant-net.
func NATTable(bridge string) string { return "volant-" + bridge }
