package cloudhypervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/vmm"
)

// The files of a CH snapshot directory.
const (
	snapshotConfig = "config.json"
	restoreDirName = "restore"
)

// SaveState implements vmm.Control: PUT /vm.snapshot writes the paused VM's
// config, device state and memory into dir.
func (c *control) SaveState(ctx context.Context, dir string) error {
	st, err := c.State(ctx)
	if err != nil {
		return err
	}
	if st != vmm.StatePaused {
		return apierr.New(apierr.Conflict, "saving a VM's state needs it paused; it is %s", st).With("state", string(st))
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	return c.c.Snapshot(ctx, "file://"+abs)
}

// Restore implements vmm.Control. CH restores a VM with the config saved in
// the snapshot, whose paths, taps and MACs are the source VM's; the VM
// being restored has its own. So the snapshot is laid out again in the run
// directory (beside the API socket): config.json with this VM's disks,
// NICs, serial port and vsock socket, the other files linked to the
// snapshot's (which is shared and never written). Then PUT /vm.restore
// with resume.
func (c *control) Restore(ctx context.Context, cfg vmm.Config) error {
	if cfg.RestoreFrom == "" {
		return apierr.New(apierr.InvalidInput, "no state to restore: the config has no restore_from")
	}
	dir := filepath.Join(filepath.Dir(cfg.APISocket), restoreDirName)
	if err := relayout(cfg, dir); err != nil {
		return fmt.Errorf("preparing the restore: %w", err)
	}
	return c.c.Restore(ctx, RestoreConfig{SourceURL: "file://" + dir, Resume: true})
}

// relayout writes dir: the snapshot's files, with config.json rewritten
// for cfg.
func relayout(cfg vmm.Config, dir string) error {
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ents, err := os.ReadDir(cfg.RestoreFrom)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.Name() == snapshotConfig {
			continue
		}
		src, err := filepath.Abs(filepath.Join(cfg.RestoreFrom, e.Name()))
		if err != nil {
			return err
		}
		if err := os.Symlink(src, filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	b, err := os.ReadFile(filepath.Join(cfg.RestoreFrom, snapshotConfig))
	if err != nil {
		return err
	}
	var vc map[string]any
	if err := json.Unmarshal(b, &vc); err != nil {
		return fmt.Errorf("%s: %w", snapshotConfig, err)
	}
	if err := rewriteConfig(vc, cfg); err != nil {
		return err
	}
	out, err := json.Marshal(vc)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, snapshotConfig), out, 0o600)
}

// rewriteConfig puts cfg's paths, taps and MACs into a saved VmConfig. The
// devices must be the same in number: a restored machine has the devices
// it was saved with.
func rewriteConfig(vc map[string]any, cfg vmm.Config) error {
	list := func(key string) []any {
		l, _ := vc[key].([]any)
		return l
	}
	disks, nets := list("disks"), list("net")
	if len(disks) != len(cfg.Disks) || len(nets) != len(cfg.Nets) {
		return fmt.Errorf("the snapshot has %d disks and %d NICs; the VM restored from it %d and %d",
			len(disks), len(nets), len(cfg.Disks), len(cfg.Nets))
	}
	for i, d := range disks {
		m, ok := d.(map[string]any)
		if !ok {
			return errors.New("a disk of the saved config is not an object")
		}
		m["path"], m["readonly"] = cfg.Disks[i].Path, cfg.Disks[i].ReadOnly
		if cfg.Disks[i].Format == "qcow2" {
			m["image_type"], m["backing_files"] = "Qcow2", true
		} else {
			m["image_type"] = "Raw"
		}
	}
	for i, n := range nets {
		m, ok := n.(map[string]any)
		if !ok {
			return errors.New("a NIC of the saved config is not an object")
		}
		m["tap"], m["mac"] = cfg.Nets[i].Tap, cfg.Nets[i].MAC
	}
	if s, ok := vc["serial"].(map[string]any); ok {
		switch {
		case cfg.Serial.Socket != "":
			s["mode"], s["socket"] = "Socket", cfg.Serial.Socket
			delete(s, "file")
		case cfg.Serial.LogFile != "":
			s["mode"], s["file"] = "File", cfg.Serial.LogFile
			delete(s, "socket")
		}
	}
	if v, ok := vc["vsock"].(map[string]any); ok && cfg.AgentSocket != "" {
		v["socket"] = cfg.AgentSocket
	}
	return nil
}
