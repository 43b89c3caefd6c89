package controller

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/names"
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
}

func (p pluginRow) toAPI() api.Plugin {
	return api.Plugin{Name: p.Name, Version: p.Version, Runtime: p.Runtime, Enabled: p.Enabled,
		Manifest: json.RawMessage(p.Manifest), CreatedAt: p.CreatedAt, UpdatedAt: p.UpdatedAt}
}

const pluginColumns = `name, version, runtime, manifest, enabled, created_at, updated_at`

func scanPlugin(r rowScanner) (pluginRow, error) {
	var p pluginRow
	var m, created, updated string
	var enabled int
	if err := r.Scan(&p.Name, &p.Version, &p.Runtime, &m, &enabled, &created, &updated); err != nil {
		return p, err
	}
	p.Manifest, p.Enabled = []byte(m), enabled == 1
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
// verifies every artifact's checksum, and records the plugin. A name that
// is installed already is CONFLICT unless replace.
func (c *Controller) InstallPlugin(ctx context.Context, data []byte, replace bool) (*api.Plugin, error) {
	m, err := manifest.Parse(data)
	if err != nil {
		return nil, err
	}
	if !replace {
		if _, err := c.Plugin(ctx, m.Name); err == nil {
			return nil, pluginExists(m.Name)
		}
	}
	enabled := m.IsEnabled()
	m.Enabled = nil // the plugins table's enabled column is the truth
	if err := c.stageArtifacts(ctx, m); err != nil {
		return nil, err
	}
	js, err := m.JSON()
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	var out pluginRow
	err = c.st.Tx(ctx, func(tx *sql.Tx) error {
		old, err := getPlugin(ctx, tx, m.Name)
		switch {
		case err == nil && !replace:
			return pluginExists(m.Name)
		case err == nil:
			out = old
			_, err = tx.ExecContext(ctx, `UPDATE plugins SET version = ?, runtime = ?, manifest = ?, enabled = ?, updated_at = ? WHERE name = ?`,
				m.Version, m.Runtime, string(js), boolInt(enabled), store.FormatTime(now), m.Name)
		case apierr.Is(err, apierr.NotFound):
			out = pluginRow{CreatedAt: now}
			_, err = tx.ExecContext(ctx, `INSERT INTO plugins (name, version, runtime, manifest, enabled, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
				m.Name, m.Version, m.Runtime, string(js), boolInt(enabled), store.FormatTime(now), store.FormatTime(now))
		}
		if err != nil {
			return internal(err, "recording plugin %s", m.Name)
		}
		out.Name, out.Version, out.Runtime, out.Manifest, out.Enabled, out.UpdatedAt = m.Name, m.Version, m.Runtime, js, enabled, now
		_, err = store.AppendEvent(ctx, tx, api.EventPluginInstalled, m.Name, map[string]any{"name": m.Name, "version": m.Version, "replaced": replace && !out.CreatedAt.Equal(now)})
		return err
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

func (c *Controller) pluginDir(name string) string {
	return filepath.Join(c.cfg.DataDir, "plugins", name)
}

// stageArtifacts makes every artifact of m a verified local file: remote
// ones are fetched into the plugin's directory (their URLs rewritten),
// local ones must exist; each is hashed and compared with its checksum
// (CHECKSUM_MISMATCH), and artifacts without a checksum get the one
// computed, so later boots verify against what was installed.
func (c *Controller) stageArtifacts(ctx context.Context, m *manifest.Manifest) error {
	type art struct {
		field string
		url   *string
		sum   *string
	}
	var arts []art
	if m.Initramfs != nil {
		arts = append(arts, art{"initramfs", &m.Initramfs.URL, &m.Initramfs.Checksum})
	}
	if m.Rootfs != nil {
		arts = append(arts, art{"rootfs", &m.Rootfs.URL, &m.Rootfs.Checksum})
	}
	for i := range m.Disks {
		arts = append(arts, art{fmt.Sprintf("disks[%d]", i), &m.Disks[i].Source, &m.Disks[i].Checksum})
	}
	for _, a := range arts {
		if p, ok := manifest.LocalPath(*a.url); ok {
			sum, err := hashFile(p)
			if err != nil {
				return artifactErr(m.Name, a.field, *a.url, err)
			}
			if err := compareSum(m.Name, a.field, p, *a.sum, sum); err != nil {
				return err
			}
			*a.url, *a.sum = p, "sha256:"+sum
			continue
		}
		p, sum, err := c.fetch(ctx, m.Name, a.field, *a.url, *a.sum)
		if err != nil {
			return err
		}
		*a.url, *a.sum = p, "sha256:"+sum
	}
	return nil
}

func artifactErr(plugin, field, loc string, err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return apierr.New(apierr.InvalidManifest, "plugin %s: %s %s does not exist", plugin, field, loc).
			With("errors", []manifest.Problem{{Field: field, Message: "no such file: " + loc}})
	}
	return fmt.Errorf("plugin %s: reading %s %s: %w", plugin, field, loc, err)
}

func compareSum(plugin, field, path, want, got string) error {
	w := strings.ToLower(strings.TrimPrefix(want, "sha256:"))
	if w == "" || w == got {
		return nil
	}
	return apierr.New(apierr.ChecksumMismatch, "plugin %s: %s %s has sha256 %s, but the manifest says %s", plugin, field, path, got, w).
		With("field", field).With("path", path).With("expected", "sha256:"+w).With("actual", "sha256:"+got)
}

func hashFile(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// fetch downloads a remote artifact into the plugin's directory.
func (c *Controller) fetch(ctx context.Context, plugin, field, loc, want string) (string, string, error) {
	u, err := url.Parse(loc)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return "", "", apierr.New(apierr.InvalidManifest, "plugin %s: %s %q is neither a local path nor an http(s) URL", plugin, field, loc).
			With("errors", []manifest.Problem{{Field: field, Message: "unsupported location"}})
	}
	base := path.Base(u.Path)
	if base == "/" || base == "." || base == "" {
		base = strings.NewReplacer("[", "", "]", "").Replace(field)
	}
	dst := filepath.Join(c.pluginDir(plugin), base)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return "", "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, loc, nil)
	if err != nil {
		return "", "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", "", apierr.Wrap(apierr.Unavailable, err, fmt.Sprintf("plugin %s: fetching %s", plugin, loc)).With("url", loc)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", "", apierr.New(apierr.Unavailable, "plugin %s: fetching %s: %s", plugin, loc, resp.Status).With("url", loc)
	}
	f, err := os.CreateTemp(filepath.Dir(dst), "."+base+".*")
	if err != nil {
		return "", "", err
	}
	defer os.Remove(f.Name())
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(f, h), resp.Body); err != nil {
		f.Close()
		return "", "", apierr.Wrap(apierr.Unavailable, err, fmt.Sprintf("plugin %s: fetching %s", plugin, loc))
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", "", err
	}
	f.Close()
	sum := hex.EncodeToString(h.Sum(nil))
	if err := compareSum(plugin, field, loc, want, sum); err != nil {
		return "", "", err
	}
	if err := os.Rename(f.Name(), dst); err != nil {
		return "", "", err
	}
	return dst, sum, nil
}

// checkName validates a VM or deployment name.
func checkName(what, s string) error { return names.Check(what, s) }

var _ = bytes.MinRead
