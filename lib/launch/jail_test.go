package launch

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/hostnet"
	"github.com/volantvm/volant/lib/testutil/netnstest"
	"github.com/volantvm/volant/lib/testutil/wait"
	"github.com/volantvm/volant/lib/vmm"
	"github.com/volantvm/volant/lib/vmm/cloudhypervisor"
	"github.com/volantvm/volant/lib/vmm/jail"
	"github.com/volantvm/volant/lib/vmm/qemu"
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

	// --insecure-vmm: the VMM runs as root, the log and the status say
	// so.
	os.Chmod(f.kernel, 0o600)
	o = f.opts
	o.Jail.Insecure = true
	var logged syncBuffer
	o.Logger = slog.New(slog.NewTextHandler(&logged, nil))
	wait := startRun(t, ctx, p, o)
	st := waitRunning(t, p.RunDir, o)
	if st.Jail == nil || !st.Jail.Insecure || st.Jail.UID != 0 || st.Jail.Cgroup != "" {
		t.Fatalf("jail %+v, want insecure", st.Jail)
	}
	if l := logged.String(); !strings.Contains(l, `level=WARN msg="the VMM runs as root without a jail (--insecure-vmm)" vm=web1`) {
		t.Fatalf("the insecure run's log does not warn that the VMM runs as root:\n%s", l)
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

// A VM started from a snapshot writes to a qcow2 overlay whose backing
// file is the snapshot's copy, which others may not read (root's, 0600):
// the VMM's uid reads it through an ACL entry for the run, taken back when
// the run ends; the overlay is the uid's for the run.
func TestJailGrantsTheBackingFile(t *testing.T) {
	img, err := exec.LookPath("qemu-img")
	if err != nil {
		netnstest.SkipOrFail(t, "qemu-img is needed")
	}
	f := newFixture(t)
	ctx := context.Background()
	_, base := jailedFiles(t, f) // 0600
	top := filepath.Join(filepath.Dir(base), "top.qcow2")
	if out, err := exec.Command(img, "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", top).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v %s", err, out)
	}
	os.Chmod(top, 0o600)
	spec := f.spec()
	spec.Disks = []vmm.Disk{{Path: top, Format: "qcow2"}}
	p, err := Prepare(ctx, spec, f.opts)
	if err != nil {
		t.Fatal(err)
	}
	wait := startRun(t, ctx, p, f.opts)
	st := waitRunning(t, p.RunDir, f.opts)
	uid := st.Jail.UID
	if u, _ := ownerOf(t, top); u != uid || !aclNames(base, uid) {
		t.Fatalf("the running VMM (uid %d): overlay owner %d, ACL entry on its backing file %v", uid, u, aclNames(base, uid))
	}
	if _, err := Stop(ctx, p.RunDir, 10*time.Second, f.opts); err != nil {
		t.Fatal(err)
	}
	if _, err := wait(); err != nil {
		t.Fatal(err)
	}
	if u, _ := ownerOf(t, top); u != 0 || aclNames(base, uid) {
		t.Errorf("after the run: overlay owner %d, ACL entry on the backing file %v", u, aclNames(base, uid))
	}
}

// startSupervisor runs p in a supervisor process of its own (the test
// binary as helperRun), so a test can kill it with SIGKILL.
func startSupervisor(t *testing.T, f *fixture, p *Plan, jo JailOptions) *exec.Cmd {
	t.Helper()
	hp := map[string]any{"Plan": p, "Opts": map[string]string{"RunRoot": f.opts.RunRoot, "StateDir": f.opts.StateDir,
		"CacheDir": f.opts.CacheDir, "Binary": f.opts.Backends[0].(*cloudhypervisor.Backend).Binary}, "Jail": jo}
	b, _ := json.Marshal(hp)
	planFile := filepath.Join(f.dir, "helper.json")
	os.WriteFile(planFile, b, 0o644)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "LAUNCH_HELPER_PLAN="+planFile)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// killSupervisor ends a supervisor with SIGKILL, so none of its undo steps
