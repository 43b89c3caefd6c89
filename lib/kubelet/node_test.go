package kubelet

import (
	"context"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
)

// TestApplyNodeSpec: Volant's labels (virtual-kubelet's own replaced), the
// taint, the podCIDR, capacity, addresses and the kubelet port.
func TestApplyNodeSpec(t *testing.T) {
	var n corev1.Node
	n.Labels = map[string]string{"type": "virtual-kubelet"}
	cfg := NodeConfig{Name: "vol1", NodeIP: "10.0.0.1", Port: 10251, Labels: map[string]string{"zone": "a"},
		CPU: 2, MemoryMB: 4096, Pods: 154, PodCIDR: netip.MustParsePrefix("10.244.1.0/24")}
	ApplyNodeSpec(&n, cfg)
	if n.Labels["type"] != NodeTypeLabel || n.Labels["kubernetes.io/os"] != "linux" || n.Labels["zone"] != "a" || n.Labels["kubernetes.io/hostname"] != "vol1" {
		t.Fatalf("labels %v", n.Labels)
	}
	if len(n.Spec.Taints) != 1 || n.Spec.Taints[0].Key != TaintKey || n.Spec.Taints[0].Effect != corev1.TaintEffectNoSchedule {
		t.Fatalf("taints %v", n.Spec.Taints)
	}
	if n.Spec.PodCIDR != "10.244.1.0/24" || len(n.Spec.PodCIDRs) != 1 {
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

// TestCheckPodCIDR: a node registered with another podCIDR is refused
// with CONFLICT.
func TestCheckPodCIDR(t *testing.T) {
	kc := fake.NewSimpleClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "vol1"}, Spec: corev1.NodeSpec{PodCIDR: "10.244.7.0/24"}})
	cfg := NodeConfig{Name: "vol1", Kube: kc, PodCIDR: netip.MustParsePrefix("10.244.1.0/24")}
	if err := checkPodCIDR(context.Background(), cfg); !apierr.Is(err, apierr.Conflict) {
		t.Fatalf("another podCIDR: %v", err)
	}
	cfg.PodCIDR = netip.MustParsePrefix("10.244.7.0/24")
	if err := checkPodCIDR(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
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
