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
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/names"
)

// MaxTapQueues is the kernel's limit on the queues of one tap.
const MaxTapQueues = 256

// TapConfig is the tap AddTap should make for one VM.
type TapConfig struct {
	// Name is the tap's name; default TapName(VM).
	Name string `json:"name,omitempty"`
	// VM is the VM the tap belongs to, kept in the tap's alias.
	VM string `json:"vm,omitempty"`
	// Bridge to attach to (default vbr0); it must exist.
	Bridge string `json:"bridge,omitempty"`
	// MAC is the guest NIC's MAC (what the VMM gives the guest). The tap
	// itself gets TapMAC(MAC); without a MAC the kernel picks a random one.
	MAC string `json:"mac,omitempty"`
	// IP is the guest's address; it must lie in one of the bridge's
	// subnets. With MAC, AddTap adds a permanent neighbour entry for it on
	// the bridge, so the host reaches the guest without waiting for ARP.
	IP string `json:"ip,omitempty"`
	// Owner and Group, when set, may open the tap without CAP_NET_ADMIN
	// (an unprivileged VMM).
	Owner *uint32 `json:"owner,omitempty"`
	Group *uint32 `json:"group,omitempty"`
	// MTU of the tap; 0 keeps the kernel's default (1500). A Linux bridge
	// takes the smallest MTU among its ports, so a smaller tap MTU lowers
	// the bridge's (the gateway's) while the tap is attached.
	MTU int `json:"mtu,omitempty"`
	// Queues > 1 makes a multi-queue tap (the VMM then opens that many
	// queues); 0 or 1 makes a single-queue tap, which VMMs open by default.
	Queues int `json:"queues,omitempty"`
}

// Tap describes a Volant tap as the kernel has it.
type Tap struct {
	Name string `json:"tap"`
	VM   string `json:"vm,omitempty"`
	// Bridge is the bridge the tap is attached to; "" when detached.
	Bridge string `json:"bridge"`
	// MAC and IP are the guest's, as recorded by AddTap; give MAC to the VMM.
	MAC        string  `json:"mac,omitempty"`
	IP         string  `json:"ip,omitempty"`
	TapMAC     string  `json:"tap_mac"`
	MTU        int     `json:"mtu"`
	MultiQueue bool    `json:"multi_queue"`
	Owner      *uint32 `json:"owner,omitempty"`
	Group      *uint32 `json:"group,omitempty"`
	Up         bool    `json:"up"`
	// InUse: a process (the VMM) has the tap open. Known for taps that are
	// up or multi-queue; a down single-queue tap reports false.
	InUse bool `json:"in_use"`
}

// TapResult is what AddTap made and changed.
type TapResult struct {
	Tap
	Changed bool   `json:"changed"`
	Items   []Item `json:"items"`
}

// TapRef names a tap to delete: by Name, or by VM (TapName(VM)).
type TapRef struct {
	Name string `json:"name,omitempty"`
	VM   string `json:"vm,omitempty"`
	// Force deletes the tap even while a process has it open.
	Force bool `json:"force,omitempty"`
}

// DelTapResult reports what DelTap did.
type DelTapResult struct {
	Tap     string `json:"tap"`
	VM      string `json:"vm,omitempty"`
	Changed bool   `json:"changed"`
	Detail  string `json:"detail"`
}

// GCResult reports what GCTaps removed and left.
type GCResult struct {
	Removed []Tap `json:"removed"`
	// Skipped are taps of VMs not in the keep list that a process still
	// has open; stop their VMM first.
	Skipped []Tap `json:"skipped"`
	Kept    []Tap `json:"kept"`
	// DryRun is set when nothing was removed (Removed is what would be).
	DryRun bool `json:"dry_run,omitempty"`
}

type tapSpec struct {
	name, vm, bridge string
	mac              net.HardwareAddr
	ip               netip.Addr
	owner, group     *uint32
	mtu              int
	multiQueue       bool
}

