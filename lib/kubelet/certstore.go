package kubelet

import (
	"bytes"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/google/renameio/v2"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/certificate"
)

// clientCertStore keeps the node's client certificates in a directory as
// client-go's certificate.FileStore does (and reads them with it: the
// current pair, else the kubeconfig's files, else an earlier
// volant-kubelet's ClientCertPrefix.crt and .key), but replaces the
// current pair atomically. The FileStore's Update removes
// ClientCertPrefix-current.pem before it renames the new symlink there,
// and writes a pair renewed within the same second over the file in use:
// whoever reads the node's kubeconfig at that moment (kubectl, a
// volant-kubelet restarting) finds no certificate, or half of one.
//
// Here each pair is written whole to its dated file (temp + fsync +
// rename) and ClientCertPrefix-current.pem is made to point at it by one
// rename(2) of a new symlink over the old one, the directory fsync'd
// after each step: at every moment, a crash included, the current path
// is the old pair or the new one. Current reads that path once (the
// FileStore opens it twice, for the certificate and for the key, which
// may be two pairs when it is replaced in between).
//
// A reader opening the path twice itself (kubectl reads a kubeconfig's
// client-certificate and client-key) may still, at the moment of a
// renewal, get the old certificate and the new key, and says so
// ("private key does not match public key"); a second try reads one pair.
type clientCertStore struct {
	certificate.FileStore
	dir string
	log logr.Logger
	mu  sync.Mutex // one update at a time
}

// newClientCertStore is the store of the client certificates in dir,
// certFile and keyFile the pair the node's kubeconfig names (read when
// dir has no current one).
func newClientCertStore(log logr.Logger, dir, certFile, keyFile string) (*clientCertStore, error) {
	fs, err := certificate.NewFileStoreWithLogger(log, ClientCertPrefix, dir, dir, certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return &clientCertStore{FileStore: fs, dir: dir, log: log}, nil
}

// Current is the pair ClientCertPrefix-current.pem points at, else the
// FileStore's (the kubeconfig's files, an earlier volant-kubelet's .crt
// and .key).
func (s *clientCertStore) Current() (*tls.Certificate, error) {
	path := s.CurrentPath()
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return s.FileStore.Current()
	}
	if err != nil {
		return nil, err
	}
	s.log.Info("Loading cert/key pair from a file", "filePath", path)
	cert, err := tls.X509KeyPair(data, data)
	if err != nil {
		return nil, fmt.Errorf("the node's certificate and key in %s: %w", path, err)
	}
	return &cert, nil
}

// Update writes the certificate chain and its key to
// ClientCertPrefix-<time>.pem (mode 0600) and makes it the current pair.
func (s *clientCertStore) Update(certData, keyData []byte) (*tls.Certificate, error) {
	certs, err := certutil.ParseCertsPEM(certData)
	if err != nil {
		return nil, fmt.Errorf("invalid certificate data: %w", err)
	}
	keyBlock, _ := pem.Decode(keyData)
	if keyBlock == nil {
		return nil, errors.New("invalid key data: no PEM block")
	}
	var b bytes.Buffer
	for _, c := range certs {
		if err := pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}); err != nil {
			return nil, err
		}
	}
	if err := pem.Encode(&b, keyBlock); err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(b.Bytes(), b.Bytes()) // and its Leaf
	if err != nil {
		return nil, fmt.Errorf("the new certificate and key: %w", err)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(s.dir) // the symlink's target, whatever the working directory
	if err != nil {
		return nil, err
	}
	current := s.CurrentPath()
	if fi, err := os.Lstat(current); err == nil && fi.Mode()&os.ModeSymlink == 0 {
		return nil, fmt.Errorf("%s is not a symlink: not replacing it", current)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	pair := filepath.Join(dir, ClientCertPrefix+"-"+time.Now().Format("2006-01-02-15-04-05")+".pem")
	if err := renameio.WriteFile(pair, b.Bytes(), 0o600, renameio.WithTempDir(dir)); err != nil {
		return nil, fmt.Errorf("writing the node's certificate: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return nil, err
	}
	if err := renameio.Symlink(pair, current); err != nil {
		return nil, fmt.Errorf("pointing %s at %s: %w", current, pair, err)
	}
	if err := syncDir(dir); err != nil {
		return nil, err
	}
	return &cert, nil
}

// syncDir makes the names created, renamed or removed in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}
