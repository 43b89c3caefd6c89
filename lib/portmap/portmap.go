// Package portmap is the one rule for a published port: a host port (on
// one host address, or on all of them) forwarded to a port of a guest.
// It holds the type, its textual form `[HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp]`
// (the form of `volar vms create -p` and `volant-net port add -p`), its
// validation and the overlap rule that decides when two mappings claim the
// same host port. Standard library only: lib/api, lib/hostnet and the
// commands share it.
package portmap

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/volantvm/volant/lib/apierr"
)

// Protocols a mapping may name.
const (
	TCP = "tcp"
	UDP = "udp"
)

// Mapping forwards HostPort on HostIP (empty: every address of the host,
// loopback included) to GuestPort of the guest, for Protocol.
type Mapping struct {
	HostIP    string `json:"host_ip,omitempty" jsonschema:"an IPv4 address of the host; empty means all of them"`
	HostPort  int    `json:"host_port" jsonschema:"minimum=1,maximum=65535"`
	GuestPort int    `json:"guest_port" jsonschema:"minimum=1,maximum=65535"`
	Protocol  string `json:"protocol,omitempty" jsonschema:"enum=tcp,enum=udp"`
}

// String is the mapping's textual form, HOSTIP omitted when empty and the
// protocol always given: "8080:80/tcp", "10.0.0.1:53:53/udp".
func (m Mapping) String() string {
	s := strconv.Itoa(m.HostPort) + ":" + strconv.Itoa(m.GuestPort) + "/" + m.proto()
	if m.HostIP != "" {
		s = m.HostIP + ":" + s
	}
	return s
}

func (m Mapping) proto() string {
	if m.Protocol == "" {
		return TCP
	}
	return m.Protocol
}

// Normalized fills the default protocol (tcp) and writes the host address
// canonically ("0.0.0.0" becomes empty).
func (m Mapping) Normalized() Mapping {
	m.Protocol = m.proto()
	if a, err := netip.ParseAddr(m.HostIP); err == nil {
		if a.IsUnspecified() {
			m.HostIP = ""
		} else {
			m.HostIP = a.Unmap().String()
		}
	}
	return m
}

// Addr is the host address, the zero Addr for "all addresses".
func (m Mapping) Addr() netip.Addr {
	a, err := netip.ParseAddr(m.HostIP)
	if err != nil || a.IsUnspecified() {
		return netip.Addr{}
	}
	return a.Unmap()
}

// Parse reads `[HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp]`.
func Parse(s string) (Mapping, error) {
	bad := func(why string) (Mapping, error) {
		return Mapping{}, apierr.New(apierr.InvalidInput, "port mapping %q: %s", s, why).
			With("field", "ports").With("hint", "write [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp], e.g. 8080:80 or 127.0.0.1:8443:443/tcp")
	}
	rest, proto, hasProto := strings.Cut(s, "/")
	var m Mapping
	if hasProto {
		if proto == "" {
			return bad("a protocol (tcp or udp) must follow the /")
		}
		m.Protocol = strings.ToLower(proto)
	}
	parts := strings.Split(rest, ":")
	switch len(parts) {
	case 2:
	case 3:
		m.HostIP = parts[0]
		parts = parts[1:]
	default:
		return bad("expected HOSTPORT:GUESTPORT with an optional HOSTIP: before it")
	}
	var err error
	if m.HostPort, err = strconv.Atoi(parts[0]); err != nil {
		return bad("host port " + strconv.Quote(parts[0]) + " is not a number")
	}
	if m.GuestPort, err = strconv.Atoi(parts[1]); err != nil {
		return bad("guest port " + strconv.Quote(parts[1]) + " is not a number")
	}
	if err := m.Validate(); err != nil {
		return bad(apierr.From(err).Message)
	}
	return m.Normalized(), nil
}

// ParseAll parses each of ss.
func ParseAll(ss []string) ([]Mapping, error) {
	out := make([]Mapping, 0, len(ss))
	for _, s := range ss {
		m, err := Parse(s)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// Validate checks one mapping.
func (m Mapping) Validate() error {
	if m.HostPort < 1 || m.HostPort > 65535 {
		return apierr.New(apierr.InvalidInput, "host port %d is not between 1 and 65535", m.HostPort).With("field", "host_port")
	}
	if m.GuestPort < 1 || m.GuestPort > 65535 {
		return apierr.New(apierr.InvalidInput, "guest port %d is not between 1 and 65535", m.GuestPort).With("field", "guest_port")
	}
	if p := m.proto(); p != TCP && p != UDP {
		return apierr.New(apierr.InvalidInput, "protocol %q is not tcp or udp", m.Protocol).With("field", "protocol")
	}
	if m.HostIP != "" {
		a, err := netip.ParseAddr(m.HostIP)
		if err != nil || !a.Unmap().Is4() || a.Zone() != "" {
			return apierr.New(apierr.InvalidInput, "host address %q is not an IPv4 address", m.HostIP).With("field", "host_ip")
		}
		if a.IsMulticast() || a.Unmap() == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
			return apierr.New(apierr.InvalidInput, "host address %s is not a unicast address", m.HostIP).With("field", "host_ip")
		}
	}
	return nil
}

// Overlaps reports whether a and b claim the same host port: the same
// protocol and port, on the same address or where one is "all addresses".
func Overlaps(a, b Mapping) bool {
	a, b = a.Normalized(), b.Normalized()
	if a.Protocol != b.Protocol || a.HostPort != b.HostPort {
		return false
	}
	return a.HostIP == "" || b.HostIP == "" || a.HostIP == b.HostIP
}

// ValidateList checks every mapping of a request and that no two of them
// overlap; it returns them normalized, in a stable order (protocol, port,
// address).
func ValidateList(ms []Mapping) ([]Mapping, error) {
	out := make([]Mapping, 0, len(ms))
	for i, m := range ms {
		if err := m.Validate(); err != nil {
			e := apierr.From(err)
			return nil, apierr.New(apierr.InvalidInput, "ports[%d] (%s): %s", i, m, e.Message).With("field", fmt.Sprintf("ports[%d]", i))
		}
		n := m.Normalized()
		for _, o := range out {
			if Overlaps(o, n) {
				return nil, apierr.New(apierr.InvalidInput, "ports[%d] (%s) claims the same host port as %s", i, n, o).
					With("field", fmt.Sprintf("ports[%d]", i))
			}
		}
		out = append(out, n)
	}
	Sort(out)
	return out, nil
}

// Sort orders mappings by protocol, host port and host address.
func Sort(ms []Mapping) { slices.SortFunc(ms, Compare) }

// Compare orders two mappings by protocol, host port and host address.
func Compare(a, b Mapping) int {
	if c := strings.Compare(a.proto(), b.proto()); c != 0 {
		return c
	}
	if a.HostPort != b.HostPort {
		return a.HostPort - b.HostPort
	}
	if c := strings.Compare(a.HostIP, b.HostIP); c != 0 {
		return c
	}
	return a.GuestPort - b.GuestPort
}

// Strings is the textual form of each mapping.
func Strings(ms []Mapping) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.String()
	}
	return out
}
