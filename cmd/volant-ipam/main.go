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
// moment leaves either the whole lease or none of it.
package main

import (
	"context"

	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/ipam"
	"github.com/volantvm/volant/lib/layout"
	"github.com/volantvm/volant/lib/names"
	"github.com/volantvm/volant/lib/store"
)

func main() { cli.Main(run) }

func run(ctx context.Context, env *cli.Env) error {
	return cli.Run(ctx, env, "volant-ipam", &options{})
}

type options struct {
	DB      string     `long:"db" value-name:"PATH" description:"database file (default $VOLANT_DB, else /var/lib/volant/volant.db)"`
	Lease   leaseCmd   `command:"lease" description:"Lease an address to a VM (or return the one it holds)"`
	Release releaseCmd `command:"release" description:"Free a VM's address; succeeds when there is none"`
	Show    showCmd    `command:"show" description:"Print a VM's lease (NOT_FOUND when none)"`
	List    listCmd    `command:"list" description:"Print every lease"`
	GC      gcCmd      `command:"gc" description:"Free the leases of every VM not named live"`
	Version versionCmd `command:"version" description:"Print the build version"`
}

// open opens the database (--db, else the layout's) once the request is
// known to be valid, so a bad request never creates or changes anything.
func (o *options) open(ctx context.Context, env *cli.Env) (*store.Store, error) {
	dirs := layout.FromEnv(env.Env)
	cli.Override(&dirs.DB, o.DB)
	return store.Open(ctx, dirs.WithDefaults().DB, store.Options{})
}

type leaseCmd struct {
	VM         string `long:"vm" value-name:"NAME" description:"VM name"`
	Subnet     string `long:"subnet" value-name:"CIDR" description:"pool subnet (default 192.168.127.0/24, env VOLANT_SUBNET)"`
	Gateway    string `long:"gateway" value-name:"IP" description:"gateway (default the subnet's first address, env VOLANT_GATEWAY)"`
	RangeStart string `long:"range-start" value-name:"IP" description:"first leasable address (default network+100, env VOLANT_RANGE_START)"`
	RangeEnd   string `long:"range-end" value-name:"IP" description:"last leasable address (default the last host address, env VOLANT_RANGE_END)"`
}

func (c *leaseCmd) Execute(ctx context.Context, env *cli.Env, o *options) error {
	req := ipam.LeaseRequest{PoolConfig: ipam.PoolFromEnv(env.Env)}
	if _, err := cli.ReadRequest(env, &req); err != nil {
		return err
	}
	cli.Override(&req.VM, c.VM)
	cli.Override(&req.Subnet, c.Subnet)
	cli.Override(&req.Gateway, c.Gateway)
	cli.Override(&req.RangeStart, c.RangeStart)
	cli.Override(&req.RangeEnd, c.RangeEnd)
	pool, err := req.Resolve()
	if err != nil {
		return err
	}
	st, err := o.open(ctx, env)
	if err != nil {
		return err
	}
	defer st.Close()
	l, err := ipam.Acquire(ctx, st, pool, req.VM)
	if err != nil {
		return err
	}
	return cli.WriteResult(env, ipam.Kind, l)
}

type vmFlag struct {
	VM string `long:"vm" value-name:"NAME" description:"VM name"`
}

// name is the VM named by --vm, else by the stdin request or piped lease.
func (f vmFlag) name(env *cli.Env) (string, error) {
	var req ipam.VMRequest
	if _, err := cli.ReadRequest(env, &req); err != nil {
		return "", err
	}
	if f.VM != "" {
		req = ipam.VMRequest{VM: f.VM}
	}
	return req.Name(env.Verb)
}

type releaseCmd struct{ vmFlag }

type releaseResult struct {
	VM       string      `json:"vm"`
	Released bool        `json:"released"`
	Lease    *ipam.Lease `json:"lease,omitempty"`
}

func (c *releaseCmd) Execute(ctx context.Context, env *cli.Env, o *options) error {
	vm, err := c.name(env)
	if err != nil {
		return err
	}
	st, err := o.open(ctx, env)
	if err != nil {
		return err
	}
	defer st.Close()
	l, err := ipam.Release(ctx, st, vm)
	if err != nil {
		return err
	}
	return cli.WriteResult(env, "ipam.release", releaseResult{VM: vm, Released: l != nil, Lease: l})
}

type showCmd struct{ vmFlag }

func (c *showCmd) Execute(ctx context.Context, env *cli.Env, o *options) error {
	vm, err := c.name(env)
	if err != nil {
		return err
	}
	st, err := o.open(ctx, env)
	if err != nil {
		return err
	}
	defer st.Close()
	l, err := ipam.Get(ctx, st, vm)
	if err != nil {
		return err
	}
	return cli.WriteResult(env, ipam.Kind, l)
}

type listCmd struct{}

type listResult struct {
	Leases []ipam.Lease `json:"leases"`
}

func (listCmd) Execute(ctx context.Context, env *cli.Env, o *options) error {
	st, err := o.open(ctx, env)
	if err != nil {
		return err
	}
	defer st.Close()
	ls, err := ipam.List(ctx, st)
	if err != nil {
		return err
	}
	return cli.WriteResult(env, "ipam.list", listResult{Leases: ls})
}

type gcCmd struct {
	Keep   []string `long:"keep" value-name:"NAME" description:"a live VM whose lease stays (repeat the flag)"`
	DryRun bool     `long:"dry-run" description:"report what would be freed; change nothing"`
}

func (c *gcCmd) Execute(ctx context.Context, env *cli.Env, o *options) error {
	req, err := cli.ReadGCRequest(env, "VM names", c.Keep, c.DryRun, func(k string) error { return names.Check("VM name", k) })
	if err != nil {
		return err
	}
	st, err := o.open(ctx, env)
	if err != nil {
		return err
	}
	defer st.Close()
	res, err := ipam.GC(ctx, st, req.Keep, req.DryRun)
	if err != nil {
		return err
	}
	return cli.WriteResult(env, "ipam.gc", res)
}

type versionCmd struct{}

func (versionCmd) Execute(_ context.Context, env *cli.Env) error {
	return cli.WriteVersion(env, struct {
		SchemaVersion int `json:"schema_version"`
	}{store.LatestSchemaVersion()})
}
