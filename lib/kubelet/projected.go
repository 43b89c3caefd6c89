package kubelet

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/api"
)

// Projected volumes — the kube-api-access-* volume the ServiceAccount
// admission plugin adds to every pod (a service account token, the
// cluster's CA from the kube-root-ca.crt ConfigMap, the namespace), and
// any other projected or downwardAPI volume — become files in the guest,
// like configMap and secret volumes: inputs over the agent channel before
// the workload starts. The token comes from the TokenRequest API, bound
// to the pod (it stops working when the pod is deleted), with the
// projection's audience and lifetime; the provider asks for a new one when
// 80% of its lifetime has passed (at most a day) and writes it in the
// running guest (the guest-access API's file copy, which replaces a file
// atomically: a new file, synced, renamed over the old one, so the
// workload never reads a partial token), and again as soon as the
// workload runs after the provider restarted the VM (a liveness or crash
// restart boots it with the inputs it was created with). Sources a VM cannot
// have (clusterTrustBundle, podCertificate, resourceFieldRef) refuse the
// pod.

// TokenRequester asks the API server for service account tokens.
type TokenRequester interface {
	CreateToken(ctx context.Context, namespace, serviceAccount string, req *authenticationv1.TokenRequest) (*authenticationv1.TokenRequest, error)
}

// KubeTokens is the TokenRequest API of a client-go clientset.
func KubeTokens(c kubernetes.Interface) TokenRequester { return kubeTokens{c} }

type kubeTokens struct{ c kubernetes.Interface }

func (k kubeTokens) CreateToken(ctx context.Context, ns, sa string, req *authenticationv1.TokenRequest) (*authenticationv1.TokenRequest, error) {
	return k.c.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, req, metav1.CreateOptions{})
}

// defaultTokenSeconds is a token's lifetime when the projection says none
// (the API's default).
const defaultTokenSeconds = 3600

// tokenFile is a service account token a pod's VM has as a file.
type tokenFile struct {
	path     string // in the guest
	mode     uint32
	audience string
	seconds  int64
	// issued and expires are the token's in the guest; zero: unknown (an
	// adopted VM), refreshed at once.
	issued, expires time.Time
}

// refreshAt is when the token should be replaced: after 80% of its
// lifetime, or a day.
func (t tokenFile) refreshAt() time.Time {
	if t.issued.IsZero() || !t.expires.After(t.issued) {
		return time.Time{}
	}
	life := t.expires.Sub(t.issued)
	return t.issued.Add(min(life*8/10, 24*time.Hour))
}

// downwardFields are the pod fields a downwardAPI file may hold.
var downwardFields = []string{"metadata.name", "metadata.namespace", "metadata.uid", "metadata.labels", "metadata.annotations",
	"spec.nodeName", "spec.serviceAccountName"}

// checkProjected refuses the projected volume sources a VM cannot have.
func checkProjected(name string, p *corev1.ProjectedVolumeSource) error {
	for _, s := range p.Sources {
		switch {
		case s.ServiceAccountToken != nil, s.ConfigMap != nil, s.Secret != nil:
		case s.DownwardAPI != nil:
			if err := checkDownward(name, s.DownwardAPI.Items); err != nil {
				return err
			}
		default:
			return refuse("volume %q: projected sources other than serviceAccountToken, configMap, secret and downwardAPI "+
				"(clusterTrustBundle, podCertificate) are not supported", name)
		}
	}
	return nil
}

func checkDownward(name string, items []corev1.DownwardAPIVolumeFile) error {
	for _, it := range items {
		if it.FieldRef == nil {
			return refuse("volume %q: downwardAPI resourceFieldRef is not supported (fieldRef is)", name)
		}
		if _, ok := downwardValue(&corev1.Pod{}, it.FieldRef.FieldPath); !ok {
			return refuse("volume %q: downwardAPI field %q is not supported (%s are)", name, it.FieldRef.FieldPath, strings.Join(downwardFields, ", "))
		}
	}
	return nil
}

