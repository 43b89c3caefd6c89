package jail

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/cgroups/v3/cgroup1"

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
	var dir func(ctl cgroup1.Name) string
	if cg.v2 != nil {
		d := filepath.Join(cg.root, cg.Path)
		dir = func(cgroup1.Name) string { return d }
		want = map[string]string{"memory.max": "314572800", "pids.max": "77", "cpu.weight": "200", "cpu.max": "150000 100000"}
	} else {
		dir = func(ctl cgroup1.Name) string {
			for _, s := range cg.v1.Subsystems() {
				if h, ok := s.(interface{ Path(string) string }); ok && s.Name() == ctl {
					return h.Path(cg.Path)
				}
			}
			t.Fatalf("no %s controller", ctl)
			return ""
		}
		want = map[string]string{"memory.limit_in_bytes": "314572800", "pids.max": "77", "cpu.shares": "2048", "cpu.cfs_quota_us": "150000", "cpu.cfs_period_us": "100000"}
	}
	ctl := map[string]cgroup1.Name{"memory": cgroup1.Memory, "pids": cgroup1.Pids, "cpu": cgroup1.Cpu}
	for file, v := range want {
		c, _, _ := strings.Cut(file, ".")
		got, err := os.ReadFile(filepath.Join(dir(ctl[c]), file))
		if err != nil || strings.TrimSpace(string(got)) != v {
			t.Errorf("%s host: %s = %q %v, want %s", layout, file, got, err, v)
		}
	}
	if n := cg.OOMKills(); n != 0 {
		t.Errorf("a new cgroup counts %d OOM kills", n)
	}
	mem := dir(ctl["memory"])
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
		`mount -t sysfs sysfs /sys && exec "$0" "$@"`, os.Args[0], "-test.run", "^TestCgroupLimits$", "-test.v")
	cmd.Env = append(os.Environ(), freshSysfs+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestCgroupLimits") {
		t.Fatalf("under a fresh sysfs: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
