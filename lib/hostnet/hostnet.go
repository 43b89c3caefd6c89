// Package hostnet prepares the host network Volant's guests use: a Linux
// bridge with the gateway address, IP forwarding, NAT for the guest subnet,
// and one persistent tap per VM attached to the bridge.
//
// Everything works in the network namespace of the calling OS thread, through
// netlink (vishvananda/netlink), nftables over netlink (google/nftables) and
// /proc/sys/net/ipv4/ip_forward; no external program runs. A caller that wants
// another namespace locks its OS thread and enters it first (netns.Set); a
// handle for another namespace is not enough, because a tap is created through
// /dev/net/tun, in the thread's own namespace.
//
// Every operation measures before it acts and acts only where the live state
// differs from what was asked, so it can be re-run after a crash and a second
// run reports nothing changed. Check reports what Setup would change.
//
// Ownership. Volant undoes only what it did, and records what it did on the
// objects themselves (interface aliases, IFLA_IFALIAS, shown by `ip -d link`),
// so the record lives as long as the thing it describes and needs no state
// file:
//
//   - A bridge setup created or adopted carries "volant-bridge:<tokens>":
//     created | adopted, up (setup set an adopted bridge up), fwd (setup turned
//     net.ipv4.ip_forward from 0 to 1), addr=CIDR (the address setup added).
//     Teardown deletes a created bridge, or, for an adopted one, removes the
//     recorded address, sets it down if setup set it up, and clears the alias.
//     A bridge setup creates also gets a fixed MAC derived from its name
//     (BridgeMAC): the gateway MAC stays put as taps come and go, and an
//     interrupted setup recognizes its bridge by it.
//   - NAT lives in an nftables table of its own, "ip volant-<bridge>", holding
//     one chain (postrouting, type nat, priority srcnat) with one masquerade
//     rule commented "volant-net masquerade <subnet>[ oif <uplink>]". The
//     table is volant-net's alone: teardown deletes it whole, and no other
//     table or rule is ever touched. nftables rather than iptables because a
//     table of our own makes ownership exact (no rule-by-rule matching in
//     chains shared with Docker, firewalld or ufw), changes are atomic
//     transactions, and no iptables binary or xtables lock is involved.
//     Caveat: an nftables accept cannot override a drop in another table, so
//     on a host whose firewall drops forwarded traffic (Docker sets the
//     iptables FORWARD policy to DROP) guests reach the host but not beyond
//     until that firewall allows the bridge, e.g.
//     `iptables -I DOCKER-USER -i vbr0 -j ACCEPT` and the reverse with
//     `-o vbr0 -m conntrack --ctstate RELATED,ESTABLISHED`.
//   - Forwarding: setup sets net.ipv4.ip_forward to 1 and, if it was 0,
//     records "fwd" on the bridge. Teardown restores 0 only then, and only
//     when no other Volant bridge remains in the namespace; otherwise it hands
//     the record to that bridge, so the last teardown restores it. Note that
//     writing ip_forward resets the per-interface forwarding settings, as the
//     kernel documents.
//   - A tap carries "volant:<vm>[ ip=<ip>][ mac=<mac>]". ListTaps finds taps by
//     it, GCTaps removes those of VMs that are gone, and DelTap removes the
//     permanent neighbour entry AddTap made for the guest (only if it still
//     points at that MAC).
//
// Errors are *apierr.Error values (INVALID_INPUT, NOT_FOUND, CONFLICT, ...)
// wrapped with context; every input is validated, and every conflict
// detected, before anything is changed.
package hostnet

import (
	"io"
	"log/slog"
)

// Host manages the network of the calling thread's namespace. The zero value
// is ready to use; Log defaults to discarding.
type Host struct {
	Log *slog.Logger
}

func (h *Host) log() *slog.Logger {
	if h == nil || h.Log == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return h.Log
}