func (c TapConfig) spec() (tapSpec, error) {
	s := tapSpec{name: c.Name, vm: c.VM, bridge: orDefault(c.Bridge, DefaultBridge), owner: c.Owner, group: c.Group, mtu: c.MTU}
	if s.vm != "" {
		if err := names.Check("VM name", s.vm); err != nil {
			return s, err
		}
	}
	if s.name == "" {
		if s.vm == "" {
			return s, apierr.New(apierr.InvalidInput, "give a tap name or a vm (the tap name is derived from the vm)")
		}
		s.name = TapName(s.vm)
	}
	if err := ValidateIfName(s.name); err != nil {
		return s, fmt.Errorf("tap: %w", err)
	}
	if err := ValidateIfName(s.bridge); err != nil {
		return s, fmt.Errorf("bridge: %w", err)
	}
	if c.MAC != "" {
		mac, err := ParseGuestMAC(c.MAC)
		if err != nil {
			return s, err
		}
		s.mac = mac
	}
	if c.IP != "" {
		ip, err := netip.ParseAddr(c.IP)
		if err != nil || !ip.Is4() {
			return s, apierr.New(apierr.InvalidInput, "ip %q is not an IPv4 address", c.IP).With("ip", c.IP)
		}
		s.ip = ip
	}
	if c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535) {
		return s, apierr.New(apierr.InvalidInput, "mtu %d is out of range 68-65535", c.MTU).With("mtu", c.MTU)
	}
	if c.Queues < 0 || c.Queues > MaxTapQueues {
		return s, apierr.New(apierr.InvalidInput, "queues %d is out of range 1-%d", c.Queues, MaxTapQueues).With("queues", c.Queues)
	}
	s.multiQueue = c.Queues > 1
	return s, nil
}