// run, and waits until its VMM is gone too.
func killSupervisor(t *testing.T, cmd *exec.Cmd, st *Status) {
	t.Helper()
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if wait.For(10*time.Second, func() bool { return !st.Process.Identity.Alive() }) != nil {
		syscall.Kill(st.Process.Pid, syscall.SIGKILL)
		t.Fatal("the VMM outlived its SIGKILLed supervisor")
	}
}

// jailedFiles are a VM's writable disk (root's, 0644) and a read-only
// volume others may not read (root's, 0600), as the jail finds them.
func jailedFiles(t *testing.T, f *fixture) (rw, ro string) {
	t.Helper()
	dir := filepath.Join(f.dir, "disks")
	os.Mkdir(dir, 0o755)
	os.Chmod(f.dir, 0o755)
	os.Chmod(filepath.Dir(f.dir), 0o755)
	rw, ro = filepath.Join(dir, "data.img"), filepath.Join(dir, "volume.img")
	if err := os.WriteFile(rw, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ro, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	return rw, ro
}

func ownerOf(t *testing.T, path string) (uint32, uint32) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Uid, st.Gid
}

// aclNames reports whether path's access ACL has an entry for uid.
func aclNames(path string, uid uint32) bool {
	buf := make([]byte, 4096)
	n, err := syscall.Getxattr(path, "system.posix_acl_access", buf)
	if err != nil {
		return false
	}
	for b := buf[4:n]; len(b) >= 8; b = b[8:] {
		if binary.LittleEndian.Uint16(b) == 0x02 && binary.LittleEndian.Uint32(b[4:]) == uid {
			return true
		}
	}
	return false
}

// A supervisor killed with SIGKILL runs none of its undo steps: its VMM's
// cgroup, the chown of its writable disk and the ACL entry on its
// read-only volume stay behind, in the name of a uid that is free again.
// The next start of that VM gives all of it back before it takes
// anything, and after that run ends nothing of either run is left.
func TestKilledSupervisorJailUndoneOnNextStart(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	rw, ro := jailedFiles(t, f)
	spec := f.spec()
	spec.Disks = []vmm.Disk{{Path: rw}, {Path: ro, ReadOnly: true}}
	p, err := Prepare(ctx, spec, f.opts)
	if err != nil {
		t.Fatal(err)
	}
	jo := JailOptions{UIDDir: filepath.Join(f.dir, "uids"), UIDs: jail.Range{First: 1<<30 + 4000, Count: 2}}
	cmd := startSupervisor(t, f, p, jo)
	st := waitRunning(t, p.RunDir, f.opts)
	uid, cg := st.Jail.UID, st.Jail.Cgroup
	if u, _ := ownerOf(t, rw); u != uid || !aclNames(ro, uid) || !cgroupExists(cg) {
		t.Fatalf("the running VMM (uid %d): disk owner %d, ACL entry %v, cgroup %s %v", uid, u, aclNames(ro, uid), cg, cgroupExists(cg))
	}
	killSupervisor(t, cmd, st)
	// What the dead run leaves.
	if u, _ := ownerOf(t, rw); u != uid || !aclNames(ro, uid) || !cgroupExists(cg) {
		t.Fatalf("after SIGKILL: disk owner %d, ACL entry %v, cgroup %v: the leftovers this test is about are not there", u, aclNames(ro, uid), cgroupExists(cg))
	}

	// The next start of the VM, in this process, then a clean stop.
	o := f.opts
	o.Jail = jo
	run := startRun(t, ctx, p, o)
	st2 := waitRunning(t, p.RunDir, o)
	if cg != st2.Jail.Cgroup && cgroupExists(cg) {
		t.Errorf("the dead run's cgroup %s is still there while the next run is in %s", cg, st2.Jail.Cgroup)
	}
	if st2.Jail.UID != uid && aclNames(ro, uid) {
		t.Errorf("the dead run's uid %d still reads the volume while the next run is uid %d", uid, st2.Jail.UID)
	}
	if _, err := Stop(ctx, p.RunDir, 10*time.Second, o); err != nil {
		t.Fatal(err)
	}
	if _, err := run(); err != nil {
		t.Fatal(err)
	}
	if u, g := ownerOf(t, rw); u != 0 || g != 0 {
		t.Errorf("the writable disk is %d:%d after the next run, want 0:0 (it was root's before either)", u, g)
	}
	for _, u := range []uint32{uid, st2.Jail.UID} {
		if aclNames(ro, u) {
			t.Errorf("the volume's ACL still names uid %d", u)
		}
	}
	for _, c := range []string{cg, st2.Jail.Cgroup} {
		if cgroupExists(c) {
			t.Errorf("cgroup %s left behind", c)
		}
	}
	if ents, _ := os.ReadDir(jo.UIDDir); len(ents) != 0 {
		t.Errorf("uid dir left with %d entries, want none: %v", len(ents), ents)
	}
}

