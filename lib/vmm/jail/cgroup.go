package jail

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

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

// controllers are the cgroup controllers a VMM's limits need.
var controllers = []string{"memory", "pids", "cpu"}

// Cgroup is one VMM's cgroup, on a v2 (unified), v1 (legacy) or hybrid
// host (v1 controllers beside an empty v2 hierarchy). This type picks the
// layout the host has and never assumes one; it writes the few cgroupfs
// files the limits need itself (the kernel's cgroup-v2.rst and
// cgroup-v1/*.rst name them), which is all a jail needs of a cgroup
// library, without one's start-up cost in every `volant-launch run`.
type Cgroup struct {
	// Path is the cgroup's path below the hierarchy's root
	// (/volant/web1.2000000005).
	Path string
	// v2 is the cgroup's directory on a unified host; "" on v1.
	v2 string
	// v1 are its directories per controller (memory, pids, cpu) on a v1
	// or hybrid host, each below root/<controller>.
	v1   map[string]string
	root string
}

// Layout says which cgroup layout the host has: "unified" (v2), "hybrid"
// (v1 controllers and a v2 hierarchy without them), "legacy" (v1), or
// "unavailable".
func Layout() string { _, mode := hostCgroups(); return mode.String() }

// NewCgroup creates (or takes over, after a crash) the cgroup parent/name
// with limits l. The controllers it needs are memory, pids and cpu; a
// host without one of them fails with ISOLATION_UNAVAILABLE.
func NewCgroup(parent, name string, l Limits) (*Cgroup, error) {
	if strings.ContainsAny(name, "/\x00") || name == "" || name == "." || name == ".." {
		return nil, fmt.Errorf("cgroup name %q", name)
	}
	path := cgroupPath(parent, name)
	root, mode := hostCgroups()
	var cg *Cgroup
	var err error
	switch mode {
	case modeUnified:
		cg, err = newV2(root, path, l)
	case modeHybrid, modeLegacy:
		cg, err = newV1(root, path, l)
	default:
		return nil, failed(errors.New("no cgroup file system at /sys/fs/cgroup, and none this process belongs to"), "cgroups")
	}
	if err != nil {
		return nil, err
	}
	if err := cg.weighParent(); err != nil {
		cg.Delete()
		return nil, failed(err, "weighing cgroup "+filepath.Dir(path))
	}
	return cg, nil
}

// weighParent gives the cgroup's parent the CPU weight of the cgroups it
// holds, the sum of theirs (the default weight when it holds none): the
// VMMs together weigh against the host's other processes as much as they
// would one by one outside cgroups (a vCPU as much as one default
// process), not as much as one process, which starved their boots on a
// loaded host. Concurrent callers (a supervisor per VM) take turns on a
// lock of the parent's directory, so the last to write saw every child.
//
// The sum stops at busyVMMs() default processes. Outside cgroups an idle
// VMM weighs nothing against anyone, but a weight is a cgroup's whether
// its processes run or not: on a host of mostly idle guests the whole sum
// went to the few that were booting, 28 processes' weight for 3 vCPUs on
// 2 cores, and volantd and the supervisors starting the next VMMs waited
// seconds for a CPU between their turns (bench/density).
func (c *Cgroup) weighParent() error { return c.weighParentUpTo(busyVMMs()) }

// busyVMMs is how many VMMs the parent's weight counts at most: the
// host's CPUs plus one, as many as volantd boots at once by default
// (--max-booting).
func busyVMMs() int { return runtime.NumCPU() + 1 }

func (c *Cgroup) weighParentUpTo(busy int) error {
	if filepath.Dir(c.Path) == "/" {
		return nil // the hierarchy's root has no weight
	}
	dir, file := filepath.Dir(c.dir("cpu")), "cpu.weight"
	def, lo, hi := uint64(100), uint64(1), uint64(10000)
	if c.v2 == "" {
		file, def, lo, hi = "cpu.shares", 1024, 2, 262144
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		return fmt.Errorf("locking %s: %w", dir, err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	sum, n := uint64(0), 0
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), file))
		if err != nil {
			continue // going away
		}
		if w, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil {
			sum += w
			n++
		}
	}
	if n == 0 {
		sum = def
	}
	sum = min(max(sum, lo), hi, def*uint64(max(busy, 1)))
	if err := writeFile(filepath.Join(dir, file), strconv.FormatUint(sum, 10)); err != nil {
		return fmt.Errorf("setting the CPU weight of %s: %w", dir, err)
	}
	return nil
}