// AddTap makes a persistent tap for a VM, attached to the bridge and up,
// or brings an existing one of the same VM in line; running it again reports
// Changed false. It refuses (CONFLICT) a tap of that name that belongs to
// another VM or that volant-net did not create, and a tap whose owner, group
// or queue mode differ from cfg (those cannot change while a VMM may hold it;
// delete it first). A tap named TapPrefix* with no alias and no user is taken
// to be one an interrupted AddTap left, and completed.
func (h *Host) AddTap(ctx context.Context, cfg TapConfig) (*TapResult, error) {
	s, err := cfg.spec()
	if err != nil {
		return nil, err
	}
	br, err := linkByName(s.bridge)
	if err != nil {
		return nil, err
	}
	if br == nil {
		return nil, apierr.New(apierr.NotFound, "bridge %s does not exist; run volant-net setup first", s.bridge).With("bridge", s.bridge)
	}
	if br.Type() != "bridge" {
		return nil, apierr.New(apierr.Conflict, "%s is a %s, not a bridge", s.bridge, br.Type()).With("bridge", s.bridge)
	}
	if s.ip.IsValid() {
		if err := ipOnBridge(s.ip, br); err != nil {
			return nil, err
		}
	}
	existing, err := linkByName(s.name)
	if err != nil {
		return nil, err
	}
	var oldRec tapRecord
	res := &TapResult{}
	item := func(name string, changed bool, detail string) {
		res.Items = append(res.Items, Item{Item: name, Changed: changed, Detail: detail})
		res.Changed = res.Changed || changed
	}
	if existing != nil {
		if oldRec, err = h.checkExistingTap(existing, s); err != nil {
			return nil, err
		}
		item("tap", false, "tap "+s.name+" exists")
	} else {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := createTap(s.name, s.multiQueue, s.owner, s.group); err != nil {
			return nil, err
		}
		mode := "single-queue"
		if s.multiQueue {
			mode = "multi-queue"
		}
		item("tap", true, "created persistent "+mode+" tap "+s.name)
		h.log().Info("created tap", "tap", s.name, "vm", s.vm)
	}
	link, err := netlink.LinkByName(s.name)
	if err != nil {
		return nil, fmt.Errorf("looking up tap %s: %w", s.name, err)
	}

	// The record first, so that whatever follows can be undone.
	rec := tapRecord{VM: s.vm, MAC: s.mac, IP: s.ip}
	if link.Attrs().Alias != rec.String() {
		if err := netlink.LinkSetAlias(link, rec.String()); err != nil {
			return nil, fmt.Errorf("recording ownership on %s: %w", s.name, err)
		}
		if existing != nil {
			item("record", true, "alias set to "+rec.String())
		}
	}
	// A neighbour entry an earlier AddTap made for a different lease goes.
	if oldRec.IP.IsValid() && oldRec.MAC != nil && (oldRec.IP != rec.IP || !bytes.Equal(oldRec.MAC, rec.MAC)) {
		if removed, err := delNeighbour(br, oldRec.IP, oldRec.MAC); err != nil {
			return nil, err
		} else if removed {
			item("neighbour", true, "removed stale entry "+oldRec.IP.String()+" → "+oldRec.MAC.String())
		}
	}
	steps := []struct {
		item    string
		wrong   bool
		done    string
		found   string
		do      func() error
		enabled bool
	}{
		{item: "mac", enabled: s.mac != nil, wrong: !bytes.Equal(link.Attrs().HardwareAddr, TapMAC(s.mac)),
			done: "tap MAC set to " + TapMAC(s.mac).String() + " (guest " + s.mac.String() + ")", found: "tap MAC " + TapMAC(s.mac).String(),
			do: func() error { return netlink.LinkSetHardwareAddr(link, TapMAC(s.mac)) }},
		{item: "mtu", enabled: s.mtu != 0, wrong: link.Attrs().MTU != s.mtu,
			done: fmt.Sprintf("mtu set to %d", s.mtu), found: fmt.Sprintf("mtu %d", s.mtu),
			do: func() error { return netlink.LinkSetMTU(link, s.mtu) }},
		{item: "bridge", enabled: true, wrong: link.Attrs().MasterIndex != br.Attrs().Index,
			done: "attached to " + s.bridge, found: "attached to " + s.bridge,
			do: func() error { return netlink.LinkSetMaster(link, br) }},
		{item: "link", enabled: true, wrong: link.Attrs().Flags&net.FlagUp == 0,
			done: "set up", found: "up",
			do: func() error { return netlink.LinkSetUp(link) }},
	}
	for _, st := range steps {
		if !st.enabled {
			continue
		}
		if !st.wrong {
			item(st.item, false, st.found)
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := st.do(); err != nil {
			return nil, fmt.Errorf("tap %s: %s: %w", s.name, st.done, err)
		}
		item(st.item, true, st.done)
	}
	if rec.IP.IsValid() && rec.MAC != nil {
		changed, err := setNeighbour(br, rec.IP, rec.MAC)
		if err != nil {
			return nil, err
		}
		item("neighbour", changed, fmt.Sprintf("permanent neighbour %s → %s on %s", rec.IP, rec.MAC, s.bridge))
	}
	link, err = netlink.LinkByName(s.name)
	if err != nil {
		return nil, fmt.Errorf("looking up tap %s: %w", s.name, err)
	}
	t, err := tapOf(link, map[int]string{br.Attrs().Index: s.bridge})
	if err != nil {
		return nil, err
	}
	res.Tap = t
	return res, nil
}

// checkExistingTap decides whether an existing link may serve as s's tap and
// returns its record.
func (h *Host) checkExistingTap(l netlink.Link, s tapSpec) (tapRecord, error) {
	tt, ok := l.(*netlink.Tuntap)
	if !ok || tt.Mode != netlink.TUNTAP_MODE_TAP {
		return tapRecord{}, apierr.New(apierr.Conflict, "%s exists and is a %s, not a tap", s.name, l.Type()).With("tap", s.name)
	}
	rec, ok := parseTapRecord(l.Attrs().Alias)
	if !ok {
		if !interruptedTap(tt) {
			return tapRecord{}, apierr.New(apierr.Conflict, "tap %s exists and was not created by volant-net", s.name).
				With("tap", s.name).With("alias", l.Attrs().Alias)
		}
		rec = tapRecord{VM: s.vm}
	}
	if rec.VM != s.vm {
		return tapRecord{}, apierr.New(apierr.Conflict, "tap %s belongs to vm %q, not %q; give this vm's tap another --name", s.name, rec.VM, s.vm).
			With("tap", s.name).With("owner_vm", rec.VM).With("vm", s.vm)
	}
	mq := tt.Flags&netlink.TUNTAP_MULTI_QUEUE != 0
	if mq != s.multiQueue {
		return tapRecord{}, apierr.New(apierr.Conflict, "tap %s exists with multi_queue=%t, not %t; delete it first (tap del)", s.name, mq, s.multiQueue).With("tap", s.name)
	}
	owner, group, err := tunOwnerGroup(l.Attrs().Index)
	if err != nil {
		return tapRecord{}, err
	}
	// No owner asked for: any will do (a jailed VM's supervisor makes its
	// tap the VMM's uid's for the run, lib/vmm/jail).
	if s.owner != nil && !sameID(owner, s.owner) || s.group != nil && !sameID(group, s.group) {
		return tapRecord{}, apierr.New(apierr.Conflict, "tap %s exists with owner %s group %s, not %s %s; delete it first (tap del)",
			s.name, idString(owner), idString(group), idString(s.owner), idString(s.group)).With("tap", s.name)
	}
	return rec, nil
}

// interruptedTap: a tap of ours whose creation stopped before the alias was
// written: named with the reserved prefix, no alias, nobody using it.
func interruptedTap(tt *netlink.Tuntap) bool {
	return strings.HasPrefix(tt.Name, TapPrefix) && tt.Alias == "" && !tapInUse(tt)
}

func sameID(a, b *uint32) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return *a == *b
}

