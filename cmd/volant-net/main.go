// Command volant-net prepares the host network for Volant's microVMs: the
// bridge and its address, IP forwarding, NAT for the guest subnet, and one
// persistent tap per VM. Every verb is idempotent: it measures first and
// changes only what differs, and a second run reports "changed":false.
//
// Synopsis:
//
//	volant-net setup    [--bridge vbr0] [--cidr 192.168.127.1/24] [--nat] [--uplink IFACE] [--adopt]
//	volant-net check    [--bridge vbr0] [--cidr 192.168.127.1/24] [--nat] [--uplink IFACE] [--adopt]
//	volant-net teardown [--bridge vbr0] [--force]
//	volant-net status   [--bridge vbr0]
//	volant-net tap add  [--name TAP | --vm VM] [--bridge vbr0] [--mac MAC] [--ip IP]
//	                    [--owner USER|UID] [--group GROUP|GID] [--mtu N] [--queues N]
//	volant-net tap del  [--name TAP | --vm VM] [--force]
//	volant-net tap list
//	volant-net tap gc   [--keep VM]...
//	volant-net tap name VM
//	volant-net version
//
// Add -v (--verbose) before the verb for a log of each change on stderr.
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
// What setup changed is recorded in the bridge's alias ("volant-bridge:…",
// see `ip -d link show vbr0`), and teardown undoes exactly that: it deletes
// the NAT table, restores ip_forward to 0 if setup changed it (and no other
// Volant bridge remains), and deletes the bridge if setup created it (an
// adopted bridge keeps existing; its recorded address and up state are
// undone). NAT is the nftables table "ip volant-<bridge>", which belongs to
// volant-net alone; no other table or rule is touched. teardown refuses
// while Volant taps are attached to the bridge, unless --force, which
// deletes them. It succeeds when there is nothing to remove.
//
// check reports what setup with the same flags would change, and exits 5
// (CONFLICT) when that is anything. status reports the live state.
//
// Hosts whose firewall drops forwarded traffic (Docker sets the iptables
// FORWARD policy to DROP) must allow the bridge there; an nftables accept
// cannot override another table's drop.
//
// stdin (optional; flags override its fields):
//
//	setup, check  {"bridge":"vbr0","cidr":"192.168.127.1/24","nat":true,"uplink":"eth0","adopt":false}
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
// tap list lists Volant's taps (alias "volant:<vm>…"). tap gc deletes those
// whose VM is not among --keep (a tap without a VM is kept when its name is),
// skipping taps still open. tap name prints the name derived for a VM.
//
// stdin (optional; flags override its fields):
//
//	tap add  {"name","vm","bridge","mac","ip","owner":UID,"group":GID,"mtu","queues"}
//	         or a volant-ipam lease result {"kind":"ipam.lease","vm","ip","mac",...}
//	tap del  {"name","vm","force"}, or a net.tap or ipam.lease result
//	tap gc   {"keep":["web1","web2"]}
//
// stdout (TAP is {"tap","vm","bridge","mac","ip","tap_mac","mtu","multi_queue",
// "owner"?,"group"?,"up","in_use"}):
//
//	tap add   {"kind":"net.tap",TAP...,"changed","items":[...],"lease":{...}?}
//	tap del   {"kind":"net.tap-del","tap","vm","changed","detail"}
//	tap list  {"kind":"net.tap-list","taps":[TAP...]}
//	tap gc    {"kind":"net.tap-gc","removed":[TAP...],"skipped":[TAP...],"kept":[TAP...]}
//	tap name  {"kind":"net.tap-name","vm","tap"}
//	version   {"kind":"net.version","build"}
//
// # Errors
//
// stderr, one JSON object {"code","message","details"}; exit status:
//
//	USAGE              2  bad flags or arguments
//	INVALID_INPUT      3  a name too long or invalid, a bad CIDR, MAC or IP, an IP outside the bridge's subnets
//	NOT_FOUND          4  the bridge (tap add) or the uplink does not exist
//	CONFLICT           5  check found differences (details.differences lists each {"item","want","got"});
//	                      the bridge exists and is not volant-net's; the subnet overlaps another interface's;
//	                      a tap of that name belongs to another VM or is not volant-net's, or is in use;
//	                      teardown with taps attached
//	NOT_SUPPORTED      7  the kernel lacks nftables NAT
//	UNAVAILABLE        9  /dev/net/tun is missing
//	PERMISSION_DENIED 10  not root / no CAP_NET_ADMIN
//
// Every input is validated and every conflict detected before anything
// changes: a rejected request leaves the host as it was.
package main

