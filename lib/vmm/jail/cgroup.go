package jail

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Limits are a VMM's cgroup limits.
type Limits struct {
	// MemoryBytes is the most memory the VMM may use (guest memory plus
	// its own); past it the kernel's OOM killer ends the VMM, and only it.
	MemoryBytes int64 `json:"memory_bytes"`
	// Pids bounds its threads and processes.
	Pids int64 `json:"pids"`
	// CPUWeight is its share under contention, on cgroup v2's scale
	// (1-10000, 100 is one default process); v1's cpu.shares get
	// weight*1024/100.
	CPUWeight uint64 `json:"cpu_weight"`
	// CPUQuotaPercent caps its CPU time: 100 is one whole core.
	CPUQuotaPercent int `json:"cpu_quota_percent"`
}

// cpuPeriod is the CFS period the quota is a share of (100 ms, the
// kernel's default).
const cpuPeriod = 100000

// DefaultCgroupParent is the cgroup under which each VMM gets its own.
const DefaultCgroupParent = "volant"

// Cgroup is one VMM's cgroup, on a v2 (unified), v1 (legacy) or hybrid
// host (v1 controllers beside an empty v2 hierarchy): containerd/cgroups
// does the writing, this type picks the layout the host has and never
// assumes one.
type Cgroup struct {
	// Path is the cgroup's path below the hierarchy's root
	// (/volant/web1.2000000005).
	Path string
	v1   cgroup1.Cgroup
	v2   *cgroup2.Manager
	root string // the v2 mount point
}

// Layout says which cgroup layout the host has: "unified" (v2), "hybrid"
// (v1 controllers and a v2 hierarchy without them), "legacy" (v1), or
// "unavailable".
func Layout() string {
	_, mode := hostCgroups()
	switch mode {
	case cgroups.Unified:
		return "unified"
	case cgroups.Hybrid:
		return "hybrid"
	case cgroups.Legacy:
		return "legacy"
	}
	return "unavailable"
}

// NewCgroup creates (or takes over, after a crash) the cgroup parent/name
// with limits l. The controllers it needs are memory, pids and cpu; a
// host without one of them fails with ISOLATION_UNAVAILABLE.
func NewCgroup(parent, name string, l Limits) (*Cgroup, error) {
	if strings.ContainsAny(name, "/\x00") || name == "" || name == "." || name == ".." {
		return nil, fmt.Errorf("cgroup name %q", name)
	}
	path := cgroupPath(parent, name)
	root, mode := hostCgroups()
	switch mode {
	case cgroups.Unified:
		return newV2(root, path, l)
	case cgroups.Hybrid, cgroups.Legacy:
		return newV1(root, path, l)
	}
	return nil, failed(errors.New("no cgroup file system at /sys/fs/cgroup, and none this process belongs to"), "cgroups")
}

func newV2(root, path string, l Limits) (*Cgroup, error) {
	quota := int64(l.CPUQuotaPercent) * cpuPeriod / 100
	period := uint64(cpuPeriod)
	weight := l.CPUWeight
	res := &cgroup2.Resources{
		Memory: &cgroup2.Memory{Max: &l.MemoryBytes},
		Pids:   &cgroup2.Pids{Max: l.Pids},
		CPU:    &cgroup2.CPU{Weight: &weight, Max: cgroup2.NewCPUMax(&quota, &period)},
	}
	// Enabling the controllers in the parents is NewManager's job; a
	// hierarchy that lacks one (cgroup.controllers) is no jail.
	avail, err := os.ReadFile(filepath.Join(root, "cgroup.controllers"))
	if err != nil {
		return nil, failed(err, "cgroup v2 controllers")
	}
	for _, c := range []string{"memory", "pids", "cpu"} {
		if !strings.Contains(" "+strings.TrimSpace(string(avail))+" ", " "+c+" ") {
			return nil, failed(fmt.Errorf("the cgroup v2 hierarchy at %s has no %s controller (it has: %s)", root, c, strings.TrimSpace(string(avail))), "cgroups")
		}
	}
	m, err := cgroup2.NewManager(root, path, res)
	if err != nil {
		return nil, failed(err, "creating cgroup "+path)
	}
	return &Cgroup{Path: path, v2: m, root: root}, nil
}

