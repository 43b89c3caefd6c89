package hostnet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/apierr"
)

// setupSpec is a validated Config.
type setupSpec struct {
	bridge string
	gw     netip.Prefix // 192.168.127.1/24
	nat    bool
	uplink string
	adopt  bool
	keep   bool // leave NAT as it is
}

func (c Config) spec() (setupSpec, error) {
	s := setupSpec{bridge: orDefault(c.Bridge, DefaultBridge), nat: c.NAT, uplink: c.Uplink, adopt: c.Adopt, keep: c.KeepNAT}
	if s.keep {
		s.nat, s.uplink = false, ""
	}
	if err := ValidateIfName(s.bridge); err != nil {
		return s, fmt.Errorf("bridge: %w", err)
	}
	gw, err := ParseGateway(orDefault(c.CIDR, DefaultCIDR))
	if err != nil {
		return s, err
	}
	s.gw = gw
	if s.uplink != "" {
		if err := ValidateIfName(s.uplink); err != nil {
			return s, fmt.Errorf("uplink: %w", err)
		}
		if s.uplink == s.bridge {
			return s, apierr.New(apierr.InvalidInput, "uplink %q is the bridge itself", s.uplink)
		}
		if !s.nat {
			return s, apierr.New(apierr.InvalidInput, "uplink %q only applies with NAT; add --nat", s.uplink).With("uplink", s.uplink)
		}
	}
	return s, nil
}

// bridgeObs is the observed state of a bridge and its namespace.
type bridgeObs struct {
	link       netlink.Link // nil: no link of that name
	isBridge   bool
	managed    bool
	recovered  bool // unmarked, but wearing BridgeMAC: an interrupted setup's
	rec        bridgeRecord
	up         bool
	addrs      []netip.Prefix // IPv4 addresses on the bridge
	forwarding bool
	nat        natState
}

func observeBridge(name string) (*bridgeObs, error) {
	o := &bridgeObs{}
	link, err := linkByName(name)
	if err != nil {
		return nil, err
	}
	fwd, err := readForwarding()
	if err != nil {
		return nil, err
	}
	o.forwarding = fwd
	if o.nat, err = readNAT(NATTable(name)); err != nil {
		return nil, err
	}
	if link == nil {
		return o, nil
	}
	o.link = link
	o.isBridge = link.Type() == "bridge"
	attrs := link.Attrs()
	o.up = attrs.Flags&net.FlagUp != 0
	if rec, ok := parseBridgeRecord(attrs.Alias); ok && o.isBridge {
		o.managed, o.rec = true, rec
	} else if o.isBridge && attrs.Alias == "" && bytes.Equal(attrs.HardwareAddr, BridgeMAC(name)) {
		o.managed, o.recovered, o.rec = true, true, bridgeRecord{Created: true}
	}
	if o.addrs, err = linkAddrs(link); err != nil {
		return nil, err
	}
	return o, nil
}

// linkByName returns the link, or nil when there is none by that name.
func linkByName(name string) (netlink.Link, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, nil
		}
		return nil, fmt.Errorf("looking up link %s: %w", name, err)
	}
	return l, nil
}

func linkAddrs(link netlink.Link) ([]netip.Prefix, error) {
	list, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("listing addresses of %s: %w", link.Attrs().Name, err)
	}
	var out []netip.Prefix
	for _, a := range list {
		if p, ok := toPrefix(a.IPNet); ok {
			out = append(out, p)
		}
	}
	return out, nil
}

func toPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP.To4())
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a, ones), true
}

func toIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), 32)}
}

// subnetConflict finds an IPv4 address on another link whose subnet overlaps
// the one asked for.
func subnetConflict(gw netip.Prefix, bridge netlink.Link) error {
	all, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("listing addresses: %w", err)
	}
	for _, a := range all {
		if bridge != nil && a.LinkIndex == bridge.Attrs().Index {
			continue
		}
		p, ok := toPrefix(a.IPNet)
		if !ok || !p.Masked().Overlaps(gw.Masked()) {
			continue
		}
		dev := fmt.Sprintf("index %d", a.LinkIndex)
		if l, err := netlink.LinkByIndex(a.LinkIndex); err == nil {
			dev = l.Attrs().Name
		}
		return apierr.New(apierr.Conflict, "subnet %s overlaps %s on %s", gw.Masked(), p, dev).
			With("subnet", gw.Masked().String()).With("address", p.String()).With("interface", dev)
	}
	return nil
}