import (
	"context"
	"encoding/json"
	"os/user"
	"strconv"
	"strings"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/buildinfo"
	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/hostnet"
)

func main() { cli.Main(run) }

type setupFlags struct {
	Bridge string `long:"bridge" value-name:"NAME" description:"bridge name (default vbr0)"`
	CIDR   string `long:"cidr" value-name:"ADDR/LEN" description:"bridge address with prefix length (default 192.168.127.1/24)"`
	NAT    bool   `long:"nat" description:"masquerade traffic from the subnet to other networks"`
	Uplink string `long:"uplink" value-name:"IFACE" description:"masquerade only traffic leaving through IFACE"`
	Adopt  bool   `long:"adopt" description:"manage an existing bridge volant-net did not create"`
}

type options struct {
	Verbose  bool       `short:"v" long:"verbose" description:"log each change on stderr"`
	Setup    setupFlags `command:"setup" description:"Create or repair the bridge, address, forwarding and NAT"`
	Check    setupFlags `command:"check" description:"Report what setup would change; exit 5 if anything"`
	Teardown struct {
		Bridge string `long:"bridge" value-name:"NAME" description:"bridge name (default vbr0)"`
		Force  bool   `long:"force" description:"also delete Volant taps still attached"`
	} `command:"teardown" description:"Remove what setup made"`
	Status struct {
		Bridge string `long:"bridge" value-name:"NAME" description:"bridge name (default vbr0)"`
	} `command:"status" description:"Report the live state of the bridge, NAT and taps"`
	Tap struct {
		Add struct {
			Name   string `long:"name" value-name:"TAP" description:"tap name (default derived from --vm)"`
			VM     string `long:"vm" value-name:"VM" description:"the VM the tap belongs to"`
			Bridge string `long:"bridge" value-name:"NAME" description:"bridge to attach to (default vbr0)"`
			MAC    string `long:"mac" value-name:"MAC" description:"the guest NIC's MAC"`
			IP     string `long:"ip" value-name:"IP" description:"the guest's IPv4 address (permanent neighbour entry)"`
			Owner  string `long:"owner" value-name:"USER|UID" description:"user who may open the tap"`
			Group  string `long:"group" value-name:"GROUP|GID" description:"group that may open the tap"`
			MTU    int    `long:"mtu" value-name:"N" description:"tap MTU"`
			Queues int    `long:"queues" value-name:"N" description:"queues; N > 1 makes a multi-queue tap"`
		} `command:"add" description:"Create a VM's tap on the bridge (idempotent)"`
		Del struct {
			Name  string `long:"name" value-name:"TAP" description:"tap name"`
			VM    string `long:"vm" value-name:"VM" description:"delete the tap derived from this VM name"`
			Force bool   `long:"force" description:"delete even while a process has it open"`
		} `command:"del" description:"Delete a VM's tap (idempotent)"`
		List struct{} `command:"list" description:"List Volant's taps"`
		GC   struct {
			Keep []string `long:"keep" value-name:"VM" description:"a live VM whose tap stays (repeat)"`
		} `command:"gc" description:"Delete the taps of VMs not kept"`
		Name struct {
			Args struct {
				VM string `positional-arg-name:"VM" required:"yes"`
			} `positional-args:"yes"`
		} `command:"name" description:"Print the tap name derived for a VM"`
	} `command:"tap" description:"Per-VM tap devices"`
	Version struct{} `command:"version" description:"Print the build version"`
}

// chained holds another command's result inside a request: the fields this
// command reads (decoded leniently: the producer may add fields) and the
// raw JSON, which is passed on unchanged.
type chained[T any] struct {
	V   T
	raw json.RawMessage
}

