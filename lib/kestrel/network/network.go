// Package network configures the guest's network from the kernel command
// line (Debian's kernel has no CONFIG_IP_PNP, so its own ip= does nothing):
// loopback up; the NIC (the first non-loopback Ethernet link, by interface
// index) up with the address and default route; /etc/resolv.conf from the
// DNS servers; the hostname; and an /etc/hosts when the root has none.
package network

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/volantvm/volant/lib/bootargs"
	"github.com/volantvm/volant/lib/kestrel/guest"
)

// Config is what to set up.
type Config struct {
	Address  netip.Prefix
	Gateway  netip.Addr
	DNS      []netip.Addr
	Hostname string
}

// FromArgs takes the network settings of a command line (volant.ip/gw/dns/vm
// or the kernel's ip= form, which lib/bootargs folds into the same fields).
func FromArgs(a bootargs.Args) Config {
	return Config{Address: a.IP, Gateway: a.Gateway, DNS: a.DNS, Hostname: a.VM}
}

// LinkWait is how long Configure waits for the NIC to appear after its
// driver was loaded.
const LinkWait = 10 * time.Second

// Link is what pickLink needs to know about an interface.
type Link struct {
	Index int
	Name  string
	Type  string // netlink's type: "device" for a physical or virtio NIC
	Ether bool   // Ethernet encapsulation with a 6-byte MAC
}

// PickLink chooses the NIC: the lowest-index non-loopback Ethernet device.
func PickLink(links []Link) (Link, bool) {
	sort.Slice(links, func(i, j int) bool { return links[i].Index < links[j].Index })
	for _, l := range links {
		if l.Name == "lo" || !l.Ether || l.Type != "device" {
			continue
		}
		return l, true
	}
	return Link{}, false
}

func listLinks() ([]Link, map[string]netlink.Link, error) {
	ls, err := netlink.LinkList()
	if err != nil {
		return nil, nil, err
	}
	var out []Link
	byName := map[string]netlink.Link{}
	for _, l := range ls {
		a := l.Attrs()
		out = append(out, Link{Index: a.Index, Name: a.Name, Type: l.Type(), Ether: a.EncapType == "ether" && len(a.HardwareAddr) == 6})
		byName[a.Name] = l
	}
	return out, byName, nil
}

// Configure applies c. With no address it only brings loopback up. It
// returns the NIC's name ("" when none was configured).
func Configure(m *guest.Machine, c Config, log *slog.Logger) (string, error) {
	m.Check()
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return "", fmt.Errorf("finding loopback: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return "", fmt.Errorf("bringing loopback up: %w", err)
	}
	if c.Hostname != "" {
		if err := m.SetHostname(c.Hostname); err != nil {
			return "", fmt.Errorf("setting hostname %q: %w", c.Hostname, err)
		}
	}
	if !c.Address.IsValid() {
		return "", nil
	}
	var nic netlink.Link
	deadline := time.Now().Add(LinkWait)
	for {
		links, byName, err := listLinks()
		if err != nil {
			return "", fmt.Errorf("listing network links: %w", err)
		}
		if l, ok := PickLink(links); ok {
			nic = byName[l.Name]
			break
		}
		if time.Now().After(deadline) {
			var names []string
			for _, l := range links {
				names = append(names, l.Name+"("+l.Type+")")
			}
			return "", fmt.Errorf("no network interface appeared within %s (links: %s); is virtio_net loaded and a NIC attached?", LinkWait, strings.Join(names, ", "))
		}
		time.Sleep(20 * time.Millisecond)
	}
	name := nic.Attrs().Name
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: c.Address.Addr().AsSlice(), Mask: net.CIDRMask(c.Address.Bits(), c.Address.Addr().BitLen())}}
	if err := netlink.AddrReplace(nic, addr); err != nil {
		return name, fmt.Errorf("setting address %s on %s: %w", c.Address, name, err)
	}
	if err := netlink.LinkSetUp(nic); err != nil {
		return name, fmt.Errorf("bringing %s up: %w", name, err)
	}
	if c.Gateway.IsValid() {
		r := &netlink.Route{LinkIndex: nic.Attrs().Index, Gw: c.Gateway.AsSlice(), Scope: netlink.SCOPE_UNIVERSE}
		if !c.Address.Masked().Contains(c.Gateway) {
			r.Flags = int(netlink.FLAG_ONLINK)
		}
		if err := netlink.RouteReplace(r); err != nil {
			return name, fmt.Errorf("adding default route via %s on %s: %w", c.Gateway, name, err)
		}
	}
	if len(c.DNS) > 0 {
		if err := writeFile("/etc/resolv.conf", ResolvConf(c.DNS)); err != nil {
			log.Warn("cannot write /etc/resolv.conf", "err", err)
		}
	}
	if _, err := os.Lstat("/etc/hosts"); errors.Is(err, os.ErrNotExist) {
		if err := writeFile("/etc/hosts", Hosts(c.Address.Addr(), c.Hostname)); err != nil {
			log.Warn("cannot write /etc/hosts", "err", err)
		}
	}
	log.Info("network configured", "link", name, "mac", nic.Attrs().HardwareAddr.String(), "address", c.Address.String(), "gateway", c.Gateway.String())
	return name, nil
}

// ResolvConf is /etc/resolv.conf for the given servers.
func ResolvConf(dns []netip.Addr) []byte {
	var b strings.Builder
	b.WriteString("# written by kestrel from volant.dns\n")
	for _, d := range dns {
		b.WriteString("nameserver " + d.String() + "\n")
	}
	return []byte(b.String())
}

// Hosts is a minimal /etc/hosts.
func Hosts(ip netip.Addr, hostname string) []byte {
	s := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
	if hostname != "" && ip.IsValid() {
		s += ip.String() + "\t" + hostname + "\n"
	}
	return []byte(s)
}

// writeFile replaces path atomically (temp file, fsync, rename); a symlink
// at path (a distribution's resolv.conf link) is replaced, not followed.
func writeFile(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
