package jail

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// die drops a lease as a SIGKILL would: the flock goes, nothing is undone.
func (l *Lease) die() { l.f.Close(); l.f = nil }

// A holder that dies leaves its record; the next lease of that uid, for
// another VM, gives back what the record names before it returns: the
// file's owner (only while the dead uid still owns it: a change recorded
// but never made is left alone), the ACL entry, the cgroup with what still
// ran in it.
func TestLeaseUndoesDeadHolder(t *testing.T) {
	netnstest.Require(t)
	dir := t.TempDir()
	rw, ro, never := filepath.Join(dir, "rw.img"), filepath.Join(dir, "ro.img"), filepath.Join(dir, "never.img")
	for _, p := range []string{rw, ro, never} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	os.Chown(never, 1234, 1234)
	u := UIDs{Dir: filepath.Join(dir, "uids"), Range: Range{First: 1<<30 + 4200, Count: 1}}
	l, err := u.Lease("web1")
	if err != nil {
		t.Fatal(err)
	}
	uid := l.UID
	if _, err := l.Chown(rw); err != nil {
		t.Fatal(err)
	}
	if _, err := l.GrantRead(ro); err != nil {
		t.Fatal(err)
	}
	// Recorded, then the process died before the chown.
	if err := l.change(func(r *Record) { r.Chowns = append(r.Chowns, Owner{Path: never}) }, func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	var cg *Cgroup
	var sleeper *exec.Cmd
	if Layout() != "unavailable" {
		if cg, err = l.NewCgroup(DefaultCgroupParent, fmt.Sprintf("ledger.%d", os.Getpid()), Limits{MemoryBytes: 64 << 20, Pids: 16, CPUWeight: 100, CPUQuotaPercent: 100}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { DeleteCgroup(cg.Path) })
		// A VMM still dying in it.
		sleeper = exec.Command("sleep", "60")
		if err := sleeper.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sleeper.Process.Kill() })
		if err = cg.addProc(sleeper.Process.Pid); err != nil {
			t.Fatal(err)
		}
		go sleeper.Wait()
	}
	l.die()

	if _, err := os.Stat(filepath.Join(u.Dir, fmt.Sprint(uid)+".json")); err != nil {
		t.Fatalf("no record after the holder died: %v", err)
	}
	l2, err := u.Lease("web2")
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Release()
	if l2.UID != uid {
		t.Fatalf("uid %d, want the only one, %d", l2.UID, uid)
	}
	if o := owner(t, rw); o != [2]uint32{0, 0} {
		t.Errorf("rw is %v, want root's again", o)
	}
	if o := owner(t, never); o != [2]uint32{1234, 1234} {
		t.Errorf("a file recorded but never given away is %v, want 1234:1234 as it was", o)
	}
	if n, err := syscall.Getxattr(ro, aclXattr, make([]byte, 64)); err == nil {
		t.Errorf("an ACL of %d bytes is left on ro", n)
	}
	if cg != nil {
		// Killed, then reaped by the goroutine above.
		deadline := time.Now().Add(5 * time.Second)
		for syscall.Kill(sleeper.Process.Pid, 0) == nil && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if syscall.Kill(sleeper.Process.Pid, 0) == nil {
			t.Error("the process left in the dead holder's cgroup still runs")
		}
		if err := DeleteCgroup(cg.Path); err != nil {
			t.Error(err)
		}
		if hasCgroup(cg.Path) {
			t.Errorf("cgroup %s left behind", cg.Path)
		}
	}
}

func hasCgroup(path string) bool {
	if _, err := os.Stat("/sys/fs/cgroup" + path); err == nil {
		return true
	}
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*" + path)
	return len(dirs) > 0
}

func owner(t *testing.T, p string) [2]uint32 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return [2]uint32{st.Uid, st.Gid}
}

// A record that cannot be undone keeps its uid out of use: no lease gets
// it, Reclaim says why, and once the undo works (here, taps can be
// restored) the uid is handed out again.
func TestUndoneRecordQuarantinesUID(t *testing.T) {
	dir := t.TempDir()
	u := UIDs{Dir: dir, Range: Range{First: 1<<30 + 4300, Count: 1}}
	l, err := u.Lease("web1")
	if err != nil {
		t.Fatal(err)
	}
	one := uint32(0)
	if err := l.NoteTap(Tap{Name: "tap-web1", Owner: &one, NetNS: 7}); err != nil {
		t.Fatal(err)
	}
	l.die()
	if _, err := u.Lease("web2"); !apierr.Is(err, Failed) {
		t.Fatalf("a uid whose tap could not be given back was handed out: %v", err)
	}
	if got, err := u.Reclaim(); err == nil || len(got) != 0 {
		t.Fatalf("reclaim: %v %v, want an error and nothing reclaimed", got, err)
	}
	var restored []Tap
	u.RestoreTap = func(uid uint32, tp Tap) error {
		if uid != l.UID {
			t.Errorf("restore for uid %d, want %d", uid, l.UID)
		}
		restored = append(restored, tp)
		return nil
	}
	got, err := u.Reclaim()
	if err != nil || len(got) != 1 || len(restored) != 1 || restored[0].Name != "tap-web1" || *restored[0].Owner != 0 || restored[0].NetNS != 7 {
		t.Fatalf("reclaim: %v %v, restored %+v", got, err, restored)
	}
	l2, err := u.Lease("web2")
	if err != nil {
		t.Fatal(err)
	}
	l2.Done()
	l2.Release()
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("left in the uid dir: %v", ents)
	}
}

