package hostnet

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/names"
	"github.com/volantvm/volant/lib/portmap"
)

// Published ports live in the nftables table "ip volant_ports", which is
// Volant's alone (no other table or rule is touched; deleting the last
// published port deletes the table):
//
//	chain ports        one rule per published host port, commented
//	                   "volant-port <owner> <proto>/<hostip|*>:<hostport>><guestport> b=<backends>":
//	                   [ip daddr HOSTIP] meta l4proto P th dport HOSTPORT
//	                   dnat to numgen inc mod N map { 0 : IP0, 1 : IP1, ... } : GUESTPORT
//	chain prerouting   nat, hook prerouting, priority dstnat:  fib daddr type local jump ports
//	                   (traffic from outside, and from guests: the bridge hairpin)
//	chain output       nat, hook output, priority -100:        fib daddr type local jump ports
//	                   (traffic from the host itself, loopback included)
//	chain postrouting  nat, hook postrouting, priority srcnat, per bridge:
//	                   ct status dnat iifname BR oifname BR masquerade   (a guest reaching another
//	                   guest through a published port gets the answer back through the host)
//	                   ct status dnat oifname BR ip saddr 127.0.0.0/8 masquerade   (localhost)
//	chain guard        filter, hook prerouting, priority raw, per bridge:
//	                   iifname BR ip daddr 127.0.0.0/8 drop
//
// Reaching a published port on 127.0.0.1 needs net.ipv4.conf.BR.route_localnet=1
// on the bridge (the DNATed packet leaves through it with a loopback
// source, which the masquerade rule then rewrites); SetPorts sets it, and
// the guard rule drops what that would otherwise let in: guests sending to
// the host's loopback addresses.
//
// An owner is a VM ("vm:web1") or a deployment ("dep:svc"). A VM's ports
// go to its address; a deployment's host port is balanced across its
// backends, one per new connection in turn (numgen inc); with no backend
// the rule only counts and the connection reaches the host's own port
// (nothing listens: refused). The comment's b= is a digest of the backend
// list, so re-applying the same set changes nothing.
//
// Limitation: a guest that connects to a published port balanced onto
// itself gets no answer (the kernel drops a forwarded packet whose
// translated destination is its own source address).

// PortTable is the nftables table (family ip) of published ports. Its "_"
// keeps it apart from the NAT tables "volant-<bridge>" (NATTable), whatever
// the bridge is called.
const PortTable = "volant_ports"

const (
	portsChain   = "ports"
	portsPre     = "prerouting"
	portsOut     = "output"
	portsPost    = "postrouting"
	portsGuard   = "guard"
	portComment  = "volant-port "
	hookComment  = "volant-port hook"
	hairpinTag   = "volant-port hairpin "
	localnetTag  = "volant-port localnet "
	guardTag     = "volant-port guard "
	noBackends   = "none"
	ownerVM      = "vm"
	ownerDeploy  = "dep"
	priorityRaw  = -300
	priorityDNAT = -100
)

// PortOwner names who published a port: "vm:NAME" or "dep:NAME".
type PortOwner string

// VMPorts is the owner of a VM's ports.
func VMPorts(vm string) PortOwner { return PortOwner(ownerVM + ":" + vm) }

// DeploymentPorts is the owner of a deployment's ports.
func DeploymentPorts(d string) PortOwner { return PortOwner(ownerDeploy + ":" + d) }

// Split returns the owner's kind ("vm" or "dep") and name.
func (o PortOwner) Split() (kind, name string) {
	kind, name, _ = strings.Cut(string(o), ":")
	return kind, name
}

// Validate checks the owner's form.
func (o PortOwner) Validate() error {
	kind, name := o.Split()
	if kind != ownerVM && kind != ownerDeploy {
		return apierr.New(apierr.InvalidInput, "port owner %q must be vm:NAME or dep:NAME", string(o)).With("field", "owner")
	}
	return names.Check("owner name", name)
}

