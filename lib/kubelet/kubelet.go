// Package kubelet makes a Volant host a Kubernetes node: a
// virtual-kubelet provider (github.com/virtual-kubelet/virtual-kubelet)
// that runs each pod scheduled to the node as one Volant microVM, through
// the local volantd's API (lib/client).
//
// A pod becomes a VM this way:
//
//   - its one app container's image becomes a plugin, built by volantd
//     (POST /api/v1/plugins {"image"}), with the container's
//     imagePullPolicy as the build's pull policy;
//   - command and args override the image's Entrypoint and Cmd with
//     Kubernetes' meaning, workingDir the working directory,
//     restartPolicy kestrel's (Always → always, OnFailure → on-failure,
//     Never → no);
//   - env (with valueFrom resolved by virtual-kubelet: ConfigMaps,
//     Secrets, the downward API) and configMap, secret, emptyDir,
//     downwardAPI and projected volumes — the kube-api-access-* service
//     account volume among them, its token from the TokenRequest API and
//     refreshed in the running guest — are the VM's inputs: handed to
//     kestrel over the host-only agent channel before the workload
//     starts, never on the kernel command line;
//   - limits (else requests) give vCPUs (cpu rounded up, at least 1) and
//     memory (MiB rounded up, at least 128); neither: the plugin's;
//   - the VM carries the pod's UID, namespace, name and the node in its
//     labels, so a restarted provider adopts its VMs (CreatePod finds the
//     VM by the pod UID and keeps it, and its address) and never runs a
//     pod twice;
//   - readiness and liveness probes (httpGet, tcpSocket, exec) are run by
//     the provider, as the kubelet runs them: HTTP and TCP against the
//     pod IP from the host, exec through the guest-access API. A liveness
//     failure restarts the VM (a container restart).
//
// A pod the provider cannot run fails at once with reason
// "VolantUnsupported" and a message saying why: more than one app
// container, init or ephemeral containers, hostNetwork, hostPID or hostIPC,
// volume types other than configMap, secret, emptyDir, projected and
// downwardAPI (and projected or downwardAPI sources a VM cannot have),
// volumeMounts with subPath, privileged or added capabilities.
//
// Pod status: Pending (ContainerCreating, or ImageBuilding while volantd
// builds the plugin) until kestrel reports the workload running, then
// Running with Ready from the readiness probe; the container's restart
// count is kestrel's restarts plus the provider's liveness restarts;
// Succeeded or Failed when the workload exits and restartPolicy does not
// restart it (by its exit code), Failed when the VM crashes or fails to
// start. podIP is the VM's address, hostIP the node's.
//
// Events on the pod: Building, Built or BuildFailed (the image's plugin),
// Created or Failed (the VM), Started (the workload runs), Unhealthy (a
// failed probe).
//
// /stats/summary and /metrics/resource map volantd's per-VM series (GET
// /metrics) to the pods: the hypervisor's CPU time and resident memory,
// the guest's memory, the tap's counters (stats.go).
//
// Logs are the workload's (GET /api/v1/vms/{name}/logs?stream=workload);
// exec is the guest-access API's interactive exec (with a TTY when asked).
// See docs/kubernetes.md.
package kubelet

import (
	"context"
	"io"
	"log/slog"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/client"
)

// Labels the provider puts on each VM it creates.
const (
	LabelPodUID       = "volant.dev/pod-uid"
	LabelPodNamespace = "volant.dev/pod-namespace"
	LabelPodName      = "volant.dev/pod-name"
	LabelContainer    = "volant.dev/container"
	LabelNode         = "volant.dev/node"
)

// Volant is what the provider needs of volantd; *client.Client has it
// through Client.
type Volant interface {
	InstallImage(ctx context.Context, req api.InstallImageRequest) (*api.Plugin, bool, error)
	CreateVM(ctx context.Context, req api.CreateVMRequest) (*api.VM, error)
	ListVMs(ctx context.Context, f api.VMFilter) ([]api.VM, error)
	DeleteVM(ctx context.Context, name string) (*api.VM, error)
	StartVM(ctx context.Context, name string) (*api.VM, error)
	RestartVM(ctx context.Context, name string) (*api.VM, error)
	VMLogs(ctx context.Context, name string, o api.LogOptions) (io.ReadCloser, error)
	// Exec runs a command in a running VM with its standard streams
	// attached (the guest-access API's interactive exec).
	Exec(ctx context.Context, vm string, req agentchan.ExecRequest, eio agentchan.ExecIO) (*agentchan.ExitStatus, error)
	// Metrics is volantd's GET /metrics (Prometheus text): the per-VM
	// CPU, memory and network series /stats/summary maps to pods.
	Metrics(ctx context.Context) (io.ReadCloser, error)
	// WriteFiles extracts the tar stream r at a guest path (the
	// guest-access API's file copy): refreshed service account tokens.
	WriteFiles(ctx context.Context, vm, path string, r io.Reader) (*api.CopyResult, error)
	// SetNetwork makes the node's podCIDR volantd's guest subnet.
	SetNetwork(ctx context.Context, subnet string) (*api.Network, error)
}

// Client adapts a lib/client Client to Volant.
func Client(c *client.Client) Volant { return volantClient{c} }

type volantClient struct{ *client.Client }

func (c volantClient) Exec(ctx context.Context, vm string, req agentchan.ExecRequest, eio agentchan.ExecIO) (*agentchan.ExitStatus, error) {
	s, err := c.GuestSession(ctx, vm)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	return s.Exec(ctx, req, eio)
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
