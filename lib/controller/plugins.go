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
	// Versions are the installed versions, oldest install first (read
	// only where the API shows them).
	Versions []string
}

func (p pluginRow) toAPI() api.Plugin {
	var img struct {
		Image       string `json:"image"`
		ImageDigest string `json:"image_digest"`
	}
	_ = json.Unmarshal(p.Manifest, &img) // the stored manifest was valid JSON when installed
	out := api.Plugin{Name: p.Name, Version: p.Version, Runtime: p.Runtime, Enabled: p.Enabled, Versions: p.Versions,
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

// SplitPluginRef splits a plugin reference, <name> or <name>@<version>.
// An empty version means the plugin's default version: the one installed
// last.
func SplitPluginRef(ref string) (name, version string) {
	name, version, _ = strings.Cut(ref, "@")
	return name, version
}

// pluginRef is the reference to one version of a plugin.
func pluginRef(name, version string) string {
	if version == "" {
		return name
	}
	return name + "@" + version
}

// getPlugin reads a plugin in the version ref names (see SplitPluginRef).
func getPlugin(ctx context.Context, q querier, ref string) (pluginRow, error) {
	name, version := SplitPluginRef(ref)
	p, err := scanPlugin(q.QueryRowContext(ctx, `SELECT `+pluginColumns+` FROM plugins WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return p, apierr.New(apierr.NotFound, "no plugin named %s is installed", name).With("plugin", name)
	}
	if err != nil {
		return p, fmt.Errorf("reading plugin %s: %w", name, err)
	}
	if version == "" || version == p.Version {
		return p, nil
	}
	var m string
	var signed, sig, by sql.NullString
	err = q.QueryRowContext(ctx, `SELECT runtime, manifest, signed_manifest, signature, signed_by FROM plugin_versions WHERE name = ? AND version = ?`,
		name, version).Scan(&p.Runtime, &m, &signed, &sig, &by)
	if errors.Is(err, sql.ErrNoRows) {
		vs, _ := pluginVersions(ctx, q, name)
		return p, apierr.New(apierr.NotFound, "plugin %s has no version %s installed (installed: %s)", name, version, strings.Join(vs, ", ")).
			With("plugin", name).With("version", version).With("versions", vs)
	}
	if err != nil {
		return p, fmt.Errorf("reading plugin %s: %w", ref, err)
	}
	p.Version, p.Manifest = version, []byte(m)
	p.SignedManifest, p.Signature, p.SignedBy = nil, nil, ""
	if sig.Valid {
		p.SignedManifest, p.Signature, p.SignedBy = []byte(signed.String), []byte(sig.String), by.String
	}
	return p, nil
}

// pluginVersions lists a plugin's installed versions, oldest install first.
func pluginVersions(ctx context.Context, q querier, name string) ([]string, error) {
	rows, err := q.QueryContext(ctx, `SELECT version FROM plugin_versions WHERE name = ? ORDER BY created_at, rowid`, name)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// ListPlugins returns the installed plugins by name, each in its default
// version.
func (c *Controller) ListPlugins(ctx context.Context) ([]api.Plugin, error) {
	out := []api.Plugin{}
	err := c.st.Read(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT `+pluginColumns+` FROM plugins ORDER BY name`)
		if err != nil {
			return err
		}
		defer rows.Close()
		var ps []pluginRow
		for rows.Next() {
			p, err := scanPlugin(rows)
			if err != nil {
				return err
			}
			ps = append(ps, p)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		for _, p := range ps {
			if p.Versions, err = pluginVersions(ctx, tx, p.Name); err != nil {
				return err
			}
			out = append(out, p.toAPI())
		}
		return nil
	})
	if err != nil {
		return nil, internal(err, "listing plugins")
	}
	return out, nil
}

// Plugin returns one plugin, in the version ref names (<name> for the
// default one, <name>@<version>).
func (c *Controller) Plugin(ctx context.Context, ref string) (*api.Plugin, error) {
	var p pluginRow
	err := c.st.Read(ctx, func(tx *sql.Tx) error {
		var err error
		if p, err = getPlugin(ctx, tx, ref); err != nil {
			return err
		}
		p.Versions, err = pluginVersions(ctx, tx, p.Name)
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
// <data>/plugins/<name>/@<version>/ (rewriting their URLs to the local
// copies), verifies every artifact's checksum, and records the plugin. With
// Config.RequireSigned it is SIGNATURE_REQUIRED: see InstallSignedPlugin. Local
// artifacts must be regular files inside ArtifactDirs (PERMISSION_DENIED
// otherwise, whatever is at the path). A new version of an installed
// plugin is installed beside the others and becomes the default one; a
// version that is installed already is CONFLICT unless replace; of
// concurrent installs of one version, only the winner's downloads reach
// their final paths.
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
	ref := pluginRef(m.Name, m.Version)
	if !replace {
		if _, err := c.Plugin(ctx, ref); err == nil {
			return nil, pluginExists(ref)
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
		replaced := false
		switch {
		case err == nil:
			_, verr := getPlugin(ctx, tx, ref)
			if replaced = verr == nil; replaced && !replace {
				return pluginExists(ref)
			}
			out = old
			_, err = tx.ExecContext(ctx, `UPDATE plugins SET version = ?, runtime = ?, manifest = ?, enabled = ?, updated_at = ?, signed_manifest = ?, signature = ?, signed_by = ? WHERE name = ?`,
				m.Version, m.Runtime, string(js), boolInt(enabled), store.FormatTime(now), signed, signature, by, m.Name)
		case apierr.Is(err, apierr.NotFound):
			out = pluginRow{CreatedAt: now}
			_, err = tx.ExecContext(ctx, `INSERT INTO plugins (name, version, runtime, manifest, enabled, created_at, updated_at, signed_manifest, signature, signed_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				m.Name, m.Version, m.Runtime, string(js), boolInt(enabled), store.FormatTime(now), store.FormatTime(now), signed, signature, by)
		}
		if err != nil {
			return internal(err, "recording plugin %s", ref)
		}
		// The version's row; a replaced version counts as installed now.
		if _, err := tx.ExecContext(ctx, `DELETE FROM plugin_versions WHERE name = ? AND version = ?`, m.Name, m.Version); err != nil {
			return internal(err, "recording plugin %s", ref)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO plugin_versions (name, version, runtime, manifest, created_at, signed_manifest, signature, signed_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
			m.Name, m.Version, m.Runtime, string(js), store.FormatTime(now), signed, signature, by); err != nil {
			return internal(err, "recording plugin %s", ref)
		}
		out.Name, out.Version, out.Runtime, out.Manifest, out.Enabled, out.UpdatedAt = m.Name, m.Version, m.Runtime, js, enabled, now
		out.SignedManifest, out.Signature, out.SignedBy = nil, nil, signedBy
		if sig != nil {
			out.SignedManifest, out.Signature = data, sig
		}
		if out.Versions, err = pluginVersions(ctx, tx, m.Name); err != nil {
			return internal(err, "listing versions of plugin %s", m.Name)
		}
		if _, err = store.AppendEvent(ctx, tx, api.EventPluginInstalled, m.Name, map[string]any{"name": m.Name, "version": m.Version, "replaced": replaced}); err != nil {
			return err
		}
		// This install has won (the transaction holds the write lock):
		// only now do its downloads take their final names.
		if err := c.place(downloads); err != nil {
			return fmt.Errorf("plugin %s: placing fetched artifacts: %w", ref, err)
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

func pluginExists(ref string) error {
	name, version := SplitPluginRef(ref)
	return apierr.New(apierr.Conflict, "plugin %s is installed already", ref).With("plugin", name).With("version", version).
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
	name, _ = SplitPluginRef(name) // every version is enabled or not
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

// RemovePlugin uninstalls a plugin (ref <name>: every version) or one
// version of it (<name>@<version>); CONFLICT while VMs or deployments use
// what would go, or a rolling update names it. Artifacts volantd fetched
// for it are deleted. When the default version goes, the version installed
// last of those left becomes the default.
func (c *Controller) RemovePlugin(ctx context.Context, ref string) (*api.Plugin, error) {
	name, version := SplitPluginRef(ref)
	var out pluginRow
	whole := version == ""
	err := c.st.Tx(ctx, func(tx *sql.Tx) error {
		p, err := getPlugin(ctx, tx, ref)
		if err != nil {
			return err
		}
		out = p
		vs, err := pluginVersions(ctx, tx, name)
		if err != nil {
			return internal(err, "listing versions of plugin %s", name)
		}
		if len(vs) <= 1 {
			whole = true
		}
		// Users of what goes: every version, or the one.
		q := `SELECT (SELECT count(*) FROM vms WHERE plugin = ?1 AND (?2 OR plugin_version = ?3)),
			(SELECT count(*) FROM deployments WHERE plugin = ?1 AND (?2 OR plugin_version = ?3)),
			(SELECT count(*) FROM rollouts WHERE state IN ('progressing', 'rolling_back') AND
				((from_plugin = ?1 AND (?2 OR from_version = ?3)) OR (to_plugin = ?1 AND (?2 OR to_version = ?3))))`
		var vms, deps, rolls int
		if err := tx.QueryRowContext(ctx, q, name, whole, p.Version).Scan(&vms, &deps, &rolls); err != nil {
			return internal(err, "counting users of plugin %s", ref)
		}
		if vms > 0 || deps > 0 || rolls > 0 {
			what := name
			if !whole {
				what = pluginRef(name, p.Version)
			}
			return apierr.New(apierr.Conflict, "plugin %s is in use by %d VM(s) and %d deployment(s) (%d rolling update(s)); delete them first", what, vms, deps, rolls).
				With("plugin", name).With("version", version).With("vms", vms).With("deployments", deps).With("rollouts", rolls)
		}
		if whole {
			if _, err := tx.ExecContext(ctx, `DELETE FROM plugins WHERE name = ?`, name); err != nil {
				if store.IsConstraint(err) {
					return apierr.Wrap(apierr.Conflict, err, "plugin "+name+" is in use")
				}
				return internal(err, "removing plugin %s", name)
			}
			_, err = store.AppendEvent(ctx, tx, api.EventPluginRemoved, name, map[string]any{"name": name, "version": p.Version, "versions": vs})
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM plugin_versions WHERE name = ? AND version = ?`, name, p.Version); err != nil {
			return internal(err, "removing plugin %s", ref)
		}
		// The default went: the version installed last of those left.
		if _, err := tx.ExecContext(ctx, `UPDATE plugins SET (version, runtime, manifest, signed_manifest, signature, signed_by, updated_at) =
			(SELECT version, runtime, manifest, signed_manifest, signature, signed_by, ?3 FROM plugin_versions WHERE name = ?1 ORDER BY created_at DESC, rowid DESC LIMIT 1)
			WHERE name = ?1 AND version = ?2`, name, p.Version, store.FormatTime(time.Now())); err != nil {
			return internal(err, "removing plugin %s", ref)
		}
		_, err = store.AppendEvent(ctx, tx, api.EventPluginRemoved, name, map[string]any{"name": name, "version": p.Version})
		return err
	})
	if err != nil {
		return nil, err
	}
	dir := c.pluginDir(name)
	if !whole {
		dir = c.pluginVersionDir(name, out.Version)
	}
	if err := os.RemoveAll(dir); err != nil {
		c.log.Warn("removing fetched artifacts", "plugin", ref, "err", err)
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
