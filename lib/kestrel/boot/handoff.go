package boot

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/renameio/v2"

	"github.com/volantvm/volant/lib/manifest"
)

// HandoffPath is where stage 1 leaves what stage 2 must know. /run is a
// tmpfs that the root switch carries over, so the file exists exactly in a
// stage 2 started by stage 1.
const HandoffPath = "/run/kestrel/handoff.json"

// Handoff is stage 1's message to stage 2 (also passed in memory when
// stage 2 continues in the same process on the initramfs path).
type Handoff struct {
	Boot   Mode   `json:"boot"`
	Device string `json:"device,omitempty"`
	FSType string `json:"fstype,omitempty"`
	// Manifest is the manifest stage 1 read (from the command line or the
	// initramfs, which stage 2 can no longer see).
	Manifest *manifest.Manifest `json:"manifest,omitempty"`
	// ModulesPending are volant.modules names the initramfs lacked; stage 2
	// looks for them under the new root's /lib/modules.
	ModulesPending []string `json:"modules_pending,omitempty"`
	// ModulesLater are the initramfs's modules stage 1 held back (see
	// LateModules), loaded once the workload has started.
	ModulesLater []string `json:"modules_later,omitempty"`
	// Kestrel is the binary stage 2 runs: a path on the root disk, or
	// "initramfs" when stage 1 carried itself over.
	Kestrel string `json:"kestrel,omitempty"`
	// CarriedFD is the descriptor of the carried-over binary, for stage 2
	// to close.
	CarriedFD      int   `json:"carried_fd,omitempty"`
	Stage1UptimeMS int64 `json:"stage1_uptime_ms"`
}

func writeHandoff(h Handoff) error {
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(HandoffPath), 0o700); err != nil {
		return err
	}
	// The temporary file beside the target: renameio would otherwise probe
	// $TMPDIR, which stage 1 may not have.
	if err := renameio.WriteFile(HandoffPath, b, 0o600, renameio.WithTempDir(filepath.Dir(HandoffPath))); err != nil {
		return fmt.Errorf("writing %s: %w", HandoffPath, err)
	}
	return nil
}

// readHandoff returns the handoff and true when stage 1 left one.
func readHandoff() (Handoff, bool, error) {
	var h Handoff
	b, err := os.ReadFile(HandoffPath)
	if errors.Is(err, os.ErrNotExist) {
		return h, false, nil
	}
	if err != nil {
		return h, false, err
	}
	if err := json.Unmarshal(b, &h); err != nil {
		return h, false, fmt.Errorf("reading stage 1's handoff %s: %w", HandoffPath, err)
	}
	return h, true, nil
}