// step is one change setup plans: what it is for check, and how to make it.
type step struct {
	item      string
	want, got string
	done      string // past tense, for setup's report
	do        func() error
}

// bridgeEditor carries the record and link between setup's steps, writing
// the record before each change it describes (so a crash leaves a record
// that over-claims, which teardown tolerates, never one that under-claims).
type bridgeEditor struct {
	name string
	rec  bridgeRecord
}

func (e *bridgeEditor) link() (netlink.Link, error) {
	l, err := netlink.LinkByName(e.name)
	if err != nil {
		return nil, fmt.Errorf("looking up bridge %s: %w", e.name, err)
	}
	return l, nil
}

func (e *bridgeEditor) record(change func(*bridgeRecord)) error {
	next := e.rec
	change(&next)
	l, err := e.link()
	if err != nil {
		return err
	}
	if err := netlink.LinkSetAlias(l, next.String()); err != nil {
		return fmt.Errorf("recording ownership on %s: %w", e.name, err)
	}
	e.rec = next
	return nil
}

// plan measures and returns the steps that make the live state match s.
// Every validation and conflict check happens here, before any change.
func (h *Host) plan(s setupSpec) ([]step, *bridgeObs, error) {
	o, err := observeBridge(s.bridge)
	if err != nil {
		return nil, nil, err
	}
	if s.uplink != "" {
		l, err := linkByName(s.uplink)
		if err != nil {
			return nil, nil, err
		}
		if l == nil {
			return nil, nil, apierr.New(apierr.NotFound, "uplink interface %s does not exist", s.uplink).With("uplink", s.uplink)
		}
	}
	if err := subnetConflict(s.gw, o.link); err != nil {
		return nil, nil, err
	}
	ed := &bridgeEditor{name: s.bridge, rec: o.rec}
	var steps []step

	switch {
	case o.link == nil:
		steps = append(steps, step{item: "bridge", want: "bridge " + s.bridge, got: "absent",
			done: "created bridge " + s.bridge,
			do: func() error {
				ed.rec = bridgeRecord{Created: true}
				br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{
					Name: s.bridge, HardwareAddr: BridgeMAC(s.bridge), Alias: ed.rec.String(),
				}}
				if err := netlink.LinkAdd(br); err != nil {
					return fmt.Errorf("creating bridge %s: %w", s.bridge, err)
				}
				// The kernel ignores IFLA_IFALIAS on creation; set it now.
				// Until it is set, BridgeMAC marks the bridge as ours.
				return ed.record(func(*bridgeRecord) {})
			}})
	case !o.isBridge:
		return nil, nil, apierr.New(apierr.Conflict, "%s exists and is a %s, not a bridge", s.bridge, o.link.Type()).
			With("bridge", s.bridge).With("type", o.link.Type())
	case o.recovered:
		steps = append(steps, step{item: "bridge", want: "bridge " + s.bridge + " managed by volant-net", got: "unmarked (interrupted setup)",
			done: "marked bridge " + s.bridge + " left by an interrupted setup",
			do:   func() error { return ed.record(func(*bridgeRecord) {}) }})
	case !o.managed && !s.adopt:
		return nil, nil, apierr.New(apierr.Conflict, "bridge %s exists and was not created by volant-net; pass --adopt to manage it, or choose another --bridge", s.bridge).
			With("bridge", s.bridge).With("alias", o.link.Attrs().Alias)
	case !o.managed:
		if a := o.link.Attrs().Alias; a != "" {
			return nil, nil, apierr.New(apierr.Conflict, "bridge %s carries alias %q; volant-net records its changes in the alias and will not overwrite it", s.bridge, a).
				With("bridge", s.bridge).With("alias", a)
		}
		steps = append(steps, step{item: "bridge", want: "bridge " + s.bridge + " managed by volant-net", got: "not managed",
			done: "adopted bridge " + s.bridge,
			do:   func() error { return ed.record(func(r *bridgeRecord) { r.Adopted = true }) }})
	}

	// Address: add the one asked for; remove one an earlier setup added
	// that is no longer asked for.
	has := func(p netip.Prefix) bool {
		for _, a := range o.addrs {
			if a == p {
				return true
			}
		}
		return false
	}
	stale := o.rec.Addr.IsValid() && o.rec.Addr != s.gw && has(o.rec.Addr)
	if !has(s.gw) || stale {
		got := prefixList(o.addrs)
		done := "added " + s.gw.String()
		if stale {
			done = "replaced " + o.rec.Addr.String() + " with " + s.gw.String()
		}
		steps = append(steps, step{item: "address", want: s.gw.String(), got: got, done: done,
			do: func() error {
				old := ed.rec.Addr
				if err := ed.record(func(r *bridgeRecord) { r.Addr = s.gw }); err != nil {
					return err
				}
				l, err := ed.link()
				if err != nil {
					return err
				}
				if stale && old.IsValid() {
					if err := netlink.AddrDel(l, &netlink.Addr{IPNet: toIPNet(old)}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
						return fmt.Errorf("removing %s from %s: %w", old, s.bridge, err)
					}
				}
				if !has(s.gw) {
					if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: toIPNet(s.gw)}); err != nil && !errors.Is(err, unix.EEXIST) {
						return fmt.Errorf("adding %s to %s: %w", s.gw, s.bridge, err)
					}
				}
				return nil
			}})
	}

	if !o.up {
		steps = append(steps, step{item: "link", want: "up", got: "down", done: "set " + s.bridge + " up",
			do: func() error {
				if ed.rec.Adopted {
					if err := ed.record(func(r *bridgeRecord) { r.Up = true }); err != nil {
						return err
					}
				}
				l, err := ed.link()
				if err != nil {
					return err
				}
				if err := netlink.LinkSetUp(l); err != nil {
					return fmt.Errorf("setting %s up: %w", s.bridge, err)
				}
				return nil
			}})
	}

	if !o.forwarding {
		steps = append(steps, step{item: "forwarding", want: "net.ipv4.ip_forward=1", got: "net.ipv4.ip_forward=0",
			done: "set net.ipv4.ip_forward to 1 (was 0; teardown restores it)",
			do: func() error {
				if err := ed.record(func(r *bridgeRecord) { r.Fwd = true }); err != nil {
					return err
				}
				return writeForwarding(true)
			}})
	}

	// NAT: the table, and the record of what setup was asked (which a bare
	// check compares with). The record is written before a table is made
	// and before one is deleted, so a crash leaves the record of the
	// request, which the next setup completes.
	table := NATTable(s.bridge)
	comment := natComment(s.gw, s.uplink)
	recorded := o.rec.NAT == s.nat && o.rec.Uplink == s.uplink
	record := func() error {
		return ed.record(func(r *bridgeRecord) { r.NAT, r.Uplink = s.nat, s.uplink })
	}
	switch {
	case s.keep:
	case s.nat && !o.nat.matches(comment):
		done := "created nftables table ip " + table + ": " + comment
		if o.nat.Present {
			done = "rewrote nftables table ip " + table + ": " + comment
		}
		steps = append(steps, step{item: "nat", want: comment, got: o.nat.describe(), done: done,
			do: func() error {
				if err := record(); err != nil {
					return err
				}
				return writeNAT(table, o.nat.Present, s.gw, s.uplink)
			}})
	case !s.nat && o.nat.Present:
		steps = append(steps, step{item: "nat", want: "absent", got: o.nat.describe(),
			done: "deleted nftables table ip " + table + " (NAT not requested)",
			do: func() error {
				if err := record(); err != nil {
					return err
				}
				return deleteNAT(table)
			}})
	case !recorded:
		want, got := comment, o.nat.describe()+" (not recorded on "+s.bridge+")"
		done := "recorded NAT (" + comment + ") on " + s.bridge
		if !s.nat {
			want, got, done = "absent", "absent (NAT still recorded on "+s.bridge+")", "recorded no NAT on "+s.bridge
		}
		steps = append(steps, step{item: "nat", want: want, got: got, done: done, do: record})
	}
	return steps, o, nil
}