func newV1(root, path string, l Limits) (*Cgroup, error) {
	shares := l.CPUWeight * 1024 / 100
	quota := int64(l.CPUQuotaPercent) * cpuPeriod / 100
	period := uint64(cpuPeriod)
	res := &specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: &l.MemoryBytes},
		Pids:   &specs.LinuxPids{Limit: &l.Pids},
		CPU:    &specs.LinuxCPU{Shares: &shares, Quota: &quota, Period: &period},
	}
	// Only the controllers the limits need: others (devices, freezer, …)
	// may be missing or owned by someone else.
	need := func() ([]cgroup1.Subsystem, error) {
		var missing []string
		for _, c := range []string{"memory", "pids", "cpu"} {
			var st unix.Statfs_t
			if unix.Statfs(filepath.Join(root, c), &st) != nil || st.Type != unix.CGROUP_SUPER_MAGIC {
				missing = append(missing, c)
			}
		}
		if len(missing) > 0 {
			return nil, fmt.Errorf("the host's cgroup v1 hierarchies at %s lack %s", root, strings.Join(missing, ", "))
		}
		return []cgroup1.Subsystem{cgroup1.NewMemory(root), cgroup1.NewPids(root), cgroup1.NewCpu(root)}, nil
	}
	cg, err := cgroup1.New(cgroup1.StaticPath(path), res, cgroup1.WithHierarchy(need), func(c *cgroup1.InitConfig) error {
		c.InitCheck = func(s cgroup1.Subsystem, _ cgroup1.Path, err error) error {
			return fmt.Errorf("cgroup v1 %s: %w", s.Name(), err)
		}
		return nil
	})
	if err != nil {
		return nil, failed(err, "creating cgroup "+path)
	}
	return &Cgroup{Path: path, v1: cg}, nil
}

// enter makes the next fork of the calling (locked) thread start in the
// cgroup: on v2 through clone3's CLONE_INTO_CGROUP (attr.CgroupFD); on v1,
// where a thread may sit in a cgroup of its own, by moving the thread in
// (tasks) and, in the returned function, back out once it has forked.
func (c *Cgroup) enter(attr *syscall.SysProcAttr) (after func(), err error) {
	if c.v2 != nil {
		fd, err := unix.Open(filepath.Join(c.root, c.Path), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, failed(err, "opening cgroup "+c.Path)
		}
		attr.UseCgroupFD, attr.CgroupFD = true, fd
		return func() { unix.Close(fd) }, nil
	}
	tid := unix.Gettid()
	// Where the thread is now, per controller, to go back to.
	var back []*os.File
	for _, s := range c.v1.Subsystems() {
		cur, err := threadCgroup(tid, string(s.Name()))
		if err != nil {
			return nil, failed(err, "reading the thread's cgroup")
		}
		h, ok := s.(interface{ Path(string) string })
		if !ok {
			continue
		}
		f, err := os.OpenFile(filepath.Join(h.Path(cur), "tasks"), os.O_WRONLY, 0)
		if err != nil {
			closeAll(back)
			return nil, failed(err, "opening the thread's cgroup")
		}
		back = append(back, f)
	}
	if err := c.v1.AddTask(cgroup1.Process{Pid: tid}); err != nil {
		closeAll(back)
		return nil, failed(err, "entering cgroup "+c.Path)
	}
	return func() {
		for _, f := range back {
			f.WriteString(strconv.Itoa(tid))
		}
		closeAll(back)
	}, nil
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// threadCgroup reads a thread's v1 cgroup path for a controller.
func threadCgroup(tid int, controller string) (string, error) {
	f, err := os.Open("/proc/thread-self/cgroup")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == controller {
				return parts[2], nil
			}
		}
	}
	return "", fmt.Errorf("thread %d: no %s cgroup", tid, controller)
}

// OOMKills is how many times the kernel's OOM killer ended a process of
// the cgroup because it reached its memory limit.
func (c *Cgroup) OOMKills() uint64 {
	var file, key string
	var dir string
	if c.v2 != nil {
		dir, file, key = filepath.Join(c.root, c.Path), "memory.events", "oom_kill"
	} else {
		for _, s := range c.v1.Subsystems() {
			if s.Name() == cgroup1.Memory {
				if h, ok := s.(interface{ Path(string) string }); ok {
					dir = h.Path(c.Path)
				}
			}
		}
		file, key = "memory.oom_control", "oom_kill"
	}
	b, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok && k == key {
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// Delete removes the cgroup (it must be empty: the VMM has exited).
func (c *Cgroup) Delete() error {
	if c.v2 != nil {
		return c.v2.Delete()
	}
	return c.v1.Delete()
}
