package launch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/testutil/netnstest"
	"github.com/volantvm/volant/lib/vmm/jail"
)

// A jail that cannot be set up fails the run with ISOLATION_UNAVAILABLE
// and a hint, starts no VMM and leaves nothing behind; the same run with
// --insecure-vmm starts the VMM as root and says so in its status.
func TestJailRefusedUnlessInsecure(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	p, err := Prepare(ctx, f.spec(), f.opts)
	if err != nil {
		t.Fatal(err)
	}
	// The VMM's uid could not read its kernel.
	if err := os.Chmod(f.kernel, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Run(ctx, p, f.opts, RunOptions{ReadyTimeout: 20 * time.Second})
	var e *apierr.Error
	if !apierr.Is(err, apierr.IsolationUnavailable) || !errors.As(err, &e) || !strings.Contains(err.Error(), "vmlinux") {
		t.Fatalf("err = %v, want ISOLATION_UNAVAILABLE naming the kernel", err)
	}
	if _, err := os.Stat(p.SerialLog); err == nil {
		t.Fatal("a VMM started without its jail")
	}
	if _, err := os.Stat(p.RunDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("run dir left behind")
	}

	// Every uid of the range is taken: the same code.
	o := f.opts
	o.Jail.UIDDir = t.TempDir()
	o.Jail.UIDs = jail.Range{First: 1<<30 + 7, Count: 1}
	os.Chmod(f.kernel, 0o644)
	_, release, err := jail.AllocateUID(o.Jail.UIDDir, o.Jail.UIDs, "another")
	if err != nil {
		t.Fatal(err)
	}
	_, err = Run(ctx, p, o, RunOptions{ReadyTimeout: 20 * time.Second})
	if !apierr.Is(err, apierr.IsolationUnavailable) || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("err = %v, want ISOLATION_UNAVAILABLE, every uid in use", err)
	}
	release()

	// --insecure-vmm: the VMM runs as root, and the status says so.
	os.Chmod(f.kernel, 0o600)
	o = f.opts
	o.Jail.Insecure = true
	wait := startRun(t, ctx, p, o)
	st := waitRunning(t, p.RunDir, o)
	if st.Jail == nil || !st.Jail.Insecure || st.Jail.UID != 0 || st.Jail.Cgroup != "" {
		t.Fatalf("jail %+v, want insecure", st.Jail)
	}
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", st.Process.Pid))
	if !strings.Contains(string(status), "Uid:\t0\t0\t0\t0\n") {
		t.Fatalf("the insecure VMM's status:\n%s", status)
	}
	if _, err := Stop(ctx, p.RunDir, 10*time.Second, o); err != nil {
		t.Fatal(err)
	}
	if _, err := wait(); err != nil {
		t.Fatal(err)
	}
}

// The jail gives back what it took: once the run ends, its uid is free
// again and its cgroup is gone.
func TestJailGivesBack(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	p, err := Prepare(ctx, f.spec(), f.opts)
	if err != nil {
		t.Fatal(err)
	}
	wait := startRun(t, ctx, p, f.opts)
	st := waitRunning(t, p.RunDir, f.opts)
	if st.Jail == nil || st.Jail.UID == 0 || st.Jail.Cgroup == "" || !cgroupExists(st.Jail.Cgroup) {
		t.Fatalf("jail %+v", st.Jail)
	}
	only := jail.Range{First: st.Jail.UID, Count: 1}
	if _, _, err := jail.AllocateUID(jail.DefaultUIDDir, only, "other"); !apierr.Is(err, apierr.IsolationUnavailable) {
		t.Fatalf("the running VMM's uid was handed out again: %v", err)
	}
	if _, err := Stop(ctx, p.RunDir, 10*time.Second, f.opts); err != nil {
		t.Fatal(err)
	}
	if _, err := wait(); err != nil {
		t.Fatal(err)
	}
	uid, release, err := jail.AllocateUID(jail.DefaultUIDDir, only, "other")
	if err != nil || uid != st.Jail.UID {
		t.Fatalf("the uid after the run: %d %v", uid, err)
	}
	release()
	if cgroupExists(st.Jail.Cgroup) {
		t.Fatalf("cgroup %s left behind", st.Jail.Cgroup)
	}
}

// cgroupExists looks for a cgroup path in the host's hierarchies,
// whichever layout they have.
func cgroupExists(path string) bool {
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*" + path)
	if _, err := os.Stat("/sys/fs/cgroup" + path); err == nil {
		return true
	}
	return len(dirs) > 0
}

// A restored VM's qcow2 overlay reads its backing chain: the jail exposes
// each file of it, found as QEMU finds them (relative to the image, or
// absolute), as qemu-img wrote them.
func TestQcow2BackingChain(t *testing.T) {
	img, err := exec.LookPath("qemu-img")
	if err != nil {
		netnstest.SkipOrFail(t, "qemu-img is needed")
	}
	dir := t.TempDir()
	run := func(args ...string) {
		if out, err := exec.Command(img, args...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v: %v %s", args, err, out)
		}
	}
	base := filepath.Join(dir, "base.raw")
	os.WriteFile(base, make([]byte, 1<<20), 0o644)
	os.Mkdir(filepath.Join(dir, "o"), 0o755)
	mid := filepath.Join(dir, "o", "mid.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	run("create", "-f", "qcow2", "-b", "../base.raw", "-F", "raw", mid)
	run("create", "-f", "qcow2", "-b", mid, "-F", "qcow2", top)
	got, err := qcow2Backing(top)
	if err != nil || len(got) != 2 || got[0] != mid || got[1] != base {
		t.Fatalf("chain %q %v, want [%s %s]", got, err, mid, base)
	}
	if got, err := qcow2Backing(base); err != nil || len(got) != 0 {
		t.Fatalf("a raw image's chain: %q %v", got, err)
	}
}