func prefixList(ps []netip.Prefix) string {
	if len(ps) == 0 {
		return "none"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// Setup makes the bridge, its address, forwarding and (with NAT) the
// masquerade rule match cfg, changing only what differs. Running it again
// reports Changed false.
func (h *Host) Setup(ctx context.Context, cfg Config) (*SetupResult, error) {
	s, err := cfg.spec()
	if err != nil {
		return nil, err
	}
	steps, o, err := h.plan(s)
	if err != nil {
		return nil, err
	}
	res := &SetupResult{
		Bridge: s.bridge, Address: s.gw.String(), Subnet: s.gw.Masked().String(), Gateway: s.gw.Addr().String(),
		Forwarding: true, NAT: s.nat, Uplink: s.uplink,
	}
	done := map[string]string{}
	for _, st := range steps {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("setup of %s interrupted after %d of %d changes: %w", s.bridge, len(done), len(steps), err)
		}
		if err := st.do(); err != nil {
			return nil, fmt.Errorf("setup of %s: %w", s.bridge, err)
		}
		h.log().Info("setup", "item", st.item, "change", st.done)
		done[st.item] = st.done
	}
	found := map[string]string{
		"bridge":     fmt.Sprintf("bridge %s exists, %s by volant-net", s.bridge, o.rec.Ownership()),
		"address":    s.gw.String() + " present",
		"link":       s.bridge + " is up",
		"forwarding": "net.ipv4.ip_forward is 1",
		"nat":        "nftables table ip " + NATTable(s.bridge) + ": " + natComment(s.gw, s.uplink),
	}
	switch {
	case s.keep:
		res.NAT = o.nat.Present
		found["nat"] = "left as it is: " + o.nat.describe()
	case !s.nat:
		found["nat"] = "not requested; no table"
	}
	for _, item := range []string{"bridge", "address", "link", "forwarding", "nat"} {
		if d, ok := done[item]; ok {
			res.Items = append(res.Items, Item{Item: item, Changed: true, Detail: d})
			res.Changed = true
		} else {
			res.Items = append(res.Items, Item{Item: item, Detail: found[item]})
		}
	}
	return res, nil
}

// Check compares the live state with cfg. The differences are exactly what
// Setup with the same cfg would change. When there are any, the error is a
// CONFLICT *apierr.Error whose details carry them; the result is returned
// either way.
func (h *Host) Check(ctx context.Context, cfg Config) (*CheckResult, error) {
	s, err := cfg.spec()
	if err != nil {
		return nil, err
	}
	steps, _, err := h.plan(s)
	if err != nil {
		return nil, err
	}
	res := &CheckResult{Bridge: s.bridge, OK: len(steps) == 0, Differences: []Difference{}}
	for _, st := range steps {
		res.Differences = append(res.Differences, Difference{Item: st.item, Want: st.want, Got: st.got})
	}
	if !res.OK {
		items := make([]string, len(steps))
		for i, st := range steps {
			items[i] = st.item
		}
		return res, apierr.New(apierr.Conflict, "host network differs from the configuration of %s in %d item(s): %s", s.bridge, len(steps), strings.Join(items, ", ")).
			With("bridge", s.bridge).With("differences", res.Differences)
	}
	return res, nil
}

// CheckRequest is what CheckRecorded compares the live state with. The
// fields left out take what setup recorded on the bridge; NAT is a pointer
// so that "no NAT" can be asked for explicitly.
type CheckRequest struct {
	Bridge string `json:"bridge,omitempty"`
	CIDR   string `json:"cidr,omitempty"`
	NAT    *bool  `json:"nat,omitempty"`
	Uplink string `json:"uplink,omitempty"`
	Adopt  bool   `json:"adopt,omitempty"`
}

// Recorded returns the configuration setup recorded on the bridge (default
// vbr0): its address, NAT and uplink. The address is the one setup added;
// for an adopted bridge that already had its address, the bridge's only
// IPv4 address. A bridge volant-net does not manage yields the defaults,
// which is what a bare setup would make.
func (h *Host) Recorded(ctx context.Context, bridge string) (Config, error) {
	cfg := Config{Bridge: orDefault(bridge, DefaultBridge)}
	if err := ValidateIfName(cfg.Bridge); err != nil {
		return cfg, fmt.Errorf("bridge: %w", err)
	}
	o, err := observeBridge(cfg.Bridge)
	if err != nil || !o.managed {
		return cfg, err
	}
	cfg.NAT, cfg.Uplink = o.rec.NAT, o.rec.Uplink
	switch {
	case o.rec.Addr.IsValid():
		cfg.CIDR = o.rec.Addr.String()
	case len(o.addrs) == 1:
		cfg.CIDR = o.addrs[0].String()
	}
	return cfg, nil
}

// CheckRecorded is Check against what setup recorded on the bridge, with
// the fields req gives in place of the recorded ones: after `setup --nat`,
// a check that names no NAT expects NAT, and one with NAT false expects
// none (and no uplink).
func (h *Host) CheckRecorded(ctx context.Context, req CheckRequest) (*CheckResult, error) {
	cfg, err := h.Recorded(ctx, req.Bridge)
	if err != nil {
		return nil, err
	}
	if req.CIDR != "" {
		cfg.CIDR = req.CIDR
	}
	if req.NAT != nil {
		cfg.NAT = *req.NAT
		if !cfg.NAT {
			cfg.Uplink = ""
		}
	}
	if req.Uplink != "" {
		cfg.Uplink = req.Uplink
	}
	cfg.Adopt = req.Adopt
	return h.Check(ctx, cfg)
}

// Teardown removes what setup made for the bridge: the NAT table, the
// forwarding change (see the package comment), the address, and the bridge
// itself if setup created it. It succeeds when there is nothing to remove,
// and leaves a bridge volant-net does not manage alone. With Volant taps
// still attached it refuses (CONFLICT) unless Force.
func (h *Host) Teardown(ctx context.Context, cfg TeardownConfig) (*TeardownResult, error) {
	name := orDefault(cfg.Bridge, DefaultBridge)
	if err := ValidateIfName(name); err != nil {
		return nil, fmt.Errorf("bridge: %w", err)
	}
	o, err := observeBridge(name)
	if err != nil {
		return nil, err
	}
	res := &TeardownResult{Bridge: name}
	add := func(item string, changed bool, detail string) {
		res.Items = append(res.Items, Item{Item: item, Changed: changed, Detail: detail})
		res.Changed = res.Changed || changed
	}
	managed := o.link != nil && o.managed

	// Measure everything first; refuse before changing anything.
	var taps []Tap
	var heir netlink.Link
	if managed {
		if taps, err = h.ListTaps(ctx); err != nil {
			return nil, err
		}
		taps = tapsOn(taps, name)
		if len(taps) > 0 && !cfg.Force {
			names := make([]string, len(taps))
			for i, t := range taps {
				names[i] = t.Name
			}
			return nil, apierr.New(apierr.Conflict, "bridge %s still has %d Volant tap(s) attached (%s); delete them first or pass --force", name, len(taps), strings.Join(names, ", ")).
				With("bridge", name).With("taps", names)
		}
		if o.rec.Fwd {
			if heir, err = otherManagedBridge(name); err != nil {
				return nil, err
			}
		}
	}

	table := NATTable(name)
	if o.nat.Present {
		if err := deleteNAT(table); err != nil {
			return nil, err
		}
		add("nat", true, "deleted nftables table ip "+table)
	} else {
		add("nat", false, "no nftables table ip "+table)
	}

	switch {
	case o.link == nil:
		add("bridge", false, "no link named "+name)
		return res, nil
	case !managed:
		add("bridge", false, fmt.Sprintf("%s is not managed by volant-net; left alone", name))
		return res, nil
	}

	switch {
	case !o.rec.Fwd:
		add("forwarding", false, "left as found (setup did not change it)")
	case heir != nil:
		heirRec, _ := parseBridgeRecord(heir.Attrs().Alias)
		heirRec.Fwd = true
		if err := netlink.LinkSetAlias(heir, heirRec.String()); err != nil {
			return nil, fmt.Errorf("handing the forwarding record to %s: %w", heir.Attrs().Name, err)
		}
		add("forwarding", false, "left at 1: Volant bridge "+heir.Attrs().Name+" still needs it (it now carries the record)")
	default:
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := writeForwarding(false); err != nil {
			return nil, err
		}
		add("forwarding", true, "restored net.ipv4.ip_forward to 0")
	}

	for _, t := range taps {
		if _, err := h.DelTap(ctx, TapRef{Name: t.Name, Force: true}); err != nil {
			return nil, fmt.Errorf("teardown of %s: %w", name, err)
		}
		add("tap:"+t.Name, true, "deleted tap "+t.Name+" (--force)")
	}

	if o.rec.Created {
		if err := netlink.LinkDel(o.link); err != nil && !isNotFound(err) {
			return nil, fmt.Errorf("deleting bridge %s: %w", name, err)
		}
		add("bridge", true, "deleted bridge "+name)
		return res, nil
	}
	// Adopted: undo only the recorded changes, then drop the record.
	if o.rec.Addr.IsValid() {
		err := netlink.AddrDel(o.link, &netlink.Addr{IPNet: toIPNet(o.rec.Addr)})
		switch {
		case err == nil:
			add("address", true, "removed "+o.rec.Addr.String())
		case errors.Is(err, unix.EADDRNOTAVAIL):
			add("address", false, o.rec.Addr.String()+" already gone")
		default:
			return nil, fmt.Errorf("removing %s from %s: %w", o.rec.Addr, name, err)
		}
	}
	if o.rec.Up {
		if err := netlink.LinkSetDown(o.link); err != nil {
			return nil, fmt.Errorf("setting %s down: %w", name, err)
		}
		add("link", true, "set "+name+" down (setup had set it up)")
	}
	if err := netlink.LinkSetAlias(o.link, ""); err != nil {
		return nil, fmt.Errorf("clearing the ownership record of %s: %w", name, err)
	}
	add("bridge", true, "released adopted bridge "+name+" (kept; alias cleared)")
	return res, nil
}

// otherManagedBridge returns another bridge volant-net manages, if any.
func otherManagedBridge(except string) (netlink.Link, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	sort.Slice(links, func(i, j int) bool { return links[i].Attrs().Name < links[j].Attrs().Name })
	for _, l := range links {
		if l.Attrs().Name == except || l.Type() != "bridge" {
			continue
		}
		if _, ok := parseBridgeRecord(l.Attrs().Alias); ok {
			return l, nil
		}
	}
	return nil, nil
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// Status reports the live state of the bridge (default vbr0): the link, its
// addresses and ports, forwarding, the NAT table and the Volant taps on it.
func (h *Host) Status(ctx context.Context, bridge string) (*Status, error) {
	name := orDefault(bridge, DefaultBridge)
	if err := ValidateIfName(name); err != nil {
		return nil, fmt.Errorf("bridge: %w", err)
	}
	o, err := observeBridge(name)
	if err != nil {
		return nil, err
	}
	st := &Status{
		Bridge:     BridgeStatus{Name: name, Addresses: []string{}, Ports: []string{}},
		Forwarding: o.forwarding,
		NAT:        NATStatus{Table: "ip " + NATTable(name), Present: o.nat.Present, Rules: o.nat.Rules},
		Taps:       []Tap{},
	}
	if st.NAT.Rules == nil {
		st.NAT.Rules = []string{}
	}
	if o.link == nil {
		return st, nil
	}
	a := o.link.Attrs()
	st.Bridge.Exists = true
	st.Bridge.Managed = o.rec.Ownership()
	st.Bridge.Up = o.up
	st.Bridge.MAC = a.HardwareAddr.String()
	st.Bridge.MTU = a.MTU
	for _, p := range o.addrs {
		st.Bridge.Addresses = append(st.Bridge.Addresses, p.String())
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	for _, l := range links {
		if l.Attrs().MasterIndex == a.Index {
			st.Bridge.Ports = append(st.Bridge.Ports, l.Attrs().Name)
		}
	}
	sort.Strings(st.Bridge.Ports)
	taps, err := h.ListTaps(ctx)
	if err != nil {
		return nil, err
	}
	st.Taps = append(st.Taps, tapsOn(taps, name)...)
	return st, nil
}

func tapsOn(taps []Tap, bridge string) []Tap {
	var out []Tap
	for _, t := range taps {
		if t.Bridge == bridge {
			out = append(out, t)
		}
	}
	return out
}
