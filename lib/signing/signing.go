// Package signing signs plugin manifests and verifies their signatures
// with minisign keys (aead.dev/minisign: Ed25519 signatures in the format
// of Frank Denis's minisign tool, so `minisign -Vm web.manifest.json -p
// key.pub` checks what fledge signed, and keys made by `minisign -G` sign
// with fledge).
//
// A signature is a detached file next to what it signs, named with
// SignatureSuffix (web.manifest.json.minisig). It covers the manifest's
// bytes exactly as written, and the manifest holds every artifact's
// sha256, so one signature pins the whole plugin.
package signing

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"aead.dev/minisign"

	"github.com/volantvm/volant/lib/apierr"
)

// SignatureSuffix names a signature file after the file it signs.
const SignatureSuffix = ".minisig"

// PublicKeySuffix names the public half of a key pair after its private key
// file; --trusted-keys directories hold files with this suffix.
const PublicKeySuffix = ".pub"

// PasswordEnv is the environment variable that holds the password of an
// encrypted private key (one made by `minisign -G`).
const PasswordEnv = "MINISIGN_PASSWORD"

// KeyID formats a minisign key ID as minisign prints it.
func KeyID(id uint64) string { return strings.ToUpper(strconv.FormatUint(id, 16)) }

// KeyPair is a new key pair in minisign's text formats.
type KeyPair struct {
	ID      string
	Public  []byte // "untrusted comment: minisign public key: <ID>\n<base64>"
	Private []byte // not encrypted: keep the file 0600
}

// GenerateKey makes a key pair from random.
func GenerateKey(random io.Reader) (KeyPair, error) {
	if random == nil {
		random = rand.Reader
	}
	pub, priv, err := minisign.GenerateKey(random)
	if err != nil {
		return KeyPair{}, fmt.Errorf("generating a key: %w", err)
	}
	pubText, err := pub.MarshalText()
	if err != nil {
		return KeyPair{}, err
	}
	privText, err := priv.MarshalText()
	if err != nil {
		return KeyPair{}, err
	}
	return KeyPair{ID: KeyID(pub.ID()), Public: append(pubText, '\n'), Private: append(privText, '\n')}, nil
}

// ReadPrivateKey reads a private key file; an encrypted one (minisign -G
// without -W) is decrypted with password.
func ReadPrivateKey(path, password string) (minisign.PrivateKey, error) {
	var key minisign.PrivateKey
	data, err := os.ReadFile(path)
	if err != nil {
		return key, apierr.Wrap(apierr.CodeOf(err), err, "reading the signing key")
	}
	if minisign.IsEncrypted(data) {
		if password == "" {
			return key, apierr.New(apierr.Usage, "the signing key %s is encrypted", path).
				With("hint", "give its password in $"+PasswordEnv)
		}
		key, err = minisign.DecryptKey(password, data)
		if err != nil {
			return key, apierr.New(apierr.PermissionDenied, "the signing key %s does not decrypt with the password given", path)
		}
		return key, nil
	}
	if err := key.UnmarshalText(bytes.TrimSpace(data)); err != nil {
		return key, apierr.New(apierr.InvalidInput, "%s is not a minisign private key", path).With("path", path)
	}
	return key, nil
}

// Sign signs message as `minisign -S` does (Ed25519 over its BLAKE2b-512
// hash), with trustedComment signed along. The signature is deterministic:
// the same key, message and comment give the same bytes.
func Sign(key minisign.PrivateKey, message []byte, trustedComment string) []byte {
	r := minisign.NewReader(bytes.NewReader(message))
	_, _ = io.Copy(io.Discard, r) // reading from memory cannot fail
	return r.SignWithComments(key, trustedComment, "signature from minisign secret key")
}

// Info is what a signature says about itself.
type Info struct {
	KeyID          string
	TrustedComment string
}

// Parse reads a signature's key ID and trusted comment without checking it.
func Parse(sig []byte) (Info, error) {
	var s minisign.Signature
	if err := s.UnmarshalText(bytes.TrimSpace(sig)); err != nil {
		return Info{}, apierr.New(apierr.SignatureInvalid, "the signature is not a minisign signature").With("reason", "malformed")
	}
	return Info{KeyID: KeyID(s.KeyID), TrustedComment: s.TrustedComment}, nil
}

