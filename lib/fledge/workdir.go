package fledge

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/google/renameio/v2"

	"github.com/volantvm/volant/lib/vmm/supervise"
)

// workPrefix names fledge's work directories; ownerFile, inside one,
// identifies the fledge process that made it (pid, start time, boot), so a
// later fledge can tell a directory left by a killed build from one in use.
const (
	workPrefix = "fledge-"
	ownerFile  = ".fledge-owner"
)

// newWorkDir creates a work directory in parent ("" for the system's
// temporary directory) and marks it as this process's.
func newWorkDir(parent string) (string, error) {
	d, err := os.MkdirTemp(parent, workPrefix)
	if err != nil {
		return "", fmt.Errorf("creating work directory: %w", err)
	}
	id, err := supervise.Self()
	if err == nil {
		var b []byte
		if b, err = json.Marshal(id); err == nil {
			err = renameio.WriteFile(filepath.Join(d, ownerFile), b, 0o600)
		}
	}
	if err != nil {
		os.RemoveAll(d)
		return "", fmt.Errorf("marking work directory %s: %w", d, err)
	}
	return d, nil
}

// workParents are where work directories may be: /dev/shm, the system's
// temporary directory and the request's WorkDir.
func workParents(workDir string) []string {
	ps := []string{"/dev/shm", os.TempDir()}
	if workDir != "" {
		ps = append(ps, workDir)
	}
	return ps
}

// removeStaleWorkDirs removes the work directories of fledge processes
// that were killed before they could (SIGKILL, a crash, a power cut): a
// fledge-* directory in one of parents, a real directory (not a symlink)
// owned by this process's user, whose owner file names a fledge process
// that no longer runs (its pid gone or reused, or another boot). Anything
// else — unmarked, another user's, or still in use — is left alone. It
// returns what it removed.
func removeStaleWorkDirs(parents []string, log *slog.Logger) []string {
	// Without a readable /proc every process would look gone.
	if _, err := supervise.Self(); err != nil {
		log.Warn("not looking for killed builds' work directories: cannot read this process's identity", "err", err)
		return nil
	}
	var removed []string
	seen := map[string]bool{}
	for _, parent := range parents {
		real, err := filepath.EvalSymlinks(parent)
		if err != nil || seen[real] {
			continue
		}
		seen[real] = true
		ents, err := os.ReadDir(real)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), workPrefix) {
				continue
			}
			d := filepath.Join(real, e.Name())
			if !staleWorkDir(d) {
				continue
			}
			if err := os.RemoveAll(d); err != nil {
				log.Warn("cannot remove a killed build's work directory", "dir", d, "err", err)
				continue
			}
			log.Info("removed a killed build's work directory", "dir", d)
			removed = append(removed, d)
		}
	}
	return removed
}

// staleWorkDir reports whether d is a work directory whose fledge is gone.
func staleWorkDir(d string) bool {
	st, err := os.Lstat(d)
	if err != nil || !st.IsDir() {
		return false
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); !ok || int(sys.Uid) != os.Geteuid() {
		return false
	}
	of, err := os.Lstat(filepath.Join(d, ownerFile))
	if err != nil || !of.Mode().IsRegular() || of.Size() > 4096 {
		return false
	}
	b, err := os.ReadFile(filepath.Join(d, ownerFile))
	if err != nil {
		return false
	}
	var id supervise.Identity
	if err := json.Unmarshal(b, &id); err != nil || id.Pid <= 0 || id.StartTime == 0 {
		return false
	}
	return !id.Alive()
}
