package kubelet

import (
	"context"
	"fmt"
	"path"
	"regexp"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	corev1listers "k8s.io/client-go/listers/core/v1"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/portmap"
)

// MinMemoryMB is the least memory a pod's VM gets when its limits or
// requests say less.
const MinMemoryMB = 128

// unsupported is a pod the provider will not run: the pod fails with
// reason ReasonUnsupported and this message.
type unsupported struct{ msg string }

func (u *unsupported) Error() string { return u.msg }

func refuse(format string, a ...any) error { return &unsupported{fmt.Sprintf(format, a...)} }

// ReasonUnsupported is the reason of a pod the provider refuses.
const ReasonUnsupported = "VolantUnsupported"

// checkPod refuses what a VM cannot be: the provider never half-runs a pod.
func checkPod(pod *corev1.Pod) error {
	s := &pod.Spec
	switch {
	case len(s.Containers) != 1:
		return refuse("a Volant VM runs one app container; this pod has %d", len(s.Containers))
	case len(s.InitContainers) > 0:
		return refuse("init containers are not supported")
	case len(s.EphemeralContainers) > 0:
		return refuse("ephemeral containers are not supported")
	case s.HostNetwork || s.HostPID || s.HostIPC:
		return refuse("hostNetwork, hostPID and hostIPC are not supported: a pod is a VM of its own")
	}
	vols := map[string]corev1.Volume{}
	for _, v := range s.Volumes {
		vols[v.Name] = v
		switch {
		case v.ConfigMap != nil, v.Secret != nil, v.EmptyDir != nil:
		case v.Projected != nil:
			if err := checkProjected(v.Name, v.Projected); err != nil {
				return err
			}
		case v.DownwardAPI != nil:
			if err := checkDownward(v.Name, v.DownwardAPI.Items); err != nil {
				return err
			}
		default:
			return refuse("volume %q: only configMap, secret, emptyDir, projected and downwardAPI volumes are supported", v.Name)
		}
	}
	c := &s.Containers[0]
	if sc := c.SecurityContext; sc != nil {
		if sc.Privileged != nil && *sc.Privileged {
			return refuse("privileged containers are not supported")
		}
		if sc.Capabilities != nil && len(sc.Capabilities.Add) > 0 {
			return refuse("added capabilities are not supported")
		}
	}
	for _, m := range c.VolumeMounts {
		if m.SubPath != "" || m.SubPathExpr != "" {
			return refuse("volumeMount %s: subPath is not supported", m.Name)
		}
		if !path.IsAbs(m.MountPath) || path.Clean(m.MountPath) == "/" {
			return refuse("volumeMount %s: mountPath %q must be an absolute path other than /", m.Name, m.MountPath)
		}
		if _, ok := vols[m.Name]; !ok {
			return refuse("volumeMount %s names no volume of the pod", m.Name)
		}
	}
	for _, pr := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe} {
		if pr != nil && pr.GRPC != nil {
			return refuse("gRPC probes are not supported (httpGet, tcpSocket and exec are)")
		}
	}
	if c.StartupProbe != nil {
		return refuse("startup probes are not supported (readiness and liveness probes are)")
	}
	if len(c.VolumeDevices) > 0 {
		return refuse("volumeDevices are not supported")
	}
	return nil
}

// Config sources the provider reads volumes from.
type sources struct {
	ConfigMaps corev1listers.ConfigMapLister
	Secrets    corev1listers.SecretLister
	// Tokens serves service account tokens (projected volumes).
	Tokens TokenRequester
}

