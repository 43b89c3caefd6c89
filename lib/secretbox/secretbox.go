// Package secretbox seals small secrets for storage at rest: AES-256-GCM
// (the standard library's) under a 32-byte key kept in a file of its own,
// mode 0600, apart from the database that holds the sealed records.
//
// Each record is sealed with a fresh random 96-bit nonce and the record's
// owner (for volantd, the VM's name) as associated data, so a record copied
// to another owner's row does not open, and a changed byte anywhere is an
// error (DATA_CORRUPT), never a wrong secret. A sealed record is
//
//	0x01 || nonce (12 bytes) || ciphertext and tag
//
// The key file is made on first use (LoadOrCreate) from crypto/rand, written
// under a temporary name and linked into place, so a crash never leaves a
// short key and two first uses agree on one key. A key file that others can
// read, that another user owns, or that is not 32 bytes is refused: the
// database alone, backed up or copied, reveals nothing without it.
package secretbox

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/volantvm/volant/lib/apierr"
)

// KeySize is the key file's length: an AES-256 key.
const KeySize = 32

const (
	version   = 1
	nonceSize = 12
)

// Key seals and opens records.
type Key struct {
	aead cipher.AEAD
	id   string
}

// New makes a Key of 32 bytes of key material.
func New(key []byte) (*Key, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("a secrets key is %d bytes, not %d", KeySize, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(append([]byte("volant secrets key id\x00"), key...))
	return &Key{aead: aead, id: hex.EncodeToString(sum[:8])}, nil
}

// ID names the key without revealing it (16 hex digits of a hash of it), so
// a record can say which key sealed it.
func (k *Key) ID() string { return k.id }

// Seal seals plaintext for owner.
func (k *Key) Seal(plaintext []byte, owner string) ([]byte, error) {
	out := make([]byte, 1+nonceSize, 1+nonceSize+len(plaintext)+k.aead.Overhead())
	out[0] = version
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, fmt.Errorf("a nonce: %w", err)
	}
	return k.aead.Seal(out, out[1:], plaintext, ad(owner)), nil
}

// Open opens a record Seal made for owner. A record made for another owner,
// under another key, or changed is DATA_CORRUPT.
func (k *Key) Open(sealed []byte, owner string) ([]byte, error) {
	if len(sealed) < 1+nonceSize+k.aead.Overhead() || sealed[0] != version {
		return nil, apierr.New(apierr.DataCorrupt, "a sealed secret of %s is malformed", owner).With("owner", owner)
	}
	out, err := k.aead.Open(nil, sealed[1:1+nonceSize], sealed[1+nonceSize:], ad(owner))
	if err != nil {
		return nil, apierr.New(apierr.DataCorrupt, "a sealed secret of %s does not open with key %s (changed, moved, or sealed under another key)", owner, k.id).
			With("owner", owner).With("key_id", k.id)
	}
	return out, nil
}

func ad(owner string) []byte { return append([]byte("volant secret v1\x00"), owner...) }

// Load reads the key file at path: 32 bytes, owned by this user, readable
// by nobody else.
func Load(path string) (*Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("the secrets key: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("the secrets key: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, apierr.New(apierr.InvalidInput, "the secrets key %s is not a regular file", path).With("path", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, apierr.New(apierr.PermissionDenied, "the secrets key %s has mode %#o: others may read it; make it 0600 (chmod 600 %s)", path, perm, path).
			With("path", path).With("mode", fmt.Sprintf("%#o", perm))
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		return nil, apierr.New(apierr.PermissionDenied, "the secrets key %s belongs to uid %d, not to this user (%d)", path, sys.Uid, os.Geteuid()).
			With("path", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, KeySize+1))
	if err != nil {
		return nil, fmt.Errorf("the secrets key: %w", err)
	}
	if len(b) != KeySize {
		return nil, apierr.New(apierr.DataCorrupt, "the secrets key %s is not %d bytes", path, KeySize).With("path", path)
	}
	return New(b)
}

// LoadOrCreate loads the key file at path, making it first when there is
// none: 32 bytes from crypto/rand, mode 0600, in a directory made 0700 if
// missing. The new key is written and synced under a temporary name and
// linked to path, so a concurrent first use loads the same key.
func LoadOrCreate(path string) (*Key, error) {
	k, err := Load(path)
	if !errors.Is(err, os.ErrNotExist) {
		return k, err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("the secrets key: %w", err)
	}
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("the secrets key: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".secrets-key-*")
	if err != nil {
		return nil, fmt.Errorf("the secrets key: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err == nil {
		if _, err = tmp.Write(key); err == nil {
			err = tmp.Sync()
		}
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("writing the secrets key: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, os.ErrExist) {
			return Load(path) // made meanwhile
		}
		return nil, fmt.Errorf("the secrets key: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return Load(path)
}
