package kubelet

import (
	"context"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/volantvm/volant/lib/names"
)

func ptr[T any](v T) *T { return &v }

func testPod(name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, UID: types.UID("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")},
		Spec: corev1.PodSpec{
			NodeName:      "vol1",
			RestartPolicy: corev1.RestartPolicyAlways,
			Containers:    []corev1.Container{{Name: "web", Image: "oci:/images:web", ImagePullPolicy: corev1.PullIfNotPresent}},
		},
	}
}

func listers(t *testing.T, objs ...any) sources {
	t.Helper()
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	sidx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	for _, o := range objs {
		switch o.(type) {
		case *corev1.ConfigMap:
			idx.Add(o)
		case *corev1.Secret:
			sidx.Add(o)
		}
	}
	return sources{ConfigMaps: corev1listers.NewConfigMapLister(idx), Secrets: corev1listers.NewSecretLister(sidx)}
}

// TestVMRequest: a pod's container becomes a VM's workload override,
// inputs (env, configMap/secret files, emptyDir directories), resources,
// published hostPorts and labels; nothing of the env or the volumes goes
// into the override (which travels on the kernel command line).
func TestVMRequest(t *testing.T) {
	pod := testPod("web-1")
	c := &pod.Spec.Containers[0]
	c.Command, c.Args, c.WorkingDir = []string{"/bin/server"}, []string{"--port", "8080"}, "/srv"
	c.Env = []corev1.EnvVar{{Name: "MODE", Value: "prod"}, {Name: "TOKEN", Value: "s3cret"}}
	c.Resources = corev1.ResourceRequirements{
		Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1500m"), corev1.ResourceMemory: resource.MustParse("256Mi")},
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m")},
	}
	c.Ports = []corev1.ContainerPort{{ContainerPort: 8080, Protocol: corev1.ProtocolTCP}, {ContainerPort: 53, HostPort: 5353, Protocol: corev1.ProtocolUDP}}
	c.VolumeMounts = []corev1.VolumeMount{{Name: "conf", MountPath: "/etc/app"}, {Name: "creds", MountPath: "/run/creds"}, {Name: "scratch", MountPath: "/tmp/scratch/"}}
	pod.Spec.RestartPolicy = corev1.RestartPolicyOnFailure
	pod.Spec.Volumes = []corev1.Volume{
		{Name: "conf", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "app"}}}},
		{Name: "creds", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "creds", DefaultMode: ptr(int32(0o400)),
			Items: []corev1.KeyToPath{{Key: "password", Path: "db/password"}}}}},
		{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		{Name: "kube-api-access-x1", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token"}}}}}},
	}
	if err := checkPod(pod); err != nil {
		t.Fatal(err)
	}
	src := listers(t,
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "app"}, Data: map[string]string{"b.conf": "b", "a.conf": "a"}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "creds"}, Data: map[string][]byte{"password": []byte("hunter2"), "other": []byte("x")}})
	req, _, err := vmRequest(context.Background(), pod, "vol1", "web-abc", src)
	if err != nil {
		t.Fatal(err)
	}
	if req.Plugin != "web-abc" || req.Name != "default-web-1-0f1e2d3c" || req.CPUCores != 2 || req.MemoryMB != 256 {
		t.Fatalf("request %+v", req)
	}
	w := req.Workload
	if strings.Join(w.Command, " ") != "/bin/server" || strings.Join(w.Args, " ") != "--port 8080" || w.Workdir != "/srv" || w.Restart != "on-failure" || len(w.Env) != 0 {
		t.Fatalf("workload %+v", w)
	}
	if req.Labels[LabelPodUID] != string(pod.UID) || req.Labels[LabelPodNamespace] != "default" || req.Labels[LabelPodName] != "web-1" ||
		req.Labels[LabelNode] != "vol1" || req.Labels[LabelContainer] != "web" {
		t.Fatalf("labels %v", req.Labels)
	}
	if len(req.Ports) != 1 || req.Ports[0].String() != "5353:53/udp" {
		t.Fatalf("ports %v", req.Ports)
	}
	in := req.Inputs
	if in == nil || in.Env["MODE"] != "prod" || in.Env["TOKEN"] != "s3cret" {
		t.Fatalf("inputs %+v", in)
	}
	var files []string
	for _, f := range in.Files {
		files = append(files, fmt.Sprintf("%s=%s@%o", f.Path, f.Data, f.Mode))
	}
	if got := strings.Join(files, " "); got != "/etc/app/a.conf=a@644 /etc/app/b.conf=b@644 /run/creds/db/password=hunter2@400 /etc/hostname=web-1\n@644" {
		t.Fatalf("files: %s", got)
	}
	if strings.Join(in.Dirs, ",") != "/tmp/scratch" {
		t.Fatalf("dirs %v", in.Dirs)
	}

	// A missing ConfigMap is an error (retried), an optional one is not.
	req, _, err = vmRequest(context.Background(), pod, "vol1", "p", listers(t))
	if err == nil || !strings.Contains(err.Error(), `configMap default/app`) {
		t.Fatalf("missing configMap: %v", err)
	}
	pod.Spec.Volumes[0].ConfigMap.Optional = ptr(true)
	pod.Spec.Volumes[1].Secret.Optional = ptr(true)
	if req, _, err = vmRequest(context.Background(), pod, "vol1", "p", listers(t)); err != nil || len(req.Inputs.Files) != 1 { // /etc/hostname alone
		t.Fatalf("optional volumes: %+v %v", req.Inputs, err)
	}
	// An item path may not leave its mount.
	pod.Spec.Volumes[1].Secret.Items[0].Path = "../../etc/passwd"
	pod.Spec.Volumes[1].Secret.Optional = nil
	if _, _, err := vmRequest(context.Background(), pod, "vol1", "p", src); !isUnsupported(err) {
		t.Fatalf("item leaving the mount: %v", err)
	}
}

func TestCheckPodRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		edit       func(p *corev1.Pod)
	}{
		{"two containers", "one app container", func(p *corev1.Pod) { p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "side"}) }},
		{"init", "init containers", func(p *corev1.Pod) { p.Spec.InitContainers = []corev1.Container{{Name: "i"}} }},
		{"hostNetwork", "hostNetwork", func(p *corev1.Pod) { p.Spec.HostNetwork = true }},
		{"hostPath", "only configMap, secret, emptyDir, projected and downwardAPI", func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "h", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/"}}}}
		}},
		{"pvc", "only configMap", func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "d", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "c"}}}}
		}},
		{"subPath", "subPath", func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "e", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "e", MountPath: "/x", SubPath: "y"}}
		}},
		{"privileged", "privileged", func(p *corev1.Pod) {
			p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Privileged: ptr(true)}
		}},
		{"clusterTrustBundle", "projected sources other than", func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "b", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
				Sources: []corev1.VolumeProjection{{ClusterTrustBundle: &corev1.ClusterTrustBundleProjection{Path: "b"}}}}}}}
		}},
		{"resourceFieldRef", "resourceFieldRef", func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "d", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{
				Items: []corev1.DownwardAPIVolumeFile{{Path: "cpu", ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.cpu"}}}}}}}
		}},
		{"status field", `field "status.podIP"`, func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "d", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{
				Items: []corev1.DownwardAPIVolumeFile{{Path: "ip", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}}}}}}
		}},
		{"grpc probe", "gRPC probes", func(p *corev1.Pod) {
			p.Spec.Containers[0].ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 1}}}
		}},
	} {
		p := testPod("x")
		tc.edit(p)
		err := checkPod(p)
		if !isUnsupported(err) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want one saying %q", tc.name, err, tc.want)
		}
	}
}

func TestVMName(t *testing.T) {
	long := testPod(strings.Repeat("a.b", 80))
	long.Namespace = "Kube.System"
	for _, p := range []*corev1.Pod{testPod("web-5d8f7c9b4-x7k2p"), long, testPod("...")} {
		n := VMName(p)
		if !names.Valid(n) || !strings.HasSuffix(n, "-0f1e2d3c") {
			t.Errorf("VMName(%s/%s) = %q", p.Namespace, p.Name, n)
		}
	}
	a, b := testPod("same"), testPod("same")
	b.UID = "ffffffff-0000-0000-0000-000000000000"
	if VMName(a) == VMName(b) {
		t.Fatal("two pods of one name, two UIDs, one VM name")
	}
}

func TestResources(t *testing.T) {
	q := resource.MustParse
	for _, tc := range []struct {
		r        corev1.ResourceRequirements
		cpu, mem int
	}{
		{corev1.ResourceRequirements{}, 0, 0},
		{corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: q("250m"), corev1.ResourceMemory: q("64Mi")}}, 1, 128},
		{corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceCPU: q("2"), corev1.ResourceMemory: q("1G")}}, 2, 954},
		{corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: q("1Gi")}, Requests: corev1.ResourceList{corev1.ResourceMemory: q("128Mi")}}, 0, 1024},
	} {
		cpu, mem := resources(tc.r)
		if cpu != tc.cpu || mem != tc.mem {
			t.Errorf("%v: %d vCPUs %d MiB, want %d %d", tc.r, cpu, mem, tc.cpu, tc.mem)
		}
	}
}

// A pod's hostname is spec.hostname, else its name, at most 63
// characters (what Sethostname takes) without a trailing '-' or '.'.
func TestPodHostname(t *testing.T) {
	long := strings.Repeat("a", 62) + "-bcdef"
	for _, tc := range []struct{ name, hostname, want string }{
		{"web-1", "", "web-1"},
		{"web-1", "db", "db"},
		{long, "", strings.Repeat("a", 62)},
		{strings.Repeat("b", 70), "", strings.Repeat("b", 63)},
	} {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: tc.name}, Spec: corev1.PodSpec{Hostname: tc.hostname}}
		if got := podHostname(pod); got != tc.want {
			t.Errorf("pod %q hostname %q: %q, want %q", tc.name, tc.hostname, got, tc.want)
		}
	}
}