// PortSet is everything one owner publishes: each mapping forwards its
// host port to the same guest port of the backends.
type PortSet struct {
	Owner PortOwner `json:"owner"`
	// Bridge is the bridge the backends sit on (default vbr0); the hairpin
	// and localhost rules are made for it.
	Bridge   string            `json:"bridge,omitempty"`
	Ports    []portmap.Mapping `json:"ports"`
	Backends []string          `json:"backends"`
}

// PublishedPort is one rule of the table, as ListPorts reads it back.
type PublishedPort struct {
	Owner   PortOwner       `json:"owner"`
	Mapping portmap.Mapping `json:"mapping"`
	// Backends are the guest addresses, in the rule's order.
	Backends []string `json:"backends"`
	// Packets and Bytes count what reached the host port
	// (the first packet of each connection).
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// PortsResult says what SetPorts or DelPorts did.
type PortsResult struct {
	Owner   PortOwner       `json:"owner"`
	Changed bool            `json:"changed"`
	Ports   []PublishedPort `json:"ports"`
}

// PortsGCResult says what GCPorts removed.
type PortsGCResult struct {
	Removed []PublishedPort `json:"removed"`
	Kept    []PublishedPort `json:"kept"`
}

// portsMu serializes this process's table edits (a read, then a batch
// that deletes rules by handle); edits from other processes are retried.
var portsMu sync.Mutex

// ruleComment is the comment of a published port's rule.
func ruleComment(owner PortOwner, m portmap.Mapping, backends []string) string {
	host := m.HostIP
	if host == "" {
		host = "*"
	}
	b := noBackends
	if len(backends) > 0 {
		h := sha256.Sum256([]byte(strings.Join(backends, ",")))
		b = strconv.Itoa(len(backends)) + "." + hex.EncodeToString(h[:4])
	}
	return fmt.Sprintf("%s%s %s/%s:%d>%d b=%s", portComment, owner, m.Protocol, host, m.HostPort, m.GuestPort, b)
}

// parseRuleComment reads a published port's comment back.
func parseRuleComment(c string) (PortOwner, portmap.Mapping, bool) {
	rest, ok := strings.CutPrefix(c, portComment)
	if !ok {
		return "", portmap.Mapping{}, false
	}
	f := strings.Fields(rest)
	if len(f) != 3 || !strings.HasPrefix(f[2], "b=") {
		return "", portmap.Mapping{}, false
	}
	owner := PortOwner(f[0])
	if owner.Validate() != nil {
		return "", portmap.Mapping{}, false
	}
	proto, spec, ok := strings.Cut(f[1], "/")
	if !ok {
		return "", portmap.Mapping{}, false
	}
	hp, gp, ok := strings.Cut(spec, ">")
	if !ok {
		return "", portmap.Mapping{}, false
	}
	i := strings.LastIndex(hp, ":")
	if i < 0 {
		return "", portmap.Mapping{}, false
	}
	host := hp[:i]
	if host == "*" {
		host = ""
	}
	m, err := portmap.Parse(fmt.Sprintf("%s:%s:%s/%s", orDefault(host, "0.0.0.0"), hp[i+1:], gp, proto))
	if err != nil {
		return "", portmap.Mapping{}, false
	}
	return owner, m, true
}

func (s PortSet) normalized() (PortSet, error) {
	if err := s.Owner.Validate(); err != nil {
		return s, err
	}
	s.Bridge = orDefault(s.Bridge, DefaultBridge)
	if err := ValidateIfName(s.Bridge); err != nil {
		return s, err
	}
	ports, err := portmap.ValidateList(s.Ports)
	if err != nil {
		return s, err
	}
	s.Ports = ports
	seen := map[string]bool{}
	var backends []string
	for i, b := range s.Backends {
		a, err := netip.ParseAddr(b)
		if err != nil || !a.Is4() {
			return s, apierr.New(apierr.InvalidInput, "backends[%d] %q is not an IPv4 address", i, b).With("field", "backends")
		}
		if !seen[a.String()] {
			seen[a.String()] = true
			backends = append(backends, a.String())
		}
	}
	s.Backends = backends
	return s, nil
}

// portsState is what the table holds.
type portsState struct {
	table *nftables.Table // nil: no table
	// rules of the ports chain with their parsed comments.
	rules []portRule
	// infra are the comments of the hook, hairpin and guard rules.
	infra map[string]bool
	// chains present, by name.
	chains map[string]bool
}

type portRule struct {
	rule    *nftables.Rule
	comment string
	owner   PortOwner
	mapping portmap.Mapping
}

func readPorts(c *nftables.Conn) (*portsState, error) {
	st := &portsState{infra: map[string]bool{}, chains: map[string]bool{}}
	t, err := c.ListTableOfFamily(PortTable, nftables.TableFamilyIPv4)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return st, nil
		}
		return nil, natErr(fmt.Errorf("reading nftables table ip %s: %w", PortTable, err))
	}
	st.table = t
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, natErr(fmt.Errorf("listing nftables chains: %w", err))
	}
	for _, ch := range chains {
		if ch.Table == nil || ch.Table.Name != PortTable {
			continue
		}
		st.chains[ch.Name] = true
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return nil, natErr(fmt.Errorf("listing rules of %s %s: %w", PortTable, ch.Name, err))
		}
		for _, r := range rules {
			comment, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			if ch.Name != portsChain {
				st.infra[ch.Name+"|"+comment] = true
				continue
			}
			pr := portRule{rule: r, comment: comment}
			pr.owner, pr.mapping, _ = parseRuleComment(comment)
			st.rules = append(st.rules, pr)
		}
	}
	return st, nil
}