// Config is the host network setup should make and check should find.
type Config struct {
	// Bridge is the bridge's name (default vbr0).
	Bridge string `json:"bridge,omitempty"`
	// CIDR is the bridge's own address with the subnet's prefix length
	// (default 192.168.127.1/24); guests use the address as their gateway.
	CIDR string `json:"cidr,omitempty"`
	// NAT masquerades traffic from the subnet leaving for other networks.
	// When false, setup removes the NAT table if an earlier setup made it.
	NAT bool `json:"nat,omitempty"`
	// KeepNAT leaves NAT as it is (made or not by an earlier setup); NAT and
	// Uplink are then ignored. volantd uses it when told neither --nat nor
	// --no-nat, so starting the daemon never undoes `volant-net setup --nat`.
	KeepNAT bool `json:"keep_nat,omitempty"`
	// Uplink restricts masquerading to traffic leaving through this
	// interface; empty means any interface but the subnet itself.
	Uplink string `json:"uplink,omitempty"`
	// Adopt lets setup manage an existing bridge it did not create (one
	// without an alias); teardown then undoes only setup's changes to it.
	Adopt bool `json:"adopt,omitempty"`
}

// Item is one aspect of the host network that setup, teardown or check
// looked at: bridge, address, link, forwarding, nat, or tap:<name>.
type Item struct {
	Item    string `json:"item"`
	Changed bool   `json:"changed"`
	// Detail says what was done or, when nothing changed, what was found.
	Detail string `json:"detail"`
}

// SetupResult reports the state setup left and what it changed.
type SetupResult struct {
	Bridge     string `json:"bridge"`
	Address    string `json:"address"` // the bridge's address with prefix length
	Subnet     string `json:"subnet"`
	Gateway    string `json:"gateway"`
	Forwarding bool   `json:"forwarding"`
	NAT        bool   `json:"nat"`
	Uplink     string `json:"uplink,omitempty"`
	Changed    bool   `json:"changed"`
	Items      []Item `json:"items"`
}

// TeardownConfig names what teardown removes.
type TeardownConfig struct {
	Bridge string `json:"bridge,omitempty"`
	// Force deletes Volant taps still attached to the bridge (their VMs lose
	// the network); without it teardown refuses while there are any.
	Force bool `json:"force,omitempty"`
}

// TeardownResult reports what teardown removed.
type TeardownResult struct {
	Bridge  string `json:"bridge"`
	Changed bool   `json:"changed"`
	Items   []Item `json:"items"`
}

// Difference is one way the live state differs from a Config.
type Difference struct {
	Item string `json:"item"`
	Want string `json:"want"`
	Got  string `json:"got"`
}

// CheckResult is the verdict of Check.
type CheckResult struct {
	Bridge      string       `json:"bridge"`
	OK          bool         `json:"ok"`
	Differences []Difference `json:"differences"`
}

// Status is the live state of one bridge and what hangs off it.
type Status struct {
	Bridge     BridgeStatus `json:"bridge"`
	Forwarding bool         `json:"forwarding"`
	NAT        NATStatus    `json:"nat"`
	// Taps are the Volant taps attached to the bridge.
	Taps []Tap `json:"taps"`
}

// BridgeStatus describes the bridge link.
type BridgeStatus struct {
	Name   string `json:"name"`
	Exists bool   `json:"exists"`
	// Managed is "created" or "adopted" when volant-net manages the
	// bridge, "" otherwise.
	Managed   string   `json:"managed,omitempty"`
	Up        bool     `json:"up"`
	MAC       string   `json:"mac,omitempty"`
	MTU       int      `json:"mtu,omitempty"`
	Addresses []string `json:"addresses"`
	// Ports are all interfaces attached to the bridge, Volant's or not.
	Ports []string `json:"ports"`
}

// NATStatus describes the bridge's nftables table.
type NATStatus struct {
	Table   string `json:"table"` // "ip volant-<bridge>"
	Present bool   `json:"present"`
	// Rules are the comments of the rules in the table.
	Rules []string `json:"rules"`
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
