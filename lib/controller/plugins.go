package controller

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/names"
	"github.com/volantvm/volant/lib/signing"
	"github.com/volantvm/volant/lib/store"
)

type pluginRow struct {
	Name      string
	Version   string
	Runtime   string
	Manifest  []byte
	Enabled   bool
	CreatedAt time.Time
	UpdatedAt time.Time
	// SignedManifest and Signature are what a signed plugin was installed
	// from; SignedBy the trusted key that verified it then (signatures.go).
	SignedManifest []byte
	Signature      []byte
	SignedBy       string
}

func (p pluginRow) toAPI() api.Plugin {
	var img struct {
		Image       string `json:"image"`
		ImageDigest string `json:"image_digest"`
	}
	_ = json.Unmarshal(p.Manifest, &img) // the stored manifest was valid JSON when installed
	out := api.Plugin{Name: p.Name, Version: p.Version, Runtime: p.Runtime, Enabled: p.Enabled,
		Manifest: json.RawMessage(p.Manifest), Image: img.Image, ImageDigest: img.ImageDigest,
		CreatedAt: p.CreatedAt, UpdatedAt: p.UpdatedAt}
	if len(p.Signature) > 0 {
		info, _ := signing.Parse(p.Signature) // parsed at install
		out.Signature = &api.PluginSignature{KeyID: info.KeyID, TrustedComment: info.TrustedComment, Verified: p.SignedBy != ""}
	}
	return out
}

const pluginColumns = `name, version, runtime, manifest, enabled, created_at, updated_at, signed_manifest, signature, signed_by`

func scanPlugin(r rowScanner) (pluginRow, error) {
	var p pluginRow
	var m, created, updated string
	var signed, sig, by sql.NullString
	var enabled int
	if err := r.Scan(&p.Name, &p.Version, &p.Runtime, &m, &enabled, &created, &updated, &signed, &sig, &by); err != nil {
		return p, err
	}
	p.Manifest, p.Enabled = []byte(m), enabled == 1
	if sig.Valid {
		p.SignedManifest, p.Signature, p.SignedBy = []byte(signed.String), []byte(sig.String), by.String
	}
	var err error
	if p.CreatedAt, err = store.ParseTime(created); err != nil {
		return p, err
	}
	p.UpdatedAt, err = store.ParseTime(updated)
	return p, err
}

func getPlugin(ctx context.Context, q querier, name string) (pluginRow, error) {
	p, err := scanPlugin(q.QueryRowContext(ctx, `SELECT `+pluginColumns+` FROM plugins WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return p, apierr.New(apierr.NotFound, "no plugin named %s is installed", name).With("plugin", name)
	}
	if err != nil {
		return p, fmt.Errorf("reading plugin %s: %w", name, err)
	}
	return p, nil
}

// ListPlugins returns the installed plugins by name.
func (c *Controller) ListPlugins(ctx context.Context) ([]api.Plugin, error) {
	out := []api.Plugin{}
	err := c.st.Read(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT `+pluginColumns+` FROM plugins ORDER BY name`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			p, err := scanPlugin(rows)
			if err != nil {
				return err
			}
			out = append(out, p.toAPI())
		}
		return rows.Err()
	})
	if err != nil {
		return nil, internal(err, "listing plugins")
	}
	return out, nil
}

// Plugin returns one plugin.
func (c *Controller) Plugin(ctx context.Context, name string) (*api.Plugin, error) {
	var p pluginRow
	err := c.st.Read(ctx, func(tx *sql.Tx) error {
		var err error
		p, err = getPlugin(ctx, tx, name)
		return err
	})
	if err != nil {
		return nil, err
	}
	out := p.toAPI()
	return &out, nil
}

// PluginManifest returns a plugin's manifest as installed.
func (c *Controller) PluginManifest(ctx context.Context, name string) (json.RawMessage, error) {
	p, err := c.Plugin(ctx, name)
	if err != nil {
		return nil, err
	}
	return p.Manifest, nil
}