func (c *chained[T]) UnmarshalJSON(b []byte) error {
	if err := json.Unmarshal(b, &c.V); err != nil {
		return err
	}
	c.raw = append(json.RawMessage(nil), b...)
	return nil
}

func (c *chained[T]) MarshalJSON() ([]byte, error) { return c.raw, nil }

// lease is what tap add reads from a `volant-ipam lease` result.
type lease struct {
	VM  string `json:"vm"`
	IP  string `json:"ip"`
	MAC string `json:"mac"`
}

type tapAddRequest struct {
	hostnet.TapConfig
	Lease *chained[lease] `json:"lease,omitempty"`
}

func (tapAddRequest) Accepts() map[string]string { return map[string]string{"ipam.lease": "lease"} }

type tapAddResult struct {
	hostnet.TapResult
	Lease *chained[lease] `json:"lease,omitempty"`
}

type tapDelRequest struct {
	hostnet.TapRef
	Tap   *chained[struct{ Tap, VM string }] `json:"tap,omitempty"`
	Lease *chained[lease]                    `json:"lease,omitempty"`
}

func (tapDelRequest) Accepts() map[string]string {
	return map[string]string{"ipam.lease": "lease", "net.tap": "tap"}
}

type gcRequest struct {
	Keep []string `json:"keep"`
}

type statusRequest struct {
	Bridge string `json:"bridge,omitempty"`
}

type tapNameResult struct {
	VM  string `json:"vm"`
	Tap string `json:"tap"`
}

type tapListResult struct {
	Taps []hostnet.Tap `json:"taps"`
}

type versionResult struct {
	Build string `json:"build"`
}

func run(ctx context.Context, env *cli.Env) error {
	err := runVerb(ctx, env)
	if err != nil && apierr.CodeOf(err) == apierr.PermissionDenied {
		return apierr.From(err).With("hint", "volant-net needs root (CAP_NET_ADMIN in its network namespace)")
	}
	return err
}

