package kubelet

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"runtime"
	"strconv"
	"time"

	vknode "github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	"k8s.io/client-go/kubernetes"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/buildinfo"
)

// The node's defaults.
const (
	// TaintKey is the taint a Volant node has unless told otherwise:
	// only pods that tolerate it (they know they get a microVM) land on it.
	TaintKey   = "volant.dev/microvm"
	TaintValue = "true"
	// NodeTypeLabel is the node's "type" label.
	NodeTypeLabel = "volant-microvm"
	// KubeVersion is the Kubernetes version of the client libraries the
	// provider is built with (go.mod pins k8s.io/* to it): the node's
	// kubeletVersion.
	KubeVersion = "v1.34.4"
)

// NodeConfig is a Volant node: the Kubernetes side and the local volantd.
type NodeConfig struct {
	// Name is the node's name.
	Name string
	// NodeIP is the node's InternalIP: the address the API server reaches
	// the kubelet API on, and the pods' hostIP.
	NodeIP string
	// Port is the kubelet API's port (HTTPS; logs and exec).
	Port int
	// Labels are added to the node's own (type=volant-microvm,
	// kubernetes.io/os, kubernetes.io/arch, kubernetes.io/hostname).
	Labels map[string]string
	// NoTaint registers the node without the volant.dev/microvm taint.
	NoTaint bool
	// CPU, MemoryMB and Pods are the node's capacity (and allocatable).
	CPU, MemoryMB, Pods int
	// PodCIDR is volantd's guest subnet: the node's spec.podCIDR, so pod
	// IPs (VM addresses) are unique across the cluster.
	PodCIDR netip.Prefix
	// Kube is the API server's client.
	Kube kubernetes.Interface
	// CertFile and KeyFile are the kubelet API's serving certificate;
	// ClientCAFile the CA that signs the API server's client certificate
	// (authenticated, then authorized with SubjectAccessReviews).
	CertFile, KeyFile, ClientCAFile string
	// Volant is the local volantd; Insecure lets its image builds reach
	// plain-HTTP registries.
	Volant   Volant
	Insecure bool
	// StatusInterval is how often VMs are listed for pod status.
	StatusInterval time.Duration
	Logger         *slog.Logger
}

