package launch

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/testutil/netnstest"
	"github.com/volantvm/volant/lib/vmm/jail"
)

// refusedForItsCgroup runs p with jo and checks that the start failed
// with ISOLATION_UNAVAILABLE, a message naming the VM's cgroup and want
// (the cause), and the hint; that no VMM started; and that the run left
// nothing: no run directory, the uid free again, no cgroup of the VM
// under parent in any hierarchy.
func refusedForItsCgroup(t *testing.T, f *fixture, p *Plan, jo JailOptions, parent, want string) {
	t.Helper()
	o := f.opts
	o.Jail = jo
	_, err := Run(context.Background(), p, o, RunOptions{ReadyTimeout: 20 * time.Second})
	ae := apierr.From(err)
	if !apierr.Is(err, apierr.IsolationUnavailable) || !strings.Contains(ae.Message, "cgroup /"+parent+"/"+p.Name+".") ||
		!strings.Contains(ae.Message, want) || !strings.Contains(fmt.Sprint(ae.Details["hint"]), "--insecure-vmm") {
		t.Fatalf("err = %v (details %v), want ISOLATION_UNAVAILABLE naming cgroup /%s/%s.<uid> and %q, with the hint", err, ae.Details, parent, p.Name, want)
	}
	t.Logf("refused: %v", err)
	if _, err := os.Stat(p.SerialLog); err == nil {
		t.Error("a VMM started without its jail")
	}
	if _, err := os.Stat(p.RunDir); !errors.Is(err, os.ErrNotExist) {
		t.Error("run dir left behind")
	}
	if ents, _ := os.ReadDir(jo.UIDDir); len(ents) != 0 {
		t.Errorf("the uid dir holds %v after the refused start, want nothing", ents)
	}
	left, _ := filepath.Glob("/sys/fs/cgroup/*/" + parent + "/" + p.Name + ".*")
	more, _ := filepath.Glob("/sys/fs/cgroup/" + parent + "/" + p.Name + ".*")
	if left = append(left, more...); len(left) > 0 {
		t.Errorf("the refused start left cgroups: %v", left)
	}
}

// A parent cgroup (VOLANT_VMM_CGROUP, JailOptions.Cgroup) whose CPU quota
// is smaller than the VMM's cannot hold the VMM's cgroup on a v1 host:
// the kernel refuses the child's cpu.cfs_quota_us. The start fails with
// ISOLATION_UNAVAILABLE naming the quota, and the cgroups it had made in
// the other hierarchies (memory, pids) are gone. A v2 host caps a child at
// its parent's quota instead: nothing to refuse.
func TestJailRefusedUnderACappedParent(t *testing.T) {
	netnstest.Require(t)
	if l := jail.Layout(); l != "legacy" && l != "hybrid" {
		t.Skipf("a %s host caps a child cgroup at its parent's quota", l)
	}
	f := newFixture(t)
	p, err := Prepare(context.Background(), f.spec(), f.opts)
	if err != nil {
		t.Fatal(err)
	}
	parent := fmt.Sprintf("volant-capped-%d", os.Getpid())
	t.Cleanup(func() {
		for _, c := range []string{"cpu", "memory", "pids"} {
			d := filepath.Join("/sys/fs/cgroup", c, parent)
			subs, _ := filepath.Glob(filepath.Join(d, p.Name+".*"))
			for _, s := range subs {
				os.Remove(s)
			}
			os.Remove(d)
		}
	})
	cpu := filepath.Join("/sys/fs/cgroup/cpu", parent)
	if err := os.Mkdir(cpu, 0o755); err != nil {
		t.Fatal(err)
	}
	// A tenth of a core; the VMM's quota is one and a half (Limits).
	if err := os.WriteFile(filepath.Join(cpu, "cpu.cfs_quota_us"), []byte("10000"), 0o644); err != nil {
		t.Fatal(err)
	}
	jo := JailOptions{UIDDir: t.TempDir(), UIDs: jail.Range{First: 1<<30 + 4500, Count: 1}, Cgroup: parent}
	refusedForItsCgroup(t, f, p, jo, parent, "CPU quota")
}

const roCgroupEnv = "VOLANT_TEST_READ_ONLY_CGROUPS"

// Cgroup file systems this process may not write (mounted read-only, as
// in a container that was given the host's cgroups read-only) fail the
// start with ISOLATION_UNAVAILABLE naming the VM's cgroup and the
// read-only file system. The test runs itself again in a mount namespace
// of its own where it remounts every cgroup file system read-only.
func TestJailRefusedOnReadOnlyCgroups(t *testing.T) {
	netnstest.Require(t, "unshare")
	if jail.Layout() == "unavailable" {
		netnstest.SkipOrFail(t, "no cgroup file system at /sys/fs/cgroup")
	}
	if os.Getenv(roCgroupEnv) == "" {
		cmd := exec.Command("unshare", "--mount", "--propagation", "private", os.Args[0], "-test.run", "^TestJailRefusedOnReadOnlyCgroups$", "-test.v")
		cmd.Env = append(os.Environ(), roCgroupEnv+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestJailRefusedOnReadOnlyCgroups") {
			t.Fatalf("in a mount namespace of its own: %v\n%s", err, out)
		}
		t.Logf("%s", out)
		return
	}
	mounts := cgroupMounts(t)
	if len(mounts) == 0 {
		t.Fatal("no cgroup file system in /proc/self/mountinfo")
	}
	for _, m := range mounts {
		if err := unix.Mount("", m, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
			t.Fatalf("remounting %s read-only: %v", m, err)
		}
	}
	f := newFixture(t)
	p, err := Prepare(context.Background(), f.spec(), f.opts)
	if err != nil {
		t.Fatal(err)
	}
	jo := JailOptions{UIDDir: t.TempDir(), UIDs: jail.Range{First: 1<<30 + 4600, Count: 1}, Cgroup: "volant-readonly"}
	refusedForItsCgroup(t, f, p, jo, "volant-readonly", "read-only file system")
}

// cgroupMounts are the mount points of this mount namespace's cgroup
// (v1 and v2) file systems.
func cgroupMounts(t *testing.T) []string {
	t.Helper()
	mi, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer mi.Close()
	var out []string
	sc := bufio.NewScanner(mi)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		fields := strings.Fields(sc.Text())
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) && len(fields) > 4 {
				if fs := fields[i+1]; fs == "cgroup" || fs == "cgroup2" {
					out = append(out, fields[4])
				}
				break
			}
		}
	}
	return out
}
