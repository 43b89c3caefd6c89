package controller

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/signing"
)

// Signed plugins. A plugin may be installed with the minisign signature of
// its manifest (fledge build --sign); the manifest holds every artifact's
// sha256, so the signature pins the whole plugin. With TrustedKeys the
// signature must verify with one of the keys there; with RequireSigned a
// plugin without one is refused. Both are checked at install and again
// before every boot (stepStage): the stored manifest must still be the one
// the signature covers, and the keys are read again, so a key removed from
// the directory stops the plugins it signed from booting.

// keyring reads the trusted keys (nil without Config.TrustedKeys).
func (c *Controller) keyring() (*signing.Keyring, error) {
	if c.cfg.TrustedKeys == "" {
		return nil, nil
	}
	return signing.LoadKeys(c.cfg.TrustedKeys)
}

// checkInstallSignature checks the signature an install came with and
// returns the ID of the trusted key that verified it ("" when there are no
// trusted keys to verify with, or no signature and none is required).
func (c *Controller) checkInstallSignature(data, sig []byte) (string, error) {
	if sig == nil {
		if c.cfg.RequireSigned {
			return "", signatureRequired("")
		}
		return "", nil
	}
	info, err := signing.Parse(sig)
	if err != nil {
		return "", err
	}
	keys, err := c.keyring()
	if err != nil || keys == nil {
		return "", err
	}
	if info, err = keys.Verify(data, sig); err != nil {
		return "", err
	}
	return info.KeyID, nil
}

func signatureRequired(plugin string) error {
	msg := "volantd requires signed plugins (--require-signed), and this manifest comes without a signature"
	e := apierr.New(apierr.SignatureRequired, "%s", msg)
	if plugin != "" {
		e = apierr.New(apierr.SignatureRequired, "plugin %s was installed without a signature, and volantd requires signed plugins (--require-signed); refusing to boot it", plugin).
			With("plugin", plugin)
	}
	return e.With("hint", "sign the manifest with `fledge build --sign KEY` and install it with its .minisig next to it")
}

// signedChecksums refuses a signed manifest that leaves an artifact's
// checksum out: its signature would not pin that artifact.
func signedChecksums(m *manifest.Manifest) error {
	var probs []manifest.Problem
	if m.Initramfs != nil && m.Initramfs.Checksum == "" {
		probs = append(probs, manifest.Problem{Field: "initramfs.checksum", Message: "required in a signed manifest"})
	}
	if m.Rootfs != nil && m.Rootfs.Checksum == "" {
		probs = append(probs, manifest.Problem{Field: "rootfs.checksum", Message: "required in a signed manifest"})
	}
	for i, d := range m.Disks {
		if d.Checksum == "" {
			probs = append(probs, manifest.Problem{Field: fmt.Sprintf("disks[%d].checksum", i), Message: "required in a signed manifest"})
		}
	}
	if len(probs) == 0 {
		return nil
	}
	return apierr.New(apierr.InvalidManifest, "plugin %s: a signed manifest must give every artifact's checksum, or its signature does not cover the artifact", m.Name).
		With("errors", probs)
}

// checkBootSignature verifies a plugin's signature before one of its VMs
// boots: the signature over the manifest text it was installed from, with
// the trusted keys as they are now, and that the stored manifest (which
// the VM boots) says what that text says, apart from the artifact
// locations install rewrote. Artifacts are checked against the checksums
// by the launch itself.
func (c *Controller) checkBootSignature(p pluginRow) error {
	if c.cfg.TrustedKeys == "" && !c.cfg.RequireSigned {
		return nil
	}
	if len(p.Signature) == 0 {
		if c.cfg.RequireSigned {
			return signatureRequired(p.Name)
		}
		return nil
	}
	keys, err := c.keyring()
	if err != nil {
		return err
	}
	if keys != nil {
		if _, err := keys.Verify(p.SignedManifest, p.Signature); err != nil {
			e := apierr.From(err)
			e.Message = "plugin " + p.Name + ": " + e.Message + "; refusing to boot it"
			return e.With("plugin", p.Name)
		}
	}
	want, err := comparable(p.SignedManifest, true)
	if err == nil {
		var got []byte
		if got, err = comparable(p.Manifest, false); err == nil && !bytes.Equal(got, want) {
			err = fmt.Errorf("the stored manifest differs from the one the signature covers")
		}
	}
	if err != nil {
		return apierr.New(apierr.SignatureInvalid, "plugin %s: %s; refusing to boot it", p.Name, err.Error()).
			With("plugin", p.Name).With("reason", "manifest_changed")
	}
	return nil
}

// comparable is a manifest as JSON without what install changes: artifact
// locations and the enabled flag (a column of its own).
func comparable(raw []byte, parse bool) ([]byte, error) {
	var m *manifest.Manifest
	var err error
	if parse {
		m, err = manifest.Parse(raw)
	} else {
		m, err = manifest.Decode(raw)
	}
	if err != nil {
		return nil, err
	}
	m.Normalize()
	m.Enabled = nil
	if m.Initramfs != nil {
		m.Initramfs.URL = ""
	}
	if m.Rootfs != nil {
		m.Rootfs.URL = ""
	}
	for i := range m.Disks {
		m.Disks[i].Source = ""
	}
	return json.Marshal(m)
}