// What volantd does when it starts (ReclaimJails): a killed supervisor's
// leftovers are given back without that VM starting again — its cgroup
// removed, its disk root's again, the volume's ACL entry gone, its uid's
// lock and record gone and the uid free — while a live run's are kept.
func TestReclaimJailsAfterKill(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	rw, ro := jailedFiles(t, f)
	spec := f.spec()
	spec.Disks = []vmm.Disk{{Path: rw}, {Path: ro, ReadOnly: true}}
	p, err := Prepare(ctx, spec, f.opts)
	if err != nil {
		t.Fatal(err)
	}
	jo := JailOptions{UIDDir: filepath.Join(f.dir, "uids"), UIDs: jail.Range{First: 1<<30 + 4100, Count: 4}}
	o := f.opts
	o.Jail = jo

	// A live run of another VM, whose jail must survive the reclaim.
	spec2 := f.spec()
	spec2.Name = "web2"
	p2, err := Prepare(ctx, spec2, o)
	if err != nil {
		t.Fatal(err)
	}
	run2 := startRun(t, ctx, p2, o)
	live := waitRunning(t, p2.RunDir, o)

	cmd := startSupervisor(t, f, p, jo)
	st := waitRunning(t, p.RunDir, o)
	uid, cg := st.Jail.UID, st.Jail.Cgroup
	killSupervisor(t, cmd, st)
	if u, _ := ownerOf(t, rw); u != uid || !aclNames(ro, uid) || !cgroupExists(cg) {
		t.Fatalf("after SIGKILL: disk owner %d, ACL entry %v, cgroup %v: the leftovers this test is about are not there", u, aclNames(ro, uid), cgroupExists(cg))
	}
	lock := filepath.Join(jo.UIDDir, fmt.Sprint(uid))
	if _, err := os.Stat(lock + ".json"); err != nil {
		t.Fatalf("the dead run's record: %v", err)
	}

	got, err := ReclaimJails(o)
	if err != nil || len(got) != 1 || got[0] != uid {
		t.Fatalf("reclaimed %v %v, want [%d]", got, err, uid)
	}
	if u, g := ownerOf(t, rw); u != 0 || g != 0 {
		t.Errorf("the writable disk is %d:%d, want 0:0", u, g)
	}
	if aclNames(ro, uid) {
		t.Errorf("the volume's ACL still names uid %d", uid)
	}
	if cgroupExists(cg) {
		t.Errorf("cgroup %s left behind", cg)
	}
	for _, p := range []string{lock, lock + ".json"} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind: %v", p, err)
		}
	}
	if u, release, err := jail.AllocateUID(jo.UIDDir, jail.Range{First: uid, Count: 1}, "other"); err != nil || u != uid {
		t.Errorf("the dead run's uid is not free: %d %v", u, err)
	} else {
		release()
	}

	// The live run kept its uid, cgroup and record.
	if !cgroupExists(live.Jail.Cgroup) {
		t.Errorf("the live run's cgroup %s was removed", live.Jail.Cgroup)
	}
	if _, err := os.Stat(filepath.Join(jo.UIDDir, fmt.Sprint(live.Jail.UID)+".json")); err != nil {
		t.Errorf("the live run's record: %v", err)
	}
	if _, err := Stop(ctx, p2.RunDir, 10*time.Second, o); err != nil {
		t.Fatal(err)
	}
	if _, err := run2(); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(jo.UIDDir); len(ents) != 0 {
		t.Errorf("uid dir left with %v after the live run's clean end", ents)
	}
}