func portsTable() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyIPv4, Name: PortTable}
}

// ensureBase adds the table, its chains and the bridge's infrastructure
// rules that are missing to the batch.
func ensureBase(c *nftables.Conn, st *portsState, bridge string) (*nftables.Table, map[string]*nftables.Chain) {
	t := portsTable()
	c.AddTable(t)
	prio := func(p int32) *nftables.ChainPriority { v := nftables.ChainPriority(p); return &v }
	chains := map[string]*nftables.Chain{
		portsChain: {Name: portsChain, Table: t},
		portsPre:   {Name: portsPre, Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPrerouting, Priority: prio(priorityDNAT)},
		portsOut:   {Name: portsOut, Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookOutput, Priority: prio(priorityDNAT)},
		portsPost:  {Name: portsPost, Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource},
		portsGuard: {Name: portsGuard, Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookPrerouting, Priority: prio(priorityRaw)},
	}
	// The regular chain first: the hook rules jump to it.
	for _, name := range []string{portsChain, portsPre, portsOut, portsPost, portsGuard} {
		if !st.chains[name] {
			c.AddChain(chains[name])
		}
	}
	add := func(chain, comment string, exprs []expr.Any) {
		if st.infra[chain+"|"+comment] {
			return
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: chains[chain], Exprs: exprs,
			UserData: userdata.AppendString(nil, userdata.TypeComment, comment)})
		st.infra[chain+"|"+comment] = true
	}
	jump := []expr.Any{
		&expr.Fib{Register: 1, ResultADDRTYPE: true, FlagDADDR: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(2)}, // RTN_LOCAL
		&expr.Verdict{Kind: expr.VerdictJump, Chain: portsChain},
	}
	add(portsPre, hookComment, jump)
	add(portsOut, hookComment, jump)
	ifname := func(key expr.MetaKey) []expr.Any {
		return []expr.Any{&expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifnameBytes(bridge)}}
	}
	dnatted := []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(0x20), Xor: binaryutil.NativeEndian.PutUint32(0)}, // IPS_DST_NAT
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
	loopback := func(offset uint32) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{255, 0, 0, 0}, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{127, 0, 0, 0}},
		}
	}
	add(portsPost, hairpinTag+bridge, concat(dnatted, ifname(expr.MetaKeyIIFNAME), ifname(expr.MetaKeyOIFNAME), []expr.Any{&expr.Masq{}}))
	add(portsPost, localnetTag+bridge, concat(dnatted, ifname(expr.MetaKeyOIFNAME), loopback(12), []expr.Any{&expr.Masq{}}))
	add(portsGuard, guardTag+bridge, concat(ifname(expr.MetaKeyIIFNAME), loopback(16), []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}))
	return t, chains
}

func concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func ifnameBytes(name string) []byte {
	b := make([]byte, 16)
	copy(b, name)
	return b
}

// addPortRule adds the rule of one mapping to the batch.
func addPortRule(c *nftables.Conn, t *nftables.Table, ch *nftables.Chain, owner PortOwner, m portmap.Mapping, backends []string) error {
	proto := byte(syscall.IPPROTO_TCP)
	if m.Protocol == portmap.UDP {
		proto = syscall.IPPROTO_UDP
	}
	var e []expr.Any
	if a := m.Addr(); a.IsValid() {
		b := a.As4()
		e = append(e,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b[:]})
	}
	e = append(e,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(m.HostPort))},
		&expr.Counter{},
	)
	if len(backends) > 0 {
		set := &nftables.Set{Table: t, Anonymous: true, Constant: true, IsMap: true,
			KeyType: nftables.TypeInteger, DataType: nftables.TypeIPAddr, KeyByteOrder: binaryutil.NativeEndian}
		elems := make([]nftables.SetElement, len(backends))
		for i, b := range backends {
			ip := netip.MustParseAddr(b).As4()
			elems[i] = nftables.SetElement{Key: binaryutil.NativeEndian.PutUint32(uint32(i)), Val: ip[:]}
		}
		if err := c.AddSet(set, elems); err != nil {
			return fmt.Errorf("building the backend map of %s: %w", m, err)
		}
		e = append(e,
			&expr.Numgen{Register: 1, Type: 0 /* NFT_NG_INCREMENTAL */, Modulus: uint32(len(backends))},
			&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetID: set.ID, SetName: set.Name},
			&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(uint16(m.GuestPort))},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(nftables.TableFamilyIPv4), RegAddrMin: 1, RegProtoMin: 2, Specified: true},
		)
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: e,
		UserData: userdata.AppendString(nil, userdata.TypeComment, ruleComment(owner, m, backends))})
	return nil
}

// SetPorts makes the owner's published ports exactly set's: mappings
// that differ are replaced, in one nftables transaction, and nothing
// changes when the table holds them already. A host port another owner
// published is PORT_IN_USE; the caller checks host listeners (PortFree).
// Empty Ports is DelPorts.
func (h *Host) SetPorts(ctx context.Context, set PortSet) (*PortsResult, error) {
	set, err := set.normalized()
	if err != nil {
		return nil, err
	}
	if len(set.Ports) == 0 {
		return h.DelPorts(ctx, set.Owner)
	}
	return h.editPorts(ctx, set.Owner, func(c *nftables.Conn, st *portsState) (bool, error) {
		want := map[string]portmap.Mapping{}
		for _, m := range set.Ports {
			want[ruleComment(set.Owner, m, set.Backends)] = m
		}
		var stale []*nftables.Rule
		have := map[string]bool{}
		for _, r := range st.rules {
			if r.owner != set.Owner {
				for _, m := range set.Ports {
					if r.owner != "" && portmap.Overlaps(r.mapping, m) {
						return false, portInUse(m, "published by "+string(r.owner)).With("owner", string(r.owner))
					}
				}
				continue
			}
			if _, ok := want[r.comment]; ok && !have[r.comment] {
				have[r.comment] = true
				continue
			}
			stale = append(stale, r.rule)
		}
		infra := len(st.infra)
		t, chains := ensureBase(c, st, set.Bridge)
		changed := len(stale) > 0 || len(st.infra) != infra
		for _, r := range stale {
			if err := c.DelRule(r); err != nil {
				return false, err
			}
		}
		for _, m := range set.Ports {
			if have[ruleComment(set.Owner, m, set.Backends)] {
				continue
			}
			changed = true
			if err := addPortRule(c, t, chains[portsChain], set.Owner, m, set.Backends); err != nil {
				return false, err
			}
		}
		if changed {
			if err := enableLocalnet(set.Bridge); err != nil {
				h.log().Warn("published ports will not answer on 127.0.0.1", "bridge", set.Bridge, "err", err)
			}
		}
		return changed, nil
	})
}

