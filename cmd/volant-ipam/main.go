// Command volant-ipam leases guest IPv4 addresses to VM names, in Volant's
// SQLite database, safely from many processes at once.
//
// Synopsis:
//
//	volant-ipam lease   --vm NAME [--subnet CIDR] [--gateway IP] [--range-start IP] [--range-end IP]
//	volant-ipam release --vm NAME
//	volant-ipam show    --vm NAME
//	volant-ipam list
//	volant-ipam gc      [--keep NAME]... [--dry-run]
//	volant-ipam version
//
// Every verb takes --db PATH (default $VOLANT_DB, else
// $VOLANT_DATA_DIR/volant.db, else /var/lib/volant/volant.db; the file and
// its directory are created when missing). No verb takes a positional
// argument, and a flag that holds one value may be given once (USAGE
// otherwise: `--vm a1 --vm a2` is refused, not read as a2).
//
// Pool (lease only): --subnet (default 192.168.127.0/24, env VOLANT_SUBNET),
// --gateway (default the subnet's first address, env VOLANT_GATEWAY),
// --range-start/--range-end (default network+100 to the last host address:
// .100-.254 in a /24; env VOLANT_RANGE_START, VOLANT_RANGE_END). Flags
// override the stdin request, which overrides the environment. Addresses are
// leased lowest free first, skipping the gateway.
//
// A subnet must be IPv4 with a prefix length of /8 to /30, outside
// 0.0.0.0/8, 127.0.0.0/8 (loopback), 169.254.0.0/16 (link-local),
// 224.0.0.0/4 (multicast) and 240.0.0.0/4 (reserved); anything else is
// INVALID_INPUT (lib/subnet, the rule volantd and volant-net follow too).
//
// Rules: a VM name holds one lease, and an address is leased to one VM in the
// whole database, whatever pool it came from. `lease` for a VM that holds a
// lease returns it unchanged (same address, MAC and leased_at) when it lies
// in the requested pool (same subnet and gateway, inside the range), and
// fails with CONFLICT otherwise: a lease is never moved behind a running
// guest's back; release it first. release, show and gc find leases by name,
// whatever the pool. VM names are 1-63 lowercase letters, digits, '-' and
// '_', starting with a letter or digit.
//
// The MAC is 02 followed by the first five bytes of sha256(NAME): locally
// administered, unicast, the same on every host and after every restart.
// If another lease already holds that MAC, sha256(NAME + "/1"), "/2", ... is
// used instead.
//
// Stdin (optional; one JSON object, fields as the flags' long names with '_'):
//
//	lease    {"vm":"web1","subnet":"..","gateway":"..","range_start":"..","range_end":".."}
//	release  {"vm":"web1"}, or an ipam.lease result (volant-ipam show --vm web1 | volant-ipam release)
//	show     {"vm":"web1"}, or an ipam.lease result
//	gc       ["web1","web2"] (the live VM names), or {"keep":[..],"dry_run":false}
//
// `gc` follows CNI: it is given the names of the live VMs and frees every
// other lease. The list comes from --keep flags or stdin (the flags replace
// the stdin list); `echo '[]' | volant-ipam gc` frees every lease, and gc
// without any list is refused (USAGE), so a forgotten argument frees
// nothing. `volant-net tap gc` follows the same rule.
//
// Stdout (one JSON object, "version":"1" first):
//
//	lease, show  {"version":"1","kind":"ipam.lease","vm":"web1","ip":"192.168.127.100","prefix":24,
//	              "gateway":"192.168.127.1","mac":"02:65:9a:7f:b2:af","leased_at":"2026-11-28T23:00:00.123Z"}
//	release      {"kind":"ipam.release","vm":"web1","released":true,"lease":{..}}  (released:false, no lease, when none)
//	list         {"kind":"ipam.list","leases":[{lease}, ...]}  in address order
//	gc           {"kind":"ipam.gc","freed":[{lease}, ...],"kept":N[,"dry_run":true]}
//	version      {"kind":"ipam.version","build":"..","schema_version":N}
//
// Errors (stderr, one JSON object {"code","message","details"}; exit status):
//
//	USAGE                2  bad flags, a flag given twice, an argument, no --vm, gc without a keep list
//	INVALID_INPUT        3  invalid VM name (also in a keep list), subnet, gateway or range; malformed stdin
//	NOT_FOUND            4  show: the VM holds no lease
//	CONFLICT             5  lease: the VM holds a lease from another pool
//	IP_EXHAUSTED         6  lease: no free address in the pool (nothing is written)
//	NOT_SUPPORTED        7  the database was written by a newer Volant
//	UNAVAILABLE          9  the database cannot be opened, or another process held
//	                        its write lock for more than 10 s with nobody committing
//	                        (a lease queued behind others that commit waits its turn)
//	PERMISSION_DENIED   10  the database or its directory is not writable
//	INTERNAL             1  anything else (a corrupt database, a bug)
//
// Each lease and release appends an "ip.leased" / "ip.released" event to the
// database's event log in the same transaction. A process killed at any
// moment leaves either the whole lease or none of it. So volant-ipam
// installs no signal handler: SIGINT and SIGTERM end it at once, like
// SIGKILL (a lease waiting for the write lock included), and a shell sees
// the signal's status (130, 143), with no error object.
package main

import (
	"context"

	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/ipam"
)

func main() { cli.MainKillable(run) }

// run is volant-ipam's whole run: lib/ipam holds its verbs (cli.go).
func run(ctx context.Context, env *cli.Env) error { return ipam.Command(ctx, env) }
