package jail

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// NewCgroup writes the limits the kernel enforces, in the files of the
// layout this host has (v2, v1 or hybrid: the test reads whichever), and
// Delete removes the cgroup.
func TestCgroupLimits(t *testing.T) {
	netnstest.Require(t)
	if os.Getenv(freshSysfs) != "" {
		// Under `ip netns exec`'s sysfs: no cgroup file systems here.
		if ents, _ := os.ReadDir("/sys/fs/cgroup"); len(ents) != 0 {
			t.Fatalf("/sys/fs/cgroup is not empty under a fresh sysfs: %v", ents)
		}
	}
	layout := Layout()
	if layout == "unavailable" {
		netnstest.SkipOrFail(t, "no cgroup file system at /sys/fs/cgroup")
	}
	l := Limits{MemoryBytes: 300 << 20, Pids: 77, CPUWeight: 200, CPUQuotaPercent: 150}
	cg, err := NewCgroup(DefaultCgroupParent, fmt.Sprintf("limits.%d", os.Getpid()), l)
	if err != nil {
		t.Fatalf("%s host: %v", layout, err)
	}
	t.Cleanup(func() { cg.Delete() })
	var want map[string]string
	if cg.v2 != "" {
		want = map[string]string{"memory.max": "314572800", "pids.max": "77", "cpu.weight": "200", "cpu.max": "150000 100000"}
	} else {
		want = map[string]string{"memory.limit_in_bytes": "314572800", "pids.max": "77", "cpu.shares": "2048", "cpu.cfs_quota_us": "150000", "cpu.cfs_period_us": "100000"}
	}
	dir := func(ctl string) string {
		d := cg.dir(ctl)
		if d == "" {
			t.Fatalf("no %s controller", ctl)
		}
		return d
	}
	for file, v := range want {
		c, _, _ := strings.Cut(file, ".")
		got, err := os.ReadFile(filepath.Join(dir(c), file))
		if err != nil || strings.TrimSpace(string(got)) != v {
			t.Errorf("%s host: %s = %q %v, want %s", layout, file, got, err, v)
		}
	}
	if n := cg.OOMKills(); n != 0 {
		t.Errorf("a new cgroup counts %d OOM kills", n)
	}
	mem := dir("memory")
	if err := cg.Delete(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(mem); !os.IsNotExist(err) {
		t.Fatalf("%s is still there after Delete: %v", mem, err)
	}
	t.Logf("%s host: limits written and the cgroup removed", layout)
}

const freshSysfs = "VOLANT_JAIL_TEST_FRESH_SYSFS"

// A supervisor started by `ip netns exec` sees a fresh sysfs over /sys,
// without the host's cgroup file systems: NewCgroup finds them through
// PID 1's root all the same. The test runs TestCgroupLimits again in such
// a mount namespace.
func TestCgroupUnderFreshSysfs(t *testing.T) {
	netnstest.Require(t, "unshare")
	if os.Getenv(freshSysfs) != "" {
		t.Skip("inside already")
	}
	cmd := exec.Command("unshare", "--net", "--mount", "--propagation", "private", "sh", "-c",
		`mount -t sysfs sysfs /sys && exec "$0" "$@"`, os.Args[0], "-test.run", "^TestCgroup(Limits|ParentWeighsItsChildren)$", "-test.v")
	cmd.Env = append(os.Environ(), freshSysfs+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestCgroupLimits") || !strings.Contains(string(out), "--- PASS: TestCgroupParentWeighsItsChildren") {
		t.Fatalf("under a fresh sysfs: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}

// On a unified (v2) host NewCgroup hands the controllers down from the
// root through every parent and writes the limits in v2's files. This
// host may have no v2 hierarchy with controllers (a hybrid one has them
// all on v1), so the files are a directory tree that looks like one; the
// real hierarchy is TestCgroupLimits' on a v2 host.
func TestCgroupV2Files(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "volant", "web1.7")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"cgroup.controllers":            "cpuset cpu io memory pids",
		"cgroup.subtree_control":        "",
		"volant/cgroup.subtree_control": "",
	}
	for _, f := range []string{"memory.max", "pids.max", "cpu.weight", "cpu.max", "cgroup.procs", "memory.events"} {
		files["volant/web1.7/"+f] = ""
	}
	files["volant/web1.7/memory.events"] = "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n"
	for f, v := range files {
		if err := os.WriteFile(filepath.Join(root, f), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cg, err := newV2(root, "/volant/web1.7", Limits{MemoryBytes: 300 << 20, Pids: 77, CPUWeight: 200, CPUQuotaPercent: 150})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"cgroup.subtree_control":        "+cpu +memory +pids",
		"volant/cgroup.subtree_control": "+cpu +memory +pids",
		"volant/web1.7/memory.max":      "314572800",
		"volant/web1.7/pids.max":        "77",
		"volant/web1.7/cpu.weight":      "200",
		"volant/web1.7/cpu.max":         "150000 100000",
	}
	for f, v := range want {
		if got, _ := os.ReadFile(filepath.Join(root, f)); string(got) != v {
			t.Errorf("%s = %q, want %q", f, got, v)
		}
	}
	if cg.dir("memory") != dir || cg.dir("pids") != dir {
		t.Errorf("dirs %q %q, want %q", cg.dir("memory"), cg.dir("pids"), dir)
	}
	if n := cg.OOMKills(); n != 2 {
		t.Errorf("OOMKills = %d, want 2 (memory.events oom_kill)", n)
	}
	// The parent weighs its children's cpu.weight together (v2's file;
	// a real v1 or v2 host: TestCgroupParentWeighsItsChildren).
	os.WriteFile(filepath.Join(root, "volant/cpu.weight"), []byte("100"), 0o644)
	os.MkdirAll(filepath.Join(root, "volant/web2.8"), 0o755)
	os.WriteFile(filepath.Join(root, "volant/web2.8/cpu.weight"), []byte("300\n"), 0o644)
	if err := cg.weighParentUpTo(10); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "volant/cpu.weight")); string(got) != "500" {
		t.Errorf("volant/cpu.weight = %q, want 500 (200 + 300)", got)
	}
	// ... up to the weight of so many busy VMMs (default processes).
	if err := cg.weighParentUpTo(3); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "volant/cpu.weight")); string(got) != "300" {
		t.Errorf("volant/cpu.weight = %q, want 300 (200 + 300, at most 3 processes' 100)", got)
	}
	// A hierarchy without a controller the limits need is no jail.
	os.WriteFile(filepath.Join(root, "cgroup.controllers"), []byte("cpu memory"), 0o644)
	if _, err := newV2(root, "/volant/web1.8", Limits{MemoryBytes: 1 << 30}); err == nil || !strings.Contains(err.Error(), "no pids controller") {
		t.Errorf("without pids: %v, want an error naming the pids controller", err)
	}
}