// newV2 makes the cgroup on a unified hierarchy: the controllers enabled
// in every parent's cgroup.subtree_control, then memory.max, pids.max,
// cpu.weight and cpu.max written.
func newV2(root, path string, l Limits) (*Cgroup, error) {
	// A hierarchy that lacks a controller (cgroup.controllers) is no jail.
	avail, err := os.ReadFile(filepath.Join(root, "cgroup.controllers"))
	if err != nil {
		return nil, failed(err, "cgroup v2 controllers")
	}
	have := " " + strings.TrimSpace(string(avail)) + " "
	for _, c := range controllers {
		if !strings.Contains(have, " "+c+" ") {
			return nil, failed(fmt.Errorf("the cgroup v2 hierarchy at %s has no %s controller (it has: %s)", root, c, strings.TrimSpace(string(avail))), "cgroups")
		}
	}
	dir := filepath.Join(root, path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, failed(err, "creating cgroup "+path)
	}
	// Each parent, from the root down, hands the controllers to its
	// children. A parent this process may not write (delegation) may have
	// them enabled already: only the nearest parent's answer counts.
	var lastErr error
	parts := strings.Split(strings.Trim(path, "/"), "/")
	for i := range len(parts) { // root, then each parent below it
		parent := filepath.Join(append([]string{root}, parts[:i]...)...)
		lastErr = writeFile(filepath.Join(parent, "cgroup.subtree_control"), "+cpu +memory +pids")
	}
	if lastErr != nil {
		unix.Rmdir(dir)
		return nil, failed(lastErr, "creating cgroup "+path)
	}
	quota := int64(l.CPUQuotaPercent) * cpuPeriod / 100
	vals := [][2]string{
		{"cpu.weight", strconv.FormatUint(l.CPUWeight, 10)},
		{"cpu.max", strconv.FormatInt(quota, 10) + " " + strconv.Itoa(cpuPeriod)},
		{"memory.max", strconv.FormatInt(l.MemoryBytes, 10)},
	}
	if l.Pids > 0 {
		vals = append(vals, [2]string{"pids.max", strconv.FormatInt(l.Pids, 10)})
	}
	for _, v := range vals {
		if err := writeFile(filepath.Join(dir, v[0]), v[1]); err != nil {
			unix.Rmdir(dir)
			return nil, failed(err, "creating cgroup "+path)
		}
	}
	return &Cgroup{Path: path, v2: dir}, nil
}

// newV1 makes the cgroup in the memory, pids and cpu hierarchies of a v1
// (or hybrid) host and writes memory.limit_in_bytes, pids.max, cpu.shares,
// cpu.cfs_period_us and cpu.cfs_quota_us.
func newV1(root, path string, l Limits) (*Cgroup, error) {
	// Only the controllers the limits need: others (devices, freezer, …)
	// may be missing or owned by someone else.
	var missing []string
	for _, c := range controllers {
		var st unix.Statfs_t
		if unix.Statfs(filepath.Join(root, c), &st) != nil || st.Type != unix.CGROUP_SUPER_MAGIC {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return nil, failed(fmt.Errorf("the host's cgroup v1 hierarchies at %s lack %s", root, strings.Join(missing, ", ")), "creating cgroup "+path)
	}
	cg := &Cgroup{Path: path, v1: map[string]string{}, root: root}
	for _, c := range controllers {
		cg.v1[c] = filepath.Join(root, c, path)
	}
	quota := int64(l.CPUQuotaPercent) * cpuPeriod / 100
	vals := map[string][][2]string{
		"memory": {{"memory.limit_in_bytes", strconv.FormatInt(l.MemoryBytes, 10)}},
		"cpu": {
			{"cpu.shares", strconv.FormatUint(l.CPUWeight*1024/100, 10)},
			{"cpu.cfs_period_us", strconv.Itoa(cpuPeriod)},
			{"cpu.cfs_quota_us", strconv.FormatInt(quota, 10)},
		},
	}
	if l.Pids > 0 {
		vals["pids"] = [][2]string{{"pids.max", strconv.FormatInt(l.Pids, 10)}}
	}
	// A failure removes what was made in the hierarchies before it (the
	// parents stay: they may hold other VMMs).
	var made []string
	fail := func(c string, err error) (*Cgroup, error) {
		for i := len(made) - 1; i >= 0; i-- {
			unix.Rmdir(made[i])
		}
		return nil, failed(fmt.Errorf("cgroup v1 %s: %w", c, err), "creating cgroup "+path)
	}
	for _, c := range controllers {
		dir := cg.v1[c]
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fail(c, err)
		}
		made = append(made, dir)
		for _, v := range vals[c] {
			if err := writeFile(filepath.Join(dir, v[0]), v[1]); err != nil {
				if v[0] == "cpu.cfs_quota_us" && errors.Is(err, unix.EINVAL) {
					// v1 refuses a child more CPU than its parent
					// has (v2 caps the child instead).
					err = fmt.Errorf("%w: the VMM's CPU quota (%d%% of a core) is more than cgroup %s allows (its cpu.cfs_quota_us)",
						err, l.CPUQuotaPercent, filepath.Dir(path))
				}
				return fail(c, err)
			}
		}
	}
	return cg, nil
}