// downwardValue is a pod field as the kubelet writes it in a downwardAPI
// file (maps as sorted key="value" lines).
func downwardValue(pod *corev1.Pod, field string) (string, bool) {
	kv := func(m map[string]string) string {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var b strings.Builder
		for i, k := range keys {
			if i > 0 {
				b.WriteByte('\n')
			}
			fmt.Fprintf(&b, "%s=%q", k, m[k])
		}
		return b.String()
	}
	switch field {
	case "metadata.name":
		return pod.Name, true
	case "metadata.namespace":
		return pod.Namespace, true
	case "metadata.uid":
		return string(pod.UID), true
	case "metadata.labels":
		return kv(pod.Labels), true
	case "metadata.annotations":
		return kv(pod.Annotations), true
	case "spec.nodeName":
		return pod.Spec.NodeName, true
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, true
	}
	return "", false
}

func downwardFiles(pod *corev1.Pod, items []corev1.DownwardAPIVolumeFile, mode uint32, dir string) ([]api.InputFile, error) {
	var out []api.InputFile
	for _, it := range items {
		v, _ := downwardValue(pod, it.FieldRef.FieldPath)
		m := mode
		if it.Mode != nil {
			m = uint32(*it.Mode) & 0o777
		}
		p, err := inside(dir, it.Path)
		if err != nil {
			return nil, err
		}
		out = append(out, api.InputFile{Path: p, Mode: m, Data: []byte(v)})
	}
	return out, nil
}

// inside is dir/rel, refused when rel leaves dir.
func inside(dir, rel string) (string, error) {
	p := path.Join(dir, rel)
	if !strings.HasPrefix(p, path.Clean(dir)+"/") {
		return "", refuse("item path %q leaves the mount", rel)
	}
	return p, nil
}

// projectedFiles lays out a projected volume under dir: each source's
// files, a token requested for each serviceAccountToken source (returned
// too, to be refreshed).
func projectedFiles(ctx context.Context, pod *corev1.Pod, p *corev1.ProjectedVolumeSource, src sources, dir string) ([]api.InputFile, []tokenFile, error) {
	mode := uint32(0o644)
	if p.DefaultMode != nil {
		mode = uint32(*p.DefaultMode) & 0o777
	}
	dm := int32(mode)
	var files []api.InputFile
	var toks []tokenFile
	for _, s := range p.Sources {
		switch {
		case s.ServiceAccountToken != nil:
			t := s.ServiceAccountToken
			pth, err := inside(dir, t.Path)
			if err != nil {
				return nil, nil, err
			}
			tf := tokenFile{path: pth, mode: mode, audience: t.Audience, seconds: defaultTokenSeconds}
			if t.ExpirationSeconds != nil {
				tf.seconds = *t.ExpirationSeconds
			}
			tok, err := requestToken(ctx, src.Tokens, pod, &tf)
			if err != nil {
				return nil, nil, err
			}
			files = append(files, api.InputFile{Path: tf.path, Mode: tf.mode, Data: []byte(tok)})
			toks = append(toks, tf)
		case s.ConfigMap != nil:
			c := s.ConfigMap
			f, err := configMapFiles(pod.Namespace, &corev1.ConfigMapVolumeSource{LocalObjectReference: c.LocalObjectReference,
				Items: c.Items, Optional: c.Optional, DefaultMode: &dm}, src.ConfigMaps, dir)
			if err != nil {
				return nil, nil, err
			}
			files = append(files, f...)
		case s.Secret != nil:
			c := s.Secret
			f, err := secretFiles(pod.Namespace, &corev1.SecretVolumeSource{SecretName: c.Name, Items: c.Items, Optional: c.Optional,
				DefaultMode: &dm}, src.Secrets, dir)
			if err != nil {
				return nil, nil, err
			}
			files = append(files, f...)
		case s.DownwardAPI != nil:
			f, err := downwardFiles(pod, s.DownwardAPI.Items, mode, dir)
			if err != nil {
				return nil, nil, err
			}
			files = append(files, f...)
		}
	}
	return files, toks, nil
}

// tokenSpecs are the service account tokens of a pod's projected volumes
// as its VM has them, without their times (an adopted VM's).
func tokenSpecs(pod *corev1.Pod) []tokenFile {
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Spec.Volumes {
		vols[v.Name] = v
	}
	var out []tokenFile
	if len(pod.Spec.Containers) != 1 {
		return nil
	}
	for _, m := range pod.Spec.Containers[0].VolumeMounts {
		p := vols[m.Name].Projected
		if p == nil {
			continue
		}
		mode := uint32(0o644)
		if p.DefaultMode != nil {
			mode = uint32(*p.DefaultMode) & 0o777
		}
		for _, s := range p.Sources {
			if t := s.ServiceAccountToken; t != nil {
				pth, err := inside(m.MountPath, t.Path)
				if err != nil {
					continue
				}
				tf := tokenFile{path: pth, mode: mode, audience: t.Audience, seconds: defaultTokenSeconds}
				if t.ExpirationSeconds != nil {
					tf.seconds = *t.ExpirationSeconds
				}
				out = append(out, tf)
			}
		}
	}
	return out
}