func idString(id *uint32) string {
	if id == nil {
		return "none"
	}
	return fmt.Sprint(*id)
}

// ipOnBridge checks that ip lies in a subnet of the bridge and is not one of
// its addresses.
func ipOnBridge(ip netip.Addr, br netlink.Link) error {
	addrs, err := linkAddrs(br)
	if err != nil {
		return err
	}
	for _, p := range addrs {
		if p.Addr() == ip {
			return apierr.New(apierr.InvalidInput, "ip %s is the address of bridge %s itself", ip, br.Attrs().Name).With("ip", ip.String())
		}
	}
	for _, p := range addrs {
		if p.Contains(ip) {
			return nil
		}
	}
	return apierr.New(apierr.InvalidInput, "ip %s is outside the subnets of bridge %s (%s)", ip, br.Attrs().Name, prefixList(addrs)).
		With("ip", ip.String()).With("bridge", br.Attrs().Name)
}

func createTap(name string, multiQueue bool, owner, group *uint32) error {
	const dev = "/dev/net/tun"
	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV) {
			return apierr.Wrap(apierr.Unavailable, err, dev+" is missing (the tun driver is not available)")
		}
		return fmt.Errorf("opening %s: %w", dev, err)
	}
	// Closing before TUNSETPERSIST succeeded removes the device again, so a
	// failure below leaves nothing behind.
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return apierr.Wrap(apierr.InvalidInput, err, "tap name "+name)
	}
	flags := unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR | unix.IFF_TUN_EXCL
	if multiQueue {
		flags |= unix.IFF_MULTI_QUEUE
	}
	ifr.SetUint16(uint16(flags))
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		if errors.Is(err, unix.EBUSY) {
			return apierr.New(apierr.Conflict, "tap %s appeared while it was being created (a concurrent tap add?)", name).With("tap", name)
		}
		return fmt.Errorf("creating tap %s (TUNSETIFF): %w", name, err)
	}
	if owner != nil {
		if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, int(*owner)); err != nil {
			return fmt.Errorf("setting owner of tap %s: %w", name, err)
		}
	}
	if group != nil {
		if err := unix.IoctlSetInt(fd, unix.TUNSETGROUP, int(*group)); err != nil {
			return fmt.Errorf("setting group of tap %s: %w", name, err)
		}
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		return fmt.Errorf("making tap %s persistent: %w", name, err)
	}
	return nil
}

