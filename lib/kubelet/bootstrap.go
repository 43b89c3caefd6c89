package kubelet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/go-logr/logr"
	"github.com/google/renameio/v2"
	certificatesv1 "k8s.io/api/certificates/v1"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/util/certificate"
	"k8s.io/client-go/util/connrotation"

	"github.com/volantvm/volant/lib/apierr"
)

// BootstrapConfig is the kubelet's TLS bootstrap: a node that has only a
// bootstrap token asks the cluster for a client certificate, and renews
// it while it runs.
type BootstrapConfig struct {
	// Node is the node's name: the certificate is for system:node:<Node>
	// in the group system:nodes.
	Node string
	// Kubeconfig is where the node's own kubeconfig is (read when it is
	// there; written to name the current certificate).
	Kubeconfig string
	// BootstrapKubeconfig has the bootstrap token's credentials.
	BootstrapKubeconfig string
	// CertDir holds the certificates and keys (default: Kubeconfig's
	// directory).
	CertDir string
	Logger  *slog.Logger
}

// ClientCertPrefix names the node's client certificate files in CertDir:
// each certificate and its key in ClientCertPrefix-<time>.pem, and
// ClientCertPrefix-current.pem a symlink to the one in use (as the
// kubelet's kubelet-client-current.pem), replaced atomically on renewal.
// An earlier volant-kubelet's ClientCertPrefix.crt and .key are read when
// there is no current one.
const ClientCertPrefix = "volant-kubelet-client"

// Bootstrap returns the node's API client configuration when it
// authenticates with a client certificate of its own, as the kubelet's
// --bootstrap-kubeconfig and certificate rotation do. The certificate is
// the current one in CertDir (or the one cfg.Kubeconfig names); when there
// is none, or it has expired, Bootstrap sends a CertificateSigningRequest
// for system:node:<node> (O=system:nodes, signer
// kubernetes.io/kube-apiserver-client-kubelet, usages digital signature
// and client auth, a new ECDSA key) with the bootstrap credentials and
// waits until it is approved (kube-controller-manager's csrapproving
// controller approves it when the bootstrap token's group may create
// certificatesigningrequests/nodeclient) and signed. Then it writes
// cfg.Kubeconfig naming ClientCertPrefix-current.pem (temp + rename) and
// returns.
//
// Until ctx ends, the certificate is renewed with the node's own
// credentials when 70 to 90 % of its lifetime has passed (a new key and a
// CSR of system:node:<node>, which the controller-manager approves when
// the group system:nodes may create
// certificatesigningrequests/selfnodeclient), by client-go's certificate
// manager (k8s.io/client-go/util/certificate), which stores each one as
// clientCertStore does: the current symlink always names a whole pair,
// the old one or the new. The returned configuration
// presents the current certificate on each new connection, and its open
// connections are closed when the certificate changes, so the clients
// built from it go on with the new one. If the certificate expires
// anyway, the bootstrap credentials ask for a new one.
//
// A kubeconfig with other credentials (a token) is returned as it is:
// nothing is asked for or renewed.
func Bootstrap(ctx context.Context, cfg BootstrapConfig) (*rest.Config, error) {
	rc, kerr := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if kerr == nil && !usesClientCert(rc) {
		return rc, nil
	}
	boot, err := clientcmd.BuildConfigFromFlags("", cfg.BootstrapKubeconfig)
	if err != nil {
		if kerr != nil {
			return nil, apierr.Wrap(apierr.InvalidInput, err, "reading --bootstrap-kubeconfig")
		}
		// Gone once the node has its certificate (kubeadm removes it):
		// then an expired certificate cannot be asked for again.
		if cfg.Logger != nil {
			cfg.Logger.Warn("no bootstrap kubeconfig: the node's certificate is renewed with itself, and cannot be asked for again once it ended",
				"bootstrap_kubeconfig", cfg.BootstrapKubeconfig, "err", err)
		}
		boot = rest.AnonymousClientConfig(rc)
	}
	return bootstrap(ctx, cfg, boot, func(c *rest.Config) (kubernetes.Interface, error) { return kubernetes.NewForConfig(c) })
}

// usesClientCert says whether a kubeconfig authenticates with a client
// certificate, or has no credentials at all.
func usesClientCert(c *rest.Config) bool {
	return c.CertFile != "" || len(c.CertData) > 0 ||
		(c.BearerToken == "" && c.BearerTokenFile == "" && c.Username == "" && c.ExecProvider == nil && c.AuthProvider == nil)
}

// bootstrapWait is how often Bootstrap looks for the first certificate.
const bootstrapWait = 200 * time.Millisecond

