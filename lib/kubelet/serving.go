package kubelet

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"sync"

	"k8s.io/apiserver/pkg/server/dynamiccertificates"

	"github.com/volantvm/volant/lib/apierr"
)

// servingCert is the kubelet API's serving certificate from certFile and
// keyFile, read again when they change (a file event, else every minute)
// until ctx ends, as the kubelet's ReloadKubeletServerCertificateFile
// does: a certificate renewed on disk is served to new connections
// without a restart. A pair that does not load (the files half replaced)
// is not taken; the one before stays.
func servingCert(ctx context.Context, certFile, keyFile string) (func(*tls.Config) error, error) {
	c, err := dynamiccertificates.NewDynamicServingContentFromFiles("kubelet-serving", certFile, keyFile)
	if err != nil {
		return nil, apierr.Wrap(apierr.InvalidInput, err, "reading --tls-cert-file and --tls-private-key-file")
	}
	go c.Run(ctx, 1)
	var mu sync.Mutex
	var certPEM []byte
	var cert *tls.Certificate
	get := func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		cp, kp := c.CurrentCertKeyContent()
		mu.Lock()
		defer mu.Unlock()
		if cert == nil || !bytes.Equal(cp, certPEM) {
			kc, err := tls.X509KeyPair(cp, kp)
			if err != nil {
				return nil, fmt.Errorf("the kubelet API's serving certificate: %w", err)
			}
			cert, certPEM = &kc, cp
		}
		return cert, nil
	}
	return func(t *tls.Config) error {
		t.GetCertificate = get
		return nil
	}, nil
}
