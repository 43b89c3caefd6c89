package kubelet

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/volantvm/volant/lib/testutil/wait"
)

// signer approves and signs the node CSRs of a fake clientset with ca,
// as kube-controller-manager's csrapproving and csrsigning controllers
// do, with certificates living life. It names the CSRs sent with only a
// generateName and stamps their creation time, as the API server does.
func signer(t *testing.T, ctx context.Context, kc *fake.Clientset, ca *x509.Certificate, caKey *ecdsa.PrivateKey, life *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	kc.PrependReactor("create", "certificatesigningrequests", func(a k8stesting.Action) (bool, runtime.Object, error) {
		c := a.(k8stesting.CreateAction).GetObject().(*certificatesv1.CertificateSigningRequest)
		if c.Name == "" {
			c.Name = fmt.Sprintf("%s%d", c.GenerateName, n.Add(1))
		}
		c.CreationTimestamp = metav1.Now()
		return false, nil, nil
	})
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
					NotBefore: time.Now().Add(-time.Second), NotAfter: time.Now().Add(time.Duration(life.Load())), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
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

// TestBootstrapRenews: without a certificate the node sends one CSR with
// the bootstrap credentials (its own name, system:nodes, the kubelet
// client signer and usages), writes a kubeconfig naming the current
// certificate, and asks for its renewal with its own credentials before
// it ends; the returned client then presents the new certificate (its
// open connections closed). A restart reuses the current certificate.
//
// When the signer answers is the test machine's business, not the
// node's: the renewal is waited for with no deadline of the
// certificate's, and the node is held only to asking in time (5.3-7.1 s
// after signing, 0.9-2.7 s before the end: a timer's goroutine, a key
// and one request).
func TestBootstrapRenews(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	_, _, ca, caKey := testCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}, nil, nil)
	var life atomic.Int64
	life.Store(int64(8 * time.Second)) // renewed 5.3-7.1 s after it is signed
	bootKC, nodeKC := fake.NewSimpleClientset(), fake.NewSimpleClientset()
	signer(t, ctx, bootKC, ca, caKey, &life)
	signer(t, ctx, nodeKC, ca, caKey, &life)

	// The API server: tells which client certificate a request came with.
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TLS.PeerCertificates) == 0 {
			http.Error(w, "no client certificate", http.StatusUnauthorized)
			return
		}
		fmt.Fprint(w, r.TLS.PeerCertificates[0].SerialNumber)
	}))
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	srv.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	srv.StartTLS()
	defer srv.Close()
	srvCA := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})

	boot := &rest.Config{Host: srv.URL, BearerToken: "abcdef.0123456789abcdef", TLSClientConfig: rest.TLSClientConfig{CAData: srvCA}}
	clients := func(c *rest.Config) (kubernetes.Interface, error) {
		if c.BearerToken != "" {
			return bootKC, nil
		}
		if c.Transport == nil || c.Host != srv.URL {
			t.Errorf("the node's client: host %s, transport %v", c.Host, c.Transport)
		}
		return nodeKC, nil
	}
	cfg := BootstrapConfig{Node: "vol-b", Kubeconfig: filepath.Join(dir, "node.kubeconfig"), CertDir: filepath.Join(dir, "pki")}
	rc, err := bootstrap(ctx, cfg, boot, clients)
	if err != nil {
		t.Fatal(err)
	}
	csrs := func(kc *fake.Clientset) []certificatesv1.CertificateSigningRequest {
		l, _ := kc.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
		return l.Items
	}
	if n := len(csrs(bootKC)); n != 1 {
		t.Fatalf("%d CSRs with the bootstrap credentials", n)
	}
	c := csrs(bootKC)[0]
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
	kcfg, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	current := filepath.Join(cfg.CertDir, ClientCertPrefix+"-current.pem")
	if kcfg.Host != srv.URL || string(kcfg.CAData) != string(srvCA) || kcfg.CertFile != current || kcfg.KeyFile != current {
		t.Fatalf("kubeconfig: host %s, cert %s, key %s", kcfg.Host, kcfg.CertFile, kcfg.KeyFile)
	}
	first := clientCert(t, cfg.Kubeconfig)

	// The client presents it.
	hc, err := rest.HTTPClientFor(rc)
	if err != nil {
		t.Fatal(err)
	}
	serial := func() string {
		r, err := hc.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Body.Close()
		b, _ := io.ReadAll(r.Body)
		if r.StatusCode != http.StatusOK {
			t.Fatalf("the node's client: %s %s", r.Status, b)
		}
		return string(b)
	}
	if s := serial(); s != first.SerialNumber.String() {
		t.Fatalf("the node's client presented %s, not %s", s, first.SerialNumber)
	}

	// Asked for before it ends, with the node's own credentials (once
	// it has ended the manager asks with the bootstrap ones), and then
	// in place, however long the signer took.
	var second *x509.Certificate
	wait.Until(t, 2*time.Minute, "the renewed certificate", func() bool {
		now := time.Now()
		if len(csrs(nodeKC)) == 0 && now.After(first.NotAfter) {
			t.Fatalf("the certificate ended (%s) with no renewal asked for", first.NotAfter.Format(time.TimeOnly))
		}
		if c := clientCert(t, cfg.Kubeconfig); c.SerialNumber.Cmp(first.SerialNumber) != 0 {
			second = c
		}
		return second != nil
	})
	if n, m := len(csrs(bootKC)), len(csrs(nodeKC)); n != 1 || m < 1 {
		t.Fatalf("CSRs: %d with the bootstrap credentials, %d with the node's", n, m)
	}
	asked := csrs(nodeKC)[0].CreationTimestamp.Time
	t.Logf("renewal asked %s after signing, %s before the end; in place %s later",
		asked.Sub(first.NotBefore.Add(time.Second)).Round(time.Millisecond), first.NotAfter.Sub(asked).Round(time.Millisecond),
		time.Since(asked).Round(time.Millisecond))
	if !asked.Before(first.NotAfter) {
		t.Fatalf("the renewal was asked for at %s, after the certificate ended (%s)", asked.Format(time.StampMilli), first.NotAfter.Format(time.StampMilli))
	}
	// The same client (its keep-alive connection closed on the
	// rotation, which is checked every rotationCheck; unclosed, it would
	// present the first certificate as long as it is used).
	wait.Until(t, time.Minute, "the node's client to present the renewed certificate", func() bool {
		return serial() != first.SerialNumber.String()
	})

	// A restart (certificates living an hour now): the current one,
	// nothing asked.
	life.Store(int64(time.Hour))
	cancel()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel2()
	before := len(csrs(bootKC)) + len(csrs(nodeKC))
	if _, err := bootstrap(ctx2, cfg, boot, clients); err != nil {
		t.Fatal(err)
	}
	if after := len(csrs(bootKC)) + len(csrs(nodeKC)); after != before {
		t.Fatalf("a restart sent %d CSRs", after-before)
	}
}

