// Command volant-kubelet makes this Volant host a Kubernetes node: the
// real kube-scheduler places pods on it, and each pod runs as one microVM
// of the local volantd (see lib/kubelet and docs/kubernetes.md).
//
// Synopsis:
//
//	volant-kubelet [run] --kubeconfig F [--bootstrap-kubeconfig F] --node-ip IP --tls-cert-file F --tls-private-key-file F --client-ca-file F [FLAGS]
//	volant-kubelet version
//
// Flags (each also an environment variable):
//
//	--kubeconfig F            KUBECONFIG                the node's credentials for the API server (see contrib/kubernetes/rbac.yaml)
//	--bootstrap-kubeconfig F                            a bootstrap token's kubeconfig: when --cert-dir has no valid client
//	                                                    certificate, ask for one (a CSR for system:node:NAME), write
//	                                                    --kubeconfig naming it, and renew it while running (TLS bootstrap
//	                                                    and certificate rotation, as the kubelet's)
//	--cert-dir DIR                                      where the node's client certificates go (default --kubeconfig's directory)
//	--nodename NAME           VOLANT_NODE_NAME          the node's name (default the host name)
//	--node-ip IP              VOLANT_NODE_IP            the node's InternalIP: the API server reaches the kubelet API on it; pods' hostIP
//	--port N                  VOLANT_KUBELET_PORT       the kubelet API's HTTPS port: logs and exec (default 10250)
//	--tls-cert-file F                                   its serving certificate (with the node IP in its SANs; read
//	                                                    again when the file changes: renew it on disk, no restart)
//	--tls-private-key-file F                            its key
//	--client-ca-file F                                  the CA of the API server's kubelet client certificate;
//	                                                    callers are then authorized with SubjectAccessReviews
//	-H, --host ADDR           VOLANT_HOST               volantd (default /run/volant/volantd.sock)
//	--token-file F            VOLANT_TOKEN_FILE         volantd's bearer token on TCP
//	-l, --label K=V                                     add a node label (repeatable)
//	--no-taint                                          register without the volant.dev/microvm=true:NoSchedule taint
//	--cpu N, --memory MIB, --pods N                     the node's capacity (default the host's CPUs, its memory,
//	                                                    and the addresses of volantd's guest range)
//	--pod-cidr CIDR                                     register the node with this podCIDR (a cluster whose
//	                                                    controller-manager does not --allocate-node-cidrs)
//	--no-routes                                         leave routing between the nodes' pod CIDRs to the operator's
//	                                                    network (no host-gateway routes)
//	--insecure-registry                                 image builds may reach plain-HTTP registries
//	--status-interval D                                 how often VMs are listed for pod status (default 1s)
//	-v, --verbose                                       debug logs
//
// With --bootstrap-kubeconfig (a kubeconfig with a bootstrap token, as
// kubeadm makes them), a node without credentials gets its own: when
// --cert-dir has no valid client certificate (nor --kubeconfig names one),
// volant-kubelet sends a CertificateSigningRequest for system:node:NAME
// in system:nodes (signer kubernetes.io/kube-apiserver-client-kubelet)
// with the token, waits for its approval (kube-controller-manager
// approves it when the token's group may create
// certificatesigningrequests/nodeclient), keeps the certificate and key
// in --cert-dir (volant-kubelet-client-TIME.pem, and the symlink
// volant-kubelet-client-current.pem to the one in use), and writes
// --kubeconfig naming that symlink. While it runs it renews the
// certificate when 70-90 % of its lifetime has passed (a new key, a CSR
// sent with the node's own certificate, approved when system:nodes may
// create certificatesigningrequests/selfnodeclient), and reconnects to
// the API server with the new one; an expired certificate is asked for
// again with the bootstrap token. That identity is not in the group
// volant:nodes: bind the volant-kubelet ClusterRole to the user
// system:node:NAME (docs/kubernetes.md). A --kubeconfig with a token is
// used as it is. The kubelet API's serving certificate (--tls-cert-file)
// is not bootstrapped: it is the file given, read again when it changes.
//
// The node registers NotReady, with room for no pods, and waits for its
// spec.podCIDR (kube-controller-manager --allocate-node-cidrs
// --cluster-cidr allocates it after registration; or --pod-cidr). Then it
// makes that volantd's guest subnet (PUT /api/v1/network, kept by volantd
// across restarts), so pod IPs are VM addresses unique across the
// cluster, and reports the node Ready. volantd refuses a new subnet while
// VMs hold addresses in another one (CONFLICT; delete them, or the node
// object if it is the node that changed). Unless --no-routes, it keeps a
// route to every other Volant node's podCIDR via that node's InternalIP
// (flannel's host-gw), marked "proto 86", and removes it when the node
// goes; so the hosts must reach each other's InternalIP directly (one L2
// network). Routing also needs IP forwarding, which volantd turns on with
// its bridge.
//
// Runs until SIGINT or SIGTERM; exit status 0 then. Errors are one JSON
// object on stderr (see lib/apierr), as for every Volant command.
package main

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/buildinfo"
	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/kubelet"
)

func main() { cli.Main(run) }

func run(ctx context.Context, env *cli.Env) error {
	if len(env.Args) == 0 || strings.HasPrefix(env.Args[0], "-") {
		e := *env
		e.Args = append([]string{"run"}, env.Args...)
		env = &e
	}
	return cli.Run(ctx, env, "volant-kubelet", &options{})
}

type options struct {
	Run     runCmd             `command:"run" description:"Register the node and run its pods as VMs (the default verb)"`
	Version cli.VersionCommand `command:"version" description:"Print the build version"`
}

