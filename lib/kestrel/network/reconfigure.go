package network

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"os"

	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/kestrel/guest"
)

// Reconfigure moves the NIC from the configuration old to c (a guest
// restored from a snapshot taking the identity of another VM): the MAC
// when mac is set, the address (old's is removed), the default route, the
// resolvers and the hostname; /etc/hosts too when kestrel wrote it. The
// NIC is the one Configure picked.
func Reconfigure(m *guest.Machine, old, c Config, mac net.HardwareAddr, log *slog.Logger) error {
	m.Check()
	if c.Hostname != "" {
		if err := m.SetHostname(c.Hostname); err != nil {
			return fmt.Errorf("setting hostname %q: %w", c.Hostname, err)
		}
	}
	if !c.Address.IsValid() {
		return nil
	}
	nl, err := openRTNL()
	if err != nil {
		return err
	}
	defer nl.Close()
	links, err := nl.links()
	if err != nil {
		return err
	}
	l, ok := PickLink(links)
	if !ok {
		return fmt.Errorf("no network interface to reconfigure")
	}
	var reqs []*nlmsg
	if len(mac) == 6 && !bytes.Equal(mac, l.MAC) {
		reqs = append(reqs, linkAddress(l.Index, l.Name, mac))
	}
	if old.Address.IsValid() && old.Address != c.Address {
		reqs = append(reqs, addrDelete(l.Index, l.Name, old.Address))
	}
	reqs = append(reqs, addrReplace(l.Index, l.Name, c.Address), linkUp(l.Index, l.Name))
	if c.Gateway.IsValid() {
		reqs = append(reqs, defaultRoute(l.Index, l.Name, c.Gateway, !c.Address.Masked().Contains(c.Gateway)))
	}
	if err := nl.do(reqs...); err != nil {
		return err
	}
	if len(c.DNS) > 0 {
		if err := writeFile("/etc/resolv.conf", ResolvConf(c.DNS)); err != nil {
			log.Warn("cannot write /etc/resolv.conf", "err", err)
		}
	}
	// /etc/hosts is rewritten only when it is the one kestrel wrote.
	if b, err := os.ReadFile("/etc/hosts"); err == nil && bytes.Equal(b, Hosts(old.Address.Addr(), old.Hostname)) {
		if err := writeFile("/etc/hosts", Hosts(c.Address.Addr(), c.Hostname)); err != nil {
			log.Warn("cannot write /etc/hosts", "err", err)
		}
	}
	log.Info("network reconfigured", "link", l.Name, "mac", mac.String(), "address", c.Address.String(),
		"was", old.Address.String(), "gateway", c.Gateway.String())
	return nil
}

// linkAddress is RTM_NEWLINK setting index's hardware address.
func linkAddress(index int, name string, mac net.HardwareAddr) *nlmsg {
	m := &nlmsg{typ: unix.RTM_NEWLINK, flags: unix.NLM_F_REQUEST | unix.NLM_F_ACK, what: "setting the MAC of " + name + " to " + mac.String()}
	m.body = make([]byte, unix.SizeofIfInfomsg)
	m.body[0] = unix.AF_UNSPEC
	binary.NativeEndian.PutUint32(m.body[4:8], uint32(index))
	m.attr(unix.IFLA_ADDRESS, mac)
	return m
}