// vmRequest is the create request of a pod's VM, the plugin built, and
// the service account tokens its inputs hold.
func vmRequest(ctx context.Context, pod *corev1.Pod, node, plugin string, src sources) (api.CreateVMRequest, []tokenFile, error) {
	c := &pod.Spec.Containers[0]
	req := api.CreateVMRequest{
		Name:   VMName(pod),
		Plugin: plugin,
		Labels: map[string]string{
			LabelPodUID: string(pod.UID), LabelPodNamespace: pod.Namespace, LabelPodName: pod.Name,
			LabelContainer: c.Name, LabelNode: node,
		},
		Workload: &api.WorkloadOverride{Command: c.Command, Args: c.Args, Workdir: c.WorkingDir,
			Restart: restartPolicy(pod.Spec.RestartPolicy)},
	}
	req.CPUCores, req.MemoryMB = resources(c.Resources)
	for _, p := range c.Ports {
		if p.HostPort == 0 {
			continue
		}
		req.Ports = append(req.Ports, portmap.Mapping{HostIP: p.HostIP, HostPort: int(p.HostPort), GuestPort: int(p.ContainerPort),
			Protocol: strings.ToLower(string(p.Protocol))})
	}
	in := &api.Inputs{}
	for _, e := range c.Env {
		if e.ValueFrom != nil {
			// virtual-kubelet resolves valueFrom before CreatePod; one
			// left is one it could not resolve.
			return req, nil, fmt.Errorf("env %s: valueFrom was not resolved", e.Name)
		}
		if in.Env == nil {
			in.Env = map[string]string{}
		}
		in.Env[e.Name] = e.Value
	}
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Spec.Volumes {
		vols[v.Name] = v
	}
	var toks []tokenFile
	for _, m := range c.VolumeMounts {
		v := vols[m.Name]
		switch {
		case v.EmptyDir != nil:
			in.Dirs = append(in.Dirs, path.Clean(m.MountPath))
		case v.ConfigMap != nil:
			files, err := configMapFiles(pod.Namespace, v.ConfigMap, src.ConfigMaps, m.MountPath)
			if err != nil {
				return req, nil, fmt.Errorf("volume %s: %w", v.Name, err)
			}
			in.Files = append(in.Files, files...)
		case v.Secret != nil:
			files, err := secretFiles(pod.Namespace, v.Secret, src.Secrets, m.MountPath)
			if err != nil {
				return req, nil, fmt.Errorf("volume %s: %w", v.Name, err)
			}
			in.Files = append(in.Files, files...)
		case v.Projected != nil:
			files, t, err := projectedFiles(ctx, pod, v.Projected, src, m.MountPath)
			if err != nil {
				return req, nil, fmt.Errorf("volume %s: %w", v.Name, err)
			}
			in.Files = append(in.Files, files...)
			toks = append(toks, t...)
		case v.DownwardAPI != nil:
			mode := uint32(0o644)
			if v.DownwardAPI.DefaultMode != nil {
				mode = uint32(*v.DownwardAPI.DefaultMode) & 0o777
			}
			files, err := downwardFiles(pod, v.DownwardAPI.Items, mode, m.MountPath)
			if err != nil {
				return req, nil, fmt.Errorf("volume %s: %w", v.Name, err)
			}
			in.Files = append(in.Files, files...)
		}
	}
	// /etc/hostname says the pod's hostname, as the kubelet's mount does,
	// and kestrel names the guest's kernel after it.
	host := podHostname(pod)
	in.Files = append(in.Files, api.InputFile{Path: "/etc/hostname", Mode: 0o644, Data: []byte(host + "\n")})
	req.Inputs = in
	return req, toks, nil
}

func configMapFiles(ns string, v *corev1.ConfigMapVolumeSource, l corev1listers.ConfigMapLister, dir string) ([]api.InputFile, error) {
	if l == nil {
		return nil, fmt.Errorf("no ConfigMap lister")
	}
	cm, err := l.ConfigMaps(ns).Get(v.Name)
	if apierrors.IsNotFound(err) && v.Optional != nil && *v.Optional {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("configMap %s/%s: %w", ns, v.Name, err)
	}
	data := map[string][]byte{}
	for k, s := range cm.Data {
		data[k] = []byte(s)
	}
	for k, b := range cm.BinaryData {
		data[k] = b
	}
	return volumeFiles(data, v.Items, v.DefaultMode, dir, v.Optional)
}

func secretFiles(ns string, v *corev1.SecretVolumeSource, l corev1listers.SecretLister, dir string) ([]api.InputFile, error) {
	if l == nil {
		return nil, fmt.Errorf("no Secret lister")
	}
	s, err := l.Secrets(ns).Get(v.SecretName)
	if apierrors.IsNotFound(err) && v.Optional != nil && *v.Optional {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("secret %s/%s: %w", ns, v.SecretName, err)
	}
	return volumeFiles(s.Data, v.Items, v.DefaultMode, dir, v.Optional)
}

