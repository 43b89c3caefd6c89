package kubelet

import (
	"context"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/cli"
)

// TestNodeConfigFlags: volant-kubelet's flags become the node Run runs —
// --no-routes (no host-gateway routes: TestRunRoutes shows what it
// changes), -l, --no-taint, --pod-cidr, --pods — and capacity
// not given is the host's (volantd's health: its guest range).
func TestNodeConfigFlags(t *testing.T) {
	volantd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(api.Health{Network: &api.Network{Subnet: "10.244.1.0/24", Gateway: "10.244.1.1",
			RangeStart: "10.244.1.100", RangeEnd: "10.244.1.254"}})
	}))
	defer volantd.Close()
	kubeconfig := filepath.Join(t.TempDir(), "node.kubeconfig")
	kc := clientcmdapi.NewConfig()
	kc.Clusters["c"] = &clientcmdapi.Cluster{Server: "https://127.0.0.1:6443"}
	kc.AuthInfos["u"] = &clientcmdapi.AuthInfo{Token: "t"}
	kc.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	kc.CurrentContext = "c"
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	nodeConfig := func(args ...string) NodeConfig {
		t.Helper()
		env := &cli.Env{Args: append([]string{"run", "--kubeconfig", kubeconfig, "--node-ip", "172.30.0.1", "--nodename", "vol-a",
			"-H", volantd.URL}, args...), Stdout: io.Discard, Stderr: io.Discard}
		var o kubeletCommand
		verb, rest, err := cli.Parse(env, "volant-kubelet", &o)
		if err != nil || verb != "run" || len(rest) != 0 {
			t.Fatalf("%q: verb %q, rest %q, %v", args, verb, rest, err)
		}
		cfg, err := o.Run.nodeConfig(context.Background(), env)
		if err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		return cfg
	}

	cfg := nodeConfig()
	if cfg.NoRoutes || cfg.NoTaint || cfg.PodCIDR.IsValid() || len(cfg.Labels) != 0 || cfg.Name != "vol-a" || cfg.NodeIP != "172.30.0.1" {
		t.Fatalf("defaults: %+v", cfg)
	}
	if cfg.Pods != 0 || cfg.CPU < 1 || cfg.MemoryMB < 1 {
		t.Fatalf("capacity by default: %d CPUs, %d MiB, %d pods (0: the guest range's addresses once it is the podCIDR)", cfg.CPU, cfg.MemoryMB, cfg.Pods)
	}

	cfg = nodeConfig("--no-routes", "-l", "zone=a", "--label", "disk=ssd", "--no-taint", "--pod-cidr", "10.244.7.9/24", "--pods", "20", "--cpu", "3")
	if !cfg.NoRoutes {
		t.Fatal("--no-routes: NoRoutes is false")
	}
	if !cfg.NoTaint || cfg.PodCIDR.String() != "10.244.7.0/24" || cfg.Pods != 20 || cfg.CPU != 3 ||
		!maps.Equal(cfg.Labels, map[string]string{"zone": "a", "disk": "ssd"}) {
		t.Fatalf("flags: %+v", cfg)
	}

	// -l cannot replace a label the node sets itself: the other nodes'
	// routes select by type, and schedulers by os, arch and hostname.
	for _, l := range []string{"type=other", "kubernetes.io/hostname=vol-b", "kubernetes.io/arch=arm64", "beta.kubernetes.io/os=windows"} {
		env := &cli.Env{Args: []string{"run", "--kubeconfig", kubeconfig, "--node-ip", "172.30.0.1", "--nodename", "vol-a",
			"-H", volantd.URL, "-l", l}, Stdout: io.Discard, Stderr: io.Discard}
		var o kubeletCommand
		if _, _, err := cli.Parse(env, "volant-kubelet", &o); err != nil {
			t.Fatal(err)
		}
		if _, err := o.Run.nodeConfig(context.Background(), env); !apierr.Is(err, apierr.Usage) {
			t.Errorf("-l %s: %v, want a usage error", l, err)
		}
	}
}