// The parent of the VMMs' cgroups weighs what it holds: the sum of its
// children's CPU weights, down again as they go, the default when empty,
// and never more than busyVMMs() default processes. Without the sum the
// VMMs together got one process's share of a busy host; without the cap
// a host of idle guests lent all their weight to the few booting.
func TestCgroupParentWeighsItsChildren(t *testing.T) {
	netnstest.Require(t)
	layout := Layout()
	if layout == "unavailable" {
		netnstest.SkipOrFail(t, "no cgroup file system at /sys/fs/cgroup")
	}
	parent := fmt.Sprintf("volant-weigh-%d", os.Getpid())
	root, _ := hostCgroups()
	t.Cleanup(func() { // after the children's (cleanups run last first)
		for _, d := range []string{root, filepath.Join(root, "cpu"), filepath.Join(root, "memory"), filepath.Join(root, "pids")} {
			os.Remove(filepath.Join(d, parent))
		}
	})
	child := func(name string, w int) *Cgroup {
		t.Helper()
		cg, err := NewCgroup(parent, name, Limits{MemoryBytes: 64 << 20, Pids: 10, CPUWeight: uint64(w), CPUQuotaPercent: 100})
		if err != nil {
			t.Fatalf("%s host: %v", layout, err)
		}
		t.Cleanup(func() { cg.Delete() })
		return cg
	}
	a := child("a", 100)
	// v1's cpu.shares are the weight*1024/100 NewCgroup writes.
	dir, file, scale, def := filepath.Join(root, parent), "cpu.weight", func(w int) string { return fmt.Sprint(w) }, "100"
	if a.v2 == "" {
		dir, file, scale, def = filepath.Join(root, "cpu", parent), "cpu.shares", func(w int) string { return fmt.Sprint(w * 1024 / 100) }, "1024"
	}
	weight := func() string {
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	if got, want := weight(), scale(100); got != want {
		t.Fatalf("%s host: one child of weight 100: the parent's %s = %s, want %s", layout, file, got, want)
	}
	b := child("b", 100)
	if got, want := weight(), scale(200); got != want { // busyVMMs() >= 2
		t.Fatalf("%s host: children of weight 100 and 100: the parent's %s = %s, want %s", layout, file, got, want)
	}
	capped := 100 * busyVMMs()
	c := child("c", capped)
	if got, want := weight(), scale(capped); got != want {
		t.Fatalf("%s host: children of weight 100, 100 and %d: the parent's %s = %s, want %s (%d busy VMMs at most)",
			layout, capped, file, got, want, busyVMMs())
	}
	if err := c.Delete(); err != nil {
		t.Fatal(err)
	}
	if err := a.Delete(); err != nil {
		t.Fatal(err)
	}
	if got, want := weight(), scale(100); got != want {
		t.Fatalf("%s host: after two children went: the parent's %s = %s, want %s", layout, file, got, want)
	}
	// DeleteCgroup (a dead run's cgroup, from its record) weighs too.
	if err := DeleteCgroup(b.Path); err != nil {
		t.Fatal(err)
	}
	if got := weight(); got != def {
		t.Fatalf("%s host: empty parent's %s = %s, want the default %s", layout, file, got, def)
	}
	t.Logf("%s host: the parent's %s followed its children", layout, file)
}
