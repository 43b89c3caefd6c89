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
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"

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
	// Pods 0: the addresses of volantd's guest range once it is the
	// podCIDR (0 until then, so nothing is scheduled before).
	CPU, MemoryMB, Pods int
	// PodCIDR, when valid, is registered as the node's spec.podCIDR (a
	// cluster without kube-controller-manager --allocate-node-cidrs);
	// otherwise the controller-manager allocates one. Either way the
	// node's podCIDR, read from the API, becomes volantd's guest subnet
	// (PUT /api/v1/network), so pod IPs are VM addresses, unique across
	// the cluster.
	PodCIDR netip.Prefix
	// NoRoutes leaves routing between the nodes' pod CIDRs to the
	// operator's network; otherwise host-gateway routes to the other
	// Volant nodes' pod CIDRs are made before the node turns Ready, and
	// kept (RunRoutes).
	NoRoutes bool
	// Routes is where they go (default: this network namespace's main
	// table).
	Routes RouteTable
	// Kube is the API server's client.
	Kube kubernetes.Interface
	// CertFile and KeyFile are the kubelet API's serving certificate
	// (read again when they change: renewed on disk, it is served without
	// a restart); ClientCAFile the CA that signs the API server's client certificate
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
	serving, err := servingCert(ctx, cfg.CertFile, cfg.KeyFile)
	if err != nil {
		return err
	}
	var prov *Provider
	var spec *corev1.Node
	netReady := make(chan struct{})
	// The node is NotReady, with no room for pods, until volantd's
	// subnet is its podCIDR; then this reports it Ready.
	status := vknode.NewNaiveNodeProvider()
	// Pod events (virtual-kubelet's and the provider's) go to the API
	// server through one broadcaster.
	eb := record.NewBroadcaster()
	defer eb.Shutdown()
	eb.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: cfg.Kube.CoreV1().Events("")})
	events := eb.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "volant-kubelet", Host: cfg.Name})
	mux := http.NewServeMux()
	n, err := nodeutil.NewNode(cfg.Name, func(pc nodeutil.ProviderConfig) (nodeutil.Provider, vknode.NodeProvider, error) {
		prov = NewProvider(ProviderConfig{Node: cfg.Name, NodeIP: cfg.NodeIP, Volant: cfg.Volant, ConfigMaps: pc.ConfigMaps,
			Secrets: pc.Secrets, Tokens: KubeTokens(cfg.Kube), Interval: cfg.StatusInterval, Insecure: cfg.Insecure, NetworkReady: netReady, Events: events, Logger: cfg.Logger})
		return prov, status, nil
	},
		nodeutil.WithClient(cfg.Kube),
		func(nc *nodeutil.NodeConfig) error {
			nc.HTTPListenAddr = ":" + strconv.Itoa(cfg.Port)
			nc.InformerResyncPeriod = time.Minute
			nc.NumWorkers = max(runtime.NumCPU(), 4)
			nc.EventRecorder = events
			ApplyNodeSpec(&nc.NodeSpec, cfg)
			spec = &nc.NodeSpec
			return nil
		},
		nodeutil.WithTLSConfig(serving, nodeutil.WithCAFromPath(cfg.ClientCAFile)),
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
	ready, err := joinNetwork(ctx, cfg, spec.DeepCopy())
	if err == nil && !cfg.NoRoutes {
		// The routes to the other nodes' pods are made before the node
		// is Ready: a pod scheduled here reaches theirs from its start.
		routed := keepRoutes(ctx, cfg)
		defer func() {
			cancel()
			<-routed
		}()
	}
	if err == nil {
		err = status.UpdateStatus(ctx, ready)
	}
	if err != nil {
		cancel()
		<-errc
		return err
	}
	close(netReady)
	cfg.Logger.Info("node ready", "node", cfg.Name, "pod_cidr", ready.Spec.PodCIDR, "pods", ready.Status.Capacity.Pods().Value())
	err = <-errc
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// keepRoutes keeps the host-gateway routes (RunRoutes) until ctx ends; it
// returns once they were made the first time (or ctx ended, or RunRoutes
// failed before: logged, the node runs on without them), and the channel
// it returns is closed when RunRoutes has ended.
func keepRoutes(ctx context.Context, cfg NodeConfig) <-chan struct{} {
	synced, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		err := RunRoutes(ctx, RouteConfig{Node: cfg.Name, Kube: cfg.Kube, Table: cfg.Routes, Synced: synced, Logger: cfg.Logger})
		if err != nil && ctx.Err() == nil {
			cfg.Logger.Error("host-gateway routes stopped", "err", err)
		}
	}()
	select {
	case <-synced:
	case <-done:
	case <-ctx.Done():
	}
	return done
}

// podCIDRPoll is how often the node is read while it has no podCIDR.
const podCIDRPoll = 500 * time.Millisecond

