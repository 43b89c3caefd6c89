package kubelet

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// signer approves and signs the node CSRs of a fake clientset, as
// kube-controller-manager's csrapproving and csrsigning controllers do,
// with certificates living life.
func signer(t *testing.T, ctx context.Context, kc *fake.Clientset, life *atomic.Int64) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	go func() {
		for ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
			l, err := kc.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
			if err != nil {
				continue
			}
			for _, c := range l.Items {
				if len(c.Status.Certificate) > 0 {
					// Again: the fake's watch does not replay what it
					// missed between the waiter's list and its watch.
					_, _ = kc.CertificatesV1().CertificateSigningRequests().UpdateStatus(ctx, &c, metav1.UpdateOptions{})
					continue
				}
				blk, _ := pem.Decode(c.Spec.Request)
				req, err := x509.ParseCertificateRequest(blk.Bytes)
				if err != nil {
					t.Errorf("CSR %s: %v", c.Name, err)
					return
				}
				tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: req.Subject,
					NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Duration(life.Load())), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
				der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, req.PublicKey, caKey)
				if err != nil {
					t.Errorf("signing %s: %v", c.Name, err)
					return
				}
				c.Status.Conditions = []certificatesv1.CertificateSigningRequestCondition{{Type: certificatesv1.CertificateApproved,
					Status: corev1.ConditionTrue, Reason: "AutoApproved"}}
				c.Status.Certificate = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
				_, _ = kc.CertificatesV1().CertificateSigningRequests().UpdateStatus(ctx, &c, metav1.UpdateOptions{})
			}
		}
	}()
}

// TestBootstrap: without a kubeconfig the node sends one CSR (its own
// name, system:nodes, the kubelet client signer and usages), and once it
// is signed writes the key, the certificate and a kubeconfig for the
// bootstrap kubeconfig's API server; a second start reuses them (no new
// CSR); a certificate about to expire, or one that does not match its
// key, is replaced by a new CSR with a new key.
func TestBootstrap(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	kc := fake.NewSimpleClientset()
	var life atomic.Int64
	life.Store(int64(time.Hour))
	signer(t, ctx, kc, &life)
	boot := &rest.Config{Host: "https://10.0.0.1:6443", TLSClientConfig: rest.TLSClientConfig{CAData: []byte("CA")}}
	cfg := BootstrapConfig{Node: "vol-b", Kubeconfig: filepath.Join(dir, "node.kubeconfig")}
	if err := bootstrap(ctx, cfg, boot, kc, nil); err != nil {
		t.Fatal(err)
	}
	csrs := func() []certificatesv1.CertificateSigningRequest {
		l, _ := kc.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
		return l.Items
	}
	if n := len(csrs()); n != 1 {
		t.Fatalf("%d CSRs", n)
	}
	c := csrs()[0]
	blk, _ := pem.Decode(c.Spec.Request)
	req, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if req.Subject.CommonName != "system:node:vol-b" || strings.Join(req.Subject.Organization, ",") != "system:nodes" ||
		c.Spec.SignerName != certificatesv1.KubeAPIServerClientKubeletSignerName ||
		len(c.Spec.Usages) != 2 || c.Spec.Usages[0] != certificatesv1.UsageDigitalSignature || c.Spec.Usages[1] != certificatesv1.UsageClientAuth {
		t.Fatalf("CSR %s: subject %v, signer %s, usages %v", c.Name, req.Subject, c.Spec.SignerName, c.Spec.Usages)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	if rc.Host != boot.Host || string(rc.CAData) != "CA" || rc.CertFile != filepath.Join(dir, BootstrapCertFile) || rc.KeyFile != filepath.Join(dir, BootstrapKeyFile) {
		t.Fatalf("kubeconfig: host %s, CA %q, cert %s, key %s", rc.Host, rc.CAData, rc.CertFile, rc.KeyFile)
	}
	if ok, why := validKubeconfig(cfg.Kubeconfig); !ok {
		t.Fatalf("the written kubeconfig is not valid: %s", why)
	}
	key1, _ := os.ReadFile(rc.KeyFile)

	// A restart: nothing asked.
	if err := Bootstrap(ctx, BootstrapConfig{Node: "vol-b", Kubeconfig: cfg.Kubeconfig, BootstrapKubeconfig: filepath.Join(dir, "missing")}); err != nil {
		t.Fatalf("a valid kubeconfig: %v", err)
	}

	// Certificates about to end: each replaced by a new CSR, a new key.
	// (The fake clientset ignores the field selector and has no UIDs, so
	// the waiting would take any signed CSR: the old ones go first.)
	life.Store(int64(30 * time.Second))
	names := map[string]bool{c.Name: true}
	for i := 2; i <= 3; i++ {
		for _, c := range csrs() {
			_ = kc.CertificatesV1().CertificateSigningRequests().Delete(ctx, c.Name, metav1.DeleteOptions{})
		}
		if err := bootstrap(ctx, cfg, boot, kc, nil); err != nil {
			t.Fatal(err)
		}
		if l := csrs(); len(l) != 1 || names[l[0].Name] {
			t.Fatalf("CSRs after bootstrap %d: %d, the first %q (seen: %v)", i, len(l), l[0].Name, names)
		} else {
			names[l[0].Name] = true
		}
		if ok, why := validKubeconfig(cfg.Kubeconfig); ok || !strings.Contains(why, "expires at") {
			t.Fatalf("a certificate ending in 30 s: valid %v (%s)", ok, why)
		}
	}
	key2, _ := os.ReadFile(rc.KeyFile)
	if string(key2) == string(key1) {
		t.Fatal("a new certificate with the old key")
	}
	// A key that is not the certificate's: not valid.
	if err := os.WriteFile(rc.KeyFile, key1, 0o600); err != nil {
		t.Fatal(err)
	}
	if ok, why := validKubeconfig(cfg.Kubeconfig); ok || !strings.Contains(why, "key") {
		t.Fatalf("a certificate with another key: valid %v (%s)", ok, why)
	}
}
