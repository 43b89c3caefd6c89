package kubelet

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/volantvm/volant/lib/testutil/netnstest"
	"github.com/volantvm/volant/lib/testutil/wait"
)

// controlPlane is a real etcd (Debian's etcd-server), kube-apiserver and
// kube-controller-manager (built by make k8s-tools into VOLANT_K8S_BIN,
// default /var/cache/volant-k8s/bin) on loopback, as
// tests/e2e/kubernetes.sh runs them, without the scheduler: the API, the
// Node and RBAC authorizers, bootstrap tokens, and the CSR approving and
// signing controllers.
type controlPlane struct {
	dir    string
	server string // https://127.0.0.1:PORT
	caPEM  []byte
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	admin  kubernetes.Interface
}

// k8sBin is where make k8s-tools puts the control plane.
func k8sBin() string {
	if d := os.Getenv("VOLANT_K8S_BIN"); d != "" {
		return d
	}
	return "/var/cache/volant-k8s/bin"
}

// requireControlPlane skips the test (under -short, or where the binaries
// are missing) or fails it where it is demanded (CI=true).
func requireControlPlane(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("a Kubernetes control plane is not started under -short")
	}
	for _, p := range []string{filepath.Join(k8sBin(), "kube-apiserver"), filepath.Join(k8sBin(), "kube-controller-manager")} {
		if _, err := os.Stat(p); err != nil {
			netnstest.SkipOrFail(t, "needs %s (make k8s-tools)", p)
		}
	}
	if _, err := exec.LookPath("etcd"); err != nil {
		netnstest.SkipOrFail(t, "needs etcd on PATH (Debian's etcd-server)")
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// testCert is a certificate signed by ca (self-signed when ca is nil),
// PEM encoded with its key.
func testCert(t *testing.T, tmpl *x509.Certificate, ca *x509.Certificate, caKey *ecdsa.PrivateKey) (certPEM, keyPEM []byte, cert *x509.Certificate, key *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	parent, signer := tmpl, key
	if ca != nil {
		parent, signer = ca, caKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ = x509.ParseCertificate(der)
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), cert, key
}

func writeFiles(t *testing.T, files map[string][]byte) {
	t.Helper()
	for p, b := range files {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// startProcess runs a control plane binary until the test ends, its
// output in dir/NAME.log (printed when the test fails).
func startProcess(t *testing.T, dir, name string, argv ...string) {
	t.Helper()
	logf := filepath.Join(dir, name+".log")
	out, err := os.Create(logf)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		out.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf)
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			t.Logf("--- %s (last lines):\n%s", name, b)
		}
	})
}

