package kubelet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/api"
)

// fakeTokens is the TokenRequest API: token-1, token-2, … living ttl.
type fakeTokens struct {
	mu   sync.Mutex
	ttl  time.Duration
	pad  int // the tokens' length past "token-N" (a JWT is about 1 KiB)
	err  error
	reqs []string // "ns/sa aud=… exp=… bound=Pod/name/uid"
}

func (f *fakeTokens) CreateToken(_ context.Context, ns, sa string, req *authenticationv1.TokenRequest) (*authenticationv1.TokenRequest, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	b := req.Spec.BoundObjectRef
	f.reqs = append(f.reqs, fmt.Sprintf("%s/%s aud=%s exp=%d bound=%s/%s/%s", ns, sa, strings.Join(req.Spec.Audiences, ","),
		*req.Spec.ExpirationSeconds, b.Kind, b.Name, b.UID))
	out := req.DeepCopy()
	out.Status = authenticationv1.TokenRequestStatus{Token: fmt.Sprintf("token-%d", len(f.reqs)) + strings.Repeat(".", f.pad),
		ExpirationTimestamp: metav1.NewTime(time.Now().Add(f.ttl))}
	return out, nil
}

func (f *fakeTokens) n() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reqs)
}

// saPod is a pod as the ServiceAccount admission plugin leaves it: the
// kube-api-access volume mounted at the usual place.
func saPod() *corev1.Pod {
	pod := testPod("web-1")
	pod.Spec.ServiceAccountName = "builder"
	pod.Spec.Volumes = []corev1.Volume{{Name: "kube-api-access-x1", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		DefaultMode: ptr(int32(0o644)),
		Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: ptr(int64(3607))}},
			{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"},
				Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{
				{Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}}}}},
		}}}}}
	pod.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "kube-api-access-x1", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true}}
	return pod
}

// TestServiceAccountVolume: the kube-api-access volume becomes files in
// the guest (inputs): a token from the TokenRequest API for the pod's
// service account, bound to the pod, the cluster CA, the namespace. No
// token: the VM is not created (an error that says why), never a pod
// without its volume.
func TestServiceAccountVolume(t *testing.T) {
	pod := saPod()
	if err := checkPod(pod); err != nil {
		t.Fatal(err)
	}
	tr := &fakeTokens{ttl: time.Hour}
	src := listers(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "kube-root-ca.crt"},
		Data: map[string]string{"ca.crt": "-----BEGIN CERTIFICATE-----"}})
	src.Tokens = tr
	req, toks, err := vmRequest(context.Background(), pod, "vol1", "p", src)
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, f := range req.Inputs.Files {
		files = append(files, fmt.Sprintf("%s=%s@%o", f.Path, f.Data, f.Mode))
	}
	d := "/var/run/secrets/kubernetes.io/serviceaccount/"
	if got, want := strings.Join(files, " "), d+"token=token-1@644 "+d+"ca.crt=-----BEGIN CERTIFICATE-----@644 "+d+"namespace=default@644 /etc/hostname=web-1\n@644"; got != want {
		t.Fatalf("files:\n %s\nwant\n %s", got, want)
	}
	if want := "default/builder aud= exp=3607 bound=Pod/web-1/" + string(pod.UID); len(tr.reqs) != 1 || tr.reqs[0] != want {
		t.Fatalf("token requests %q, want %q", tr.reqs, want)
	}
	if len(toks) != 1 || toks[0].path != d+"token" || time.Until(toks[0].refreshAt()) < 47*time.Minute || time.Until(toks[0].refreshAt()) > 49*time.Minute {
		t.Fatalf("tokens to refresh %+v (at %v)", toks, toks[0].refreshAt())
	}
	// An audience goes with the request.
	pod.Spec.Volumes[0].Projected.Sources[0].ServiceAccountToken.Audience = "vault"
	if _, _, err := vmRequest(context.Background(), pod, "vol1", "p", src); err != nil || !strings.Contains(tr.reqs[1], " aud=vault ") {
		t.Fatalf("audience: %v %q", err, tr.reqs)
	}
	// The API server refuses the token: no VM, and the error says why.
	tr.err = errors.New(`serviceaccounts "builder" is forbidden`)
	if _, _, err := vmRequest(context.Background(), pod, "vol1", "p", src); err == nil ||
		!strings.Contains(err.Error(), "kube-api-access-x1") || !strings.Contains(err.Error(), "default/builder") {
		t.Fatalf("a refused token: %v", err)
	}
}

// saPodOn creates saPod through a provider on f whose tokens come from tr
// and whose cluster has its root CA's config map.
func saPodOn(t *testing.T, f *fakeVolant, tr *fakeTokens) (*Provider, *corev1.Pod) {
	t.Helper()
	p := NewProvider(ProviderConfig{Node: "vol1", NodeIP: "10.0.0.1", Volant: f, Interval: time.Hour, Tokens: tr,
		ConfigMaps: listers(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "kube-root-ca.crt"},
			Data: map[string]string{"ca.crt": "CA"}}).ConfigMaps})
	p.NotifyPods(context.Background(), (&recorder{}).add)
	pod := saPod()
	if err := p.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	return p, pod
}

