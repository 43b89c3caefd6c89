package controller

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/layout"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/secretbox"
	"github.com/volantvm/volant/lib/vmm/supervise"
)

// A VM's inputs at rest and in use.
//
// The inputs of a create request (env and files for the agent channel: the
// VM's secrets) are sealed into the VM's vm_inputs row (lib/secretbox,
// AES-256-GCM, the VM's name as associated data) under the key file
// <data>/secrets.key, made 0600 on first use, in the transaction that makes
// the VM. In clear they exist only in memory and in InputsPath
// (<InputsDir>/<name>.json, 0600 in a 0700 tmpfs directory), written from
// the sealed row before each start (stepStage) and removed when the VM is
// stopped or deleted. volant-launch, detached or in a systemd unit, reads
// that file as its run starts (launch.Spec.InputsFile) and sends the inputs
// to kestrel over the agent channel. A crashed VM keeps the file: its
// restart, volantd's or systemd's (Restart=on-failure), reads it again.

// InputsPath is where a VM's inputs are in clear while it runs.
func (c *Controller) InputsPath(name string) string {
	return filepath.Join(c.cfg.InputsDir, name+".json")
}

// SecretsKeyPath is the key file that seals the VMs' inputs.
func (c *Controller) SecretsKeyPath() string {
	return layout.Dirs{Data: c.cfg.DataDir}.SecretsKey()
}

// secretsKey loads the key, making it on first use.
func (c *Controller) secretsKey() (*secretbox.Key, error) {
	c.keyMu.Lock()
	defer c.keyMu.Unlock()
	if c.key != nil {
		return c.key, nil
	}
	k, err := secretbox.LoadOrCreate(c.SecretsKeyPath())
	if err != nil {
		return nil, err
	}
	c.key = k
	return k, nil
}

// sealedInputs is a vm_inputs row.
type sealedInputs struct {
	keyID  string
	sealed []byte
}

// sealInputs is in's JSON (what volant-launch reads) and its seal for VM name.
func (c *Controller) sealInputs(name string, in *api.Inputs) ([]byte, sealedInputs, error) {
	plain, err := json.Marshal(in)
	if err != nil {
		return nil, sealedInputs{}, err
	}
	k, err := c.secretsKey()
	if err != nil {
		return nil, sealedInputs{}, fmt.Errorf("sealing the inputs of %s: %w", name, err)
	}
	sealed, err := k.Seal(plain, name)
	if err != nil {
		return nil, sealedInputs{}, fmt.Errorf("sealing the inputs of %s: %w", name, err)
	}
	return plain, sealedInputs{keyID: k.ID(), sealed: sealed}, nil
}

func putInputsTx(ctx context.Context, tx *sql.Tx, name string, s sealedInputs) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO vm_inputs (vm, key_id, sealed) VALUES (?, ?, ?)
		ON CONFLICT (vm) DO UPDATE SET key_id = excluded.key_id, sealed = excluded.sealed`, name, s.keyID, s.sealed)
	return internal(err, "keeping the sealed inputs of %s", name)
}

// openInputs reads and opens a VM's sealed inputs: the JSON volant-launch
// reads. A VM whose row promises inputs it does not have is DATA_CORRUPT.
func (c *Controller) openInputs(ctx context.Context, name string) ([]byte, error) {
	var s sealedInputs
	err := c.st.Read(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT key_id, sealed FROM vm_inputs WHERE vm = ?`, name).Scan(&s.keyID, &s.sealed)
	})
	if errors.Is(err, sql.ErrNoRows) {
		return nil, apierr.New(apierr.DataCorrupt, "VM %s has inputs, but the database does not hold them", name).With("vm", name)
	}
	if err != nil {
		return nil, fmt.Errorf("reading the inputs of %s: %w", name, err)
	}
	return c.openSealed(s, name)
}

// openSealed opens a sealed row for owner (a VM's name, or deploymentOwner).
func (c *Controller) openSealed(s sealedInputs, owner string) ([]byte, error) {
	k, err := c.secretsKey()
	if err != nil {
		return nil, fmt.Errorf("opening the inputs of %s: %w", owner, err)
	}
	if s.keyID != k.ID() {
		return nil, apierr.New(apierr.DataCorrupt, "the inputs of %s were sealed under key %s, not under %s (%s)", owner, s.keyID, k.ID(), c.SecretsKeyPath()).
			With("owner", owner).With("key_id", s.keyID)
	}
	return k.Open(s.sealed, owner)
}

// stageInputs writes the VM's inputs in clear for its run, from the sealed
// row, unless the file holds them already.
func (c *Controller) stageInputs(ctx context.Context, name string) error {
	plain, err := c.openInputs(ctx, name)
	if err != nil {
		return err
	}
	if old, err := os.ReadFile(c.InputsPath(name)); err == nil && bytes.Equal(old, plain) {
		return nil
	}
	return c.writeRunInputs(name, plain)
}

