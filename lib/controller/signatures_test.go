package controller_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/controller/controllertest"
	"github.com/volantvm/volant/lib/signing"
)

// signer is a key pair whose public half may be trusted.
type signer struct {
	t    *testing.T
	kp   signing.KeyPair
	priv string
}

func newSigner(t *testing.T, dir, name string) *signer {
	t.Helper()
	priv := filepath.Join(dir, name)
	kp, err := signing.WriteKeyPair(priv)
	if err != nil {
		t.Fatal(err)
	}
	return &signer{t: t, kp: kp, priv: priv}
}

func (s *signer) sign(m []byte) []byte {
	s.t.Helper()
	k, err := signing.ReadPrivateKey(s.priv, "")
	if err != nil {
		s.t.Fatal(err)
	}
	return signing.Sign(k, m, "test")
}

func (s *signer) trust(dir string) {
	s.t.Helper()
	os.MkdirAll(dir, 0o755)
	if err := os.WriteFile(filepath.Join(dir, filepath.Base(s.priv)+".pub"), s.kp.Public, 0o644); err != nil {
		s.t.Fatal(err)
	}
}

// signedManifest writes an artifact into the plugins directory and returns
// a manifest naming it with its checksum, indented as fledge writes it.
func signedManifest(t *testing.T, dir, name string) []byte {
	t.Helper()
	art, sum := localArtifact(dir, name+".img", name)
	return []byte(fmt.Sprintf("{\n  \"name\": %q,\n  \"version\": \"1.0.0\",\n  \"initramfs\": {\"url\": %q, \"checksum\": \"sha256:%s\"},\n"+
		"  \"workload\": {\"entrypoint\": [\"/app\"]},\n  \"network\": {\"mode\": \"none\"}\n}\n", name, art, sum))
}

func wantReason(t *testing.T, what string, err error, code apierr.Code, reason string) {
	t.Helper()
	if !apierr.Is(err, code) {
		t.Fatalf("%s: %v, want %s", what, err, code)
	}
	if got := apierr.From(err).Details["reason"]; reason != "" && got != reason {
		t.Fatalf("%s: reason %v, want %s (%v)", what, got, reason, err)
	}
}

