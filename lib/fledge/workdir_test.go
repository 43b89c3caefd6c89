package fledge

import (
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/testutil/imagetest"
	"github.com/volantvm/volant/lib/vmm/supervise"
)

// deadIdentity is the identity of a process that has exited.
func deadIdentity(t *testing.T) supervise.Identity {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	id, err := supervise.Of(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	return id
}

func markedDir(t *testing.T, parent, name string, id *supervise.Identity) string {
	t.Helper()
	d := filepath.Join(parent, name)
	if err := os.MkdirAll(filepath.Join(d, "rootfs", "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if id != nil {
		b, _ := json.Marshal(id)
		if err := os.WriteFile(filepath.Join(d, ownerFile), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// Only fledge's own work directories whose fledge is gone are removed.
func TestRemoveStaleWorkDirs(t *testing.T) {
	parent := t.TempDir()
	dead := deadIdentity(t)
	self, err := supervise.Self()
	if err != nil {
		t.Fatal(err)
	}
	stale := markedDir(t, parent, "fledge-stale", &dead)
	live := markedDir(t, parent, "fledge-live", &self)
	unmarked := markedDir(t, parent, "fledge-unmarked", nil)
	other := markedDir(t, parent, "other-stale", &dead)
	// A symlink named like a work directory, to a dead fledge's directory
	// elsewhere: not followed.
	elsewhere := markedDir(t, t.TempDir(), "target", &dead)
	if err := os.Symlink(elsewhere, filepath.Join(parent, "fledge-link")); err != nil {
		t.Fatal(err)
	}
	// Another user's: left alone (only root can make one here).
	var foreign string
	if os.Geteuid() == 0 {
		foreign = markedDir(t, parent, "fledge-foreign", &dead)
		if err := os.Chown(foreign, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}

	removed := removeStaleWorkDirs([]string{parent, parent}, slog.New(slog.DiscardHandler))
	if len(removed) != 1 || removed[0] != stale {
		t.Fatalf("removed %v, want only %s", removed, stale)
	}
	if _, err := os.Lstat(stale); !os.IsNotExist(err) {
		t.Fatalf("stale directory still there: %v", err)
	}
	for _, d := range []string{live, unmarked, other, elsewhere, filepath.Join(parent, "fledge-link"), foreign} {
		if d == "" {
			continue
		}
		if _, err := os.Lstat(d); err != nil {
			t.Errorf("%s was removed: %v", d, err)
		}
	}
}

// fledge killed with SIGKILL while unpacking leaves its work directory;
// the next build removes it (and only it).
func TestBuildRemovesAKilledBuildsWorkDir(t *testing.T) {
	requireRoot(t)
	needBusybox(t)
	layout := filepath.Join(t.TempDir(), "layout")
	if _, err := imagetest.WriteLayout(layout, "v1", imagetest.Sample("gzip")); err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	fledge := guesttest.Command(t, "fledge")

	// A build parked in the middle of a layer (the registry stops
	// sending), then killed.
	stalled := imagetest.StallingRegistry(t, layout, "v1", imagetest.StallLayers)
	dir := project(t, rootfsToml(stalled+"/fledge/sample:v1"), rootfsFiles)
	cmd := exec.Command(fledge, "build", "-q", "-c", filepath.Join(dir, "fledge.toml"), "-o", filepath.Join(t.TempDir(), "out"),
		"--work-dir", work, "--kestrel", standIn)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var left string
	deadline := time.Now().Add(60 * time.Second)
	for left == "" {
		m, _ := filepath.Glob(filepath.Join(work, "fledge-*", ownerFile))
		if len(m) == 1 {
			left = filepath.Dir(m[0])
		} else if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatal("the build never made its work directory")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // into the layer
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if _, err := os.Stat(filepath.Join(left, "rootfs")); err != nil {
		t.Fatalf("the killed build left no unpacked tree in %s: %v", left, err)
	}
	// Another fledge's directory in use is kept.
	self, _ := supervise.Self()
	inUse := markedDir(t, work, "fledge-inuse", &self)

	// The next build removes it.
	served := imagetest.StallingRegistry(t, layout, "v1", imagetest.StallNever)
	dir = project(t, rootfsToml(served+"/fledge/sample:v1"), rootfsFiles)
	res, _, err := build(t, dir, func(r *Request) { r.WorkDir, r.Kestrel = work, standIn })
	if err != nil {
		t.Fatal(err)
	}
	if len(res.StaleWorkDirs) != 1 || res.StaleWorkDirs[0] != left {
		t.Fatalf("removed %v, want %s", res.StaleWorkDirs, left)
	}
	if _, err := os.Lstat(left); !os.IsNotExist(err) {
		t.Fatalf("%s still there: %v", left, err)
	}
	if _, err := os.Lstat(inUse); err != nil {
		t.Fatalf("a work directory in use was removed: %v", err)
	}
	ents, _ := os.ReadDir(work)
	if len(ents) != 1 {
		t.Fatalf("work dir holds %d entries after the build", len(ents))
	}
}
