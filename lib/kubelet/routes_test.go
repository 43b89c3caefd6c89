package kubelet

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/volantvm/volant/lib/testutil/netnstest"
	"github.com/volantvm/volant/lib/testutil/wait"
)

func volantNode(name, cidr, ip string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"type": NodeTypeLabel}}, Spec: corev1.NodeSpec{PodCIDR: cidr}}
	if ip != "" {
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: name}, {Type: corev1.NodeInternalIP, Address: ip}}
	}
	return n
}

func TestWantedRoutes(t *testing.T) {
	gone := volantNode("gone", "10.244.9.0/24", "172.30.0.9")
	gone.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	got := WantedRoutes("a", []*corev1.Node{
		volantNode("c", "10.244.3.0/24", "172.30.0.3"),
		volantNode("a", "10.244.1.0/24", "172.30.0.1"),
		volantNode("b", "10.244.2.0/24", "172.30.0.2"),
		volantNode("nocidr", "", "172.30.0.4"),
		volantNode("noip", "10.244.5.0/24", ""),
		volantNode("same", "10.244.1.0/24", "172.30.0.6"), // this node's own podCIDR
		volantNode("v6", "fd00::/64", "172.30.0.7"),
		gone,
	})
	var s []string
	for _, r := range got {
		s = append(s, r.String()+"@"+r.Node)
	}
	if want := "10.244.2.0/24 via 172.30.0.2@b,10.244.3.0/24 via 172.30.0.3@c"; strings.Join(s, ",") != want {
		t.Fatalf("routes %v, want %s", s, want)
	}
}

// TestRoutesInANamespace: RunRoutes, against the kernel of a namespace of
// its own, adds a route per other Volant node via its InternalIP, follows
// a node's new address, removes the route when the node goes, puts back a
// route someone deleted, and never touches a route it did not make.
func TestRoutesInANamespace(t *testing.T) {
	ns := netnstest.New(t)
	ns.Run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1") // no dummy module on every host
	ns.Run("ip", "link", "set", "eth1", "up")
	ns.Run("ip", "addr", "add", "172.30.0.1/24", "dev", "eth0")
	ns.Run("ip", "link", "set", "eth0", "up")
	ns.Run("ip", "route", "add", "10.99.0.0/24", "via", "172.30.0.50") // the operator's
	h, err := netns.GetFromName(ns.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()

	kc := fake.NewSimpleClientset(volantNode("a", "10.244.1.0/24", "172.30.0.1"), volantNode("b", "10.244.2.0/24", "172.30.0.2"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- RunRoutes(ctx, RouteConfig{Node: "a", Kube: kc, Table: NetlinkRoutes(nh), Resync: time.Second})
	}()
	defer func() { cancel(); <-done }()
	// "DST via GW" per route marked proto 86, sorted as ip prints them.
	routes := func() string {
		var out []string
		for _, l := range strings.Split(strings.TrimSpace(ns.Run("ip", "-4", "route", "show", "proto", "86")), "\n") {
			f := strings.Fields(l)
			if len(f) >= 3 && f[1] == "via" {
				out = append(out, f[0]+" via "+f[2])
			} else if l != "" {
				out = append(out, l)
			}
		}
		return strings.Join(out, ", ")
	}
	waitRoutes := func(what, want string) {
		t.Helper()
		got := ""
		if err := wait.ForEvery(time.Minute, 50*time.Millisecond, func() bool { got = routes(); return got == want }); err != nil {
			t.Fatalf("%s: routes %q, want %q (%v)", what, got, want, err)
		}
	}
	waitRoutes("node b", "10.244.2.0/24 via 172.30.0.2")

	if _, err := kc.CoreV1().Nodes().Create(ctx, volantNode("c", "10.244.3.0/24", "172.30.0.3"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRoutes("node c joins", "10.244.2.0/24 via 172.30.0.2, 10.244.3.0/24 via 172.30.0.3")

	if _, err := kc.CoreV1().Nodes().Update(ctx, volantNode("c", "10.244.3.0/24", "172.30.0.33"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := kc.CoreV1().Nodes().Delete(ctx, "b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRoutes("b gone, c moved", "10.244.3.0/24 via 172.30.0.33")

	ns.Run("ip", "route", "del", "10.244.3.0/24")
	waitRoutes("deleted by someone", "10.244.3.0/24 via 172.30.0.33")

	if got := ns.Run("ip", "-4", "route", "show", "10.99.0.0/24"); !strings.Contains(got, "via 172.30.0.50") {
		t.Fatalf("the operator's route: %q", got)
	}
	// A route with Volant's mark that no node needs (left by a node deleted
	// while volant-kubelet was down) is removed.
	if err := NetlinkRoutes(nh).Replace(Route{Dst: netip.MustParsePrefix("10.244.8.0/24"), Via: netip.MustParseAddr("172.30.0.8")}); err != nil {
		t.Fatal(err)
	}
	waitRoutes("stale", "10.244.3.0/24 via 172.30.0.33")
}
