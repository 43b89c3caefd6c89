package chtest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
)

// The files CH writes into a snapshot's directory (vm.snapshot) and reads
// back (vm.restore, --restore): the VM's config, its devices' state, and
// its memory.
const (
	SnapshotConfig = "config.json"
	SnapshotState  = "state.json"
	SnapshotMemory = "memory-ranges"
)

func fileURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "file" || u.Path == "" {
		return "", fmt.Errorf("%q is not a file:// URL", s)
	}
	return u.Path, nil
}

// snapshot is PUT /vm.snapshot: like CH, only a paused VM is snapshotted,
// into an existing directory.
func (vm *VM) snapshot(w http.ResponseWriter, r *http.Request) {
	var req struct {
		DestinationURL string `json:"destination_url"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	vm.mu.Lock()
	defer vm.mu.Unlock()
	switch {
	case vm.cfg == nil:
		w.WriteHeader(http.StatusNotFound)
		return
	case vm.state != "Paused":
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	dir, err := fileURL(req.DestinationURL)
	if err == nil {
		err = writeSnapshot(dir, vm.cfg)
	}
	if err != nil {
		http.Error(w, "Error from API: The VM could not be snapshotted: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func writeSnapshot(dir string, cfg *VMConfig) error {
	b, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	size, _ := cfg.Memory["size"].(int64)
	files := map[string][]byte{
		SnapshotConfig: b,
		SnapshotState:  []byte(`{"fake":"device state"}`),
		SnapshotMemory: []byte(fmt.Sprintf("fake guest memory of %d bytes\n", size)),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// restore is PUT /vm.restore: the VM comes back from a snapshot's
// directory, with the config found there (whose files must exist, as for
// a boot), paused unless "resume".
func (vm *VM) restore(w http.ResponseWriter, r *http.Request) {
	var req struct {
		SourceURL string `json:"source_url"`
		Resume    bool   `json:"resume"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.cfg != nil {
		w.WriteHeader(http.StatusNotFound) // "already created"
		return
	}
	cfg, err := readSnapshot(req.SourceURL)
	if err != nil {
		http.Error(w, "Error from API: The VM could not be restored: "+err.Error(), http.StatusBadRequest)
		return
	}
	vm.cfg, vm.state = cfg, "Paused"
	if req.Resume {
		vm.state = "Running"
	}
	if err := vm.boot("restored"); err != nil {
		http.Error(w, "Error from API: The VM could not be restored: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func readSnapshot(source string) (*VMConfig, error) {
	dir, err := fileURL(source)
	if err != nil {
		return nil, err
	}
	for _, f := range []string{SnapshotState, SnapshotMemory} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return nil, err
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, SnapshotConfig))
	if err != nil {
		return nil, err
	}
	var cfg VMConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("%s: %w", SnapshotConfig, err)
	}
	for _, d := range cfg.Disks {
		if p, _ := d["path"].(string); p != "" {
			if _, err := os.Stat(p); err != nil {
				return nil, fmt.Errorf("disk %s: %w", p, err)
			}
		}
	}
	return &cfg, nil
}