// A record written before a reboot (the host lost power with a VM
// running) is undone by the first Reclaim after it: the record lives on
// disk, its cgroup and its tap's network namespace are gone with the old
// boot and count as undone, and the disk the dead VMM owned is given back.
// Had the records lived on a tmpfs, the disk would have stayed the uid's
// for whichever VM got that uid next.
func TestRecordOfAPreviousBoot(t *testing.T) {
	netnstest.Require(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	const uid = 1<<30 + 4300
	if err := os.Chown(disk, uid, uid); err != nil {
		t.Fatal(err)
	}
	u := UIDs{Dir: filepath.Join(dir, "uids"), Range: Range{First: uid, Count: 1},
		// lib/launch's finds no namespace of that inode: nothing to do.
		RestoreTap: func(uint32, Tap) error { return nil }}
	if err := os.MkdirAll(u.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	rec := fmt.Sprintf(`{"uid":%d,"vm":"web1","chowns":[{"path":%q,"uid":0,"gid":0}],"cgroup":"/volant.slice/volant-web1-gone.scope","taps":[{"name":"vt-web1","owner":null,"netns":1}]}`, uid, disk)
	if err := os.WriteFile(filepath.Join(u.Dir, fmt.Sprint(uid)+".json"), []byte(rec), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := u.Reclaim()
	if err != nil || len(got) != 1 || got[0] != uid {
		t.Fatalf("reclaim after the reboot: %v %v", got, err)
	}
	if o := owner(t, disk); o != [2]uint32{0, 0} {
		t.Errorf("the disk is %v after the reclaim, want root's", o)
	}
	if DefaultUIDDir != "/var/lib/volant/uids" {
		t.Errorf("records default to %s: they must outlive a reboot", DefaultUIDDir)
	}
}

// Plan names a run's changes in one write of the record, before any is
// made: the changes it named write nothing more (the record's file is the
// same one), one it did not name is recorded as before, and a holder that
// dies after the plan, before making a planned change, leaves a record
// whose undo leaves the unchanged file alone and frees the uid.
func TestPlanRecordsOnce(t *testing.T) {
	netnstest.Require(t)
	dir := t.TempDir()
	a, b, late := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img"), filepath.Join(dir, "late.img")
	for _, p := range []string{a, b, late} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	u := UIDs{Dir: filepath.Join(dir, "uids"), Range: Range{First: 1<<30 + 4400, Count: 1},
		RestoreTap: func(uint32, Tap) error { return nil }}
	l, err := u.Lease("web1")
	if err != nil {
		t.Fatal(err)
	}
	ino := func() uint64 {
		var st syscall.Stat_t
		if err := syscall.Stat(l.recordPath(), &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	one := uint32(0)
	if err := l.Plan(Changes{Chowns: []string{a, b}, Taps: []Tap{{Name: "vt-web1", Owner: &one, NetNS: 9}}, Cgroup: CgroupPath("volant", "web1.9")}); err != nil {
		t.Fatal(err)
	}
	planned := ino()
	if _, err := l.Chown(a); err != nil {
		t.Fatal(err)
	}
	if err := l.NoteTap(Tap{Name: "vt-web1", Owner: &one, NetNS: 9}); err != nil {
		t.Fatal(err)
	}
	if got := ino(); got != planned {
		t.Errorf("a planned change rewrote the record (inode %d, was %d)", got, planned)
	}
	if _, err := l.Chown(late); err != nil {
		t.Fatal(err)
	}
	if got := ino(); got == planned {
		t.Error("a change the plan did not name was not recorded")
	}
	rec, _ := os.ReadFile(l.recordPath())
	for _, want := range []string{a, b, late, "vt-web1", "/volant/web1.9"} {
		if !strings.Contains(string(rec), want) {
			t.Errorf("the record lacks %s: %s", want, rec)
		}
	}
	if n := strings.Count(string(rec), a); n != 1 {
		t.Errorf("the record names %s %d times: %s", a, n, rec)
	}
	// Dies before b's chown: b is not the uid's, and stays as it is.
	l.die()
	os.Chown(b, 1234, 1234)
	got, err := u.Reclaim()
	if err != nil || len(got) != 1 {
		t.Fatalf("reclaim: %v %v", got, err)
	}
	if o := owner(t, a); o != [2]uint32{0, 0} {
		t.Errorf("%s is %v after the reclaim, want root's", a, o)
	}
	if o := owner(t, b); o != [2]uint32{1234, 1234} {
		t.Errorf("%s, planned but never the uid's, is %v after the reclaim, want left alone", b, o)
	}
}
