package secretbox

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
)

func TestSealOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d", "secrets.key")
	k, err := LoadOrCreate(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 || st.Size() != KeySize {
		t.Fatalf("key file: %v %v", st, err)
	}
	if st, _ := os.Stat(filepath.Dir(path)); st.Mode().Perm() != 0o700 {
		t.Errorf("key dir mode %v", st.Mode())
	}
	secret := []byte("hunter2-the-secret")
	a, err := k.Seal(secret, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := k.Seal(secret, "vm1")
	if bytes.Equal(a, b) {
		t.Error("two seals of one secret are equal: the nonce is not fresh")
	}
	if bytes.Contains(a, secret) || bytes.Contains(a, secret[:8]) {
		t.Error("the sealed record holds the plaintext")
	}
	got, err := k.Open(a, "vm1")
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("open: %q %v", got, err)
	}

	// Another owner, a changed byte, a short record, another key: refused.
	if _, err := k.Open(a, "vm2"); !apierr.Is(err, apierr.DataCorrupt) {
		t.Errorf("opened for another owner: %v", err)
	}
	for i := range a {
		c := bytes.Clone(a)
		c[i] ^= 0x40
		if _, err := k.Open(c, "vm1"); !apierr.Is(err, apierr.DataCorrupt) {
			t.Fatalf("byte %d changed: %v", i, err)
		}
	}
	if _, err := k.Open(a[:10], "vm1"); !apierr.Is(err, apierr.DataCorrupt) {
		t.Errorf("short record: %v", err)
	}
	other, _ := LoadOrCreate(filepath.Join(t.TempDir(), "other.key"))
	if other.ID() == k.ID() {
		t.Error("two new keys have one id")
	}
	if _, err := other.Open(a, "vm1"); !apierr.Is(err, apierr.DataCorrupt) {
		t.Errorf("opened under another key: %v", err)
	}

	// Loading again gives the same key.
	k2, err := LoadOrCreate(path)
	if err != nil || k2.ID() != k.ID() {
		t.Fatalf("reload: %v %v", k2, err)
	}
	if got, err := k2.Open(a, "vm1"); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("reloaded key: %q %v", got, err)
	}
}

func TestLoadRefuses(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "secrets.key")
	if _, err := LoadOrCreate(path); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o640)
	if _, err := Load(path); !apierr.Is(err, apierr.PermissionDenied) {
		t.Errorf("a group-readable key: %v", err)
	}
	if _, err := LoadOrCreate(path); !apierr.Is(err, apierr.PermissionDenied) {
		t.Errorf("LoadOrCreate replaced or took a group-readable key: %v", err)
	}
	short := filepath.Join(dir, "short.key")
	os.WriteFile(short, make([]byte, 16), 0o600)
	if _, err := Load(short); !apierr.Is(err, apierr.DataCorrupt) {
		t.Errorf("a 16-byte key: %v", err)
	}
	long := filepath.Join(dir, "long.key")
	os.WriteFile(long, make([]byte, 33), 0o600)
	if _, err := Load(long); !apierr.Is(err, apierr.DataCorrupt) {
		t.Errorf("a 33-byte key: %v", err)
	}
}

// TestCreateRace: first uses at once agree on one key.
func TestCreateRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secrets.key")
	ids := make([]string, 8)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k, err := LoadOrCreate(path)
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = k.ID()
		}()
	}
	wg.Wait()
	for _, id := range ids[1:] {
		if id != ids[0] {
			t.Fatalf("keys differ: %v", ids)
		}
	}
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".secrets-key-*"))
	if len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}