// DelPorts removes the owner's published ports (success when there are
// none), and the table with the last of them.
func (h *Host) DelPorts(ctx context.Context, owner PortOwner) (*PortsResult, error) {
	if err := owner.Validate(); err != nil {
		return nil, err
	}
	return h.editPorts(ctx, owner, func(c *nftables.Conn, st *portsState) (bool, error) {
		return deleteOwners(c, st, func(o PortOwner) bool { return o == owner }), nil
	})
}

// GCPorts removes the published ports of every owner not in keep.
func (h *Host) GCPorts(ctx context.Context, keep []PortOwner) (*PortsGCResult, error) {
	return h.gcPorts(ctx, keep, false)
}

// GCPortsDryRun reports what GCPorts would remove.
func (h *Host) GCPortsDryRun(ctx context.Context, keep []PortOwner) (*PortsGCResult, error) {
	return h.gcPorts(ctx, keep, true)
}

func (h *Host) gcPorts(ctx context.Context, keep []PortOwner, dry bool) (*PortsGCResult, error) {
	keepSet := map[PortOwner]bool{}
	for _, o := range keep {
		keepSet[o] = true
	}
	before, err := h.ListPorts(ctx)
	if err != nil {
		return nil, err
	}
	res := &PortsGCResult{Removed: []PublishedPort{}, Kept: []PublishedPort{}}
	for _, p := range before {
		if keepSet[p.Owner] {
			res.Kept = append(res.Kept, p)
		} else {
			res.Removed = append(res.Removed, p)
		}
	}
	if len(res.Removed) == 0 || dry {
		return res, nil
	}
	_, err = h.editPorts(ctx, "", func(c *nftables.Conn, st *portsState) (bool, error) {
		return deleteOwners(c, st, func(o PortOwner) bool { return !keepSet[o] }), nil
	})
	return res, err
}

// deleteOwners adds to the batch the deletion of the rules of the owners
// drop selects, or of the whole table when no other rule would remain.
func deleteOwners(c *nftables.Conn, st *portsState, drop func(PortOwner) bool) bool {
	if st.table == nil {
		return false
	}
	var del []*nftables.Rule
	for _, r := range st.rules {
		if drop(r.owner) {
			del = append(del, r.rule)
		}
	}
	if len(del) == len(st.rules) {
		c.DelTable(portsTable())
		return true
	}
	for _, r := range del {
		_ = c.DelRule(r)
	}
	return len(del) > 0
}

// editPorts reads the table, lets fn add changes to a batch and sends it,
// retrying when another process changed the table in between.
func (h *Host) editPorts(ctx context.Context, owner PortOwner, fn func(*nftables.Conn, *portsState) (bool, error)) (*PortsResult, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	var last error
	for attempt := 0; attempt < 3; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		c, err := nftables.New()
		if err != nil {
			return nil, natErr(fmt.Errorf("opening nftables: %w", err))
		}
		st, err := readPorts(c)
		if err != nil {
			return nil, err
		}
		changed, err := fn(c, st)
		if err != nil {
			return nil, err
		}
		if changed {
			if err := c.Flush(); err != nil {
				last = natErr(fmt.Errorf("writing nftables table ip %s: %w", PortTable, err))
				if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.EBUSY) || errors.Is(err, syscall.EEXIST) {
					continue // raced with another writer: measure again
				}
				if errors.Is(err, syscall.EPERM) {
					return nil, apierr.Wrap(apierr.PermissionDenied, last, "publishing ports")
				}
				return nil, last
			}
			h.log().Info("published ports changed", "owner", string(owner))
		}
		res := &PortsResult{Owner: owner, Changed: changed, Ports: []PublishedPort{}}
		if owner != "" {
			all, err := h.listPorts()
			if err != nil {
				return nil, err
			}
			for _, p := range all {
				if p.Owner == owner {
					res.Ports = append(res.Ports, p)
				}
			}
		}
		return res, nil
	}
	return nil, last
}

// ListPorts reads every published port back from the table, with its
// backends and counters, ordered by owner and mapping.
func (h *Host) ListPorts(ctx context.Context) ([]PublishedPort, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return h.listPorts()
}

