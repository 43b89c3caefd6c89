package kubelet

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/google/renameio/v2"
	certificatesv1 "k8s.io/api/certificates/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/certificate/csr"
	"k8s.io/client-go/util/keyutil"

	"github.com/volantvm/volant/lib/apierr"
)

// BootstrapConfig is the kubelet's TLS bootstrap: a node that has only a
// bootstrap token asks the cluster for a client certificate.
type BootstrapConfig struct {
	// Node is the node's name: the certificate is for system:node:<Node>
	// in the group system:nodes.
	Node string
	// Kubeconfig is where the node's own kubeconfig is (read when it is
	// there and its certificate is valid; written otherwise).
	Kubeconfig string
	// BootstrapKubeconfig has the bootstrap token's credentials.
	BootstrapKubeconfig string
	// CertDir holds the key and the certificate (default: Kubeconfig's
	// directory).
	CertDir string
	Logger  *slog.Logger
}

// Bootstrap files written in CertDir.
const (
	BootstrapKeyFile  = "volant-kubelet-client.key"
	BootstrapCertFile = "volant-kubelet-client.crt"
)

// Bootstrap makes sure cfg.Kubeconfig holds the node's credentials, as
// the kubelet's --bootstrap-kubeconfig does: when the file is missing, or
// its client certificate is unreadable or expires within a minute, it
// makes a new key (kept aside in CertDir until the certificate comes, so
// a restart meanwhile asks again with the same one), sends a CertificateSigningRequest for system:node:<node>
// (O=system:nodes, signer kubernetes.io/kube-apiserver-client-kubelet,
// usages digital signature and client auth) with the bootstrap
// credentials, waits until it is approved (kube-controller-manager's
// csrapproving controller approves it when the bootstrap token's group
// may create certificatesigningrequests/nodeclient) and signed, and
// writes the certificate and a kubeconfig that uses it (temp + rename).
// The certificate is not renewed: when it nears its end, restart
// volant-kubelet with a bootstrap token that is still valid.
func Bootstrap(ctx context.Context, cfg BootstrapConfig) error {
	log := cfg.Logger
	if log == nil {
		log = discard()
	}
	if ok, why := validKubeconfig(cfg.Kubeconfig); ok {
		return nil
	} else {
		log.Info("TLS bootstrap: asking the cluster for the node's client certificate", "kubeconfig", cfg.Kubeconfig, "because", why)
	}
	boot, err := clientcmd.BuildConfigFromFlags("", cfg.BootstrapKubeconfig)
	if err != nil {
		return apierr.Wrap(apierr.InvalidInput, err, "reading --bootstrap-kubeconfig")
	}
	kc, err := kubernetes.NewForConfig(boot)
	if err != nil {
		return err
	}
	return bootstrap(ctx, cfg, boot, kc, log)
}

// bootstrap asks for the node's certificate with kc (the bootstrap
// credentials) and writes a kubeconfig for boot's API server.
func bootstrap(ctx context.Context, cfg BootstrapConfig, boot *rest.Config, kc kubernetes.Interface, log *slog.Logger) error {
	if log == nil {
		log = discard()
	}
	if cfg.CertDir == "" {
		cfg.CertDir = filepath.Dir(cfg.Kubeconfig)
	}
	if err := os.MkdirAll(cfg.CertDir, 0o700); err != nil {
		return err
	}
	// A new key for each certificate, kept aside until it is signed (a
	// restart meanwhile asks again with it: the same CSR).
	keyPath := filepath.Join(cfg.CertDir, BootstrapKeyFile)
	pendingKey := keyPath + ".pending"
	keyPEM, _, err := keyutil.LoadOrGenerateKeyFile(pendingKey)
	if err != nil {
		return fmt.Errorf("the node's client key %s: %w", pendingKey, err)
	}
	key, err := keyutil.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return fmt.Errorf("the node's client key %s: %w", pendingKey, err)
	}
	csrPEM, err := certutil.MakeCSR(key, &pkix.Name{CommonName: "system:node:" + cfg.Node, Organization: []string{"system:nodes"}}, nil, nil)
	if err != nil {
		return fmt.Errorf("making the node's CSR: %w", err)
	}
	name, err := csrName(cfg.Node, key)
	if err != nil {
		return err
	}
	usages := []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth}
	reqName, uid, err := csr.RequestCertificateWithContext(ctx, kc, csrPEM, name, certificatesv1.KubeAPIServerClientKubeletSignerName, nil, usages, key)
	if err != nil {
		return fmt.Errorf("TLS bootstrap: sending CertificateSigningRequest %s with the bootstrap credentials: %w", name, err)
	}
	log.Info("TLS bootstrap: waiting for the CSR to be approved and signed", "csr", reqName)
	certPEM, err := csr.WaitForCertificate(ctx, kc, reqName, uid)
	if err != nil {
		return fmt.Errorf("TLS bootstrap: waiting for CertificateSigningRequest %s (approve it: kubectl certificate approve %s): %w", reqName, reqName, err)
	}
	certPath := filepath.Join(cfg.CertDir, BootstrapCertFile)
	// The key first: a crash before the certificate leaves a pair that
	// does not match, which the next start sees and bootstraps again.
	if err := os.Rename(pendingKey, keyPath); err != nil {
		return err
	}
	if err := renameio.WriteFile(certPath, certPEM, 0o644); err != nil {
		return err
	}
	if err := writeKubeconfig(cfg.Kubeconfig, boot, certPath, keyPath); err != nil {
		return err
	}
	log.Info("TLS bootstrap: the node's kubeconfig is written", "kubeconfig", cfg.Kubeconfig, "csr", reqName)
	return nil
}

// validKubeconfig says whether a kubeconfig can be used as it is: there,
// and its client certificate (if it has one) matching its key and valid
// for another minute.
func validKubeconfig(path string) (bool, string) {
	c, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return false, err.Error()
	}
	if c.CertFile != "" && c.KeyFile != "" {
		if _, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile); err != nil {
			return false, "its client certificate and key: " + err.Error()
		}
	}
	data := c.CertData
	if len(data) == 0 && c.CertFile != "" {
		if data, err = os.ReadFile(c.CertFile); err != nil {
			return false, err.Error()
		}
	}
	if len(data) == 0 {
		return true, "" // a token or another credential
	}
	certs, err := certutil.ParseCertsPEM(data)
	if err != nil || len(certs) == 0 {
		return false, fmt.Sprintf("its client certificate does not parse: %v", err)
	}
	if end := certs[0].NotAfter; time.Until(end) < time.Minute {
		return false, "its client certificate expires at " + end.UTC().Format(time.RFC3339)
	}
	return true, ""
}

// csrName is the node's CSR for a key: the same on a restart with the
// same key, so a request already sent is found again.
func csrName(node string, key any) (string, error) {
	s, ok := key.(crypto.Signer)
	if !ok {
		return "", fmt.Errorf("the node's client key cannot sign")
	}
	der, err := x509.MarshalPKIXPublicKey(s.Public())
	if err != nil {
		return "", err
	}
	h := sha256.Sum256(append([]byte(node+"\x00"), der...))
	return "volant-node-" + hex.EncodeToString(h[:12]), nil
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