// volumeFiles lays out a ConfigMap's or Secret's keys as the kubelet
// does: each key a file under dir, or only the items given, at their
// paths and modes.
func volumeFiles(data map[string][]byte, items []corev1.KeyToPath, defMode *int32, dir string, optional *bool) ([]api.InputFile, error) {
	mode := uint32(0o644)
	if defMode != nil {
		mode = uint32(*defMode) & 0o777
	}
	var out []api.InputFile
	if len(items) == 0 {
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			out = append(out, api.InputFile{Path: path.Join(dir, k), Mode: mode, Data: data[k]})
		}
		return out, nil
	}
	for _, it := range items {
		b, ok := data[it.Key]
		if !ok {
			if optional != nil && *optional {
				continue
			}
			return nil, fmt.Errorf("key %q not found", it.Key)
		}
		m := mode
		if it.Mode != nil {
			m = uint32(*it.Mode) & 0o777
		}
		p := path.Join(dir, it.Path)
		if !strings.HasPrefix(p, path.Clean(dir)+"/") {
			return nil, refuse("item path %q leaves the mount", it.Path)
		}
		out = append(out, api.InputFile{Path: p, Mode: m, Data: b})
	}
	return out, nil
}

// resources are the VM's vCPUs and MiB: limits, else requests; cpu
// rounded up to whole vCPUs, memory up to MiB and at least MinMemoryMB.
// Zero: the plugin's.
func resources(r corev1.ResourceRequirements) (cpu, memMB int) {
	pick := func(name corev1.ResourceName) (int64, bool) {
		if q, ok := r.Limits[name]; ok {
			return q.MilliValue(), true
		}
		if q, ok := r.Requests[name]; ok {
			return q.MilliValue(), true
		}
		return 0, false
	}
	if m, ok := pick(corev1.ResourceCPU); ok {
		cpu = int((m + 999) / 1000)
		if cpu < 1 {
			cpu = 1
		}
	}
	if m, ok := pick(corev1.ResourceMemory); ok {
		bytes := (m + 999) / 1000
		memMB = int((bytes + 1<<20 - 1) >> 20)
		if memMB < MinMemoryMB {
			memMB = MinMemoryMB
		}
	}
	return cpu, memMB
}

func restartPolicy(p corev1.RestartPolicy) string {
	switch p {
	case corev1.RestartPolicyNever:
		return "no"
	case corev1.RestartPolicyOnFailure:
		return "on-failure"
	default:
		return "always"
	}
}

func pullPolicy(p corev1.PullPolicy) string {
	switch p {
	case corev1.PullAlways:
		return "always"
	case corev1.PullNever:
		return "never"
	default:
		return "if-not-present"
	}
}

var notName = regexp.MustCompile(`[^a-z0-9_-]+`)

// VMName is the VM of a pod: <namespace>-<name>, lowercased, other
// characters as '-', cut to 54, then '-' and the first 8 hex digits of the
// pod's UID, so two pods never share a VM name.
func VMName(pod *corev1.Pod) string {
	base := notName.ReplaceAllString(strings.ToLower(pod.Namespace+"-"+pod.Name), "-")
	base = strings.Trim(base, "-_")
	if len(base) > 54 {
		base = strings.TrimRight(base[:54], "-_")
	}
	uid := strings.ReplaceAll(string(pod.UID), "-", "")
	if len(uid) > 8 {
		uid = uid[:8]
	}
	if base == "" {
		base = "pod"
	}
	return base + "-" + uid
}

// podHostname is the pod's hostname as the kubelet gives it: spec.hostname,
// else the pod's name, cut to the 63 characters a hostname may have and
// without a '-' or '.' left at its end. kestrel names the guest's kernel
// after it too (an input /etc/hostname).
func podHostname(pod *corev1.Pod) string {
	host := pod.Name
	if pod.Spec.Hostname != "" {
		host = pod.Spec.Hostname
	}
	if len(host) > 63 {
		host = strings.TrimRight(host[:63], "-.")
	}
	return host
}