func (h *Host) listPorts() ([]PublishedPort, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, natErr(fmt.Errorf("opening nftables: %w", err))
	}
	st, err := readPorts(c)
	if err != nil {
		return nil, err
	}
	out := []PublishedPort{}
	for _, r := range st.rules {
		if r.owner == "" {
			continue
		}
		p := PublishedPort{Owner: r.owner, Mapping: r.mapping, Backends: []string{}}
		for _, e := range r.rule.Exprs {
			switch x := e.(type) {
			case *expr.Counter:
				p.Packets, p.Bytes = x.Packets, x.Bytes
			case *expr.Lookup:
				b, err := mapBackends(c, st.table, x.SetName)
				if err != nil {
					return nil, err
				}
				p.Backends = b
			}
		}
		out = append(out, p)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Owner != out[j].Owner {
			return out[i].Owner < out[j].Owner
		}
		return portmap.Compare(out[i].Mapping, out[j].Mapping) < 0
	})
	return out, nil
}

// mapBackends reads the addresses of a rule's backend map, in key order.
func mapBackends(c *nftables.Conn, t *nftables.Table, name string) ([]string, error) {
	s, err := c.GetSetByName(t, name)
	if err != nil {
		return nil, natErr(fmt.Errorf("reading backend map %s: %w", name, err))
	}
	elems, err := c.GetSetElements(s)
	if err != nil {
		return nil, natErr(fmt.Errorf("reading backend map %s: %w", name, err))
	}
	type kv struct {
		k  uint32
		ip string
	}
	var kvs []kv
	for _, e := range elems {
		if len(e.Key) != 4 || len(e.Val) != 4 {
			continue
		}
		kvs = append(kvs, kv{binary.NativeEndian.Uint32(e.Key), netip.AddrFrom4([4]byte(e.Val)).String()})
	}
	slices.SortFunc(kvs, func(a, b kv) int { return int(a.k) - int(b.k) })
	out := make([]string, len(kvs))
	for i, x := range kvs {
		out[i] = x.ip
	}
	return out, nil
}

// enableLocalnet sets route_localnet on the bridge, so DNATed connections
// from 127.0.0.1 may leave through it (the guard rule keeps guests off the
// host's loopback addresses).
func enableLocalnet(bridge string) error {
	p := filepath.Join("/proc/sys/net/ipv4/conf", bridge, "route_localnet")
	if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == "1" {
		return nil
	}
	return os.WriteFile(p, []byte("1\n"), 0o644)
}

func portInUse(m portmap.Mapping, why string) *apierr.Error {
	return apierr.New(apierr.PortInUse, "host port %s is in use: %s", m, why).
		With("port", m.String()).With("host_port", m.HostPort).With("protocol", m.Protocol)
}

// PortFree is the package's PortFree, for callers that hold a Host.
func (h *Host) PortFree(m portmap.Mapping) error { return PortFree(m) }

// PortFree checks that no process on the host listens on (TCP) or has
// bound (UDP) the mapping's host port, by binding it for a moment:
// PORT_IN_USE names the address, INVALID_INPUT says the host address is
// not one of this host's. It sees the calling thread's namespace.
func PortFree(m portmap.Mapping) error {
	m = m.Normalized()
	addr := net.JoinHostPort(m.HostIP, strconv.Itoa(m.HostPort))
	var err error
	if m.Protocol == portmap.UDP {
		var pc net.PacketConn
		if pc, err = net.ListenPacket("udp4", addr); err == nil {
			pc.Close()
		}
	} else {
		var l net.Listener
		if l, err = net.Listen("tcp4", addr); err == nil {
			l.Close()
		}
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syscall.EADDRINUSE):
		return portInUse(m, "a process on the host listens on it")
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return apierr.New(apierr.InvalidInput, "host address %s of %s is not an address of this host", m.HostIP, m).
			With("field", "ports").With("port", m.String())
	case errors.Is(err, syscall.EACCES):
		return apierr.Wrap(apierr.PermissionDenied, err, "checking host port "+m.String())
	}
	return fmt.Errorf("checking host port %s: %w", m, err)
}
