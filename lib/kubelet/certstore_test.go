package kubelet

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// TestClientCertStoreUpdateAtomic: while the node's client certificate is
// replaced again and again, whoever reads the node's kubeconfig (kubectl,
// a volant-kubelet restarting) and the file it names, or asks the store
// for the current pair (a volant-kubelet starting), always finds a whole
// pair, the old one or the new one: the current path is never missing
// nor half written. (client-go's FileStore fails this: it removes the
// current symlink before it renames the new one there, and writes a pair
// renewed within the same second over the file in use.)
func TestClientCertStoreUpdateAtomic(t *testing.T) {
	dir := t.TempDir()
	_, _, ca, caKey := testCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}, nil, nil)
	type pair struct{ cert, key []byte }
	var pairs []pair
	serials := map[string]bool{}
	for i := range 3 {
		c, k, cert, _ := testCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: fmt.Sprintf("system:node:vol-%d", i)},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, ca, caKey)
		pairs = append(pairs, pair{c, k})
		serials[cert.SerialNumber.String()] = true
	}
	store, err := newClientCertStore(logr.Discard(), dir, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Update(pairs[0].cert, pairs[0].key); err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(dir, "node.kubeconfig")
	if err := writeKubeconfig(kubeconfig, &rest.Config{Host: "https://192.0.2.1:6443"}, store.CurrentPath(), store.CurrentPath()); err != nil {
		t.Fatal(err)
	}

	// Readers, each counting its reads, until the updates are done.
	const readers, updates = 2, 100
	var done atomic.Bool
	var reads [readers]atomic.Int64
	errs := make(chan error, readers)
	var wg sync.WaitGroup
	for r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !done.Load() {
				if err := readCurrent(kubeconfig, store.Current, serials); err != nil {
					errs <- err
					return
				}
				reads[r].Add(1)
			}
			errs <- nil
		}()
	}
	// Each update waits for every reader to have read since the one
	// before, so that reads and updates interleave.
	for i := range updates {
		var since [readers]int64
		for r := range readers {
			since[r] = reads[r].Load()
		}
		p := pairs[i%len(pairs)]
		if _, err := store.Update(p.cert, p.key); err != nil {
			t.Fatal(err)
		}
		for r := 0; r < readers && len(errs) == 0; {
			if reads[r].Load() > since[r] {
				r++
			} else {
				runtime.Gosched()
			}
		}
		if len(errs) > 0 {
			break
		}
	}
	done.Store(true)
	wg.Wait()
	for range readers {
		if err := <-errs; err != nil {
			t.Fatalf("while the certificate was updated: %v", err)
		}
	}
}

// readCurrent reads the file that kubeconfig names for the certificate
// and the key (once: two reads of a path replaced in between may be two
// pairs), and the store's current pair: both must be one of serials.
func readCurrent(kubeconfig string, current func() (*tls.Certificate, error), serials map[string]bool) error {
	c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	if c.CertFile != c.KeyFile {
		return fmt.Errorf("the kubeconfig names %s and %s, not one pair", c.CertFile, c.KeyFile)
	}
	data, err := os.ReadFile(c.CertFile)
	if err != nil {
		return err
	}
	kp, err := tls.X509KeyPair(data, data)
	if err != nil {
		return fmt.Errorf("%s: %w", c.CertFile, err)
	}
	if !serials[kp.Leaf.SerialNumber.String()] {
		return fmt.Errorf("%s: serial %s, not one written", c.CertFile, kp.Leaf.SerialNumber)
	}
	cur, err := current()
	if err != nil {
		return fmt.Errorf("the store's current pair: %w", err)
	}
	if !serials[cur.Leaf.SerialNumber.String()] {
		return fmt.Errorf("the store's current pair: serial %s, not one written", cur.Leaf.SerialNumber)
	}
	return nil
}
