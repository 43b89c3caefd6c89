package kubelet

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
)

// fakeRoutes is a RouteTable in memory; it keeps every call made to it.
type fakeRoutes struct {
	mu     sync.Mutex
	routes map[netip.Prefix]Route
	calls  []string
}

func newFakeRoutes() *fakeRoutes { return &fakeRoutes{routes: map[netip.Prefix]Route{}} }

func (r *fakeRoutes) List() ([]Route, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, "list")
	return r.sorted(), nil
}

func (r *fakeRoutes) Replace(rt Route) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, "replace "+rt.String())
	r.routes[rt.Dst] = Route{Dst: rt.Dst, Via: rt.Via}
	return nil
}

func (r *fakeRoutes) Delete(rt Route) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, "delete "+rt.String())
	delete(r.routes, rt.Dst)
	return nil
}

func (r *fakeRoutes) sorted() []Route {
	out := make([]Route, 0, len(r.routes))
	for _, rt := range r.routes {
		out = append(out, rt)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Dst.String() < out[j].Dst.String() })
	return out
}

// String is the routes, as "DST via GW, …".
func (r *fakeRoutes) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var s []string
	for _, rt := range r.sorted() {
		s = append(s, rt.String())
	}
	return strings.Join(s, ", ")
}

func (r *fakeRoutes) called() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.calls...)
}

// testNode is Run of a node against client-go's fake API server and the
// fake volantd.
type testNode struct {
	kc     *fake.Clientset
	runErr chan error
	stop   func() // ends Run and waits for it
}

// runNode runs node cfg.Name (podCIDR 10.244.1.0/24, InternalIP
// 172.30.0.1, the kubelet API on a free port with a certificate of its
// own) until stop or the end of the test, the API server holding objs.
func runNode(t *testing.T, cfg NodeConfig, objs ...runtime.Object) *testNode {
	t.Helper()
	kc := fake.NewSimpleClientset(objs...)
	dir := t.TempDir()
	caPEM, _, ca, caKey := testCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}, nil, nil)
	certPEM, keyPEM, _, _ := testCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: cfg.Name}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ca, caKey)
	p := func(n string) string { return filepath.Join(dir, n) }
	writeFiles(t, map[string][]byte{p("kubelet.crt"): certPEM, p("kubelet.key"): keyPEM, p("ca.crt"): caPEM})
	cfg.Kube, cfg.CertFile, cfg.KeyFile, cfg.ClientCAFile = kc, p("kubelet.crt"), p("kubelet.key"), p("ca.crt")
	cfg.NodeIP, cfg.Port, cfg.PodCIDR = "172.30.0.1", freePort(t), netip.MustParsePrefix("10.244.1.0/24")
	cfg.CPU, cfg.MemoryMB, cfg.StatusInterval, cfg.Logger = 2, 2048, 100*time.Millisecond, testLogger(t)
	if cfg.Volant == nil {
		cfg.Volant = newFake()
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &testNode{kc: kc, runErr: make(chan error, 1)}
	go func() { n.runErr <- Run(ctx, cfg) }()
	var once sync.Once
	n.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-n.runErr:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("Run did not end with its context")
			}
		})
	}
	t.Cleanup(n.stop)
	return n
}

// waitReady waits for the node's Ready condition in the API server and
// returns the node object then.
func (n *testNode) waitReady(t *testing.T, name string) *corev1.Node {
	t.Helper()
	var node *corev1.Node
	waitFor(t, n.runErr, 30*time.Second, "node "+name+" Ready", func() bool {
		got, err := n.kc.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
		if err != nil || condition(got, corev1.NodeReady) != corev1.ConditionTrue {
			return false
		}
		node = got
		return true
	})
	return node
}

// TestRunRoutes: a node registers with its labels (the well-known ones
// included), and when it turns Ready its host-gateway route to the other
// Volant node's podCIDR is already made (none to a node that is not a
// Volant node); with --no-routes (NoRoutes) the node turns Ready, and
// runs on, without a route made or the table even read.
func TestRunRoutes(t *testing.T) {
	others := func() []runtime.Object {
		plain := volantNode("plain", "10.244.3.0/24", "172.30.0.3")
		plain.Labels = map[string]string{"type": "virtual-kubelet"}
		return []runtime.Object{volantNode("vol-b", "10.244.2.0/24", "172.30.0.2"), plain}
	}
	t.Run("routes", func(t *testing.T) {
		t.Parallel()
		table := newFakeRoutes()
		n := runNode(t, NodeConfig{Name: "vol-a", Labels: map[string]string{"zone": "a"}, Routes: table}, others()...)
		node := n.waitReady(t, "vol-a")
		if got, want := table.String(), "10.244.2.0/24 via 172.30.0.2"; got != want {
			t.Fatalf("routes when the node turned Ready: %q, want %q", got, want)
		}
		if want := wantNodeLabels("vol-a", "zone", "a"); !maps.Equal(node.Labels, want) {
			t.Fatalf("the node's labels %v, want %v", node.Labels, want)
		}
		if len(node.Spec.Taints) != 1 || node.Spec.Taints[0].Key != TaintKey {
			t.Fatalf("the node's taints %v", node.Spec.Taints)
		}
	})
	t.Run("no-routes", func(t *testing.T) {
		t.Parallel()
		table := newFakeRoutes()
		n := runNode(t, NodeConfig{Name: "vol-a", NoRoutes: true, Routes: table}, others()...)
		n.waitReady(t, "vol-a")
		if c := table.called(); len(c) != 0 {
			t.Fatalf("--no-routes: the route table was used when the node turned Ready: %q", c)
		}
		n.stop()
		if c := table.called(); len(c) != 0 {
			t.Fatalf("--no-routes: the route table was used: %q", c)
		}
	})
}

