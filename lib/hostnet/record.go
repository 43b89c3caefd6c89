package hostnet

import (
	"net"
	"net/netip"
	"strings"
)

// Volant keeps what it needs to undo its changes on the kernel objects
// themselves, in the interface alias (IFLA_IFALIAS, up to 255 bytes, shown by
// `ip -d link`): the record lives and dies with the link and with the network
// namespace, survives a crash of whoever made it, and needs no state file.

// bridgeAliasPrefix starts the alias of every bridge volant-net manages.
const bridgeAliasPrefix = "volant-bridge:"

// tapAliasPrefix starts the alias of every tap volant-net created.
const tapAliasPrefix = "volant:"

// bridgeRecord is what setup did to a bridge, so that teardown undoes
// exactly that. Its alias form is "volant-bridge:" followed by
// comma-separated tokens, e.g.
// "volant-bridge:created,fwd,addr=192.168.127.1/24,nat,uplink=eth0".
type bridgeRecord struct {
	Created bool         // setup created the bridge: teardown deletes it
	Adopted bool         // setup took over an existing bridge (--adopt)
	Up      bool         // setup set an adopted bridge up: teardown sets it down
	Fwd     bool         // setup changed net.ipv4.ip_forward from 0 to 1
	Addr    netip.Prefix // the address setup added (invalid: none)
	NAT     bool         // setup was asked for NAT (and made the table)
	Uplink  string       // ... only through this interface
}

func (r bridgeRecord) String() string {
	var t []string
	if r.Created {
		t = append(t, "created")
	}
	if r.Adopted {
		t = append(t, "adopted")
	}
	if r.Up {
		t = append(t, "up")
	}
	if r.Fwd {
		t = append(t, "fwd")
	}
	if r.Addr.IsValid() {
		t = append(t, "addr="+r.Addr.String())
	}
	if r.NAT {
		t = append(t, "nat")
	}
	if r.Uplink != "" {
		t = append(t, "uplink="+r.Uplink)
	}
	return bridgeAliasPrefix + strings.Join(t, ",")
}

// Ownership names how volant-net came to manage a bridge: "created",
// "adopted", or "" when it does not manage it.
func (r bridgeRecord) Ownership() string {
	switch {
	case r.Created:
		return "created"
	case r.Adopted:
		return "adopted"
	}
	return ""
}

// parseBridgeRecord reads a bridge alias; ok is false when the alias is not
// volant-net's. Unknown tokens are ignored (a newer build may add some).
func parseBridgeRecord(alias string) (r bridgeRecord, ok bool) {
	rest, ok := strings.CutPrefix(alias, bridgeAliasPrefix)
	if !ok {
		return r, false
	}
	for _, tok := range strings.Split(rest, ",") {
		switch k, v, _ := strings.Cut(tok, "="); k {
		case "created":
			r.Created = true
		case "adopted":
			r.Adopted = true
		case "up":
			r.Up = true
		case "fwd":
			r.Fwd = true
		case "addr":
			if p, err := netip.ParsePrefix(v); err == nil {
				r.Addr = p
			}
		case "nat":
			r.NAT = true
		case "uplink":
			r.Uplink = v
		}
	}
	return r, true
}

// tapRecord is what a tap's alias says: the VM it belongs to and, when a
// permanent neighbour entry was added for the guest, its IP and MAC (so
// DelTap removes that entry and no other). Alias form:
// "volant:<vm>[ ip=<ip>][ mac=<mac>]".
type tapRecord struct {
	VM  string
	IP  netip.Addr
	MAC net.HardwareAddr
}

func (r tapRecord) String() string {
	s := tapAliasPrefix + r.VM
	if r.IP.IsValid() {
		s += " ip=" + r.IP.String()
	}
	if len(r.MAC) > 0 {
		s += " mac=" + r.MAC.String()
	}
	return s
}

func parseTapRecord(alias string) (r tapRecord, ok bool) {
	rest, ok := strings.CutPrefix(alias, tapAliasPrefix)
	if !ok {
		return r, false
	}
	fields := strings.Split(rest, " ")
	r.VM = fields[0]
	for _, f := range fields[1:] {
		switch k, v, _ := strings.Cut(f, "="); k {
		case "ip":
			if a, err := netip.ParseAddr(v); err == nil {
				r.IP = a
			}
		case "mac":
			if m, err := net.ParseMAC(v); err == nil {
				r.MAC = m
			}
		}
	}
	return r, true
}