// startControlPlane starts etcd, kube-apiserver and kube-controller-manager
// (its CSR controllers only), the latter signing node certificates that
// live signing (--cluster-signing-duration).
func startControlPlane(t *testing.T, signing time.Duration) *controlPlane {
	t.Helper()
	requireControlPlane(t)
	dir := t.TempDir()
	cp := &controlPlane{dir: dir}
	var caKeyPEM []byte
	cp.caPEM, caKeyPEM, cp.ca, cp.caKey = testCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "volant-test-ca"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}, nil, nil)
	srvPEM, srvKey, _, _ := testCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "kube-apiserver"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames: []string{"localhost"}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, cp.ca, cp.caKey)
	_, saKey, _, sa := testCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "sa"}}, nil, nil)
	saPub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	adminToken := strconv.FormatInt(time.Now().UnixNano(), 36)
	p := func(n string) string { return filepath.Join(dir, n) }
	writeFiles(t, map[string][]byte{p("ca.crt"): cp.caPEM, p("ca.key"): caKeyPEM, p("apiserver.crt"): srvPEM, p("apiserver.key"): srvKey,
		p("sa.key"): saKey, p("sa.pub"): pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPub}),
		p("tokens.csv"): []byte(adminToken + ",admin,admin,system:masters\n")})

	etcdPort, peerPort, apiPort := freePort(t), freePort(t), freePort(t)
	etcdURL, peerURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPort), fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	startProcess(t, dir, "etcd", "etcd", "--data-dir", p("etcd"), "--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL, "--initial-cluster", "default="+peerURL)
	startProcess(t, dir, "kube-apiserver", filepath.Join(k8sBin(), "kube-apiserver"), "--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", strconv.Itoa(apiPort),
		"--tls-cert-file", p("apiserver.crt"), "--tls-private-key-file", p("apiserver.key"), "--client-ca-file", p("ca.crt"),
		"--token-auth-file", p("tokens.csv"), "--enable-bootstrap-token-auth", "--authorization-mode", "Node,RBAC",
		"--service-cluster-ip-range", "10.96.0.0/16", "--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", p("sa.pub"), "--service-account-signing-key-file", p("sa.key"))
	cp.server = fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	admin := &rest.Config{Host: cp.server, BearerToken: adminToken, TLSClientConfig: rest.TLSClientConfig{CAData: cp.caPEM}}
	cp.admin = kubernetes.NewForConfigOrDie(admin)
	deadline := time.Now().Add(3 * time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := cp.admin.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kube-apiserver not ready in 3 minutes: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	writeKubeconfigFile(t, p("admin.kubeconfig"), cp.server, cp.caPEM, &clientcmdapi.AuthInfo{Token: adminToken})
	startProcess(t, dir, "kube-controller-manager", filepath.Join(k8sBin(), "kube-controller-manager"),
		"--kubeconfig", p("admin.kubeconfig"), "--bind-address", "127.0.0.1", "--secure-port", "0", "--leader-elect=false",
		"--controllers", "csrapproving,csrsigning", "--cluster-signing-cert-file", p("ca.crt"), "--cluster-signing-key-file", p("ca.key"),
		"--cluster-signing-duration", signing.String())
	return cp
}

func writeKubeconfigFile(t *testing.T, path, server string, ca []byte, user *clientcmdapi.AuthInfo) {
	t.Helper()
	c := clientcmdapi.NewConfig()
	c.Clusters["c"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	c.AuthInfos["u"] = user
	c.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	c.CurrentContext = "c"
	if err := clientcmd.WriteToFile(*c, path); err != nil {
		t.Fatal(err)
	}
}

// bootstrapToken sets up TLS bootstrap as kubeadm does and returns a
// kubeconfig with a bootstrap token: the token's Secret, its group may
// send node CSRs that the csrapproving controller approves, nodes may
// renew their own (selfnodeclient), and node's identity
// (system:node:NODE) has volant-kubelet's ClusterRole
// (contrib/kubernetes/rbac.yaml).
func (cp *controlPlane) bootstrapToken(t *testing.T, node string) string {
	t.Helper()
	ctx := context.Background()
	id, secret := "abcdef", "0123456789abcdef"
	_, err := cp.admin.CoreV1().Secrets("kube-system").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "bootstrap-token-" + id},
		Type: "bootstrap.kubernetes.io/token", StringData: map[string]string{"token-id": id, "token-secret": secret,
			"usage-bootstrap-authentication": "true", "expiration": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile("../../contrib/kubernetes/rbac.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(string(data), "\n---\n") {
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		switch o := obj.(type) {
		case *rbacv1.ClusterRole:
			_, err = cp.admin.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRoleBinding:
			_, err = cp.admin.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
		default:
			t.Fatalf("rbac.yaml has a %T", obj)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	bind := func(name, role string, subj rbacv1.Subject) {
		_, err := cp.admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
			Subjects: []rbacv1.Subject{subj}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	bootstrappers := rbacv1.Subject{APIGroup: "rbac.authorization.k8s.io", Kind: "Group", Name: "system:bootstrappers"}
	bind("test-bootstrap", "system:node-bootstrapper", bootstrappers)
	bind("test-autoapprove", "system:certificates.k8s.io:certificatesigningrequests:nodeclient", bootstrappers)
	bind("test-autoapprove-renewal", "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
		rbacv1.Subject{APIGroup: "rbac.authorization.k8s.io", Kind: "Group", Name: "system:nodes"})
	bind("volant-kubelet-"+node, "volant-kubelet", rbacv1.Subject{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: "system:node:" + node})
	path := filepath.Join(cp.dir, "bootstrap.kubeconfig")
	writeKubeconfigFile(t, path, cp.server, cp.caPEM, &clientcmdapi.AuthInfo{Token: id + "." + secret})
	return path
}

// TestControlPlaneClientCertRotation: a node that has only a bootstrap
// token gets its client certificate (one CSR, sent with the token,
// auto-approved), registers and turns Ready; the controller-manager signs
// certificates living 2 minutes, and the node renews its own before the
// end (a CSR of system:node:NAME, approved as selfnodeclient), so after
// the first certificate expired the node still talks to the API: its
// lease is renewed, it is Ready, and its client reads the API. A restart
// reuses the current certificate (no new CSR).
func TestControlPlaneClientCertRotation(t *testing.T) {
	cp := startControlPlane(t, 2*time.Minute)
	const node = "vol-rot"
	boot := cp.bootstrapToken(t, node)
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := BootstrapConfig{Node: node, Kubeconfig: filepath.Join(dir, "node.kubeconfig"), BootstrapKubeconfig: boot,
		CertDir: filepath.Join(dir, "pki"), Logger: testLogger(t)}
	rc := nodeCredentials(t, ctx, cfg)
	first := clientCert(t, cfg.Kubeconfig)
	t.Logf("first client certificate: serial %s, %s to %s", first.SerialNumber, first.NotBefore.Format(time.TimeOnly), first.NotAfter.Format(time.TimeOnly))
	if first.Subject.CommonName != "system:node:"+node || strings.Join(first.Subject.Organization, ",") != "system:nodes" {
		t.Fatalf("the node's certificate is for %v", first.Subject)
	}
	csrs := func() []string {
		l, err := cp.admin.CertificatesV1().CertificateSigningRequests().List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, c := range l.Items {
			approved := false
			for _, cond := range c.Status.Conditions {
				approved = approved || cond.Type == "Approved"
			}
			out = append(out, fmt.Sprintf("%s signer=%s approved=%v usages=%v", c.Spec.Username, c.Spec.SignerName, approved, c.Spec.Usages))
		}
		return out
	}
	if l := csrs(); len(l) != 1 || l[0] != "system:bootstrap:abcdef signer=kubernetes.io/kube-apiserver-client-kubelet approved=true usages=[digital signature client auth]" {
		t.Fatalf("CSRs after bootstrap: %q", l)
	}

	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	pki := t.TempDir()
	servPEM, servKey, _, _ := testCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: node}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, cp.ca, cp.caKey)
	writeFiles(t, map[string][]byte{filepath.Join(pki, "kubelet.crt"): servPEM, filepath.Join(pki, "kubelet.key"): servKey,
		filepath.Join(pki, "ca.crt"): cp.caPEM})
	runErr := make(chan error, 1)
	go func() {
		runErr <- Run(ctx, NodeConfig{Name: node, NodeIP: "127.0.0.1", Port: freePort(t), CPU: 2, MemoryMB: 2048,
			PodCIDR: netip.MustParsePrefix("10.244.7.0/24"), NoRoutes: true, Kube: kc, Volant: newFake(),
			CertFile: filepath.Join(pki, "kubelet.crt"), KeyFile: filepath.Join(pki, "kubelet.key"), ClientCAFile: filepath.Join(pki, "ca.crt"),
			StatusInterval: time.Second, Logger: testLogger(t)})
	}()
	ready := func() (bool, string) {
		n, err := cp.admin.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				return c.Status == corev1.ConditionTrue, string(c.Status) + " " + c.Message
			}
		}
		return false, "no Ready condition"
	}
	waitFor(t, runErr, 2*time.Minute, "the node Ready", func() bool { ok, _ := ready(); return ok })
	t.Logf("node Ready")

	// Past the first certificate's end: the node renewed it and talks
	// to the API with the new one.
	after := first.NotAfter.Add(15 * time.Second)
	waitFor(t, runErr, time.Until(after)+time.Minute, "the first certificate's end", func() bool { return time.Now().After(after) })
	cur := clientCert(t, cfg.Kubeconfig)
	t.Logf("client certificate now: serial %s, %s to %s", cur.SerialNumber, cur.NotBefore.Format(time.TimeOnly), cur.NotAfter.Format(time.TimeOnly))
	if cur.SerialNumber.Cmp(first.SerialNumber) == 0 || !cur.NotAfter.After(time.Now()) {
		t.Fatalf("the node's certificate was not renewed: serial %s, valid until %s", cur.SerialNumber, cur.NotAfter)
	}
	renewed := false
	for _, c := range csrs() {
		renewed = renewed || strings.HasPrefix(c, "system:node:"+node+" signer=kubernetes.io/kube-apiserver-client-kubelet approved=true")
	}
	if !renewed {
		t.Fatalf("no renewal CSR of the node's own: %q", csrs())
	}
	waitFor(t, runErr, time.Minute, "a lease renewed after the first certificate ended", func() bool {
		l, err := cp.admin.CoordinationV1().Leases("kube-node-lease").Get(context.Background(), node, metav1.GetOptions{})
		return err == nil && l.Spec.RenewTime != nil && l.Spec.RenewTime.After(first.NotAfter.Add(5*time.Second))
	})
	if ok, why := ready(); !ok {
		t.Fatalf("node not Ready after the renewal: %s", why)
	}
	if _, err := kc.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{}); err != nil {
		t.Fatalf("the node's client after the first certificate's end: %v", err)
	}
	cancel()
	select {
	case err := <-runErr:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not end with its context")
	}

	// A restart: the current certificate, not the bootstrap token's
	// (the node may renew it at once, with its own: these certificates
	// are past 70 % of their life within a minute).
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	nodeCredentials(t, ctx2, cfg)
	if c := clientCert(t, cfg.Kubeconfig); c.NotBefore.Before(cur.NotBefore) {
		t.Fatalf("a restart went back to an older certificate")
	}
	boots := 0
	for _, c := range csrs() {
		if strings.HasPrefix(c, "system:bootstrap:") {
			boots++
		}
	}
	if boots != 1 {
		t.Fatalf("%d CSRs with the bootstrap token after a restart: %q", boots, csrs())
	}
}