// TestRunPodInputs: a pod bound to the node, through virtual-kubelet's
// pod controller (which resolves env valueFrom and envFrom) and the
// provider (which reads configMap and secret volumes from the API
// server), becomes a VM whose inputs hold the environment — literal,
// secretKeyRef, configMapKeyRef, fieldRef, envFrom of a Secret (with a
// prefix) and of a ConfigMap, env winning over envFrom — the files of the
// configMap volume (its items, binaryData, modes) and of the secret
// volume, and the emptyDir's directory; nothing of it in the workload
// override, which travels on the kernel command line.
func TestRunPodInputs(t *testing.T) {
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "app"},
		Data:       map[string]string{"level": "debug", "app.conf": "listen 8080\n", "COLOR": "blue"},
		BinaryData: map[string][]byte{"logo.bin": {0, 1, 2, 0xff}}}
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "db"},
		Data: map[string][]byte{"user": []byte("admin"), "password": []byte("hunter2")}}
	pod := testPod("web-1")
	pod.Spec.NodeName = "vol-a"
	c := &pod.Spec.Containers[0]
	c.Env = []corev1.EnvVar{
		{Name: "MODE", Value: "prod"},
		{Name: "PASSWORD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: "db"}, Key: "password"}}},
		{Name: "LEVEL", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: "app"}, Key: "level"}}},
		{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.name"}}},
		{Name: "COLOR", Value: "green"}, // over envFrom's
	}
	c.EnvFrom = []corev1.EnvFromSource{
		{Prefix: "DB_", SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "db"}}},
		{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "app"}}},
	}
	c.VolumeMounts = []corev1.VolumeMount{{Name: "conf", MountPath: "/etc/app"}, {Name: "creds", MountPath: "/run/creds"},
		{Name: "scratch", MountPath: "/var/cache/app"}}
	pod.Spec.Volumes = []corev1.Volume{
		{Name: "conf", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: "app"}, DefaultMode: ptr(int32(0o640)),
			Items: []corev1.KeyToPath{{Key: "app.conf", Path: "app.conf"}, {Key: "logo.bin", Path: "img/logo.bin", Mode: ptr(int32(0o600))}}}}},
		{Name: "creds", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "db"}}},
		{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
	}
	f := newFake()
	n := runNode(t, NodeConfig{Name: "vol-a", NoRoutes: true, Volant: f}, cm, sec, pod)
	n.waitReady(t, "vol-a")
	waitFor(t, n.runErr, 30*time.Second, "the pod's VM", func() bool { _, c, _, _ := f.counts(); return c == 1 })
	f.mu.Lock()
	req := f.creates[0]
	f.mu.Unlock()

	in := req.Inputs
	if in == nil {
		t.Fatalf("no inputs: %+v", req)
	}
	wantEnv := map[string]string{"MODE": "prod", "PASSWORD": "hunter2", "LEVEL": "debug", "POD_NAME": "web-1", "COLOR": "green",
		"DB_user": "admin", "DB_password": "hunter2", "level": "debug", "app.conf": "listen 8080\n"}
	if !maps.Equal(in.Env, wantEnv) {
		t.Errorf("env %v\nwant %v", in.Env, wantEnv)
	}
	var files []string
	for _, fl := range in.Files {
		files = append(files, fmt.Sprintf("%s=%q@%o", fl.Path, fl.Data, fl.Mode))
	}
	if got, want := strings.Join(files, " "), `/etc/app/app.conf="listen 8080\n"@640 /etc/app/img/logo.bin="\x00\x01\x02\xff"@600 `+
		`/run/creds/password="hunter2"@644 /run/creds/user="admin"@644 /etc/hostname="web-1\n"@644`; got != want {
		t.Errorf("files %s\nwant  %s", got, want)
	}
	if strings.Join(in.Dirs, ",") != "/var/cache/app" {
		t.Errorf("dirs %v", in.Dirs)
	}
	if w := req.Workload; w == nil || len(w.Env) != 0 {
		t.Errorf("workload override %+v: the environment is an input, not on the kernel command line", w)
	}
}