// writeFile writes one value to a cgroupfs file (which exists: the kernel
// makes them with the directory).
func writeFile(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// dir is the cgroup's directory of a controller.
func (c *Cgroup) dir(controller string) string {
	if c.v2 != "" {
		return c.v2
	}
	return c.v1[controller]
}

// addProc moves process pid into the cgroup (every controller's on v1).
func (c *Cgroup) addProc(pid int) error {
	if c.v2 != "" {
		return writeFile(filepath.Join(c.v2, "cgroup.procs"), strconv.Itoa(pid))
	}
	for _, ctl := range controllers {
		if err := writeFile(filepath.Join(c.v1[ctl], "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return fmt.Errorf("cgroup v1 %s: %w", ctl, err)
		}
	}
	return nil
}

// enter makes the next fork of the calling (locked) thread start in the
// cgroup: on v2 through clone3's CLONE_INTO_CGROUP (attr.CgroupFD); on v1,
// where a thread may sit in a cgroup of its own, by moving the thread in
// (tasks) and, in the returned function, back out once it has forked.
func (c *Cgroup) enter(attr *syscall.SysProcAttr) (after func(), err error) {
	if c.v2 != "" {
		fd, err := unix.Open(c.v2, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, failed(err, "opening cgroup "+c.Path)
		}
		attr.UseCgroupFD, attr.CgroupFD = true, fd
		return func() { unix.Close(fd) }, nil
	}
	tid := unix.Gettid()
	// Where the thread is now, per controller, to go back to.
	cur, err := threadCgroups()
	if err != nil {
		return nil, failed(err, "reading the thread's cgroup")
	}
	var back []*os.File
	for _, ctl := range controllers {
		p, ok := cur[ctl]
		if !ok {
			closeAll(back)
			return nil, failed(fmt.Errorf("thread %d: no %s cgroup", tid, ctl), "reading the thread's cgroup")
		}
		f, err := os.OpenFile(filepath.Join(c.root, ctl, p, "tasks"), os.O_WRONLY, 0)
		if err != nil {
			closeAll(back)
			return nil, failed(err, "opening the thread's cgroup")
		}
		back = append(back, f)
	}
	for _, ctl := range controllers {
		if err := writeFile(filepath.Join(c.v1[ctl], "tasks"), strconv.Itoa(tid)); err != nil {
			for _, f := range back {
				f.WriteString(strconv.Itoa(tid))
			}
			closeAll(back)
			return nil, failed(fmt.Errorf("cgroup v1 %s: %w", ctl, err), "entering cgroup "+c.Path)
		}
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

// threadCgroups reads the calling thread's v1 cgroup path per controller.
func threadCgroups() (map[string]string, error) {
	f, err := os.Open("/proc/thread-self/cgroup")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c != "" {
				out[c] = parts[2]
			}
		}
	}
	return out, sc.Err()
}

// OOMKills is how many times the kernel's OOM killer ended a process of
// the cgroup because it reached its memory limit.
func (c *Cgroup) OOMKills() uint64 {
	file := "memory.oom_control"
	if c.v2 != "" {
		file = "memory.events"
	}
	b, err := os.ReadFile(filepath.Join(c.dir("memory"), file))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok && k == "oom_kill" {
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// Delete removes the cgroup (it must be empty: the VMM has exited), and
// the parent's weight goes down by the cgroup's.
func (c *Cgroup) Delete() error {
	if err := c.remove(); err != nil {
		return err
	}
	return c.weighParent()
}

func (c *Cgroup) remove() error {
	var busy []string
	for _, d := range c.dirs() {
		procs, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		if len(strings.TrimSpace(string(procs))) > 0 {
			busy = append(busy, d+" (contains running processes)")
			continue
		}
		if err := rmdir(d); err != nil {
			busy = append(busy, err.Error())
		}
	}
	if len(busy) > 0 {
		return fmt.Errorf("cgroups: unable to remove %s", strings.Join(busy, ", "))
	}
	return nil
}

// dirs are the cgroup's directories: one on v2, one per controller on v1.
func (c *Cgroup) dirs() []string {
	if c.v2 != "" {
		return []string{c.v2}
	}
	var out []string
	for _, ctl := range controllers {
		out = append(out, c.v1[ctl])
	}
	return out
}

// kill sends SIGKILL to every process of the cgroup (cgroup.kill where
// the kernel has it, v2 since Linux 5.14).
func (c *Cgroup) kill() error {
	if c.v2 != "" && writeFile(filepath.Join(c.v2, "cgroup.kill"), "1") == nil {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(c.dir("memory"), "cgroup.procs"))
	for _, f := range strings.Fields(string(b)) {
		if pid, perr := strconv.Atoi(f); perr == nil && pid > 0 {
			unix.Kill(pid, unix.SIGKILL)
		}
	}
	return err
}

// rmdir removes an empty cgroup directory, retrying while the kernel
// still counts a process that has just exited (EBUSY); one that is gone is
// removed.
func rmdir(dir string) error {
	var err error
	delay := 10 * time.Millisecond
	for i := range 5 {
		if i > 0 {
			time.Sleep(delay)
			delay *= 2
		}
		if err = unix.Rmdir(dir); err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
	}
	return fmt.Errorf("removing %s: %w", dir, err)
}