// tunOwnerGroup reads IFLA_TUN_OWNER and IFLA_TUN_GROUP, which the kernel
// sends only when they are set (vishvananda/netlink reports 0 either way).
func tunOwnerGroup(index int) (owner, group *uint32, err error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	req.AddData(msg)
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return nil, nil, fmt.Errorf("reading link %d: %w", index, err)
	}
	if len(msgs) == 0 || len(msgs[0]) < unix.SizeofIfInfomsg {
		return nil, nil, fmt.Errorf("reading link %d: empty answer", index)
	}
	attrs, err := nl.ParseRouteAttr(msgs[0][unix.SizeofIfInfomsg:])
	if err != nil {
		return nil, nil, fmt.Errorf("parsing link %d: %w", index, err)
	}
	for _, a := range attrs {
		if a.Attr.Type != unix.IFLA_LINKINFO {
			continue
		}
		info, err := nl.ParseRouteAttr(a.Value)
		if err != nil {
			return nil, nil, fmt.Errorf("parsing link %d info: %w", index, err)
		}
		for _, i := range info {
			if i.Attr.Type != unix.IFLA_INFO_DATA {
				continue
			}
			data, err := nl.ParseRouteAttr(i.Value)
			if err != nil {
				return nil, nil, fmt.Errorf("parsing link %d tun data: %w", index, err)
			}
			for _, d := range data {
				if len(d.Value) < 4 {
					continue
				}
				v := nl.NativeEndian().Uint32(d.Value)
				switch d.Attr.Type {
				case nl.IFLA_TUN_OWNER:
					owner = &v
				case nl.IFLA_TUN_GROUP:
					group = &v
				}
			}
		}
	}
	return owner, group, nil
}

func tapInUse(tt *netlink.Tuntap) bool {
	if tt.Flags&netlink.TUNTAP_MULTI_QUEUE != 0 && tt.Queues > 0 {
		return true
	}
	return tt.Flags&netlink.TUNTAP_MULTI_QUEUE == 0 && tt.RawFlags&unix.IFF_LOWER_UP != 0
}

// tapOf describes a Volant tap; names maps link indexes to names (for the
// bridge), and is consulted only for the master.
func tapOf(l netlink.Link, names map[int]string) (Tap, error) {
	tt, ok := l.(*netlink.Tuntap)
	if !ok {
		return Tap{}, fmt.Errorf("%s is not a tap", l.Attrs().Name)
	}
	a := l.Attrs()
	rec, _ := parseTapRecord(a.Alias)
	t := Tap{
		Name: a.Name, VM: rec.VM, TapMAC: a.HardwareAddr.String(), MTU: a.MTU,
		MultiQueue: tt.Flags&netlink.TUNTAP_MULTI_QUEUE != 0,
		Up:         a.Flags&net.FlagUp != 0,
		InUse:      tapInUse(tt),
	}
	if rec.MAC != nil {
		t.MAC = rec.MAC.String()
	}
	if rec.IP.IsValid() {
		t.IP = rec.IP.String()
	}
	if a.MasterIndex != 0 {
		t.Bridge = names[a.MasterIndex]
		if t.Bridge == "" {
			if m, err := netlink.LinkByIndex(a.MasterIndex); err == nil {
				t.Bridge = m.Attrs().Name
			}
		}
	}
	var err error
	if t.Owner, t.Group, err = tunOwnerGroup(a.Index); err != nil {
		return Tap{}, err
	}
	return t, nil
}

// ListTaps returns every tap volant-net created in this namespace (those
// whose alias starts with "volant:"), sorted by name.
func (h *Host) ListTaps(ctx context.Context) ([]Tap, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	taps := []Tap{}
	for _, l := range links {
		if _, ok := l.(*netlink.Tuntap); !ok {
			continue
		}
		if _, ok := parseTapRecord(l.Attrs().Alias); !ok {
			continue
		}
		t, err := tapOf(l, names)
		if err != nil {
			return nil, err
		}
		taps = append(taps, t)
	}
	sort.Slice(taps, func(i, j int) bool { return taps[i].Name < taps[j].Name })
	return taps, nil
}