// waitPodCIDR reads the node until it has a podCIDR: kube-controller-
// manager allocates one after the node registers, and it is not in the
// node object virtual-kubelet keeps.
func waitPodCIDR(ctx context.Context, cfg NodeConfig) (netip.Prefix, error) {
	said := time.Time{}
	for {
		node, err := cfg.Kube.CoreV1().Nodes().Get(ctx, cfg.Name, metav1.GetOptions{})
		if err != nil && ctx.Err() != nil {
			return netip.Prefix{}, ctx.Err()
		}
		if err == nil && node.Spec.PodCIDR != "" {
			p, perr := netip.ParsePrefix(node.Spec.PodCIDR)
			if perr != nil || !p.Addr().Is4() {
				return netip.Prefix{}, apierr.New(apierr.NotSupported, "node %s has podCIDR %q: Volant's guest subnet is one IPv4 prefix", cfg.Name, node.Spec.PodCIDR)
			}
			if cfg.PodCIDR.IsValid() && p.Masked() != cfg.PodCIDR.Masked() {
				return netip.Prefix{}, apierr.New(apierr.Conflict, "node %s has podCIDR %s, not --pod-cidr %s: a node's podCIDR is set once; "+
					"drop --pod-cidr, or delete the node object (kubectl delete node %s) so it registers again", cfg.Name, p, cfg.PodCIDR, cfg.Name).
					With("pod_cidr", p.String())
			}
			return p.Masked(), nil
		}
		if time.Since(said) > 30*time.Second {
			cfg.Logger.Info("waiting for the node's podCIDR (kube-controller-manager --allocate-node-cidrs, or --pod-cidr)", "node", cfg.Name, "err", err)
			said = time.Now()
		}
		select {
		case <-ctx.Done():
			return netip.Prefix{}, ctx.Err()
		case <-time.After(podCIDRPoll):
		}
	}
}

// joinNetwork makes the node's podCIDR volantd's guest subnet and returns
// node (virtual-kubelet's copy of the node) as it is then: Ready, its
// network available, room for as many pods as the guest range has
// addresses (or cfg.Pods). volantd refuses (CONFLICT) while VMs hold
// addresses in another subnet.
func joinNetwork(ctx context.Context, cfg NodeConfig, node *corev1.Node) (*corev1.Node, error) {
	cidr, err := waitPodCIDR(ctx, cfg)
	if err != nil {
		return nil, err
	}
	nw, err := cfg.Volant.SetNetwork(ctx, cidr.String())
	if err != nil {
		return nil, fmt.Errorf("node %s has podCIDR %s; making it volantd's guest subnet: %w", cfg.Name, cidr, err)
	}
	pods := cfg.Pods
	if pods <= 0 {
		var h Host
		if err := h.fromNetwork(nw); err != nil {
			return nil, err
		}
		pods = h.Pods
	}
	node.Spec.PodCIDR, node.Spec.PodCIDRs = cidr.String(), []string{cidr.String()}
	q := *resource.NewQuantity(int64(pods), resource.DecimalSI)
	node.Status.Capacity[corev1.ResourcePods] = q
	node.Status.Allocatable[corev1.ResourcePods] = q.DeepCopy()
	node.Status.Phase = corev1.NodeRunning
	now := metav1.Now()
	setCondition(node, corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "volantd's guest subnet is the node's podCIDR "+cidr.String(), now)
	setCondition(node, corev1.NodeNetworkUnavailable, corev1.ConditionFalse, "VolantNetworkReady", "pod IPs are VM addresses in "+cidr.String(), now)
	return node, nil
}

func setCondition(n *corev1.Node, typ corev1.NodeConditionType, st corev1.ConditionStatus, reason, msg string, now metav1.Time) {
	c := corev1.NodeCondition{Type: typ, Status: st, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
	for i := range n.Status.Conditions {
		if n.Status.Conditions[i].Type == typ {
			n.Status.Conditions[i] = c
			return
		}
	}
	n.Status.Conditions = append(n.Status.Conditions, c)
}

// ownLabels are the labels a Volant node named name sets itself, which
// -l cannot replace: the well-known ones a kubelet sets (the beta os and
// arch too, which the kubelet still sets and older selectors use), and
// the type the other nodes' routes select.
func ownLabels(name string) map[string]string {
	return map[string]string{
		"type":                    NodeTypeLabel,
		"kubernetes.io/os":        "linux",
		"kubernetes.io/arch":      runtime.GOARCH,
		"beta.kubernetes.io/os":   "linux",
		"beta.kubernetes.io/arch": runtime.GOARCH,
		"kubernetes.io/hostname":  name,
	}
}

// ApplyNodeSpec sets the node object a Volant host registers: labels,
// taint, podCIDR, capacity, addresses and the kubelet endpoint.
// virtual-kubelet re-applies these labels with each status update, and
// the taint and podCIDR when it creates the node.
func ApplyNodeSpec(n *corev1.Node, cfg NodeConfig) {
	n.Name = cfg.Name
	n.Labels = ownLabels(cfg.Name)
	for k, v := range cfg.Labels {
		if _, own := n.Labels[k]; !own {
			n.Labels[k] = v
		}
	}
	n.Spec.Taints = nil
	if !cfg.NoTaint {
		n.Spec.Taints = []corev1.Taint{{Key: TaintKey, Value: TaintValue, Effect: corev1.TaintEffectNoSchedule}}
	}
	if cfg.PodCIDR.IsValid() {
		n.Spec.PodCIDR = cfg.PodCIDR.Masked().String()
		n.Spec.PodCIDRs = []string{n.Spec.PodCIDR}
	}
	// Not Ready, the network unavailable, until volantd's subnet is the
	// podCIDR (joinNetwork).
	now := metav1.Now()
	n.Status.Phase = corev1.NodePending
	n.Status.Conditions = nil
	setCondition(n, corev1.NodeReady, corev1.ConditionFalse, "VolantNetworkPending", "waiting for the node's podCIDR to become volantd's guest subnet", now)
	setCondition(n, corev1.NodeNetworkUnavailable, corev1.ConditionTrue, "VolantNetworkPending", "volantd's guest subnet is not the podCIDR yet", now)
	for _, t := range []corev1.NodeConditionType{corev1.NodeMemoryPressure, corev1.NodeDiskPressure, corev1.NodePIDPressure} {
		setCondition(n, t, corev1.ConditionFalse, "VolantHost", "not measured by volant-kubelet", now)
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