// InstallPlugin validates a manifest, fetches its remote artifacts into
// <data>/plugins/<name>/ (rewriting their URLs to the local copies),
// verifies every artifact's checksum, and records the plugin. With
// Config.RequireSigned it is SIGNATURE_REQUIRED: see InstallSignedPlugin. Local
// artifacts must be regular files inside ArtifactDirs (PERMISSION_DENIED
// otherwise, whatever is at the path). A name that is installed already is
// CONFLICT unless replace; of concurrent installs of one name, only the
// winner's downloads reach their final paths.
func (c *Controller) InstallPlugin(ctx context.Context, data []byte, replace bool) (*api.Plugin, error) {
	return c.InstallSignedPlugin(ctx, data, nil, replace)
}

// InstallSignedPlugin is InstallPlugin for a manifest that comes with its
// minisign signature (nil: none). The signature is checked against the
// trusted keys before anything else (SIGNATURE_INVALID), and kept with the
// manifest's exact text so every boot checks it again.
func (c *Controller) InstallSignedPlugin(ctx context.Context, data, sig []byte, replace bool) (*api.Plugin, error) {
	signedBy, err := c.checkInstallSignature(data, sig)
	if err != nil {
		return nil, err
	}
	m, err := manifest.Parse(data)
	if err != nil {
		return nil, err
	}
	if sig != nil {
		if err := signedChecksums(m); err != nil {
			return nil, err
		}
	}
	if !replace {
		if _, err := c.Plugin(ctx, m.Name); err == nil {
			return nil, pluginExists(m.Name)
		}
	}
	enabled := m.IsEnabled()
	m.Enabled = nil // the plugins table's enabled column is the truth
	downloads, err := c.stageArtifacts(ctx, m)
	if err != nil {
		return nil, err
	}
	// Downloads still in their temporary files when this returns lost.
	defer removeStaged(downloads)
	js, err := m.JSON()
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	var out pluginRow
	var signed, signature, by any // NULL unless signed
	if sig != nil {
		signed, signature = string(data), string(sig)
		if signedBy != "" {
			by = signedBy
		}
	}
	err = c.st.Tx(ctx, func(tx *sql.Tx) error {
		old, err := getPlugin(ctx, tx, m.Name)
		switch {
		case err == nil && !replace:
			return pluginExists(m.Name)
		case err == nil:
			out = old
			_, err = tx.ExecContext(ctx, `UPDATE plugins SET version = ?, runtime = ?, manifest = ?, enabled = ?, updated_at = ?, signed_manifest = ?, signature = ?, signed_by = ? WHERE name = ?`,
				m.Version, m.Runtime, string(js), boolInt(enabled), store.FormatTime(now), signed, signature, by, m.Name)
		case apierr.Is(err, apierr.NotFound):
			out = pluginRow{CreatedAt: now}
			_, err = tx.ExecContext(ctx, `INSERT INTO plugins (name, version, runtime, manifest, enabled, created_at, updated_at, signed_manifest, signature, signed_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				m.Name, m.Version, m.Runtime, string(js), boolInt(enabled), store.FormatTime(now), store.FormatTime(now), signed, signature, by)
		}
		if err != nil {
			return internal(err, "recording plugin %s", m.Name)
		}
		out.Name, out.Version, out.Runtime, out.Manifest, out.Enabled, out.UpdatedAt = m.Name, m.Version, m.Runtime, js, enabled, now
		out.SignedManifest, out.Signature, out.SignedBy = nil, nil, signedBy
		if sig != nil {
			out.SignedManifest, out.Signature = data, sig
		}
		if _, err = store.AppendEvent(ctx, tx, api.EventPluginInstalled, m.Name, map[string]any{"name": m.Name, "version": m.Version, "replaced": replace && !out.CreatedAt.Equal(now)}); err != nil {
			return err
		}
		// This install has won (the transaction holds the write lock):
		// only now do its downloads take their final names.
		if err := c.place(downloads); err != nil {
			return fmt.Errorf("plugin %s: placing fetched artifacts: %w", m.Name, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	c.notify()
	res := out.toAPI()
	return &res, nil
}

func pluginExists(name string) error {
	return apierr.New(apierr.Conflict, "plugin %s is installed already", name).With("plugin", name).
		With("hint", "remove it first, or install with replace=true")
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// SetPluginEnabled enables or disables a plugin; VMs are created only from
// enabled plugins. Setting the state it has is not an error.
func (c *Controller) SetPluginEnabled(ctx context.Context, name string, enabled bool) (*api.Plugin, error) {
	var out pluginRow
	err := c.st.Tx(ctx, func(tx *sql.Tx) error {
		p, err := getPlugin(ctx, tx, name)
		if err != nil {
			return err
		}
		out = p
		if p.Enabled == enabled {
			return nil
		}
		now := time.Now().UTC().Truncate(time.Millisecond)
		if _, err := tx.ExecContext(ctx, `UPDATE plugins SET enabled = ?, updated_at = ? WHERE name = ?`, boolInt(enabled), store.FormatTime(now), name); err != nil {
			return internal(err, "updating plugin %s", name)
		}
		out.Enabled, out.UpdatedAt = enabled, now
		typ := api.EventPluginDisabled
		if enabled {
			typ = api.EventPluginEnabled
		}
		_, err = store.AppendEvent(ctx, tx, typ, name, map[string]any{"name": name})
		return err
	})
	if err != nil {
		return nil, err
	}
	c.notify()
	res := out.toAPI()
	return &res, nil
}

// RemovePlugin uninstalls a plugin; CONFLICT while VMs or deployments use
// it. Artifacts volantd fetched for it are deleted.
func (c *Controller) RemovePlugin(ctx context.Context, name string) (*api.Plugin, error) {
	var out pluginRow
	err := c.st.Tx(ctx, func(tx *sql.Tx) error {
		p, err := getPlugin(ctx, tx, name)
		if err != nil {
			return err
		}
		out = p
		var vms, deps int
		if err := tx.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM vms WHERE plugin = ?), (SELECT count(*) FROM deployments WHERE plugin = ?)`, name, name).Scan(&vms, &deps); err != nil {
			return internal(err, "counting users of plugin %s", name)
		}
		if vms > 0 || deps > 0 {
			return apierr.New(apierr.Conflict, "plugin %s is in use by %d VM(s) and %d deployment(s); delete them first", name, vms, deps).
				With("plugin", name).With("vms", vms).With("deployments", deps)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM plugins WHERE name = ?`, name); err != nil {
			if store.IsConstraint(err) {
				return apierr.Wrap(apierr.Conflict, err, "plugin "+name+" is in use")
			}
			return internal(err, "removing plugin %s", name)
		}
		_, err = store.AppendEvent(ctx, tx, api.EventPluginRemoved, name, map[string]any{"name": name, "version": p.Version})
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := os.RemoveAll(c.pluginDir(name)); err != nil {
		c.log.Warn("removing fetched artifacts", "plugin", name, "err", err)
	}
	c.notify()
	res := out.toAPI()
	return &res, nil
}

func compareSum(plugin, field, path, want, got string) error {
	w := strings.ToLower(strings.TrimPrefix(want, "sha256:"))
	if w == "" || w == got {
		return nil
	}
	return apierr.New(apierr.ChecksumMismatch, "plugin %s: %s %s has sha256 %s, but the manifest says %s", plugin, field, path, got, w).
		With("field", field).With("path", path).With("expected", "sha256:"+w).With("actual", "sha256:"+got)
}

// checkName validates a VM or deployment name.
func checkName(what, s string) error { return names.Check(what, s) }