// Keyring is a directory's trusted public keys.
type Keyring struct {
	Dir  string
	keys map[uint64]minisign.PublicKey
}

// LoadKeys reads every *.pub file of dir as a minisign public key. A
// directory without one, or a file that is not a key, is USAGE: an
// operator who names a directory of trusted keys means some.
func LoadKeys(dir string) (*Keyring, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, apierr.Wrap(apierr.Usage, err, "reading the trusted keys directory")
	}
	k := &Keyring{Dir: dir, keys: map[uint64]minisign.PublicKey{}}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), PublicKeySuffix) || e.IsDir() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(p)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // removed while listing
			}
			return nil, apierr.Wrap(apierr.Usage, err, "reading trusted key "+p)
		}
		var pub minisign.PublicKey
		if err := pub.UnmarshalText(bytes.TrimSpace(data)); err != nil {
			return nil, apierr.New(apierr.Usage, "trusted key %s is not a minisign public key", p).With("path", p)
		}
		k.keys[pub.ID()] = pub
	}
	if len(k.keys) == 0 {
		return nil, apierr.New(apierr.Usage, "the trusted keys directory %s holds no *%s minisign public key", dir, PublicKeySuffix).
			With("hint", "copy the .pub file `fledge keygen` wrote there")
	}
	return k, nil
}

// IDs lists the keyring's key IDs, sorted.
func (k *Keyring) IDs() []string {
	out := make([]string, 0, len(k.keys))
	for id := range k.keys {
		out = append(out, KeyID(id))
	}
	sort.Strings(out)
	return out
}

// Verify checks that sig signs message with one of the keyring's keys and
// returns what it says. Every failure is SIGNATURE_INVALID, with
// details.reason: "malformed", "untrusted_key" (no trusted key has the
// signature's ID) or "mismatch" (the key is trusted but the message or
// the signature changed since signing).
func (k *Keyring) Verify(message, sig []byte) (Info, error) {
	info, err := Parse(sig)
	if err != nil {
		return info, err
	}
	var s minisign.Signature
	_ = s.UnmarshalText(bytes.TrimSpace(sig)) // Parse succeeded
	pub, ok := k.keys[s.KeyID]
	if !ok {
		return info, apierr.New(apierr.SignatureInvalid, "the signature's key %s is not one of the trusted keys in %s", info.KeyID, k.Dir).
			With("reason", "untrusted_key").With("key_id", info.KeyID).With("trusted_keys", k.IDs())
	}
	if !minisign.Verify(pub, message, bytes.TrimSpace(sig)) {
		return info, apierr.New(apierr.SignatureInvalid, "the signature by key %s does not match: the manifest or its signature changed after signing", info.KeyID).
			With("reason", "mismatch").With("key_id", info.KeyID)
	}
	return info, nil
}

// WriteKeyPair makes a key pair and writes the private key to path (mode
// 0600, created new: an existing file is CONFLICT, never overwritten) and
// the public key to path.pub (0644).
func WriteKeyPair(path string) (KeyPair, error) {
	kp, err := GenerateKey(nil)
	if err != nil {
		return kp, err
	}
	pubPath := path + PublicKeySuffix
	for _, p := range []string{path, pubPath} {
		if _, err := os.Lstat(p); err == nil {
			return kp, apierr.New(apierr.Conflict, "%s exists; a key is never overwritten", p).With("path", p)
		}
	}
	if err := writeNew(path, kp.Private, 0o600); err != nil {
		return kp, err
	}
	if err := writeNew(pubPath, kp.Public, 0o644); err != nil {
		os.Remove(path)
		return kp, err
	}
	return kp, nil
}

// writeNew writes a file that must not exist yet, synced.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return apierr.New(apierr.Conflict, "%s exists; a key is never overwritten", path).With("path", path)
		}
		return apierr.Wrap(apierr.CodeOf(err), err, "writing "+path)
	}
	if _, err = f.Write(data); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
