package volar

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
)

// setup --tls makes a key (0600) and a certificate for the hosts asked
// for, that load as a pair; run again, it keeps them; a dry run makes
// nothing.
func TestEnsureTLS(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	if it, err := ensureTLS(dir, nil, true); err != nil || it.Status != StatusWouldChange {
		t.Fatalf("dry run: %+v %v", it, err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatal("a dry run made the directory")
	}
	it, err := ensureTLS(dir, []string{"volant.example", "192.0.2.7"}, false)
	if err != nil || it.Status != StatusChanged {
		t.Fatalf("%+v %v", it, err)
	}
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if _, err := tls.LoadX509KeyPair(cert, key); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(key); st.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v", st.Mode())
	}
	b, _ := os.ReadFile(cert)
	blk, _ := pem.Decode(b)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil || c.VerifyHostname("volant.example") != nil || c.VerifyHostname("192.0.2.7") != nil || c.VerifyHostname("other.example") == nil {
		t.Fatalf("names %v %v: %v", c.DNSNames, c.IPAddresses, err)
	}
	before, _ := os.ReadFile(key)
	if it, err := ensureTLS(dir, nil, false); err != nil || it.Status != StatusOK {
		t.Fatalf("again: %+v %v", it, err)
	}
	if after, _ := os.ReadFile(key); string(after) != string(before) {
		t.Fatal("the key was replaced")
	}
}
