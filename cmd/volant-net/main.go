// Command volant-net prepares the host network for Volant's microVMs: the
// bridge and its address, IP forwarding, NAT for the guest subnet, and one
// persistent tap per VM. Every verb is idempotent: it measures first and
// changes only what differs, and a second run reports "changed":false.
//
// Synopsis:
//
//	volant-net setup    [--bridge vbr0] [--cidr 192.168.127.1/24] [--nat] [--uplink IFACE] [--adopt]
//	volant-net check    [--bridge vbr0] [--cidr 192.168.127.1/24] [--nat | --no-nat] [--uplink IFACE] [--adopt]
//	volant-net teardown [--bridge vbr0] [--force]
//	volant-net status   [--bridge vbr0]
//	volant-net tap add  [--name TAP | --vm VM] [--bridge vbr0] [--mac MAC] [--ip IP]
//	                    [--owner USER|UID] [--group GROUP|GID] [--mtu N] [--queues N]
//	volant-net tap del  [--name TAP | --vm VM] [--force]
//	volant-net tap list
//	volant-net tap gc   [--keep VM]... [--dry-run]
//	volant-net tap name VM
//	volant-net port add  (--vm VM | --deployment D) -p [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp]...
//	                     [--backend IP]... [--bridge vbr0]
//	volant-net port del  (--vm VM | --deployment D) [-p SPEC]...
//	volant-net port list
//	volant-net port gc   [--keep vm:NAME|dep:NAME]... [--dry-run]
//	volant-net version
//
// Add -v (--verbose) before the verb for a log of each change on stderr.
// Verbs take no arguments beyond those shown, and a flag that holds one
// value may be given once (USAGE otherwise).
// volant-net works in its own network namespace (run it under
// `ip netns exec NS` for another) and needs CAP_NET_ADMIN.
//
// # setup, check, teardown, status
//
// setup makes bridge --bridge (default vbr0) with address --cidr (default
// 192.168.127.1/24; guests use the address as their gateway), sets it up,
// sets net.ipv4.ip_forward to 1 and, with --nat, masquerades traffic from
// the subnet to other networks (only through --uplink when given). Without
// --nat it removes the NAT an earlier `setup --nat` made. A bridge that
// exists but was not made by volant-net is refused unless --adopt.
//
// What setup changed, and the NAT it was asked for, is recorded in the
// bridge's alias ("volant-bridge:…,nat", see `ip -d link show vbr0`), and
// teardown undoes exactly that: it deletes
// the NAT table, restores ip_forward to 0 if setup changed it (and no other
// Volant bridge remains), and deletes the bridge if setup created it (an
// adopted bridge keeps existing; its recorded address and up state are
// undone). NAT is the nftables table "ip volant-<bridge>", which belongs to
// volant-net alone; no other table or rule is touched. teardown refuses
// while Volant taps are attached to the bridge, unless --force, which
// deletes them. It succeeds when there is nothing to remove.
//
// check compares the live state with what setup recorded on the bridge
// (its address, NAT and uplink) and exits 5 (CONFLICT) when anything
// differs: after `setup --nat`, a bare `check` checks that NAT is there.
// What the request gives replaces the record, so `check --nat` reports
// what `setup --nat` would change, and `check --no-nat` that there should
// be no NAT. On a bridge volant-net does not manage, check compares with
// the defaults. status reports the live state.
//
// Hosts whose firewall drops forwarded traffic (Docker sets the iptables
// FORWARD policy to DROP) must allow the bridge there; an nftables accept
// cannot override another table's drop.
//
// stdin (optional; flags override its fields):
//
//	setup, check  {"bridge":"vbr0","cidr":"192.168.127.1/24","nat":true,"uplink":"eth0","adopt":false}
//	              (check: "nat":false asks for no NAT, an absent "nat" takes the record's)
//	teardown      {"bridge":"vbr0","force":false}
//	status        {"bridge":"vbr0"}
//
// stdout:
//
//	setup     {"kind":"net.setup","bridge","address","subnet","gateway","forwarding","nat","uplink"?,
//	           "changed",
//	           "items":[{"item":"bridge|address|link|forwarding|nat","changed","detail"}]}
//	teardown  {"kind":"net.teardown","bridge","changed","items":[...]}
//	check     {"kind":"net.check","bridge","ok":true,"differences":[]}
//	status    {"kind":"net.status",
//	           "bridge":{"name","exists","managed":"created|adopted"?,"up","mac","mtu","addresses","ports"},
//	           "forwarding","nat":{"table","present","rules"},"taps":[TAP...]}
//
// # tap add, del, list, gc, name
//
// tap add creates a persistent tap for a VM (single-queue unless --queues
// N > 1), attaches it to the bridge and sets it up; for an existing tap of
// the same VM it changes only what differs. The tap name is --name, or
// derived from --vm:
//
//   - a VM name of at most 12 characters from [a-z0-9_-] is used verbatim:
//     web1 → vt-web1;
//   - any other name becomes "vt-", its first 4 characters (lower-cased,
//     others replaced by "-"), ".", and 7 base32 characters of its SHA-256:
//     my-deployment-12 → vt-my-d.XXXXXXX.
//
// The two forms cannot collide (only hashed names contain "."); two hashed
// names collide with odds of about 1 in 70,000 among 1,000 VMs sharing a
// 4-character prefix, and then tap add refuses with CONFLICT instead of
// sharing the tap (the alias names the owning VM): pass --name. The "vt-"
// prefix is reserved for Volant.
//
// --mac is the guest NIC's MAC (give the same one to the VMM). The tap
// itself takes the guest's MAC with the first byte replaced by fe (fa if it
// already is fe): it must differ, or the bridge would keep the guest's
// frames for itself. --ip must lie in the bridge's subnet; with --mac and
// --ip, tap add also adds a permanent neighbour entry for the guest on the
// bridge, so the host reaches the guest without waiting for ARP; tap del
// removes it. --owner and --group let an unprivileged VMM open the tap.
// --mtu sets the tap's MTU; a Linux bridge follows its smallest port, so a
// smaller tap MTU lowers the bridge's while the tap is attached.
//
// tap add accepts the result of `volant-ipam lease` on stdin (kind
// ipam.lease; it reads "vm", "ip" and "mac"), and passes the lease on in its
// result, so this composes:
//
//	volant-ipam lease --vm web1 | volant-net tap add | volant-launch run ...
//
// tap del deletes a tap volant-net created (and its neighbour entry); it
// succeeds when the tap is gone already, refuses a tap that is open (a VMM
// is using it) unless --force, and never deletes a link volant-net did not
// create. It accepts a tap result (kind net.tap) or a lease on stdin.
// tap list lists Volant's taps (alias "volant:<vm>…"). tap gc follows CNI,
// like `volant-ipam gc`: it is given the live VMs (--keep, repeated, or a
// JSON array or {"keep":[...]} on stdin; the flags replace the stdin list)
// and deletes the taps of every other VM (a tap without a VM is kept when
// its name is listed), skipping taps still open; `echo '[]' | volant-net
// tap gc` deletes every idle Volant tap, and tap gc without a list is
// refused (USAGE). --dry-run reports what would be deleted. tap name
// prints the name derived for a VM. VM names follow lib/names' rule (1-63
// lowercase letters, digits, '-' and '_', starting with a letter or digit).
//
// stdin (optional; flags override its fields):
//
//	tap add  {"name","vm","bridge","mac","ip","owner":UID,"group":GID,"mtu","queues"}
//	         or a volant-ipam lease result {"kind":"ipam.lease","vm","ip","mac",...}
//	tap del  {"name","vm","force"}, or a net.tap or ipam.lease result
//	tap gc   ["web1","web2"], or {"keep":["web1","web2"],"dry_run":true}
//
// stdout (TAP is {"tap","vm","bridge","mac","ip","tap_mac","mtu","multi_queue",
// "owner"?,"group"?,"up","in_use"}):
//
//	tap add   {"kind":"net.tap",TAP...,"changed","items":[...],"lease":{...}?}
//	tap del   {"kind":"net.tap-del","tap","vm","changed","detail"}
//	tap list  {"kind":"net.tap-list","taps":[TAP...]}
//	tap gc    {"kind":"net.tap-gc","removed":[TAP...],"skipped":[TAP...],"kept":[TAP...][,"dry_run":true]}
//	tap name  {"kind":"net.tap-name","vm","tap"}
//	version   {"kind":"net.version","build"}
//
// # port add, del, list, gc
//
// Published ports forward a port of the host to a port of a guest, in the
// kernel (nftables DNAT in the table "ip volant_ports", which belongs to
// Volant alone): for connections from other machines, from the host
// itself (its addresses and 127.0.0.1) and from guests on the bridge. -p
// is [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp] (default tcp; no HOSTIP: every
// address of the host). The owner is a VM (--vm; rules are commented
// "volant-port vm:NAME ...") or a deployment (--deployment, "dep:NAME"),
// whose host port is balanced over its --backend addresses, one new
// connection to each in turn. volantd makes these itself for `volar vms
// create -p` and deployments; these verbs are for shells.
//
// port add publishes more ports of the owner, keeping those it has, to
// --backend (repeatable; it replaces the owner's backends) or, for a new
// owner, to the address of a `volant-ipam lease` result on stdin:
//
//	volant-ipam lease --vm web1 | volant-net port add -p 8080:80
//
// A host port a process on the host listens on, or another owner
// publishes, is PORT_IN_USE, and nothing changes. Adding what is there
// already changes nothing. port del removes the listed ports of the owner,
// or all of them; it succeeds when they are gone already, and the table
// goes with the last port. port list reads every rule back with its
// backends and the packets and bytes of the connections' first packets.
// port gc, like tap gc, is given the owners to keep (--keep vm:web1,
// or a JSON array on stdin) and removes every other owner's ports.
//
// stdin (optional; flags override its fields):
//
//	port add  {"vm"|"deployment","ports":[{"host_ip"?,"host_port","guest_port","protocol"?}],
//	           "backends":["192.168.127.100"],"bridge"} or an ipam.lease result
//	port del  {"vm"|"deployment","ports":[...]}, or an ipam.lease result
//	port gc   ["vm:web1","dep:svc"], or {"keep":[...],"dry_run":true}
//
// stdout (PORT is {"owner","mapping":{...},"backends":[...],"packets","bytes"}):
//
//	port add, del  {"kind":"net.ports","owner","changed","ports":[PORT...]}
//	port list      {"kind":"net.port-list","ports":[PORT...]}
//	port gc        {"kind":"net.port-gc","removed":[PORT...],"kept":[PORT...][,"dry_run":true]}
//
// # Errors
//
// stderr, one JSON object {"code","message","details"}; exit status:
//
//	USAGE              2  bad flags or arguments, a flag given twice, tap gc without a keep list
//	INVALID_INPUT      3  a name too long or invalid, a bad CIDR, MAC or IP, an IP outside the bridge's subnets,
//	                      a bad -p, a host address this host does not have
//	NOT_FOUND          4  the bridge (tap add) or the uplink does not exist
//	CONFLICT           5  check found differences (details.differences lists each {"item","want","got"});
//	                      the bridge exists and is not volant-net's; the subnet overlaps another interface's;
//	                      a tap of that name belongs to another VM or is not volant-net's, or is in use;
//	                      teardown with taps attached
//	PORT_IN_USE        5  port add: a process on the host listens on the host port, or another owner publishes it
//	NOT_SUPPORTED      7  the kernel lacks nftables NAT
//	UNAVAILABLE        9  /dev/net/tun is missing
//	PERMISSION_DENIED 10  not root / no CAP_NET_ADMIN
//
// Every input is validated and every conflict detected before anything
// changes: a rejected request leaves the host as it was.
package main

import (
	"context"

	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/hostnet"
)

func main() { cli.Main(run) }

// run is volant-net's whole run: lib/hostnet holds its verbs (cli.go).
func run(ctx context.Context, env *cli.Env) error { return hostnet.Command(ctx, env) }