// TestTokenRefresh: a pod's token is replaced in its running guest before
// it expires, through the guest file copy; an adopted VM gets a new one
// at once (its token's age is unknown).
func TestTokenRefresh(t *testing.T) {
	f := newFake()
	tr := &fakeTokens{ttl: 1500 * time.Millisecond} // refreshed after 1.2 s
	p, pod := saPodOn(t, f, tr)
	writes := func() []string {
		f.mu.Lock()
		defer f.mu.Unlock()
		return append([]string(nil), f.writes...)
	}
	eventually(t, p, "a refreshed token written in the guest", func() bool { return len(writes()) >= 1 })
	want := VMName(pod) + ":/var/run/secrets/kubernetes.io/serviceaccount/token=token-2@644"
	if w := writes(); w[0] != want {
		t.Fatalf("write %q, want %q", w[0], want)
	}
	if err := p.DeletePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	n := tr.n()
	time.Sleep(2 * time.Second)
	if tr.n() != n {
		t.Fatalf("tokens requested after the pod's delete: %d, then %d", n, tr.n())
	}

	// A restarted provider adopts the VM: a new token at once.
	f2 := newFake()
	tr2 := &fakeTokens{ttl: time.Hour}
	p2 := NewProvider(ProviderConfig{Node: "vol1", NodeIP: "10.0.0.1", Volant: f2, Interval: time.Hour, Tokens: tr2})
	p2.NotifyPods(context.Background(), (&recorder{}).add)
	if _, err := f2.CreateVM(context.Background(), func() (r0 api.CreateVMRequest) {
		r0.Name, r0.Labels = VMName(pod), map[string]string{LabelPodUID: string(pod.UID), LabelNode: "vol1"}
		return
	}()); err != nil {
		t.Fatal(err)
	}
	if err := p2.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	eventually(t, p2, "the adopted VM's token", func() bool {
		f2.mu.Lock()
		defer f2.mu.Unlock()
		return len(f2.writes) == 1 && strings.HasSuffix(f2.writes[0], "/token=token-1@644")
	})
	_ = p2.DeletePod(context.Background(), pod)
}

// TestTokenRefreshIsAtomic: a workload reading its token while the
// provider refreshes it (extracted in the guest by kestrel's
// agentchan.ExtractTar) always reads a whole token, old or new: never a
// missing, empty or cut-short file, across many refreshes.
func TestTokenRefreshIsAtomic(t *testing.T) {
	f := newFake()
	f.guests = t.TempDir()
	const pad = 128 << 10
	tr := &fakeTokens{ttl: 50 * time.Millisecond, pad: pad} // refreshed every 40 ms
	p, pod := saPodOn(t, f, tr)
	defer p.DeletePod(context.Background(), pod)
	file := filepath.Join(f.guests, VMName(pod), "/var/run/secrets/kubernetes.io/serviceaccount/token")
	eventually(t, p, "the first refreshed token in the guest", func() bool { _, err := os.Stat(file); return err == nil })
	tail := strings.Repeat(".", pad)
	num := regexp.MustCompile(`^token-[0-9]+$`)
	whole := func(b []byte) bool {
		s, ok := strings.CutSuffix(string(b), tail)
		return ok && num.MatchString(s)
	}
	const refreshes = 100
	start, reads, bad, firstBad := tr.n(), 0, 0, ""
	deadline := time.Now().Add(60 * time.Second)
	for tr.n() < start+refreshes {
		if time.Now().After(deadline) {
			t.Fatalf("only %d refreshes in 60 s", tr.n()-start)
		}
		b, err := os.ReadFile(file)
		reads++
		if err != nil || !whole(b) {
			if bad++; firstBad == "" {
				firstBad = fmt.Sprintf("%d bytes, err %v", len(b), err)
			}
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d reads during %d refreshes saw a partial token (the first: %s)", bad, reads, refreshes, firstBad)
	}
	t.Logf("%d reads during %d refreshes, all whole", reads, refreshes)
}

// TestTokenRewrittenAfterRestart: a VM started again (here a crash
// restart) boots with the inputs it was created with, so the token it
// had at creation (maybe expired); the provider writes a new one once
// the workload runs again (after kestrel wrote the inputs), not at the
// token's next refresh time.
func TestTokenRewrittenAfterRestart(t *testing.T) {
	f := newFake()
	tr := &fakeTokens{ttl: time.Hour}
	p, pod := saPodOn(t, f, tr)
	defer p.DeletePod(context.Background(), pod)
	name := VMName(pod)
	eventually(t, p, "the VM", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.vms[name] != nil
	})
	f.run(name, agentapi.WorkloadRunning, 0, nil)
	f.set(name, api.VMCrashed, "qemu exited")
	eventually(t, p, "the crashed VM started again", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.starts) == 1
	})
	writes := func() []string {
		f.mu.Lock()
		defer f.mu.Unlock()
		return append([]string(nil), f.writes...)
	}
	// Booting: its inputs are not written yet, nor the token.
	for range 4 {
		if err := p.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(bootPoll)
	}
	if w := writes(); len(w) != 0 {
		t.Fatalf("a token written while the VM boots: %q", w)
	}
	// Its workload runs again: a new token.
	f.mu.Lock()
	now := time.Now()
	v := f.vms[name]
	v.State, v.StartedAt = api.VMRunning, &now
	v.Agent = &agentapi.Status{Workload: agentapi.WorkloadStatus{State: agentapi.WorkloadRunning, StartedAt: &now}}
	f.mu.Unlock()
	eventually(t, p, "the token written again after the restart", func() bool {
		w := writes()
		return len(w) == 1 && strings.HasSuffix(w[0], "/token=token-2@644")
	})
	if n := tr.n(); n != 2 {
		t.Fatalf("%d tokens asked for", n)
	}
}
