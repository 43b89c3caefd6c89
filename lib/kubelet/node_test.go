package kubelet

import (
	"context"
	"maps"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
)

// TestApplyNodeSpec: Volant's labels (type, kubernetes.io/os, /arch and
// /hostname, and -l's; virtual-kubelet's own replaced), the taint, the podCIDR, capacity, addresses and the kubelet port.
func TestApplyNodeSpec(t *testing.T) {
	var n corev1.Node
	n.Labels = map[string]string{"type": "virtual-kubelet"}
	cfg := NodeConfig{Name: "vol1", NodeIP: "10.0.0.1", Port: 10251, Labels: map[string]string{"zone": "a"},
		CPU: 2, MemoryMB: 4096, Pods: 154, PodCIDR: netip.MustParsePrefix("10.244.1.0/24")}
	ApplyNodeSpec(&n, cfg)
	if want := wantNodeLabels("vol1", "zone", "a"); !maps.Equal(n.Labels, want) {
		t.Fatalf("labels %v, want %v", n.Labels, want)
	}
	if ni := n.Status.NodeInfo; ni.OperatingSystem != "linux" || ni.Architecture != runtime.GOARCH || ni.KubeletVersion != KubeVersion {
		t.Fatalf("nodeInfo %+v", ni)
	}
	if len(n.Spec.Taints) != 1 || n.Spec.Taints[0].Key != TaintKey || n.Spec.Taints[0].Effect != corev1.TaintEffectNoSchedule {
		t.Fatalf("taints %v", n.Spec.Taints)
	}
	if n.Spec.PodCIDR != "10.244.1.0/24" || len(n.Spec.PodCIDRs) != 1 { // --pod-cidr
		t.Fatalf("podCIDR %q %v", n.Spec.PodCIDR, n.Spec.PodCIDRs)
	}
	c := n.Status.Capacity
	if c.Cpu().Value() != 2 || c.Memory().Value() != 4096<<20 || c.Pods().Value() != 154 || n.Status.Allocatable.Pods().Value() != 154 {
		t.Fatalf("capacity %v", c)
	}
	if n.Status.Addresses[0].Type != corev1.NodeInternalIP || n.Status.Addresses[0].Address != "10.0.0.1" ||
		n.Status.DaemonEndpoints.KubeletEndpoint.Port != 10251 {
		t.Fatalf("addresses %v endpoint %v", n.Status.Addresses, n.Status.DaemonEndpoints)
	}
	cfg.NoTaint = true
	ApplyNodeSpec(&n, cfg)
	if len(n.Spec.Taints) != 0 {
		t.Fatalf("--no-taint: %v", n.Spec.Taints)
	}
}

// TestJoinNetwork: the podCIDR the controller-manager gives the node
// after it registers becomes volantd's subnet, and the node then reports
// Ready with room for the range's addresses; a podCIDR other than
// --pod-cidr, and volantd's refusal, fail with CONFLICT.
func TestJoinNetwork(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kc := fake.NewSimpleClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "vol1"}})
	v := newFake()
	cfg := NodeConfig{Name: "vol1", Kube: kc, Volant: v, CPU: 2, MemoryMB: 1024, Logger: discard()}
	var base corev1.Node
	ApplyNodeSpec(&base, cfg)
	if base.Status.Capacity.Pods().Value() != 0 || condition(&base, corev1.NodeReady) != corev1.ConditionFalse {
		t.Fatalf("registered with pods %v, Ready %q", base.Status.Capacity.Pods(), condition(&base, corev1.NodeReady))
	}
	// The controller-manager allocates the podCIDR a little later.
	go func() {
		time.Sleep(300 * time.Millisecond)
		n, _ := kc.CoreV1().Nodes().Get(ctx, "vol1", metav1.GetOptions{})
		n.Spec.PodCIDR = "10.244.5.0/24"
		kc.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
	}()
	node, err := joinNetwork(ctx, cfg, base.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	if v.subnet != "10.244.5.0/24" || node.Spec.PodCIDR != "10.244.5.0/24" {
		t.Fatalf("volantd's subnet %q, node's podCIDR %q", v.subnet, node.Spec.PodCIDR)
	}
	if node.Status.Capacity.Pods().Value() != 155 || node.Status.Allocatable.Pods().Value() != 155 ||
		condition(node, corev1.NodeReady) != corev1.ConditionTrue || condition(node, corev1.NodeNetworkUnavailable) != corev1.ConditionFalse {
		t.Fatalf("after: pods %v, conditions %+v", node.Status.Capacity.Pods(), node.Status.Conditions)
	}
	cfg.Pods = 7
	if node, err := joinNetwork(ctx, cfg, base.DeepCopy()); err != nil || node.Status.Capacity.Pods().Value() != 7 {
		t.Fatalf("--pods 7: %v", err)
	}

	cfg.PodCIDR = netip.MustParsePrefix("10.244.1.0/24")
	if _, err := joinNetwork(ctx, cfg, base.DeepCopy()); !apierr.Is(err, apierr.Conflict) {
		t.Fatalf("another --pod-cidr: %v", err)
	}
	cfg.PodCIDR = netip.Prefix{}
	v.netErr = apierr.New(apierr.Conflict, "VMs hold addresses")
	if _, err := joinNetwork(ctx, cfg, base.DeepCopy()); !apierr.Is(err, apierr.Conflict) || !strings.Contains(err.Error(), "10.244.5.0/24") {
		t.Fatalf("volantd refuses: %v", err)
	}
}

// wantNodeLabels are the labels a Volant node named name registers with
// (and the extra ones, given as key, value pairs): the well-known labels
// a kubelet sets, which nodeSelectors and affinities pick nodes by (arch
// as Go names it, as the kubelet's; the beta ones too, which the kubelet
// still sets and older manifests still select by), and the type the
// other nodes' routes select.
func wantNodeLabels(name string, extra ...string) map[string]string {
	want := map[string]string{"type": "volant-microvm", "kubernetes.io/os": "linux", "kubernetes.io/arch": runtime.GOARCH,
		"beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": runtime.GOARCH, "kubernetes.io/hostname": name}
	for i := 0; i+1 < len(extra); i += 2 {
		want[extra[i]] = extra[i+1]
	}
	return want
}

func condition(n *corev1.Node, typ corev1.NodeConditionType) corev1.ConditionStatus {
	for _, c := range n.Status.Conditions {
		if c.Type == typ {
			return c.Status
		}
	}
	return ""
}

type healther struct{ h *api.Health }

func (h healther) Health(context.Context) (*api.Health, error) { return h.h, nil }

func TestHostCapacity(t *testing.T) {
	h, err := HostCapacity(context.Background(), healther{&api.Health{Network: &api.Network{Subnet: "10.244.1.0/24", Gateway: "10.244.1.1",
		RangeStart: "10.244.1.100", RangeEnd: "10.244.1.254"}}})
	if err != nil || h.Subnet.String() != "10.244.1.0/24" || h.Pods != 155 || h.CPU < 1 || h.MemoryMB < 1 {
		t.Fatalf("%+v %v", h, err)
	}
	h, err = HostCapacity(context.Background(), healther{&api.Health{Network: &api.Network{Subnet: "10.244.1.0/24", Gateway: "10.244.1.1",
		RangeStart: "10.244.1.1", RangeEnd: "10.244.1.254"}}})
	if err != nil || h.Pods != 253 {
		t.Fatalf("gateway in the range: %+v %v", h, err)
	}
	if _, err := HostCapacity(context.Background(), healther{&api.Health{}}); !apierr.Is(err, apierr.NotSupported) {
		t.Fatalf("an old volantd: %v", err)
	}
}
