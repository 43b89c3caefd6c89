package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/hostnet"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/testutil/wait"
	"github.com/volantvm/volant/lib/vmm/cloudhypervisor/chtest"
	"github.com/volantvm/volant/lib/vmm/jail"
)

// TestJailsReclaimedAfterKill: volantd and every VM's volant-launch are
// killed with SIGKILL while two jailed VMs run (on the fake Cloud
// Hypervisor, with real taps, cgroups and uid records), so nothing tears
// a jail down: each uid's record (<uid>.json in the host's uid directory),
// its cgroup and its tap's owner stay behind. The restarted volantd gives
// them back before it reconciles (it logs the uids): the records and
// cgroups are gone, the taps are no longer the uids' (their owners from
// before, root for none),
// the uids are free, the VMs are crashed, and a start jails one again.
func TestJailsReclaimedAfterKill(t *testing.T) {
	h := newFakeHost(t)
	// Whatever happens, leave no record or cgroup on the host (dead
	// runs' only: live ones are left alone).
	t.Cleanup(func() { launch.ReclaimJails(launch.Options{}) })
	// A range of our own: the uid directory is host-wide.
	first := uint32(1<<30 + 70000 + os.Getpid()%1000*4)
	uids := fmt.Sprintf("%d+4", first)
	d1 := h.start(t, "--vmm-uids", uids)
	ctx := context.Background()
	if _, err := d1.c.InstallPlugin(ctx, h.manifest, client.InstallOptions{}); err != nil {
		t.Fatal(err)
	}
	type jailed struct {
		uid    uint32
		cgroup string
		tap    string
		before *uint32 // the tap's owner before the jail's
	}
	vms := map[string]jailed{}
	for _, name := range []string{"r1", "r2"} {
		if _, err := d1.c.CreateVM(ctx, api.CreateVMRequest{Name: name, Plugin: "app"}); err != nil {
			t.Fatal(err)
		}
		// The fake guests never turn healthy (an answer shows the jail of
		// a running VM): the run's own status says.
		st, err := launch.Inspect(ctx, filepath.Join(h.dir, "run", name), launch.Options{})
		if err != nil || !st.Live() {
			t.Fatalf("%s's run: %+v %v", name, st, err)
		}
		j := st.Jail
		if j == nil || j.Insecure || j.UID < first || j.UID >= first+4 || j.Cgroup == "" {
			t.Fatalf("%s is not jailed in our range: %+v", name, j)
		}
		vms[name] = jailed{uid: j.UID, cgroup: j.Cgroup, tap: hostnet.TapName(name)}
	}
	record := func(uid uint32) string { return filepath.Join(jail.DefaultUIDDir, fmt.Sprint(uid)+".json") }
	tapOwner := func(name string) *uint32 {
		for _, tp := range h.taps(t) {
			if tp.Name == name {
				return tp.Owner
			}
		}
		t.Fatalf("no tap %s", name)
		return nil
	}
	for name, j := range vms {
		b, err := os.ReadFile(record(j.uid))
		if err != nil {
			t.Fatalf("%s's uid record: %v", name, err)
		}
		var r jail.Record
		if err := json.Unmarshal(b, &r); err != nil || r.VM != name || r.Cgroup != j.cgroup || len(r.Taps) != 1 || r.Taps[0].Name != j.tap {
			t.Fatalf("%s's record %s: %v", name, b, err)
		}
		if o := tapOwner(j.tap); o == nil || *o != j.uid {
			t.Fatalf("%s's tap is owned by %v, want %d", name, o, j.uid)
		}
		j.before = r.Taps[0].Owner
		vms[name] = j
	}

	// kill -9: volantd, then each supervisor; their hypervisors follow.
	if err := d1.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-d1.done
	sups := h.pidsOf("volant-launch")
	if len(sups) != 2 {
		t.Fatalf("supervisors %v, want 2", sups)
	}
	for _, pid := range sups {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	if err := wait.For(20*time.Second, func() bool { return len(h.pidsOf(chtest.Name)) == 0 && len(h.pidsOf("volant-launch")) == 0 }); err != nil {
		t.Fatalf("hypervisors %v, supervisors %v outlive the kill", h.pidsOf(chtest.Name), h.pidsOf("volant-launch"))
	}
	// A process on its way out has no command line any more (procs
	// skips it) but may still hold its files: wait until the killed
	// runs' uid locks are free, as they are once the processes are gone.
	for name, j := range vms {
		lock := filepath.Join(jail.DefaultUIDDir, fmt.Sprint(j.uid))
		if err := wait.For(20*time.Second, func() bool { return !flocked(lock) }); err != nil {
			t.Fatalf("%s's uid lock %s is still held after its run was killed", name, lock)
		}
	}
	for name, j := range vms {
		if _, err := os.Stat(record(j.uid)); err != nil || !cgroupThere(j.cgroup) {
			t.Fatalf("after the kill, %s's record (%v) or cgroup (%v) is gone already: the leftovers this test is about are not there", name, err, cgroupThere(j.cgroup))
		}
		if o := tapOwner(j.tap); o == nil || *o != j.uid {
			t.Fatalf("after the kill, %s's tap is owned by %v", name, o)
		}
	}

	d2 := h.start(t, "--vmm-uids", uids)
	logged := reclaimLog(t, d2.log)
	for name, j := range vms {
		if !strings.Contains(logged, fmt.Sprint(j.uid)) {
			t.Errorf("volantd's log does not name %s's uid %d as reclaimed: %q", name, j.uid, logged)
		}
		if _, err := os.Stat(record(j.uid)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s's uid record is still there: %v", name, err)
		}
		if _, err := os.Stat(filepath.Join(jail.DefaultUIDDir, fmt.Sprint(j.uid))); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s's uid lock is still there: %v", name, err)
		}
		if cgroupThere(j.cgroup) {
			t.Errorf("%s's cgroup %s is still there", name, j.cgroup)
		}
		// Its owner from before, or root for none (hostnet.RestoreTapOwner).
		want := uint32(0)
		if j.before != nil {
			want = *j.before
		}
		if o := tapOwner(j.tap); o == nil || *o != want {
			t.Errorf("%s's tap is owned by %v, want %d as before its jail", name, deref(o), want)
		}
		v, err := waitState(ctx, d2.c, name, api.VMCrashed, 30*time.Second)
		if err != nil {
			t.Fatalf("%s after the restart: %+v %v", name, v, err)
		}
		u, release, err := jail.AllocateUID(jail.DefaultUIDDir, jail.Range{First: j.uid, Count: 1}, "test")
		if err != nil || u != j.uid {
			t.Fatalf("%s's uid %d is not free: %v", name, j.uid, err)
		}
		release()
	}
	if run, _ := filepath.Glob(filepath.Join(h.dir, "run", "r*")); len(run) != 0 {
		t.Errorf("run directories left: %v", run)
	}

	// A start jails the VM again, in the range.
	if _, err := d2.c.StartVM(ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	st, err := launch.Inspect(ctx, filepath.Join(h.dir, "run", "r1"), launch.Options{})
	if err != nil || st.Jail == nil || st.Jail.UID < first || st.Jail.UID >= first+4 {
		t.Fatalf("restarted r1's run: %+v %v", st, err)
	}
	again := st.Jail.UID
	if _, err := os.Stat(record(again)); err != nil {
		t.Fatalf("restarted r1's record: %v", err)
	}
	for _, name := range []string{"r1", "r2"} {
		if _, err := d2.c.DeleteVM(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(record(again)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("r1's record after its delete: %v", err)
	}
}

func deref(p *uint32) any {
	if p == nil {
		return "nobody"
	}
	return *p
}

// flocked reports whether a process holds an exclusive flock on path.
func flocked(path string) bool {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer syscall.Close(fd)
	if err := syscall.Flock(fd, syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		return true
	}
	syscall.Flock(fd, syscall.LOCK_UN)
	return false
}

// cgroupThere reports whether a cgroup path exists in any hierarchy (v2,
// or a v1 controller's).
func cgroupThere(path string) bool {
	if _, err := os.Stat("/sys/fs/cgroup" + path); err == nil {
		return true
	}
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*" + path)
	return len(dirs) > 0
}

// reclaimLog is volantd's log line saying which uids it reclaimed at start.
func reclaimLog(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "undid what killed VM runs left") {
			return sc.Text()
		}
	}
	return ""
}