// requestToken asks for tf's token, bound to pod, and sets its times.
func requestToken(ctx context.Context, tr TokenRequester, pod *corev1.Pod, tf *tokenFile) (string, error) {
	if tr == nil {
		return "", fmt.Errorf("no TokenRequest client for the service account token %s", tf.path)
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: &tf.seconds,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	if tf.audience != "" {
		req.Spec.Audiences = []string{tf.audience}
	}
	issued := time.Now()
	res, err := tr.CreateToken(ctx, pod.Namespace, sa, req)
	if err != nil {
		return "", fmt.Errorf("requesting a token of service account %s/%s (TokenRequest; see contrib/kubernetes/rbac.yaml): %w", pod.Namespace, sa, err)
	}
	tf.issued, tf.expires = issued, res.Status.ExpirationTimestamp.Time
	return res.Status.Token, nil
}

// tokenRetry is how long a failed refresh waits before the next try.
const tokenRetry = 10 * time.Second

// bootPoll is how often a restarted VM is looked at until its workload
// runs (then its tokens are written again).
const bootPoll = 500 * time.Millisecond

// refreshTokens replaces the pod's tokens in its running guest before they
// expire, until ctx ends (the pod is deleted).
func (p *Provider) refreshTokens(ctx context.Context, k string, e *podEntry, toks []tokenFile) {
	if len(toks) == 0 {
		return
	}
	var rebooted time.Time // the VM started again then; zero: not since the last write
	for {
		next := time.Time{}
		for _, t := range toks {
			if at := t.refreshAt(); next.IsZero() || at.Before(next) {
				next = at
			}
		}
		if !rebooted.IsZero() {
			next = time.Now().Add(bootPoll)
		}
		if d := time.Until(next); d > 0 {
			select {
			case <-ctx.Done():
				return
			case at := <-e.rebooted:
				// Its inputs brought back the tokens it was created with.
				rebooted = at
				for i := range toks {
					toks[i].issued = time.Time{}
				}
				continue
			case <-time.After(d):
			}
		}
		if ctx.Err() != nil {
			return
		}
		p.mu.Lock()
		pod, vm := e.pod.DeepCopy(), e.vm
		booted := e.vmState != nil && e.vmState.StartedAt != nil && !e.vmState.StartedAt.Before(rebooted) &&
			e.vmState.Agent != nil && e.vmState.Agent.Workload.State == agentapi.WorkloadRunning
		p.mu.Unlock()
		if !rebooted.IsZero() {
			if !booted {
				continue // the inputs are written before the workload runs: after them
			}
			rebooted = time.Time{}
		}
		for i := range toks {
			if at := toks[i].refreshAt(); !at.IsZero() && time.Now().Before(at) {
				continue
			}
			t := toks[i]
			err := p.writeToken(ctx, pod, vm, &t)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				p.log.Warn("refreshing a pod's service account token", "pod", k, "path", t.path, "err", err, "retry_in", tokenRetry)
				// Try again in tokenRetry (the VM may still boot).
				toks[i].issued = time.Now()
				toks[i].expires = toks[i].issued.Add(tokenRetry * 10 / 8)
				continue
			}
			toks[i] = t
			p.log.Debug("refreshed a pod's service account token", "pod", k, "path", t.path, "expires", t.expires)
		}
	}
}

// writeToken asks for a new token and writes it in the guest.
func (p *Provider) writeToken(ctx context.Context, pod *corev1.Pod, vm string, t *tokenFile) error {
	tok, err := requestToken(ctx, p.cfg.Tokens, pod, t)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: path.Base(t.path), Mode: int64(t.mode), Size: int64(len(tok)), ModTime: time.Now(),
		Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	if _, err := io.WriteString(tw, tok); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if _, err := p.cfg.Volant.WriteFiles(ctx, vm, path.Dir(t.path), &buf); err != nil {
		return fmt.Errorf("writing %s in VM %s: %w", t.path, vm, err)
	}
	return nil
}