// Run registers the node and runs its pods until ctx ends.
func Run(ctx context.Context, cfg NodeConfig) error {
	if cfg.Logger == nil {
		cfg.Logger = discard()
	}
	if cfg.Kube == nil || cfg.Volant == nil {
		return apierr.New(apierr.InvalidInput, "a node needs a Kubernetes client and volantd")
	}
	if cfg.CertFile == "" || cfg.KeyFile == "" || cfg.ClientCAFile == "" {
		return apierr.New(apierr.Usage, "the kubelet API (logs, exec) needs --tls-cert-file, --tls-private-key-file and --client-ca-file")
	}
	var prov *Provider
	mux := http.NewServeMux()
	n, err := nodeutil.NewNode(cfg.Name, func(pc nodeutil.ProviderConfig) (nodeutil.Provider, vknode.NodeProvider, error) {
		prov = NewProvider(ProviderConfig{Node: cfg.Name, NodeIP: cfg.NodeIP, Volant: cfg.Volant, ConfigMaps: pc.ConfigMaps,
			Secrets: pc.Secrets, Interval: cfg.StatusInterval, Insecure: cfg.Insecure, Logger: cfg.Logger})
		// nil: virtual-kubelet's naive node provider, which pings and
		// reports the node Ready once registered.
		return prov, nil, nil
	},
		nodeutil.WithClient(cfg.Kube),
		func(nc *nodeutil.NodeConfig) error {
			nc.HTTPListenAddr = ":" + strconv.Itoa(cfg.Port)
			nc.InformerResyncPeriod = time.Minute
			nc.NumWorkers = max(runtime.NumCPU(), 4)
			ApplyNodeSpec(&nc.NodeSpec, cfg)
			return nil
		},
		nodeutil.WithTLSConfig(nodeutil.WithKeyPairFromPath(cfg.CertFile, cfg.KeyFile), nodeutil.WithCAFromPath(cfg.ClientCAFile)),
		nodeutil.AttachProviderRoutes(mux),
		func(nc *nodeutil.NodeConfig) error {
			ca, err := dynamiccertificates.NewDynamicCAContentFromFile("client-ca", cfg.ClientCAFile)
			if err != nil {
				return fmt.Errorf("reading --client-ca-file: %w", err)
			}
			auth, err := nodeutil.WebhookAuth(cfg.Kube, cfg.Name, func(w *nodeutil.WebhookAuthConfig) error {
				w.AuthnConfig.ClientCertificateCAContentProvider = ca
				return nil
			})
			if err != nil {
				return err
			}
			nc.Handler = nodeutil.WithAuth(auth, mux)
			return nil
		},
	)
	if err != nil {
		return fmt.Errorf("setting up node %s: %w", cfg.Name, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go prov.Run(ctx)
	errc := make(chan error, 1)
	go func() { errc <- n.Run(ctx) }()
	select {
	case <-n.Ready():
	case err := <-errc:
		return fmt.Errorf("running node %s: %w", cfg.Name, err)
	}
	if err := checkPodCIDR(ctx, cfg); err != nil {
		cancel()
		<-errc
		return err
	}
	cfg.Logger.Info("node ready", "node", cfg.Name, "pod_cidr", cfg.PodCIDR.String())
	err = <-errc
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// checkPodCIDR: the node's podCIDR is set once, when it is first
// registered; one that is not volantd's subnet would give pods addresses
// the cluster routes elsewhere.
func checkPodCIDR(ctx context.Context, cfg NodeConfig) error {
	node, err := cfg.Kube.CoreV1().Nodes().Get(ctx, cfg.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading node %s: %w", cfg.Name, err)
	}
	if got := node.Spec.PodCIDR; got != cfg.PodCIDR.String() {
		return apierr.New(apierr.Conflict, "node %s has podCIDR %q but volantd's guest subnet is %s: the podCIDR of a node is set once; "+
			"start volantd with --subnet %s, or delete the node object (kubectl delete node %s) so it registers again", cfg.Name, got, cfg.PodCIDR, got, cfg.Name).
			With("pod_cidr", got).With("subnet", cfg.PodCIDR.String())
	}
	return nil
}

// ApplyNodeSpec sets the node object a Volant host registers: labels,
// taint, podCIDR, capacity, addresses and the kubelet endpoint.
// virtual-kubelet re-applies these labels with each status update, and
// the taint and podCIDR when it creates the node.
func ApplyNodeSpec(n *corev1.Node, cfg NodeConfig) {
	n.Name = cfg.Name
	n.Labels = map[string]string{
		"type":                   NodeTypeLabel,
		"kubernetes.io/os":       "linux",
		"kubernetes.io/arch":     runtime.GOARCH,
		"kubernetes.io/hostname": cfg.Name,
		"kubernetes.io/role":     "agent",
	}
	for k, v := range cfg.Labels {
		n.Labels[k] = v
	}
	n.Spec.Taints = nil
	if !cfg.NoTaint {
		n.Spec.Taints = []corev1.Taint{{Key: TaintKey, Value: TaintValue, Effect: corev1.TaintEffectNoSchedule}}
	}
	if cfg.PodCIDR.IsValid() {
		n.Spec.PodCIDR = cfg.PodCIDR.String()
		n.Spec.PodCIDRs = []string{cfg.PodCIDR.String()}
	}
	res := corev1.ResourceList{
		corev1.ResourceCPU:    *resource.NewQuantity(int64(cfg.CPU), resource.DecimalSI),
		corev1.ResourceMemory: *resource.NewQuantity(int64(cfg.MemoryMB)<<20, resource.BinarySI),
		corev1.ResourcePods:   *resource.NewQuantity(int64(cfg.Pods), resource.DecimalSI),
	}
	n.Status.Capacity = res
	n.Status.Allocatable = res.DeepCopy()
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: cfg.Name}}
	if cfg.NodeIP != "" {
		n.Status.Addresses = append([]corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: cfg.NodeIP}}, n.Status.Addresses...)
	}
	n.Status.DaemonEndpoints.KubeletEndpoint.Port = int32(cfg.Port)
	n.Status.NodeInfo = corev1.NodeSystemInfo{OperatingSystem: "linux", Architecture: runtime.GOARCH,
		KubeletVersion: KubeVersion, KubeProxyVersion: "", ContainerRuntimeVersion: "volant://" + buildinfo.String()}
}
