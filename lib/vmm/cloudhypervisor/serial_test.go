package cloudhypervisor

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/vmm"
)

// A disk's serial reaches Cloud Hypervisor (volumes are found by it in the
// guest), and one it could not carry is refused before anything starts.
func TestDiskSerial(t *testing.T) {
	h := fakeHarness(t)
	dir := t.TempDir()
	cfg := h.Config(t, dir)
	vol := filepath.Join(t.TempDir(), "data.img")
	os.WriteFile(vol, make([]byte, 4096), 0o644)
	cfg.Disks = append(cfg.Disks, cfgDisk(vol, "volant-vol0"))
	argv, err := h.Backend.Argv(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(argv, " "), "path="+vol+",serial=volant-vol0,id=disk1") {
		t.Fatalf("argv lacks the serial: %q", argv)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	c := NewClient(cfg.APISocket)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var info VMInfo
	for {
		if info, err = c.Info(ctx); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	var got struct {
		Disks []struct{ Path, Serial string }
	}
	json.Unmarshal(info.Config, &got)
	if len(got.Disks) != 2 || got.Disks[1].Path != vol || got.Disks[1].Serial != "volant-vol0" || got.Disks[0].Serial != "" {
		t.Fatalf("CH understood disks %+v", got.Disks)
	}

	for _, bad := range []string{"has space", "a,b", strings.Repeat("s", 21)} {
		cfg := h.Config(t, dir)
		cfg.Disks[0].Serial = bad
		if _, err := h.Backend.Argv(cfg); !apierr.Is(err, apierr.InvalidInput) || !strings.Contains(err.Error(), "serial") {
			t.Errorf("serial %q: %v, want INVALID_INPUT naming the serial", bad, err)
		}
	}
}

func cfgDisk(path, serial string) vmm.Disk { return vmm.Disk{Path: path, Serial: serial} }