// writeRunInputs writes a VM's inputs in clear to InputsPath.
func (c *Controller) writeRunInputs(name string, plain []byte) error {
	if err := os.MkdirAll(c.cfg.InputsDir, 0o700); err != nil {
		return fmt.Errorf("the inputs directory: %w", err)
	}
	if err := os.Chmod(c.cfg.InputsDir, 0o700); err != nil {
		return fmt.Errorf("the inputs directory: %w", err)
	}
	if err := supervise.WriteFileAtomic(c.InputsPath(name), plain, 0o600); err != nil {
		return fmt.Errorf("writing the inputs of %s for its run: %w", name, err)
	}
	return nil
}

// dropRunInputs removes a VM's inputs in clear.
func (c *Controller) dropRunInputs(name string) {
	if err := os.Remove(c.InputsPath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		c.log.Warn("removing a VM's inputs", "vm", name, "err", err)
	}
}

// legacyInputsPath is where a volantd before schema 9 kept a VM's inputs in
// clear.
func (c *Controller) legacyInputsPath(name string) string {
	return filepath.Join(c.vmDir(name), "inputs.json")
}

// sealLegacyInputs seals into the database the inputs an earlier volantd
// kept in clear in <data>/vms/<name>/inputs.json, then removes that file. A
// VM that runs keeps running: its volant-launch read them as it started.
func (c *Controller) sealLegacyInputs(ctx context.Context, rows []vmRow) (sealed []string, err error) {
	for _, v := range rows {
		if _, in := v.workloadSummary(); in == nil {
			continue
		}
		path := c.legacyInputsPath(v.Name)
		plain, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return sealed, fmt.Errorf("reading the inputs of %s: %w", v.Name, err)
		}
		var in api.Inputs
		if err := json.Unmarshal(plain, &in); err != nil {
			return sealed, apierr.Wrap(apierr.DataCorrupt, err, "the inputs file "+path)
		}
		_, s, err := c.sealInputs(v.Name, &in)
		if err != nil {
			return sealed, err
		}
		err = c.st.Tx(ctx, func(tx *sql.Tx) error {
			if _, err := getVM(ctx, tx, v.Name); err != nil {
				return err
			}
			return putInputsTx(ctx, tx, v.Name, s)
		})
		if apierr.Is(err, apierr.NotFound) {
			continue
		}
		if err != nil {
			return sealed, err
		}
		if err := os.Remove(path); err != nil {
			return sealed, fmt.Errorf("removing the inputs file %s, now sealed: %w", path, err)
		}
		sealed = append(sealed, v.Name)
	}
	return sealed, nil
}

// gcRunInputs removes the inputs in clear of VMs that are gone or stopped:
// what a crash between a stop and its removal left.
func (c *Controller) gcRunInputs(rows []vmRow) {
	keep := map[string]bool{}
	for _, v := range rows {
		if v.Desired == desireRunning {
			keep[v.Name] = true
		}
	}
	ents, err := os.ReadDir(c.cfg.InputsDir)
	if err != nil {
		return
	}
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if ok && keep[name] {
			continue
		}
		if err := os.RemoveAll(filepath.Join(c.cfg.InputsDir, e.Name())); err != nil {
			c.log.Warn("removing stale inputs", "file", e.Name(), "err", err)
		}
	}
}

// checkSecrets refuses a create whose inputs lack a secret the plugin's
// manifest names (SECRET_MISSING, naming what is missing, never a value).
func checkSecrets(m *manifest.Manifest, plugin string, in *api.Inputs) error {
	var env map[string]string
	var files []string
	if in != nil {
		env = in.Env
		for _, f := range in.Files {
			files = append(files, f.Path)
		}
	}
	missEnv, missFiles := m.MissingSecrets(env, files)
	if len(missEnv)+len(missFiles) == 0 {
		return nil
	}
	e := apierr.New(apierr.SecretMissing, "plugin %s needs secrets the request does not give: %s; give them as inputs (volar vms create --secret-env, --secret-file)",
		plugin, strings.Join(append(append([]string{}, missEnv...), missFiles...), ", ")).With("plugin", plugin)
	if len(missEnv) > 0 {
		e.With("missing_env", missEnv)
	}
	if len(missFiles) > 0 {
		e.With("missing_files", missFiles)
	}
	return e
}

// deploymentOwner is the associated data of a deployment's sealed inputs:
// apart from any VM's name.
func deploymentOwner(name string) string { return "deployment/" + name }

// deploymentInputs opens a deployment's sealed inputs, every replica's;
// nil when it has none.
func (c *Controller) deploymentInputs(ctx context.Context, name string) (*api.Inputs, error) {
	var s sealedInputs
	err := c.st.Read(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT key_id, sealed FROM deployment_inputs WHERE deployment = ?`, name).Scan(&s.keyID, &s.sealed)
	})
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the inputs of deployment %s: %w", name, err)
	}
	plain, err := c.openSealed(s, deploymentOwner(name))
	if err != nil {
		return nil, err
	}
	var in api.Inputs
	if err := json.Unmarshal(plain, &in); err != nil {
		return nil, apierr.Wrap(apierr.DataCorrupt, err, "the inputs of deployment "+name)
	}
	return &in, nil
}