// TestBootstrapEarlierFiles: a node bootstrapped by an earlier
// volant-kubelet (volant-kubelet-client.crt and .key, the kubeconfig
// naming them), whose bootstrap kubeconfig is gone (kubeadm removes it),
// starts with that certificate: nothing asked, the kubeconfig as it was.
// Without either, the error says which file is missing.
func TestBootstrapEarlierFiles(t *testing.T) {
	dir := t.TempDir()
	caPEM, _, ca, caKey := testCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}, nil, nil)
	certPEM, keyPEM, cert, _ := testCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "system:node:vol-b", Organization: []string{"system:nodes"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, ca, caKey)
	crt, key := filepath.Join(dir, ClientCertPrefix+".crt"), filepath.Join(dir, ClientCertPrefix+".key")
	writeFiles(t, map[string][]byte{crt: certPEM, key: keyPEM})
	kc := filepath.Join(dir, "node.kubeconfig")
	writeKubeconfigFile(t, kc, "https://192.0.2.1:6443", caPEM, &clientcmdapi.AuthInfo{ClientCertificate: crt, ClientKey: key})
	before, _ := os.ReadFile(kc)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rc, err := Bootstrap(ctx, BootstrapConfig{Node: "vol-b", Kubeconfig: kc, BootstrapKubeconfig: filepath.Join(dir, "gone")})
	if err != nil {
		t.Fatal(err)
	}
	if rc.Host != "https://192.0.2.1:6443" || rc.Transport == nil {
		t.Fatalf("the node's client: host %s, transport %v", rc.Host, rc.Transport)
	}
	if after, _ := os.ReadFile(kc); string(after) != string(before) {
		t.Fatalf("the kubeconfig was rewritten:\n%s", after)
	}
	if c := clientCert(t, kc); c.SerialNumber.Cmp(cert.SerialNumber) != 0 {
		t.Fatal("not the earlier certificate")
	}
	_, err = Bootstrap(ctx, BootstrapConfig{Node: "vol-b", Kubeconfig: filepath.Join(dir, "none"), BootstrapKubeconfig: filepath.Join(dir, "gone")})
	if err == nil || !strings.Contains(err.Error(), "--bootstrap-kubeconfig") {
		t.Fatalf("neither kubeconfig: %v", err)
	}
}
