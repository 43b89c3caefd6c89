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
// (flannel's host-gw), marked "proto 86", made before the node is
// reported Ready, and removes it when the node goes; so the hosts must reach each other's InternalIP directly (one L2
// network). Routing also needs IP forwarding, which volantd turns on with
// its bridge.
//
// Runs until SIGINT or SIGTERM; exit status 0 then. Errors are one JSON
// object on stderr (see lib/apierr), as for every Volant command.
package main

import (
	"context"

	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/kubelet"
)

func main() { cli.Main(run) }

// run is volant-kubelet's whole run: lib/kubelet holds its verbs (cli.go).
func run(ctx context.Context, env *cli.Env) error { return kubelet.Command(ctx, env) }
