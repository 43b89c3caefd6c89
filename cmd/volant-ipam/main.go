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
// /var/lib/volant/volant.db; the file and its directory are created when
// missing).
//
// Pool (lease only): --subnet (default 192.168.127.0/24, env VOLANT_SUBNET),
// --gateway (default the subnet's first address, env VOLANT_GATEWAY),
// --range-start/--range-end (default network+100 to the last host address:
// .100-.254 in a /24; env VOLANT_RANGE_START, VOLANT_RANGE_END). Flags
// override the stdin request, which overrides the environment. Addresses are
// leased lowest free first, skipping the gateway.
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
// `gc` needs the live names: from --keep or stdin. `echo '[]' | volant-ipam
// gc` frees every lease; without any keep list gc refuses (USAGE).
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
//	USAGE                2  bad flags, no --vm, gc without a keep list
//	INVALID_INPUT        3  invalid VM name, subnet, gateway or range; malformed stdin
//	NOT_FOUND            4  show: the VM holds no lease
//	CONFLICT             5  lease: the VM holds a lease from another pool
//	IP_EXHAUSTED         6  lease: no free address in the pool (nothing is written)
//	NOT_SUPPORTED        7  the database was written by a newer Volant
//	UNAVAILABLE          9  the database cannot be opened, or another process held
//	                        its write lock for more than 10 s
//	PERMISSION_DENIED   10  the database or its directory is not writable
//	INTERNAL             1  anything else (a corrupt database, a bug)
//
// Each lease and release appends an "ip.leased" / "ip.released" event to the
// database's event log in the same transaction. A process killed at any
// moment leaves either the whole lease or none of it.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/buildinfo"
	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/ipam"
	"github.com/volantvm/volant/lib/names"
	"github.com/volantvm/volant/lib/store"
)

func main() { cli.Main(run) }

type poolFlags struct {
	Subnet     string `long:"subnet" value-name:"CIDR" description:"pool subnet (default 192.168.127.0/24, env VOLANT_SUBNET)"`
	Gateway    string `long:"gateway" value-name:"IP" description:"gateway (default the subnet's first address, env VOLANT_GATEWAY)"`
	RangeStart string `long:"range-start" value-name:"IP" description:"first leasable address (default network+100, env VOLANT_RANGE_START)"`
	RangeEnd   string `long:"range-end" value-name:"IP" description:"last leasable address (default the last host address, env VOLANT_RANGE_END)"`
}

type options struct {
	DB    string `long:"db" value-name:"PATH" description:"database file (default $VOLANT_DB, else /var/lib/volant/volant.db)"`
	Lease struct {
		VM string `long:"vm" value-name:"NAME" description:"VM name"`
		poolFlags
	} `command:"lease" description:"Lease an address to a VM (or return the one it holds)"`
	Release struct {
		VM string `long:"vm" value-name:"NAME" description:"VM name"`
	} `command:"release" description:"Free a VM's address; succeeds when there is none"`
	Show struct {
		VM string `long:"vm" value-name:"NAME" description:"VM name"`
	} `command:"show" description:"Print a VM's lease (NOT_FOUND when none)"`
	List struct{} `command:"list" description:"Print every lease"`
	GC   struct {
		Keep   []string `long:"keep" value-name:"NAME" description:"a live VM whose lease stays (repeat the flag)"`
		DryRun bool     `long:"dry-run" description:"report what would be freed; change nothing"`
	} `command:"gc" description:"Free the leases of every VM not named live"`
	Version struct{} `command:"version" description:"Print the build version"`
}

// leaseRequest is the stdin request of `lease`.
type leaseRequest struct {
	VM string `json:"vm"`
	ipam.PoolConfig
}

// vmRequest is the stdin request of `release` and `show`; a piped lease
// result names the VM too.
type vmRequest struct {
	VM    string      `json:"vm,omitempty"`
	Lease *ipam.Lease `json:"lease,omitempty"`
}

func (vmRequest) Accepts() map[string]string { return map[string]string{ipam.Kind: "lease"} }

type gcRequest struct {
	Keep   []string `json:"keep"`
	DryRun bool     `json:"dry_run,omitempty"`
}

type releaseResult struct {
	VM       string      `json:"vm"`
	Released bool        `json:"released"`
	Lease    *ipam.Lease `json:"lease,omitempty"`
}

type listResult struct {
	Leases []ipam.Lease `json:"leases"`
}

type versionResult struct {
	Build         string `json:"build"`
	SchemaVersion int    `json:"schema_version"`
}