// DelTap deletes a tap volant-net created, and the neighbour entry AddTap
// made for its guest. It succeeds, changing nothing, when the tap is gone
// or (by VM) when the tap of that name belongs to another VM. It refuses
// (CONFLICT) a link volant-net did not create, and a tap a process has open
// unless Force.
func (h *Host) DelTap(ctx context.Context, ref TapRef) (*DelTapResult, error) {
	name := ref.Name
	if ref.VM != "" {
		if err := names.Check("VM name", ref.VM); err != nil {
			return nil, err
		}
		if name == "" {
			name = TapName(ref.VM)
		}
	}
	if name == "" {
		return nil, apierr.New(apierr.InvalidInput, "give a tap name or a vm")
	}
	if err := ValidateIfName(name); err != nil {
		return nil, fmt.Errorf("tap: %w", err)
	}
	res := &DelTapResult{Tap: name, VM: ref.VM}
	l, err := linkByName(name)
	if err != nil {
		return nil, err
	}
	if l == nil {
		res.Detail = "no tap named " + name
		return res, nil
	}
	tt, ok := l.(*netlink.Tuntap)
	if !ok {
		return nil, apierr.New(apierr.Conflict, "%s is a %s, not a tap volant-net created; left alone", name, l.Type()).With("tap", name)
	}
	rec, ok := parseTapRecord(tt.Alias)
	if !ok && !interruptedTap(tt) {
		return nil, apierr.New(apierr.Conflict, "tap %s was not created by volant-net; left alone", name).With("tap", name).With("alias", tt.Alias)
	}
	if ok && ref.VM != "" && rec.VM != ref.VM {
		res.Detail = fmt.Sprintf("tap %s belongs to vm %q, not %q; left alone", name, rec.VM, ref.VM)
		return res, nil
	}
	res.VM = rec.VM
	if tapInUse(tt) && !ref.Force {
		return nil, apierr.New(apierr.Conflict, "tap %s is in use (a process, likely the VM's VMM, has it open); stop the VM first or force", name).
			With("tap", name).With("vm", rec.VM)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if rec.IP.IsValid() && rec.MAC != nil && tt.MasterIndex != 0 {
		if br, err := netlink.LinkByIndex(tt.MasterIndex); err == nil {
			if _, err := delNeighbour(br, rec.IP, rec.MAC); err != nil {
				return nil, err
			}
		}
	}
	if err := netlink.LinkDel(l); err != nil {
		if isNotFound(err) {
			res.Detail = "no tap named " + name
			return res, nil
		}
		return nil, fmt.Errorf("deleting tap %s: %w", name, err)
	}
	h.log().Info("deleted tap", "tap", name, "vm", rec.VM)
	res.Changed = true
	res.Detail = "deleted tap " + name
	return res, nil
}

// GCTaps deletes the Volant taps whose VM (or, for taps without a VM, whose
// name) is not in keep, except those a process still has open. An empty
// keep list deletes every idle Volant tap (CNI's gc: keep lists the live
// IDs).
func (h *Host) GCTaps(ctx context.Context, keep []string) (*GCResult, error) {
	return h.gcTaps(ctx, keep, false)
}

// GCTapsDryRun reports what GCTaps would do, changing nothing.
func (h *Host) GCTapsDryRun(ctx context.Context, keep []string) (*GCResult, error) {
	return h.gcTaps(ctx, keep, true)
}

func (h *Host) gcTaps(ctx context.Context, keep []string, dryRun bool) (*GCResult, error) {
	want := map[string]bool{}
	for _, k := range keep {
		want[k] = true
	}
	taps, err := h.ListTaps(ctx)
	if err != nil {
		return nil, err
	}
	res := &GCResult{Removed: []Tap{}, Skipped: []Tap{}, Kept: []Tap{}, DryRun: dryRun}
	for _, t := range taps {
		switch {
		case (t.VM != "" && want[t.VM]) || (t.VM == "" && want[t.Name]):
			res.Kept = append(res.Kept, t)
		case t.InUse:
			res.Skipped = append(res.Skipped, t)
		case dryRun:
			res.Removed = append(res.Removed, t)
		default:
			if _, err := h.DelTap(ctx, TapRef{Name: t.Name}); err != nil {
				return nil, fmt.Errorf("gc: %w", err)
			}
			res.Removed = append(res.Removed, t)
		}
	}
	return res, nil
}

// setNeighbour makes ip → mac a permanent neighbour entry on the bridge.
func setNeighbour(br netlink.Link, ip netip.Addr, mac net.HardwareAddr) (bool, error) {
	list, err := netlink.NeighList(br.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		return false, fmt.Errorf("listing neighbours of %s: %w", br.Attrs().Name, err)
	}
	for _, n := range list {
		if n.IP.Equal(net.IP(ip.AsSlice())) && bytes.Equal(n.HardwareAddr, mac) && n.State == netlink.NUD_PERMANENT {
			return false, nil
		}
	}
	err = netlink.NeighSet(&netlink.Neigh{
		LinkIndex: br.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
		IP: net.IP(ip.AsSlice()), HardwareAddr: mac,
	})
	if err != nil {
		return false, fmt.Errorf("adding neighbour %s → %s on %s: %w", ip, mac, br.Attrs().Name, err)
	}
	return true, nil
}

// delNeighbour removes the bridge's entry for ip only while it points at mac
// (another VM may have been given the address since).
func delNeighbour(br netlink.Link, ip netip.Addr, mac net.HardwareAddr) (bool, error) {
	list, err := netlink.NeighList(br.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		return false, fmt.Errorf("listing neighbours of %s: %w", br.Attrs().Name, err)
	}
	for _, n := range list {
		if !n.IP.Equal(net.IP(ip.AsSlice())) || !bytes.Equal(n.HardwareAddr, mac) {
			continue
		}
		if err := netlink.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			return false, fmt.Errorf("removing neighbour %s on %s: %w", ip, br.Attrs().Name, err)
		}
		return true, nil
	}
	return false, nil
}