// waitFor polls cond every half second until it holds, failing after d or
// when Run ends.
func waitFor(t *testing.T, runErr chan error, d time.Duration, what string, cond func() bool) {
	t.Helper()
	err := wait.ForEvery(d, 500*time.Millisecond, func() bool {
		select {
		case err := <-runErr:
			t.Fatalf("Run ended while waiting for %s: %v", what, err)
		default:
		}
		return cond()
	})
	if err != nil {
		t.Fatalf("%v waiting for %s", err, what)
	}
}

// clientCert is the client certificate a kubeconfig names.
func clientCert(t *testing.T, kubeconfig string) *x509.Certificate {
	t.Helper()
	c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	data := c.CertData
	if len(data) == 0 {
		if data, err = os.ReadFile(c.CertFile); err != nil {
			t.Fatal(err)
		}
	}
	for {
		var b *pem.Block
		if b, data = pem.Decode(data); b == nil {
			t.Fatalf("no certificate in %s", c.CertFile)
		}
		if b.Type == "CERTIFICATE" {
			cert, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			return cert
		}
	}
}

// testLogger logs to a file, printed when the test fails (goroutines
// may still log after the test).
func testLogger(t *testing.T) *slog.Logger {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "log")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(f.Name())
			if len(b) > 6000 {
				b = b[len(b)-6000:]
			}
			t.Logf("--- volant-kubelet's log (last lines):\n%s", b)
		}
	})
	return slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// nodeCredentials is the node's API client as volant-kubelet makes it
// with --bootstrap-kubeconfig.
func nodeCredentials(t *testing.T, ctx context.Context, cfg BootstrapConfig) *rest.Config {
	t.Helper()
	rc, err := Bootstrap(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return rc
}