func run(ctx context.Context, env *cli.Env) error {
	var o options
	verb, rest, err := cli.Parse(env, "volant-ipam", &o)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return apierr.New(apierr.Usage, "unexpected argument %q; name the VM with --vm", rest[0]).With("hint", "run volant-ipam --help")
	}
	switch verb {
	case "":
		return apierr.New(apierr.Usage, "missing verb (lease, release, show, list, gc, version); run volant-ipam --help")
	case "version":
		return cli.WriteResult(env, "ipam.version", versionResult{Build: buildinfo.String(), SchemaVersion: store.LatestSchemaVersion()})
	}

	// Parse the whole request before touching the database, so a bad request
	// never creates or changes anything.
	var do func(*store.Store) error
	switch verb {
	case "lease":
		req := leaseRequest{PoolConfig: ipam.PoolConfig{
			Subnet: env.Env("VOLANT_SUBNET"), Gateway: env.Env("VOLANT_GATEWAY"),
			RangeStart: env.Env("VOLANT_RANGE_START"), RangeEnd: env.Env("VOLANT_RANGE_END"),
		}}
		if _, err := cli.ReadRequest(env, &req); err != nil {
			return err
		}
		f := o.Lease
		override(&req.VM, f.VM)
		override(&req.Subnet, f.Subnet)
		override(&req.Gateway, f.Gateway)
		override(&req.RangeStart, f.RangeStart)
		override(&req.RangeEnd, f.RangeEnd)
		if req.VM == "" {
			return needVM("lease")
		}
		if err := names.Check("VM name", req.VM); err != nil {
			return err
		}
		pool, err := req.PoolConfig.Pool()
		if err != nil {
			return err
		}
		do = func(st *store.Store) error {
			l, err := ipam.Acquire(ctx, st, pool, req.VM)
			if err != nil {
				return err
			}
			return cli.WriteResult(env, ipam.Kind, l)
		}
	case "release", "show":
		flag := o.Release.VM
		if verb == "show" {
			flag = o.Show.VM
		}
		vm, err := readVM(env, verb, flag)
		if err != nil {
			return err
		}
		do = func(st *store.Store) error {
			if verb == "show" {
				l, err := ipam.Get(ctx, st, vm)
				if err != nil {
					return err
				}
				return cli.WriteResult(env, ipam.Kind, l)
			}
			l, err := ipam.Release(ctx, st, vm)
			if err != nil {
				return err
			}
			return cli.WriteResult(env, "ipam.release", releaseResult{VM: vm, Released: l != nil, Lease: l})
		}
	case "list":
		do = func(st *store.Store) error {
			ls, err := ipam.List(ctx, st)
			if err != nil {
				return err
			}
			return cli.WriteResult(env, "ipam.list", listResult{Leases: ls})
		}
	case "gc":
		req, err := readGC(env)
		if err != nil {
			return err
		}
		if len(o.GC.Keep) > 0 {
			req.Keep = o.GC.Keep
		}
		if o.GC.DryRun {
			req.DryRun = true
		}
		if req.Keep == nil {
			return apierr.New(apierr.Usage, "gc needs the live VM names: --keep NAME (repeated) or a JSON array on stdin; `echo '[]' | volant-ipam gc` frees every lease")
		}
		for _, k := range req.Keep {
			if err := names.Check("VM name", k); err != nil {
				return fmt.Errorf("gc: keep list: %w", err)
			}
		}
		do = func(st *store.Store) error {
			res, err := ipam.GC(ctx, st, req.Keep, req.DryRun)
			if err != nil {
				return err
			}
			return cli.WriteResult(env, "ipam.gc", res)
		}
	default:
		return apierr.New(apierr.Usage, "unknown verb %q", verb)
	}

	path := o.DB
	if path == "" {
		path = env.Env(store.EnvPath)
	}
	if path == "" {
		path = store.DefaultPath
	}
	st, err := store.Open(ctx, path, store.Options{})
	if err != nil {
		return err
	}
	defer st.Close()
	return do(st)
}

func override(dst *string, flag string) {
	if flag != "" {
		*dst = flag
	}
}

func needVM(verb string) error {
	return apierr.New(apierr.Usage, "%s needs the VM name: --vm NAME, or {\"vm\":\"NAME\"} on stdin", verb).
		With("hint", "run volant-ipam "+verb+" --help")
}

// readVM takes the VM name from the flag, else from the stdin request or a
// piped lease.
func readVM(env *cli.Env, verb, flag string) (string, error) {
	var req vmRequest
	if _, err := cli.ReadRequest(env, &req); err != nil {
		return "", err
	}
	if req.Lease != nil {
		if req.VM != "" && req.VM != req.Lease.VM {
			return "", apierr.New(apierr.InvalidInput, "request names VM %q but carries the lease of %q", req.VM, req.Lease.VM)
		}
		req.VM = req.Lease.VM
	}
	override(&req.VM, flag)
	if req.VM == "" {
		return "", needVM(verb)
	}
	return req.VM, names.Check("VM name", req.VM)
}

// readGC reads gc's stdin: a JSON array of live names, or a request object.
// Keep stays nil when stdin carries nothing.
func readGC(env *cli.Env) (gcRequest, error) {
	var req gcRequest
	if !cli.StdinHasInput(env) {
		return req, nil
	}
	data, err := io.ReadAll(io.LimitReader(env.Stdin, cli.MaxRequestBytes+1))
	if err != nil {
		return req, apierr.Wrap(apierr.InvalidInput, err, "reading request from stdin")
	}
	if len(data) > cli.MaxRequestBytes {
		return req, apierr.New(apierr.TooLarge, "request on stdin is larger than %d bytes", cli.MaxRequestBytes)
	}
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return req, nil
	}
	if data[0] != '[' {
		if err := cli.DecodeRequest(data, &req); err != nil {
			return req, err
		}
		if req.Keep == nil {
			return req, apierr.New(apierr.InvalidInput, `gc request has no "keep" list`).With("field", "keep")
		}
		return req, nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&req.Keep); err != nil {
		return req, apierr.Wrap(apierr.InvalidInput, err, "gc: stdin must be a JSON array of VM names")
	}
	if dec.More() {
		return req, apierr.New(apierr.InvalidInput, "gc: trailing data after the JSON array")
	}
	if req.Keep == nil { // "[]" decodes to an empty, non-nil slice; only null is nil
		return req, apierr.New(apierr.InvalidInput, "gc: stdin must be a JSON array of VM names")
	}
	return req, nil
}