// TestSignedPlugins: with trusted keys and --require-signed, a plugin
// signed by a trusted key installs and boots; an unsigned one, one whose
// manifest changed by one byte, one signed by another key, an image build
// and a signed manifest that leaves a checksum out are refused at install
// and nothing is recorded. Changed after install (its stored manifest,
// or its key no longer trusted), a plugin is refused at boot before a
// hypervisor starts.
func TestSignedPlugins(t *testing.T) {
	f := newFixture(t)
	keys := filepath.Join(f.dir, "trusted")
	ci := newSigner(t, f.dir, "ci")
	spare := newSigner(t, f.dir, "spare") // keeps the directory non-empty when ci leaves it
	stranger := newSigner(t, f.dir, "stranger")
	ci.trust(keys)
	spare.trust(keys)

	if _, err := controller.New(controller.Config{Store: f.st, Runtime: f.rt, RequireSigned: true}); !apierr.Is(err, apierr.Usage) {
		t.Fatalf("require signed without keys: %v", err)
	}
	if _, err := controller.New(controller.Config{Store: f.st, Runtime: f.rt, TrustedKeys: f.dir + "/no-such-dir"}); !apierr.Is(err, apierr.Usage) {
		t.Fatalf("a trusted keys directory that is not there: %v", err)
	}
	c, _ := f.controllerWith(controller.Config{Prober: controllertest.NewProber(), MaxBooting: -1, TrustedKeys: keys, RequireSigned: true})

	m := signedManifest(t, f.dir, "web")
	sig := ci.sign(m)
	p, err := c.InstallSignedPlugin(f.ctx, m, sig, false)
	if err != nil {
		t.Fatal(err)
	}
	if p.Signature == nil || !p.Signature.Verified || p.Signature.KeyID != ci.kp.ID || p.Signature.TrustedComment != "test" {
		t.Fatalf("signature of the installed plugin: %+v", p.Signature)
	}
	if got, _ := c.Plugin(f.ctx, "web"); got.Signature == nil || got.Signature.KeyID != ci.kp.ID {
		t.Fatalf("GET plugin: %+v", got.Signature)
	}
	if _, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "v1", Plugin: "web"}); err != nil {
		t.Fatalf("a signed plugin's VM: %v", err)
	}

	// Refused at install; nothing recorded.
	other := signedManifest(t, f.dir, "other")
	_, err = c.InstallPlugin(f.ctx, other, false)
	wantReason(t, "unsigned", err, apierr.SignatureRequired, "")
	tampered := bytes.Replace(m, []byte(`"1.0.0"`), []byte(`"1.0.1"`), 1)
	if bytes.Equal(tampered, m) || len(tampered) != len(m) {
		t.Fatal("the test's tampering changed nothing")
	}
	_, err = c.InstallSignedPlugin(f.ctx, tampered, sig, true)
	wantReason(t, "one byte changed", err, apierr.SignatureInvalid, "mismatch")
	_, err = c.InstallSignedPlugin(f.ctx, other, stranger.sign(other), false)
	wantReason(t, "an untrusted key", err, apierr.SignatureInvalid, "untrusted_key")
	_, err = c.InstallSignedPlugin(f.ctx, other, []byte("untrusted comment: x\nnot a signature\n"), false)
	wantReason(t, "garbage", err, apierr.SignatureInvalid, "malformed")
	noSum := []byte(fmt.Sprintf(`{"name":"nosum","version":"1","initramfs":{"url":%q},"workload":{"entrypoint":["/a"]}}`, filepath.Join(f.dir, "plugins", "other.img")))
	_, err = c.InstallSignedPlugin(f.ctx, noSum, ci.sign(noSum), false)
	wantReason(t, "a signed manifest without a checksum", err, apierr.InvalidManifest, "")
	if _, _, err := c.InstallImage(f.ctx, api.InstallImageRequest{Image: "docker://registry.example/web:1"}); !apierr.Is(err, apierr.SignatureRequired) {
		t.Fatalf("an image build: %v", err)
	}
	if ps, _ := c.ListPlugins(f.ctx); len(ps) != 1 {
		t.Fatalf("refused installs recorded plugins: %d", len(ps))
	}
	if p, _ := c.Plugin(f.ctx, "web"); p.Version != "1.0.0" {
		t.Fatalf("a refused replace changed the plugin: %s", p.Version)
	}

	// Changed after install: refused at the next boot.
	if _, err := c.StopVM(f.ctx, "v1"); err != nil {
		t.Fatal(err)
	}
	starts := f.rt.Starts("v1")
	f.exec(`UPDATE plugins SET manifest = json_set(manifest, '$.workload.entrypoint[0]', '/evil') WHERE name = 'web'`)
	_, err = c.StartVM(f.ctx, "v1")
	wantReason(t, "a stored manifest changed", err, apierr.SignatureInvalid, "manifest_changed")
	// Both the manifest and the text it was signed as: the signature no
	// longer matches.
	f.exec(`UPDATE plugins SET signed_manifest = replace(signed_manifest, '"/app"', '"/evil"') WHERE name = 'web'`)
	_, err = c.StartVM(f.ctx, "v1")
	wantReason(t, "the signed text changed too", err, apierr.SignatureInvalid, "mismatch")
	if got := f.rt.Starts("v1"); got != starts {
		t.Fatalf("a refused plugin's hypervisor started (%d starts, %d before)", got, starts)
	}
	// Put back, it boots again; then its key leaves the trusted directory.
	f.exec(`UPDATE plugins SET manifest = json_set(manifest, '$.workload.entrypoint[0]', '/app'), signed_manifest = ? WHERE name = 'web'`, string(m))
	if _, err := c.StartVM(f.ctx, "v1"); err != nil {
		t.Fatalf("restored: %v", err)
	}
	if _, err := c.StopVM(f.ctx, "v1"); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(keys, "ci.pub"))
	_, err = c.StartVM(f.ctx, "v1")
	wantReason(t, "its key no longer trusted", err, apierr.SignatureInvalid, "untrusted_key")
	// An unsigned plugin recorded before signatures were required.
	f.exec(`UPDATE plugins SET signature = NULL, signed_manifest = NULL, signed_by = NULL WHERE name = 'web'`)
	_, err = c.StartVM(f.ctx, "v1")
	wantReason(t, "unsigned at boot", err, apierr.SignatureRequired, "")
}

// TestSignatureWithoutTrustedKeys: a volantd without --trusted-keys keeps
// a signature it cannot verify, says so, and installs unsigned plugins.
func TestSignatureWithoutTrustedKeys(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controller()
	s := newSigner(t, f.dir, "k")
	m := signedManifest(t, f.dir, "web")
	p, err := c.InstallSignedPlugin(f.ctx, m, s.sign(m), false)
	if err != nil || p.Signature == nil || p.Signature.Verified || p.Signature.KeyID != s.kp.ID {
		t.Fatalf("%v %+v", err, p)
	}
	if _, err := c.InstallPlugin(f.ctx, signedManifest(t, f.dir, "plain"), false); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "v1", Plugin: "web"}); err != nil {
		t.Fatal(err)
	}
}
