package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/vmm"
)

// StateFile is the file SaveState writes in its directory: QEMU's migration
// stream (RAM without its zero pages, and every device's state).
const StateFile = "state"

// stateFD is the name the state file's descriptor gets in QEMU (getfd).
const stateFD = "volant-state"

// SaveState implements vmm.Control: QEMU migrates the paused VM to the
// state file. QEMU 7.2 has no file: migration target and exec: runs a
// shell (and is refused under -sandbox spawn=deny), so the file is opened
// here and its descriptor passed over QMP (getfd), then migrated to
// ("fd:" URI). The VM stays paused (QEMU's "postmigrate"); Resume ("cont")
// runs it again.
func (c *control) SaveState(ctx context.Context, dir string) error {
	st, err := c.State(ctx)
	if err != nil {
		return err
	}
	if st != vmm.StatePaused {
		return apierr.New(apierr.Conflict, "saving a VM's state needs it paused; it is %s", st).With("state", string(st))
	}
	path := filepath.Join(dir, StateFile)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating the state file: %w", err)
	}
	defer f.Close()
	// The default bandwidth cap (128 MiB/s) is for live migration over a
	// network; a paused VM into a local file goes as fast as it can.
	if err := c.q.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}, nil); err != nil {
		return err
	}
	if err := c.q.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": stateFD}, f, nil); err != nil {
		return err
	}
	if err := c.q.Execute(ctx, "migrate", map[string]any{"uri": "fd:" + stateFD}, nil); err != nil {
		return err
	}
	if err := c.waitMigration(ctx); err != nil {
		return fmt.Errorf("saving the VM's state: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing the state file: %w", err)
	}
	return nil
}

// Restore implements vmm.Control: QEMU was started with -incoming defer;
// the state file's descriptor is passed (getfd) and migrated in, and the
// VM, which arrives paused as it was saved, is run ("cont").
func (c *control) Restore(ctx context.Context, cfg vmm.Config) error {
	if cfg.RestoreFrom == "" {
		return apierr.New(apierr.InvalidInput, "no state to restore: the config has no restore_from")
	}
	f, err := os.Open(filepath.Join(cfg.RestoreFrom, StateFile))
	if err != nil {
		return fmt.Errorf("opening the saved state: %w", err)
	}
	defer f.Close()
	if err := c.q.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": stateFD}, f, nil); err != nil {
		return err
	}
	if err := c.q.Execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:" + stateFD}, nil); err != nil {
		return err
	}
	if err := c.waitMigration(ctx); err != nil {
		return fmt.Errorf("loading the saved state: %w", err)
	}
	for {
		st, err := c.State(ctx)
		if err != nil {
			return err
		}
		switch st {
		case vmm.StateRunning:
			return nil
		case vmm.StatePaused, vmm.StateCreated:
			// The stream carries the source's run state (QEMU's global
			// state): a VM saved paused arrives paused. Run it.
			if err := c.Resume(ctx); err != nil {
				return err
			}
		case "inmigrate", "restore-vm":
		default:
			return fmt.Errorf("the VM is %s after its state was loaded", st)
		}

		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// waitMigration polls query-migrate until the migration completes.
func (c *control) waitMigration(ctx context.Context) error {
	for {
		var info struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := c.q.Execute(ctx, "query-migrate", nil, &info); err != nil {
			return err
		}

		switch info.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			msg := info.ErrorDesc
			if msg == "" {
				msg = "QEMU reports the migration " + info.Status
			}
			return errors.New(msg)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}