// A dead run's tap is given back in its own network namespace, found from
// outside it (volantd's reclaim runs in the host's): a tap the uid still
// owns gets its earlier owner (none) back; one owned by someone else since
// is left alone.
func TestRestoreTapInItsNamespace(t *testing.T) {
	ns := netnstest.New(t)
	const uid, other = 1<<30 + 4400, 1<<30 + 4401
	ns.Run("ip", "tuntap", "add", "dev", "tapdead", "mode", "tap", "vnet_hdr")
	ns.Run("ip", "tuntap", "add", "dev", "tapmoved", "mode", "tap", "vnet_hdr")
	var id uint64
	if err := ns.Do(func() error {
		var err error
		if id, err = netnsID("/proc/thread-self/ns/net"); err != nil {
			return err
		}
		// A clean run's own undo gives the tap back (to root: the
		// kernel cannot unset an owner).
		restore, err := hostnet.SetTapOwner("tapdead", uid)
		if err != nil {
			return err
		}
		if o, _, err := hostnet.TapOwner("tapdead"); err != nil || o == nil || *o != uid {
			return fmt.Errorf("tapdead's owner %v %v, want %d", o, err, uid)
		}
		if err := restore(); err != nil {
			return fmt.Errorf("a clean run's undo: %w", err)
		}
		if o, _, err := hostnet.TapOwner("tapdead"); err != nil || o == nil || *o != 0 {
			return fmt.Errorf("tapdead's owner after a clean run %v %v, want root", o, err)
		}
		// A dead run's: given, never given back.
		if _, err := hostnet.SetTapOwner("tapdead", uid); err != nil {
			return err
		}
		_, err = hostnet.SetTapOwner("tapmoved", other)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if here, _ := netnsID("/proc/thread-self/ns/net"); here == id {
		t.Fatal("the test's namespace is the tap's")
	}
	for _, tap := range []string{"tapdead", "tapmoved", "tapgone"} {
		if err := restoreTap(uid, jail.Tap{Name: tap, NetNS: id}); err != nil {
			t.Fatalf("%s: %v", tap, err)
		}
	}
	if err := ns.Do(func() error {
		if o, _, err := hostnet.TapOwner("tapdead"); err != nil || o == nil || *o != 0 {
			return fmt.Errorf("tapdead's owner %v %v, want root", o, err)
		}
		if o, _, err := hostnet.TapOwner("tapmoved"); err != nil || o == nil || *o != other {
			return fmt.Errorf("tapmoved's owner %v %v, want %d still", o, err, other)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestTCGLimitCoversTheTranslationCache: under TCG QEMU keeps a
// translation cache of qemu.TCGCacheMiB beyond what it needs under KVM,
// so the cgroup's memory limit must leave room for it, or a guest would
// be OOM-killed for QEMU's cache rather than its own memory.
func TestTCGLimitCoversTheTranslationCache(t *testing.T) {
	p := &Plan{Accel: vmm.AccelTCG, Config: vmm.Config{CPUs: 1, MemoryMB: 128}}
	got := Limits(p, JailOptions{}).MemoryBytes >> 20
	if want := int64(128 + DefaultOverheadMB + qemu.TCGCacheMiB); got < want {
		t.Fatalf("TCG memory limit %d MiB, want at least %d (guest + the KVM overhead + the translation cache)", got, want)
	}
	p.Accel = vmm.AccelKVM
	if got := Limits(p, JailOptions{}).MemoryBytes >> 20; got != 128+DefaultOverheadMB {
		t.Fatalf("KVM memory limit %d MiB, want %d", got, 128+DefaultOverheadMB)
	}
}

// syncBuffer is a buffer that goroutines may write at once (a logger's).
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
