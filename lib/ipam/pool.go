package ipam

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	"github.com/volantvm/volant/lib/apierr"
	guestsubnet "github.com/volantvm/volant/lib/subnet"
)

// Defaults of a pool: the spec's bridge network.
const (
	DefaultSubnet = "192.168.127.0/24"
	// DefaultRangeOffset is where a default range starts: network address
	// + 100 (192.168.127.100 in the default subnet), leaving the low
	// addresses to the operator.
	DefaultRangeOffset = 100
)

// PoolConfig is a pool as an operator writes it: in flags, VOLANT_*
// environment variables or a JSON request. Empty fields take defaults
// derived from the subnet (see Pool).
type PoolConfig struct {
	Subnet     string `json:"subnet,omitempty"`
	Gateway    string `json:"gateway,omitempty"`
	RangeStart string `json:"range_start,omitempty"`
	RangeEnd   string `json:"range_end,omitempty"`
}

// Pool is a resolved, valid IPv4 address pool. Addresses are handed out from
// Start to End inclusive, lowest free first, skipping the gateway when it
// lies inside the range.
type Pool struct {
	Subnet  netip.Prefix `json:"subnet"`
	Gateway netip.Addr   `json:"gateway"`
	Start   netip.Addr   `json:"range_start"`
	End     netip.Addr   `json:"range_end"`
}

// DefaultPool is 192.168.127.0/24, gateway .1, range .100-.254.
func DefaultPool() Pool {
	p, err := PoolConfig{}.Pool()
	if err != nil {
		panic(err) // the defaults are constants
	}
	return p
}

// Pool resolves c into a Pool, filling defaults:
//
//	subnet   192.168.127.0/24 (host bits are masked: 192.168.127.1/24 means 192.168.127.0/24)
//	gateway  the subnet's first address (.1)
//	range    network+100 to the last address before broadcast (.100-.254 in a /24);
//	         in a subnet too small for that, first to last host address
//
// The subnet must follow lib/subnet's rule (IPv4, /8 to /30, outside the
// loopback, link-local, multicast, reserved and 0.0.0.0/8 ranges). Errors
// are INVALID_INPUT naming the field.
func (c PoolConfig) Pool() (Pool, error) {
	var p Pool
	subnet := c.Subnet
	if subnet == "" {
		subnet = DefaultSubnet
	}
	pfx, err := netip.ParsePrefix(strings.TrimSpace(subnet))
	if err != nil {
		return p, invalid("subnet", subnet, "not a CIDR subnet such as 192.168.127.0/24")
	}
	if !pfx.Addr().Is4() {
		return p, invalid("subnet", subnet, "only IPv4 pools are supported")
	}
	if err := guestsubnet.Check(pfx); err != nil {
		return p, invalid("subnet", subnet, err.Error()+"; use "+guestsubnet.Rule)
	}
	p.Subnet = pfx.Masked()
	first, last := hostRange(p.Subnet)

	p.Gateway = first
	if c.Gateway != "" {
		if p.Gateway, err = parseAddr("gateway", c.Gateway); err != nil {
			return p, err
		}
	}
	p.Start = first
	if off := addrAdd(network(p.Subnet), DefaultRangeOffset); p.Subnet.Contains(off) && num(off) <= num(last) {
		p.Start = off
	}
	if c.RangeStart != "" {
		if p.Start, err = parseAddr("range_start", c.RangeStart); err != nil {
			return p, err
		}
	}
	p.End = last
	if c.RangeEnd != "" {
		if p.End, err = parseAddr("range_end", c.RangeEnd); err != nil {
			return p, err
		}
	}
	return p, p.Validate()
}

func parseAddr(field, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil || !a.Is4() {
		return netip.Addr{}, invalid(field, s, "not an IPv4 address")
	}
	return a, nil
}

func invalid(field, value, why string) error {
	return apierr.New(apierr.InvalidInput, "invalid pool %s %q: %s", field, value, why).
		With("field", field).With("value", value)
}

// Validate checks that the gateway and the range lie on the subnet's host
// addresses and that the range holds at least one address besides the
// gateway.
func (p Pool) Validate() error {
	if err := guestsubnet.Check(p.Subnet); err != nil || p.Subnet != p.Subnet.Masked() {
		return invalid("subnet", p.Subnet.String(), "must be a masked "+guestsubnet.Rule)
	}
	first, last := hostRange(p.Subnet)
	onHosts := func(field string, a netip.Addr) error {
		if !a.Is4() || num(a) < num(first) || num(a) > num(last) {
			return invalid(field, a.String(), fmt.Sprintf("must be a host address of %s (%s-%s)", p.Subnet, first, last))
		}
		return nil
	}
	if err := onHosts("gateway", p.Gateway); err != nil {
		return err
	}
	if err := onHosts("range_start", p.Start); err != nil {
		return err
	}
	if err := onHosts("range_end", p.End); err != nil {
		return err
	}
	if num(p.Start) > num(p.End) {
		return invalid("range_end", p.End.String(), fmt.Sprintf("the range ends before it starts (%s)", p.Start))
	}
	if p.Size() == 0 {
		return invalid("range_start", p.Start.String(), "the range holds no address besides the gateway")
	}
	return nil
}

// Size is how many addresses the pool can lease.
func (p Pool) Size() int {
	n := int(num(p.End)-num(p.Start)) + 1
	if p.inRange(p.Gateway) {
		n--
	}
	return n
}

// Contains reports whether a is an address this pool leases.
func (p Pool) Contains(a netip.Addr) bool {
	return p.inRange(a) && a != p.Gateway
}

func (p Pool) inRange(a netip.Addr) bool {
	return a.Is4() && num(a) >= num(p.Start) && num(a) <= num(p.End)
}

// String describes the pool as error messages show it:
// "192.168.127.0/24 (.100-.254, gateway .1)".
func (p Pool) String() string {
	return fmt.Sprintf("%s (%s-%s, gateway %s)", p.Subnet, p.short(p.Start), p.short(p.End), p.short(p.Gateway))
}

// short writes a in the /24-style short form (".100") when it shares the
// subnet's first three octets, else in full.
func (p Pool) short(a netip.Addr) string {
	n, s := p.Subnet.Addr().As4(), a.As4()
	if n[0] == s[0] && n[1] == s[1] && n[2] == s[2] {
		return fmt.Sprintf(".%d", s[3])
	}
	return a.String()
}

// segments are the pool's leasable runs of addresses as [lo, hi] numbers:
// the range, split around the gateway when it lies inside.
func (p Pool) segments() [][2]uint32 {
	lo, hi := num(p.Start), num(p.End)
	if !p.inRange(p.Gateway) {
		return [][2]uint32{{lo, hi}}
	}
	g := num(p.Gateway)
	var segs [][2]uint32
	if g > lo {
		segs = append(segs, [2]uint32{lo, g - 1})
	}
	if g < hi {
		segs = append(segs, [2]uint32{g + 1, hi})
	}
	return segs
}

func num(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func addr(n uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], n)
	return netip.AddrFrom4(b)
}

func addrAdd(a netip.Addr, n uint32) netip.Addr { return addr(num(a) + n) }

func network(p netip.Prefix) netip.Addr { return p.Masked().Addr() }

// hostRange is the first and last host address of a /30-or-larger subnet.
func hostRange(p netip.Prefix) (netip.Addr, netip.Addr) {
	n := uint64(num(network(p)))
	size := uint64(1) << (32 - p.Bits())
	return addr(uint32(n + 1)), addr(uint32(n + size - 2))
}