func runVerb(ctx context.Context, env *cli.Env) error {
	var o options
	verb, _, err := cli.Parse(env, "volant-net", &o)
	if err != nil {
		return err
	}
	h := &hostnet.Host{}
	if o.Verbose {
		h.Log = env.Logger(true)
	}
	switch verb {
	case "setup", "check":
		f := o.Setup
		if verb == "check" {
			f = o.Check
		}
		var cfg hostnet.Config
		if _, err := cli.ReadRequest(env, &cfg); err != nil {
			return err
		}
		override(&cfg.Bridge, f.Bridge)
		override(&cfg.CIDR, f.CIDR)
		override(&cfg.Uplink, f.Uplink)
		cfg.NAT = cfg.NAT || f.NAT
		cfg.Adopt = cfg.Adopt || f.Adopt
		if verb == "check" {
			res, err := h.Check(ctx, cfg)
			if err != nil {
				return err
			}
			return cli.WriteResult(env, "net.check", res)
		}
		res, err := h.Setup(ctx, cfg)
		if err != nil {
			return err
		}
		return cli.WriteResult(env, "net.setup", res)

	case "teardown":
		var cfg hostnet.TeardownConfig
		if _, err := cli.ReadRequest(env, &cfg); err != nil {
			return err
		}
		override(&cfg.Bridge, o.Teardown.Bridge)
		cfg.Force = cfg.Force || o.Teardown.Force
		res, err := h.Teardown(ctx, cfg)
		if err != nil {
			return err
		}
		return cli.WriteResult(env, "net.teardown", res)

	case "status":
		var req statusRequest
		if _, err := cli.ReadRequest(env, &req); err != nil {
			return err
		}
		override(&req.Bridge, o.Status.Bridge)
		res, err := h.Status(ctx, req.Bridge)
		if err != nil {
			return err
		}
		return cli.WriteResult(env, "net.status", res)

	case "tap add":
		f := o.Tap.Add
		var req tapAddRequest
		if _, err := cli.ReadRequest(env, &req); err != nil {
			return err
		}
		cfg := req.TapConfig
		if req.Lease != nil {
			l := req.Lease.V
			fill(&cfg.VM, l.VM)
			fill(&cfg.IP, strings.SplitN(l.IP, "/", 2)[0])
			fill(&cfg.MAC, l.MAC)
		}
		override(&cfg.Name, f.Name)
		override(&cfg.VM, f.VM)
		override(&cfg.Bridge, f.Bridge)
		override(&cfg.MAC, f.MAC)
		override(&cfg.IP, f.IP)
		if f.MTU != 0 {
			cfg.MTU = f.MTU
		}
		if f.Queues != 0 {
			cfg.Queues = f.Queues
		}
		if f.Owner != "" {
			if cfg.Owner, err = lookupID(f.Owner, "owner", lookupUser); err != nil {
				return err
			}
		}
		if f.Group != "" {
			if cfg.Group, err = lookupID(f.Group, "group", lookupGroup); err != nil {
				return err
			}
		}
		res, err := h.AddTap(ctx, cfg)
		if err != nil {
			return err
		}
		return cli.WriteResult(env, "net.tap", tapAddResult{TapResult: *res, Lease: req.Lease})

	case "tap del":
		var req tapDelRequest
		if _, err := cli.ReadRequest(env, &req); err != nil {
			return err
		}
		ref := req.TapRef
		if req.Tap != nil {
			fill(&ref.Name, req.Tap.V.Tap)
			fill(&ref.VM, req.Tap.V.VM)
		}
		if req.Lease != nil {
			fill(&ref.VM, req.Lease.V.VM)
		}
		override(&ref.Name, o.Tap.Del.Name)
		override(&ref.VM, o.Tap.Del.VM)
		ref.Force = ref.Force || o.Tap.Del.Force
		res, err := h.DelTap(ctx, ref)
		if err != nil {
			return err
		}
		return cli.WriteResult(env, "net.tap-del", res)

	case "tap list":
		taps, err := h.ListTaps(ctx)
		if err != nil {
			return err
		}
		return cli.WriteResult(env, "net.tap-list", tapListResult{Taps: taps})

	case "tap gc":
		var req gcRequest
		if _, err := cli.ReadRequest(env, &req); err != nil {
			return err
		}
		req.Keep = append(req.Keep, o.Tap.GC.Keep...)
		res, err := h.GCTaps(ctx, req.Keep)
		if err != nil {
			return err
		}
		return cli.WriteResult(env, "net.tap-gc", res)

	case "tap name":
		vm := o.Tap.Name.Args.VM
		if err := hostnet.ValidateVMName(vm); err != nil {
			return err
		}
		return cli.WriteResult(env, "net.tap-name", tapNameResult{VM: vm, Tap: hostnet.TapName(vm)})

	case "version":
		return cli.WriteResult(env, "net.version", versionResult{Build: buildinfo.String()})
	}
	if strings.HasPrefix(verb, "tap") {
		return apierr.New(apierr.Usage, "missing tap verb (add, del, list, gc, name); run volant-net tap --help")
	}
	return apierr.New(apierr.Usage, "missing verb; run volant-net --help")
}

// fill sets *dst to v when *dst is empty (a chained result supplies what
// the request left out).
func fill(dst *string, v string) {
	if *dst == "" {
		*dst = v
	}
}

// override sets *dst to v when v is given (flags win).
func override(dst *string, v string) {
	if v != "" {
		*dst = v
	}
}

func lookupUser(name string) (string, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return "", err
	}
	return u.Uid, nil
}

func lookupGroup(name string) (string, error) {
	g, err := user.LookupGroup(name)
	if err != nil {
		return "", err
	}
	return g.Gid, nil
}

// lookupID resolves a numeric id or a user/group name.
func lookupID(s, what string, lookup func(string) (string, error)) (*uint32, error) {
	id := s
	if _, err := strconv.ParseUint(s, 10, 32); err != nil {
		if id, err = lookup(s); err != nil {
			return nil, apierr.New(apierr.InvalidInput, "%s %q is neither a number nor a known name", what, s).With(what, s)
		}
	}
	n, err := strconv.ParseUint(id, 10, 32)
	if err != nil || n == 1<<32-1 {
		return nil, apierr.New(apierr.InvalidInput, "%s %q is out of range", what, s).With(what, s)
	}
	v := uint32(n)
	return &v, nil
}
