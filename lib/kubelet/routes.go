package kubelet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// RouteProtocol marks the routes volant-kubelet installs (the route's
// rtm_protocol, "proto 86" in `ip route`): it lists, replaces and deletes
// only routes with this mark, never the operator's.
const RouteProtocol = netlink.RouteProtocol(86)

// Route is one host-gateway route: another node's podCIDR via its
// InternalIP.
type Route struct {
	Dst netip.Prefix
	Via netip.Addr
	// Node is the node it leads to (for logs; not in the kernel).
	Node string
}

func (r Route) String() string { return r.Dst.String() + " via " + r.Via.String() }

// WantedRoutes are the host-gateway routes a node needs, as flannel's
// host-gw backend makes them: to the podCIDR of every other Volant node
// via that node's InternalIP. Nodes without both, or whose podCIDR is
// this node's own, are left out; sorted by destination.
func WantedRoutes(self string, nodes []*corev1.Node) []Route {
	var own netip.Prefix
	for _, n := range nodes {
		if n.Name == self {
			own, _ = netip.ParsePrefix(n.Spec.PodCIDR)
		}
	}
	var out []Route
	for _, n := range nodes {
		if n.Name == self || n.DeletionTimestamp != nil {
			continue
		}
		dst, err := netip.ParsePrefix(n.Spec.PodCIDR)
		if err != nil || !dst.Addr().Is4() || dst.Masked() == own {
			continue
		}
		var via netip.Addr
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				if ip, err := netip.ParseAddr(a.Address); err == nil && ip.Is4() {
					via = ip
					break
				}
			}
		}
		if !via.IsValid() {
			continue
		}
		out = append(out, Route{Dst: dst.Masked(), Via: via, Node: n.Name})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Dst.String() < out[j].Dst.String() })
	return out
}

// RouteTable is the part of the kernel's main routing table the routes
// live in; *netlink.Handle has it through NetlinkRoutes.
type RouteTable interface {
	// List returns the routes marked RouteProtocol.
	List() ([]Route, error)
	Replace(Route) error
	Delete(Route) error
}

// NetlinkRoutes is the main table of h's network namespace (nil: the
// calling thread's).
func NetlinkRoutes(h *netlink.Handle) RouteTable {
	if h == nil {
		h = &netlink.Handle{}
	}
	return netlinkRoutes{h}
}

type netlinkRoutes struct{ h *netlink.Handle }

func (t netlinkRoutes) List() ([]Route, error) {
	rs, err := t.h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	var out []Route
	for _, r := range rs {
		if r.Dst == nil {
			continue
		}
		dst, ok1 := netip.AddrFromSlice(r.Dst.IP)
		via, ok2 := netip.AddrFromSlice(r.Gw)
		if !ok1 || !ok2 {
			continue
		}
		bits, _ := r.Dst.Mask.Size()
		out = append(out, Route{Dst: netip.PrefixFrom(dst.Unmap(), bits), Via: via.Unmap()})
	}
	return out, nil
}

func (t netlinkRoutes) route(r Route) *netlink.Route {
	return &netlink.Route{
		Dst:      &net.IPNet{IP: r.Dst.Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), 32)},
		Gw:       r.Via.AsSlice(),
		Protocol: RouteProtocol,
		Table:    unix.RT_TABLE_MAIN,
	}
}

func (t netlinkRoutes) Replace(r Route) error {
	if err := t.h.RouteReplace(t.route(r)); err != nil {
		return fmt.Errorf("route %s: %w", r, err)
	}
	return nil
}

func (t netlinkRoutes) Delete(r Route) error {
	if err := t.h.RouteDel(t.route(r)); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("deleting route %s: %w", r, err)
	}
	return nil
}

// SyncRoutes makes the marked routes of t exactly want: replaces what is
// missing or leads elsewhere, deletes what no node needs any more. It goes
// on past a failed route and returns the errors joined.
func SyncRoutes(t RouteTable, want []Route, log *slog.Logger) error {
	have, err := t.List()
	if err != nil {
		return err
	}
	had := map[netip.Prefix]netip.Addr{}
	for _, r := range have {
		had[r.Dst] = r.Via
	}
	var errs []error
	wanted := map[netip.Prefix]bool{}
	for _, r := range want {
		wanted[r.Dst] = true
		if via, ok := had[r.Dst]; ok && via == r.Via {
			continue
		}
		if err := t.Replace(r); err != nil {
			errs = append(errs, err)
			continue
		}
		log.Info("route to a node's pods", "pod_cidr", r.Dst.String(), "via", r.Via.String(), "node", r.Node)
	}
	for _, r := range have {
		if wanted[r.Dst] {
			continue
		}
		if err := t.Delete(r); err != nil {
			errs = append(errs, err)
			continue
		}
		log.Info("removed the route to pods no node has", "pod_cidr", r.Dst.String(), "via", r.Via.String())
	}
	return errors.Join(errs...)
}

// RouteConfig is a node's host-gateway routing.
type RouteConfig struct {
	// Node is this node's name.
	Node string
	Kube kubernetes.Interface
	// Table is where the routes go (default: NetlinkRoutes(nil)).
	Table RouteTable
	// Resync is how often the routes are made again even without a node
	// change (default 30 s): a route someone deleted comes back.
	Resync time.Duration
	// Synced, when not nil, is closed once the routes were made the first
	// time (those that failed are logged and tried again).
	Synced chan<- struct{}
	Logger *slog.Logger
}

// RunRoutes keeps the host-gateway routes to the other Volant nodes'
// pod CIDRs (nodes labelled type=volant-microvm) until ctx ends; routes of
// nodes that go away are deleted. Its own routes stay when it ends: pods
// keep reaching each other while volant-kubelet restarts.
func RunRoutes(ctx context.Context, cfg RouteConfig) error {
	if cfg.Table == nil {
		cfg.Table = NetlinkRoutes(nil)
	}
	if cfg.Logger == nil {
		cfg.Logger = discard()
	}
	if cfg.Resync <= 0 {
		cfg.Resync = 30 * time.Second
	}
	f := informers.NewSharedInformerFactoryWithOptions(cfg.Kube, cfg.Resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = "type=" + NodeTypeLabel }))
	inf := f.Core().V1().Nodes()
	kick := make(chan struct{}, 1)
	poke := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke() },
		UpdateFunc: func(any, any) { poke() },
		DeleteFunc: func(any) { poke() },
	}); err != nil {
		return err
	}
	f.Start(ctx.Done())
	defer f.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		return ctx.Err()
	}
	tick := time.NewTicker(cfg.Resync)
	defer tick.Stop()
	for {
		nodes, err := inf.Lister().List(labels.Everything())
		if err == nil {
			err = SyncRoutes(cfg.Table, WantedRoutes(cfg.Node, nodes), cfg.Logger)
		}
		if err != nil {
			cfg.Logger.Warn("host-gateway routes", "err", err)
		}
		if cfg.Synced != nil {
			close(cfg.Synced)
			cfg.Synced = nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
		case <-tick.C:
		}
	}
}