// bootstrap is Bootstrap with the clients made by newClient (the
// bootstrap credentials' from boot).
func bootstrap(ctx context.Context, cfg BootstrapConfig, boot *rest.Config, newClient func(*rest.Config) (kubernetes.Interface, error)) (*rest.Config, error) {
	log := cfg.Logger
	if log == nil {
		log = discard()
	}
	if cfg.CertDir == "" {
		cfg.CertDir = filepath.Dir(cfg.Kubeconfig)
	}
	if err := os.MkdirAll(cfg.CertDir, 0o700); err != nil {
		return nil, err
	}
	// The API server and its CA: the node's kubeconfig's when it has one
	// (and its certificate the first one, when the directory has none),
	// else the bootstrap kubeconfig's.
	cluster := boot
	certFile, keyFile := "", ""
	if c, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig); err == nil {
		cluster, certFile, keyFile = c, c.CertFile, c.KeyFile
	}
	klog := logr.FromSlogHandler(log.Handler())
	store, err := newClientCertStore(klog.V(4), cfg.CertDir, certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("the node's certificates in %s: %w", cfg.CertDir, err)
	}
	var m certificate.Manager
	node, closeAll, err := rotatingConfig(cluster, func() *tls.Certificate { return m.Current() })
	if err != nil {
		return nil, err
	}
	bootClient, err := newClient(boot)
	if err != nil {
		return nil, err
	}
	nodeClient, err := newClient(node)
	if err != nil {
		return nil, err
	}
	mctx := logr.NewContext(ctx, klog)
	m, err = certificate.NewManager(&certificate.Config{
		// The node's own credentials while its certificate is valid,
		// else the bootstrap token's.
		ClientsetFn: func(current *tls.Certificate) (kubernetes.Interface, error) {
			if current == nil {
				return bootClient, nil
			}
			return nodeClient, nil
		},
		Template:         &x509.CertificateRequest{Subject: pkix.Name{CommonName: "system:node:" + cfg.Node, Organization: []string{"system:nodes"}}},
		SignerName:       certificatesv1.KubeAPIServerClientKubeletSignerName,
		Usages:           []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth},
		CertificateStore: store,
		Name:             "volant-kubelet client",
		Ctx:              &mctx,
	})
	if err != nil {
		return nil, fmt.Errorf("the node's client certificate manager: %w", err)
	}
	m.Start()
	if m.Current() == nil {
		log.Info("TLS bootstrap: asking the cluster for the node's client certificate (a CSR with the bootstrap credentials)",
			"bootstrap_kubeconfig", cfg.BootstrapKubeconfig, "cert_dir", cfg.CertDir)
	}
	said := time.Now()
	for m.Current() == nil {
		if time.Since(said) > 30*time.Second {
			log.Info("TLS bootstrap: still waiting for the node's CSR to be approved and signed "+
				"(kubectl get csr; kubectl certificate approve NAME)", "node", cfg.Node)
			said = time.Now()
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(bootstrapWait):
		}
	}
	// The kubeconfig names the current pair once there is one (a pair
	// read from an earlier volant-kubelet's files stays named until it
	// is renewed).
	kubeconfig := func() error {
		if _, err := os.Lstat(store.CurrentPath()); err != nil {
			return nil
		}
		return writeKubeconfig(cfg.Kubeconfig, cluster, store.CurrentPath(), store.CurrentPath())
	}
	if err := kubeconfig(); err != nil {
		return nil, err
	}
	cur := m.Current()
	log.Info("the node's client certificate", "kubeconfig", cfg.Kubeconfig, "cert", store.CurrentPath(),
		"not_after", cur.Leaf.NotAfter.UTC().Format(time.RFC3339))
	go closeOnRotation(ctx, m, func() {
		closeAll()
		if err := kubeconfig(); err != nil {
			log.Error("writing the node's kubeconfig", "kubeconfig", cfg.Kubeconfig, "err", err)
		}
	}, log)
	return node, nil
}

// rotationCheck is how often the certificate in use is compared with the
// manager's current one.
const rotationCheck = time.Second

// closeOnRotation closes the connections made with a certificate when the
// manager has a new one (the API server authenticates a connection's
// certificate on each request: one that has expired fails), as the
// kubelet's transport does.
func closeOnRotation(ctx context.Context, m certificate.Manager, closeAll func(), log *slog.Logger) {
	last := m.Current()
	t := time.NewTicker(rotationCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			m.Stop()
			return
		case <-t.C:
		}
		cur := m.Current()
		if cur == last {
			continue
		}
		last = cur
		if cur != nil {
			log.Info("the node's client certificate was renewed; reconnecting", "not_after", cur.Leaf.NotAfter.UTC().Format(time.RFC3339))
		} else {
			log.Warn("the node's client certificate expired; asking for a new one with the bootstrap credentials")
		}
		closeAll()
	}
}

// rotatingConfig is cluster's server and CA with a transport that
// presents current()'s certificate on each new connection, and a function
// closing its connections.
func rotatingConfig(cluster *rest.Config, current func() *tls.Certificate) (*rest.Config, func(), error) {
	c := rest.AnonymousClientConfig(cluster)
	tlsCfg, err := rest.TLSConfigFor(c)
	if err != nil {
		return nil, nil, err
	}
	if tlsCfg == nil {
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	tlsCfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		if cert := current(); cert != nil {
			return cert, nil
		}
		return &tls.Certificate{}, nil // no certificate: the server says who may not
	}
	d := connrotation.NewDialer((&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext)
	c.Transport = utilnet.SetTransportDefaults(&http.Transport{Proxy: http.ProxyFromEnvironment, TLSHandshakeTimeout: 10 * time.Second,
		TLSClientConfig: tlsCfg, MaxIdleConnsPerHost: 25, DialContext: d.DialContext})
	// The transport has the TLS settings; rest refuses both.
	c.TLSClientConfig = rest.TLSClientConfig{}
	return c, d.CloseAll, nil
}

// writeKubeconfig writes a kubeconfig for the API server of boot with the
// client certificate and key files.
func writeKubeconfig(path string, boot *rest.Config, certPath, keyPath string) error {
	cl := &clientcmdapi.Cluster{Server: boot.Host, CertificateAuthority: boot.CAFile, CertificateAuthorityData: boot.CAData,
		InsecureSkipTLSVerify: boot.Insecure, TLSServerName: boot.ServerName}
	c := clientcmdapi.NewConfig()
	c.Clusters["default"] = cl
	c.AuthInfos["node"] = &clientcmdapi.AuthInfo{ClientCertificate: certPath, ClientKey: keyPath}
	c.Contexts["default"] = &clientcmdapi.Context{Cluster: "default", AuthInfo: "node"}
	c.CurrentContext = "default"
	data, err := clientcmd.Write(*c)
	if err != nil {
		return err
	}
	return renameio.WriteFile(path, data, 0o600)
}
