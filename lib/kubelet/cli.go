package kubelet

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
)

// Command is the whole of the volant-kubelet command (cmd/volant-kubelet
// documents it): run, the default verb, turns its flags into a NodeConfig
// (the kubeconfig, bootstrapped or given, volantd's client, the node's
// capacity) and calls Run.
func Command(ctx context.Context, env *cli.Env) error {
	return cli.Run(ctx, cli.DefaultVerb(env, "run"), "volant-kubelet", &kubeletCommand{})
}

type kubeletCommand struct {
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
	cfg, err := f.nodeConfig(ctx, env)
	if err != nil {
		return err
	}
	return Run(ctx, cfg)
}

// nodeConfig is the node the flags describe, with its clients of the API
// server (its credentials bootstrapped first when asked) and of volantd,
// and the host's capacity.
func (f *runCmd) nodeConfig(ctx context.Context, env *cli.Env) (NodeConfig, error) {
	var none NodeConfig
	if f.Kubeconfig == "" || f.NodeIP == "" {
		return none, apierr.New(apierr.Usage, "--kubeconfig and --node-ip are required")
	}
	if _, err := netip.ParseAddr(f.NodeIP); err != nil {
		return none, apierr.New(apierr.Usage, "--node-ip %q is not an IP address", f.NodeIP)
	}
	var podCIDR netip.Prefix
	if f.PodCIDR != "" {
		p, err := netip.ParsePrefix(f.PodCIDR)
		if err != nil || !p.Addr().Is4() {
			return none, apierr.New(apierr.Usage, "--pod-cidr %q is not an IPv4 prefix", f.PodCIDR)
		}
		podCIDR = p.Masked()
	}
	labels := map[string]string{}
	for _, l := range f.Labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return none, apierr.New(apierr.Usage, "--label %q: use KEY=VALUE", l)
		}
		if _, own := ownLabels("")[k]; own {
			return none, apierr.New(apierr.Usage, "--label %q: the node sets %s itself", l, k)
		}
		labels[k] = v
	}
	name := f.NodeName
	if name == "" {
		h, err := os.Hostname()
		if err != nil {
			return none, err
		}
		name = strings.ToLower(h)
	}
	token := ""
	if f.TokenFile != "" {
		b, err := os.ReadFile(f.TokenFile)
		if err != nil {
			return none, apierr.Wrap(apierr.InvalidInput, err, "reading --token-file")
		}
		token = strings.TrimSpace(string(b))
	}
	vc, err := client.New(f.Host, client.Options{Token: token, UserAgent: "volant-kubelet/" + buildinfo.String()})
	if err != nil {
		return none, err
	}
	var rc *rest.Config
	if f.Bootstrap != "" {
		// The node's own client certificate, renewed until ctx ends.
		rc, err = Bootstrap(ctx, BootstrapConfig{Node: name, Kubeconfig: f.Kubeconfig, BootstrapKubeconfig: f.Bootstrap,
			CertDir: f.CertDir, Logger: env.Logger(f.Verbose)})
		if err != nil {
			return none, err
		}
	} else if rc, err = clientcmd.BuildConfigFromFlags("", f.Kubeconfig); err != nil {
		return none, apierr.Wrap(apierr.InvalidInput, err, "reading --kubeconfig")
	}
	rc.UserAgent = "volant-kubelet/" + buildinfo.String()
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return none, err
	}
	host, err := HostCapacity(ctx, vc)
	if err != nil {
		return none, err
	}
	cfg := NodeConfig{
		Name: name, NodeIP: f.NodeIP, Port: f.Port, Labels: labels, NoTaint: f.NoTaint,
		CPU: pick(f.CPU, host.CPU), MemoryMB: pick(f.MemoryMB, host.MemoryMB), Pods: f.Pods, PodCIDR: podCIDR, NoRoutes: f.NoRoutes,
		Kube: kc, CertFile: f.CertFile, KeyFile: f.KeyFile, ClientCAFile: f.ClientCAFile,
		Volant: Client(vc), Insecure: f.Insecure, StatusInterval: f.StatusInterval, Logger: env.Logger(f.Verbose),
	}
	return cfg, nil
}

func pick(flag, def int) int {
	if flag > 0 {
		return flag
	}
	return def
}
