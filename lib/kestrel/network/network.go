// Package network configures the guest's network from the kernel command
// line (Debian's kernel has no CONFIG_IP_PNP, so its own ip= does nothing):
// loopback up; the NIC (the first non-loopback Ethernet link, by interface
// index) up with the address and default route; /etc/resolv.conf from the
// DNS servers; the hostname; and an /etc/hosts when the root has none.
//
// It speaks rtnetlink itself (rtnl.go): one dump of the links and one
// batch of four requests, instead of a netlink library's round trip per
// step, which under software emulation cost a tenth of a second of boot.
package network

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/renameio/v2"

	"github.com/volantvm/volant/lib/bootargs"
	"github.com/volantvm/volant/lib/kestrel/guest"
)

// Config is what to set up.
type Config struct {
	Address  netip.Prefix
	Gateway  netip.Addr
	DNS      []netip.Addr
	Hostname string
	// Volatile says that the root is the initramfs, whose files do not
	// outlive the boot: Configure writes /etc/resolv.conf and /etc/hosts
	// in place (nothing reads them yet), without the temporary file,
	// fsync and rename that keep a disk's copy whole.
	Volatile bool
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
	Type  string // the link's kind: "device" for a physical or virtio NIC
	Ether bool   // Ethernet encapsulation with a 6-byte MAC
	MAC   []byte
}

// PickLink chooses the NIC: the lowest-index non-loopback Ethernet device.
func PickLink(links []Link) (Link, bool) {
	var pick Link
	ok := false
	for _, l := range links {
		if l.Name == "lo" || !l.Ether || l.Type != "device" {
			continue
		}
		if !ok || l.Index < pick.Index {
			pick, ok = l, true
		}
	}
	return pick, ok
}

// Configure applies c. With no address it only brings loopback up. It
// returns the NIC's name ("" when none was configured).
func Configure(m *guest.Machine, c Config, log *slog.Logger) (string, error) {
	m.Check()
	if c.Hostname != "" {
		if err := m.SetHostname(c.Hostname); err != nil {
			return "", fmt.Errorf("setting hostname %q: %w", c.Hostname, err)
		}
	}
	t0 := time.Now()
	nic, err := configureLinks(c, PickLink)
	if err != nil || nic == nil {
		return "", err
	}
	linked := time.Since(t0)
	write := writeFile
	if c.Volatile {
		write = writeInPlace
	}
	if len(c.DNS) > 0 {
		if err := write("/etc/resolv.conf", ResolvConf(c.DNS)); err != nil {
			log.Warn("cannot write /etc/resolv.conf", "err", err)
		}
	}
	if _, err := os.Lstat("/etc/hosts"); errors.Is(err, os.ErrNotExist) {
		if err := write("/etc/hosts", Hosts(c.Address.Addr(), c.Hostname)); err != nil {
			log.Warn("cannot write /etc/hosts", "err", err)
		}
	}
	log.Info("network configured", "link", nic.Name, "mac", net.HardwareAddr(nic.MAC).String(), "address", c.Address.String(), "gateway", c.Gateway.String(),
		"links_took", linked.Round(time.Millisecond), "took", time.Since(t0).Round(time.Millisecond))
	return nic.Name, nil
}

// configureLinks brings loopback up and, when c has an address, waits for
// the NIC pick chooses (up to LinkWait) and gives it the address, brings
// it up and adds the default route, in one netlink batch. It returns the
// NIC (nil without an address).
func configureLinks(c Config, pick func([]Link) (Link, bool)) (*Link, error) {
	nl, err := openRTNL()
	if err != nil {
		return nil, err
	}
	defer nl.Close()
	deadline := time.Now().Add(LinkWait)
	for {
		links, err := nl.links()
		if err != nil {
			return nil, err
		}
		var lo *Link
		for i := range links {
			if links[i].Name == "lo" {
				lo = &links[i]
			}
		}
		if lo == nil {
			return nil, errors.New("finding loopback: no link named lo")
		}
		if !c.Address.IsValid() {
			return nil, nl.do(linkUp(lo.Index, "loopback"))
		}
		if l, ok := pick(links); ok {
			reqs := []*nlmsg{linkUp(lo.Index, "loopback"), addrReplace(l.Index, l.Name, c.Address), linkUp(l.Index, l.Name)}
			if c.Gateway.IsValid() {
				reqs = append(reqs, defaultRoute(l.Index, l.Name, c.Gateway, !c.Address.Masked().Contains(c.Gateway)))
			}
			return &l, nl.do(reqs...)
		}
		if time.Now().After(deadline) {
			var names []string
			for _, l := range links {
				names = append(names, l.Name+"("+l.Type+")")
			}
			return nil, fmt.Errorf("no network interface appeared within %s (links: %s); is virtio_net loaded and a NIC attached?", LinkWait, strings.Join(names, ", "))
		}
		time.Sleep(20 * time.Millisecond)
	}
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

// writeFile replaces path atomically (renameio: a temporary file beside
// it, fsync, rename) with a file of mode 0644, whatever the image had
// there; a symlink at path (a distribution's resolv.conf link) is
// replaced, not followed.
func writeFile(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := renameio.NewPendingFile(path, renameio.WithTempDir(filepath.Dir(path)), renameio.WithStaticPermissions(0o644))
	if err != nil {
		return err
	}
	defer f.Cleanup()
	if _, err := f.Write(data); err != nil {
		return err
	}
	return f.CloseAtomicallyReplace()
}

// writeInPlace replaces path with a new file of mode 0644 holding data,
// written in place: for files nothing reads while they are written. A
// symlink at path is replaced, not followed, as writeFile does.
func writeInPlace(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	create := func() (*os.File, error) { return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644) }
	f, err := create()
	if errors.Is(err, os.ErrExist) {
		if err := os.Remove(path); err != nil {
			return err
		}
		f, err = create()
	}
	if err != nil {
		return err
	}
	err = f.Chmod(0o644) // whatever the umask
	if err == nil {
		_, err = f.Write(data)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
