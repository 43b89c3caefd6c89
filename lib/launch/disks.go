package launch

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// stageDiskCopies makes the VM's missing disk copies: each is copied from
// its verified artifact (sparse, and as a reflink where the filesystem
// can), synced, and renamed into place, so a crash never leaves a partial
// copy under the name a later start would reuse. Existing copies are kept:
// they hold the guest's writes.
func stageDiskCopies(ctx context.Context, copies []DiskCopy) error {
	for _, c := range copies {
		if _, err := os.Stat(c.To); err == nil {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(c.To), 0o700); err != nil {
			return fmt.Errorf("copying %s for the VM: %w", c.Role, err)
		}
		tmp := c.To + ".tmp"
		os.Remove(tmp)
		out, err := exec.CommandContext(ctx, "cp", "--reflink=auto", "--sparse=always", c.From, tmp).CombinedOutput()
		if err != nil {
			os.Remove(tmp)
			return fmt.Errorf("copying %s %s for the VM: %w: %s", c.Role, c.From, err, strings.TrimSpace(string(out)))
		}
		if err := syncFile(tmp); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("copying %s for the VM: %w", c.Role, err)
		}
		if err := os.Rename(tmp, c.To); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("copying %s for the VM: %w", c.Role, err)
		}
	}
	return nil
}

func syncFile(p string) error {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