// SetTapOwner makes the persistent tap name the uid's, so a process of
// that uid (a jailed hypervisor, lib/vmm/jail) can attach to it without
// CAP_NET_ADMIN; its group is left as it is. restore gives it back its
// earlier owner, or root for a tap that had none (volant-net makes them
// without --owner): the kernel cannot unset an owner, and root may attach
// to any tap anyway.
func SetTapOwner(name string, uid uint32) (restore func() error, err error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil, apierr.Wrap(apierr.NotFound, err, "tap "+name).With("tap", name)
	}
	owner, _, err := tunOwnerGroup(l.Attrs().Index)
	if err != nil {
		return nil, err
	}
	if err := setTunOwner(name, l, uid); err != nil {
		return nil, err
	}
	return func() error { return setTunOwner(name, l, ownerOrRoot(owner)) }, nil
}

func ownerOrRoot(owner *uint32) uint32 {
	if owner == nil {
		return 0
	}
	return *owner
}

// TapOwner reads the persistent tap's owner and group (nil: none).
func TapOwner(name string) (owner, group *uint32, err error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil, nil, apierr.Wrap(apierr.NotFound, err, "tap "+name).With("tap", name)
	}
	return tunOwnerGroup(l.Attrs().Index)
}

// RestoreTapOwner gives the persistent tap name back to owner (nil: none,
// which is root, as SetTapOwner's restore) while it is still uid's: the
// undo of SetTapOwner by whoever finds a dead run's record
// (lib/vmm/jail). A tap that is gone, or that has another owner since, is
// left alone.
func RestoreTapOwner(name string, uid uint32, owner *uint32) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("tap %s: %w", name, err)
	}
	cur, _, err := tunOwnerGroup(l.Attrs().Index)
	if err != nil {
		return err
	}
	if cur == nil || *cur != uid {
		return nil
	}
	return setTunOwner(name, l, ownerOrRoot(owner))
}

// setTunOwner attaches to the persistent tap and sets its owner.
func setTunOwner(name string, l netlink.Link, owner uint32) error {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening /dev/net/tun: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return apierr.Wrap(apierr.InvalidInput, err, "tap name "+name)
	}
	flags := unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR
	if tt, ok := l.(*netlink.Tuntap); ok && tt.Flags&netlink.TUNTAP_MULTI_QUEUE != 0 {
		flags |= unix.IFF_MULTI_QUEUE
	}
	ifr.SetUint16(uint16(flags))
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("attaching to tap %s: %w", name, err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, int(owner)); err != nil {
		return fmt.Errorf("setting the owner of tap %s: %w", name, err)
	}
	return nil
}
