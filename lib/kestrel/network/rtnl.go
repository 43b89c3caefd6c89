package network

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// rtnl is a NETLINK_ROUTE socket speaking just what Configure needs: one
// dump of the links, then one batch of requests (loopback up, the NIC's
// address, the NIC up, the default route) sent together and acknowledged
// together. Under software emulation each round trip through the kernel
// and a netlink library costs tens of milliseconds of boot; this is two.
type rtnl struct {
	fd  int
	seq uint32
}

func openRTNL() (*rtnl, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("opening a netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("binding a netlink socket: %w", err)
	}
	return &rtnl{fd: fd}, nil
}

func (r *rtnl) Close() error { return unix.Close(r.fd) }

// nlmsg is one netlink message being built.
type nlmsg struct {
	typ   uint16
	flags uint16
	body  []byte
	what  string // for errors: what the request does
}

func (m *nlmsg) attr(typ uint16, data []byte) {
	m.body = appendAttr(m.body, typ, data)
}

func appendAttr(b []byte, typ uint16, data []byte) []byte {
	l := unix.SizeofRtAttr + len(data)
	b = binary.NativeEndian.AppendUint16(b, uint16(l))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

// send writes msgs in one datagram and returns their sequence numbers.
func (r *rtnl) send(msgs ...*nlmsg) ([]uint32, error) {
	var buf []byte
	seqs := make([]uint32, len(msgs))
	for i, m := range msgs {
		r.seq++
		seqs[i] = r.seq
		buf = binary.NativeEndian.AppendUint32(buf, uint32(unix.SizeofNlMsghdr+len(m.body)))
		buf = binary.NativeEndian.AppendUint16(buf, m.typ)
		buf = binary.NativeEndian.AppendUint16(buf, m.flags)
		buf = binary.NativeEndian.AppendUint32(buf, r.seq)
		buf = binary.NativeEndian.AppendUint32(buf, 0)
		buf = append(buf, m.body...)
		for len(buf)%4 != 0 {
			buf = append(buf, 0)
		}
	}
	if err := unix.Sendto(r.fd, buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, err
	}
	return seqs, nil
}

// receive reads replies and calls fn for each message until done reports
// true.
func (r *rtnl) receive(fn func(h unix.NlMsghdr, data []byte) (done bool, err error)) error {
	buf := make([]byte, 32<<10)
	for {
		n, _, err := unix.Recvfrom(r.fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		b := buf[:n]
		for len(b) >= unix.SizeofNlMsghdr {
			h := unix.NlMsghdr{
				Len:   binary.NativeEndian.Uint32(b[0:4]),
				Type:  binary.NativeEndian.Uint16(b[4:6]),
				Flags: binary.NativeEndian.Uint16(b[6:8]),
				Seq:   binary.NativeEndian.Uint32(b[8:12]),
				Pid:   binary.NativeEndian.Uint32(b[12:16]),
			}
			if h.Len < unix.SizeofNlMsghdr || int(h.Len) > len(b) {
				return fmt.Errorf("malformed netlink message (length %d of %d)", h.Len, len(b))
			}
			done, err := fn(h, b[unix.SizeofNlMsghdr:h.Len])
			if err != nil || done {
				return err
			}
			b = b[align4(int(h.Len)):]
		}
	}
}

func align4(n int) int { return (n + 3) &^ 3 }

// nlError reads an NLMSG_ERROR body: 0 is an acknowledgement.
func nlError(data []byte) error {
	if len(data) < 4 {
		return errors.New("short netlink error message")
	}
	if e := int32(binary.NativeEndian.Uint32(data[0:4])); e != 0 {
		return unix.Errno(-e)
	}
	return nil
}

// links dumps the network interfaces (RTM_GETLINK).
func (r *rtnl) links() ([]Link, error) {
	m := &nlmsg{typ: unix.RTM_GETLINK, flags: unix.NLM_F_REQUEST | unix.NLM_F_DUMP, body: make([]byte, unix.SizeofIfInfomsg)}
	m.body[0] = unix.AF_UNSPEC
	seqs, err := r.send(m)
	if err != nil {
		return nil, fmt.Errorf("listing network links: %w", err)
	}
	var out []Link
	err = r.receive(func(h unix.NlMsghdr, data []byte) (bool, error) {
		if h.Seq != seqs[0] {
			return false, nil
		}
		switch h.Type {
		case unix.NLMSG_DONE:
			return true, nil
		case unix.NLMSG_ERROR:
			if err := nlError(data); err != nil {
				return true, err
			}
			return false, nil
		case unix.RTM_NEWLINK:
			l, err := parseLink(data)
			if err != nil {
				return true, err
			}
			out = append(out, l)
		}
		return false, nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing network links: %w", err)
	}
	return out, nil
}

// parseLink reads an RTM_NEWLINK body the way the netlink library read it:
// Type is the IFLA_LINKINFO kind ("device" without one), Ether an Ethernet
// link type with a 6-byte address.
func parseLink(data []byte) (Link, error) {
	if len(data) < unix.SizeofIfInfomsg {
		return Link{}, errors.New("short link message")
	}
	l := Link{Index: int(int32(binary.NativeEndian.Uint32(data[4:8]))), Type: "device"}
	arphrd := binary.NativeEndian.Uint16(data[2:4])
	var hw []byte
	err := eachAttr(data[unix.SizeofIfInfomsg:], func(typ uint16, v []byte) error {
		switch typ {
		case unix.IFLA_IFNAME:
			l.Name = cString(v)
		case unix.IFLA_ADDRESS:
			hw = append([]byte(nil), v...)
		case unix.IFLA_LINKINFO:
			return eachAttr(v, func(typ uint16, v []byte) error {
				if typ == unix.IFLA_INFO_KIND {
					l.Type = cString(v)
				}
				return nil
			})
		}
		return nil
	})
	l.Ether = arphrd == unix.ARPHRD_ETHER && len(hw) == 6
	l.MAC = hw
	return l, err
}

func eachAttr(b []byte, fn func(typ uint16, v []byte) error) error {
	for len(b) >= unix.SizeofRtAttr {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) &^ unix.NLA_F_NESTED
		if l < unix.SizeofRtAttr || l > len(b) {
			return fmt.Errorf("malformed netlink attribute (length %d of %d)", l, len(b))
		}
		if err := fn(typ, b[unix.SizeofRtAttr:l]); err != nil {
			return err
		}
		b = b[min(align4(l), len(b)):]
	}
	return nil
}

func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// linkUp is RTM_NEWLINK setting IFF_UP on index.
func linkUp(index int, name string) *nlmsg {
	m := &nlmsg{typ: unix.RTM_NEWLINK, flags: unix.NLM_F_REQUEST | unix.NLM_F_ACK, what: "bringing " + name + " up"}
	m.body = make([]byte, unix.SizeofIfInfomsg)
	m.body[0] = unix.AF_UNSPEC
	binary.NativeEndian.PutUint32(m.body[4:8], uint32(index))
	binary.NativeEndian.PutUint32(m.body[8:12], unix.IFF_UP)
	binary.NativeEndian.PutUint32(m.body[12:16], unix.IFF_UP)
	return m
}

// addrReplace is RTM_NEWADDR (create or replace) of an IPv4 or IPv6
// prefix on index, with the broadcast address for IPv4 prefixes up to /30
// as `ip addr add ... brd +` and the netlink library set it.
func addrReplace(index int, name string, p netip.Prefix) *nlmsg {
	m := &nlmsg{typ: unix.RTM_NEWADDR, flags: unix.NLM_F_REQUEST | unix.NLM_F_ACK | unix.NLM_F_CREATE | unix.NLM_F_REPLACE,
		what: "setting address " + p.String() + " on " + name}
	family := byte(unix.AF_INET6)
	if p.Addr().Is4() {
		family = unix.AF_INET
	}
	m.body = []byte{family, byte(p.Bits()), 0, unix.RT_SCOPE_UNIVERSE}
	m.body = binary.NativeEndian.AppendUint32(m.body, uint32(index))
	ip := p.Addr().AsSlice()
	m.attr(unix.IFA_LOCAL, ip)
	m.attr(unix.IFA_ADDRESS, ip)
	if p.Addr().Is4() && p.Bits() < 31 {
		b := p.Addr().As4()
		host := uint32(1)<<(32-p.Bits()) - 1
		v := binary.BigEndian.Uint32(b[:]) | host
		m.attr(unix.IFA_BROADCAST, binary.BigEndian.AppendUint32(nil, v))
	}
	return m
}

// addrDelete is RTM_DELADDR of a prefix on index.
func addrDelete(index int, name string, p netip.Prefix) *nlmsg {
	m := addrReplace(index, name, p)
	m.typ, m.flags, m.what = unix.RTM_DELADDR, unix.NLM_F_REQUEST|unix.NLM_F_ACK, "removing address "+p.String()+" from "+name
	return m
}

// defaultRoute is RTM_NEWROUTE (create or replace) of the default route
// via gw out of index; onlink when gw lies outside the link's subnet.
func defaultRoute(index int, name string, gw netip.Addr, onlink bool) *nlmsg {
	m := &nlmsg{typ: unix.RTM_NEWROUTE, flags: unix.NLM_F_REQUEST | unix.NLM_F_ACK | unix.NLM_F_CREATE | unix.NLM_F_REPLACE,
		what: "adding default route via " + gw.String() + " on " + name}
	family := byte(unix.AF_INET6)
	if gw.Is4() {
		family = unix.AF_INET
	}
	// rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
	m.body = []byte{family, 0, 0, 0, unix.RT_TABLE_MAIN, unix.RTPROT_BOOT, unix.RT_SCOPE_UNIVERSE, unix.RTN_UNICAST}
	flags := uint32(0)
	if onlink {
		flags = unix.RTNH_F_ONLINK
	}
	m.body = binary.NativeEndian.AppendUint32(m.body, flags)
	m.attr(unix.RTA_GATEWAY, gw.AsSlice())
	m.attr(unix.RTA_OIF, u32(uint32(index)))
	return m
}

// do sends msgs in one datagram and waits for every acknowledgement; the
// error names the first request the kernel refused.
func (r *rtnl) do(msgs ...*nlmsg) error {
	seqs, err := r.send(msgs...)
	if err != nil {
		return fmt.Errorf("%s: %w", msgs[0].what, err)
	}
	what := map[uint32]string{}
	for i, s := range seqs {
		what[s] = msgs[i].what
	}
	var first error
	pending := len(msgs)
	err = r.receive(func(h unix.NlMsghdr, data []byte) (bool, error) {
		w, ok := what[h.Seq]
		if !ok || h.Type != unix.NLMSG_ERROR {
			return false, nil
		}
		delete(what, h.Seq)
		pending--
		if err := nlError(data); err != nil && first == nil {
			first = fmt.Errorf("%s: %w", w, err)
		}
		return pending == 0, nil
	})
	if err != nil {
		return err
	}
	return first
}