type runCmd struct {
	Kubeconfig     string        `long:"kubeconfig" env:"KUBECONFIG" description:"the node's kubeconfig"`
	Bootstrap      string        `long:"bootstrap-kubeconfig" description:"a bootstrap token's kubeconfig: ask for the node's client certificate when --kubeconfig has none that is valid"`
	CertDir        string        `long:"cert-dir" description:"where the bootstrapped key and certificate go (default --kubeconfig's directory)"`
	NodeName       string        `long:"nodename" env:"VOLANT_NODE_NAME" description:"the node's name (default the host name)"`
	NodeIP         string        `long:"node-ip" env:"VOLANT_NODE_IP" description:"the node's InternalIP"`
	Port           int           `long:"port" env:"VOLANT_KUBELET_PORT" default:"10250" description:"the kubelet API's HTTPS port"`
	CertFile       string        `long:"tls-cert-file" description:"the kubelet API's serving certificate"`
	KeyFile        string        `long:"tls-private-key-file" description:"its key"`
	ClientCAFile   string        `long:"client-ca-file" description:"the CA of the API server's kubelet client certificate"`
	Host           string        `long:"host" short:"H" env:"VOLANT_HOST" description:"volantd's address"`
	TokenFile      string        `long:"token-file" env:"VOLANT_TOKEN_FILE" description:"volantd's bearer token on TCP"`
	Labels         []string      `long:"label" short:"l" value-name:"K=V" description:"add a node label (repeatable)"`
	NoTaint        bool          `long:"no-taint" description:"register without the volant.dev/microvm taint"`
	CPU            int           `long:"cpu" description:"the node's CPUs (default the host's)"`
	MemoryMB       int           `long:"memory" value-name:"MIB" description:"the node's memory (default the host's)"`
	Pods           int           `long:"pods" description:"the node's pods (default the addresses of volantd's guest range)"`
	PodCIDR        string        `long:"pod-cidr" description:"register the node with this podCIDR"`
	NoRoutes       bool          `long:"no-routes" description:"leave routing between the nodes' pod CIDRs to the operator's network"`
	Insecure       bool          `long:"insecure-registry" description:"image builds may reach plain-HTTP registries"`
	StatusInterval time.Duration `long:"status-interval" default:"1s" description:"how often VMs are listed for pod status"`
	Verbose        bool          `long:"verbose" short:"v" description:"debug logs"`
}

func (f *runCmd) Execute(ctx context.Context, env *cli.Env) error {
	if f.Kubeconfig == "" || f.NodeIP == "" {
		return apierr.New(apierr.Usage, "--kubeconfig and --node-ip are required")
	}
	if _, err := netip.ParseAddr(f.NodeIP); err != nil {
		return apierr.New(apierr.Usage, "--node-ip %q is not an IP address", f.NodeIP)
	}
	var podCIDR netip.Prefix
	if f.PodCIDR != "" {
		p, err := netip.ParsePrefix(f.PodCIDR)
		if err != nil || !p.Addr().Is4() {
			return apierr.New(apierr.Usage, "--pod-cidr %q is not an IPv4 prefix", f.PodCIDR)
		}
		podCIDR = p.Masked()
	}
	labels := map[string]string{}
	for _, l := range f.Labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return apierr.New(apierr.Usage, "--label %q: use KEY=VALUE", l)
		}
		labels[k] = v
	}
	name := f.NodeName
	if name == "" {
		h, err := os.Hostname()
		if err != nil {
			return err
		}
		name = strings.ToLower(h)
	}
	token := ""
	if f.TokenFile != "" {
		b, err := os.ReadFile(f.TokenFile)
		if err != nil {
			return apierr.Wrap(apierr.InvalidInput, err, "reading --token-file")
		}
		token = strings.TrimSpace(string(b))
	}
	vc, err := client.New(f.Host, client.Options{Token: token, UserAgent: "volant-kubelet/" + buildinfo.String()})
	if err != nil {
		return err
	}
	var rc *rest.Config
	if f.Bootstrap != "" {
		// The node's own client certificate, renewed until ctx ends.
		rc, err = kubelet.Bootstrap(ctx, kubelet.BootstrapConfig{Node: name, Kubeconfig: f.Kubeconfig, BootstrapKubeconfig: f.Bootstrap,
			CertDir: f.CertDir, Logger: env.Logger(f.Verbose)})
		if err != nil {
			return err
		}
	} else if rc, err = clientcmd.BuildConfigFromFlags("", f.Kubeconfig); err != nil {
		return apierr.Wrap(apierr.InvalidInput, err, "reading --kubeconfig")
	}
	rc.UserAgent = "volant-kubelet/" + buildinfo.String()
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	host, err := kubelet.HostCapacity(ctx, vc)
	if err != nil {
		return err
	}
	cfg := kubelet.NodeConfig{
		Name: name, NodeIP: f.NodeIP, Port: f.Port, Labels: labels, NoTaint: f.NoTaint,
		CPU: pick(f.CPU, host.CPU), MemoryMB: pick(f.MemoryMB, host.MemoryMB), Pods: f.Pods, PodCIDR: podCIDR, NoRoutes: f.NoRoutes,
		Kube: kc, CertFile: f.CertFile, KeyFile: f.KeyFile, ClientCAFile: f.ClientCAFile,
		Volant: kubelet.Client(vc), Insecure: f.Insecure, StatusInterval: f.StatusInterval, Logger: env.Logger(f.Verbose),
	}
	return kubelet.Run(ctx, cfg)
}

func pick(flag, def int) int {
	if flag > 0 {
		return flag
	}
	return def
}
