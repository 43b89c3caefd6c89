// Package guest is kestrel's proof that it owns the machine it runs on.
//
// Mounting filesystems, loading kernel modules, configuring the network,
// setting the hostname and powering off are only safe for the init process
// of a (virtual) machine. A kestrel started by hand, by a test, or as PID 1
// of a PID namespace on a developer's laptop must do none of them. Every
// such operation in lib/kestrel takes a *Machine, and the only way to get
// one is Claim, which succeeds only for PID 1 of the kernel's initial PID
// namespace: the process the kernel itself started as init. So a code path
// that could mount over or power off a host does not type-check without a
// Claim, and Claim refuses on a host.
package guest

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// InitPIDNamespaceInode is the inode number the kernel gives its initial PID
// namespace (PROC_PID_INIT_INO in include/linux/proc_ns.h); it is fixed, so
// /proc/self/ns/pid of any process in the initial namespace has it.
const InitPIDNamespaceInode = 0xEFFFFFFC

// ErrNotGuest is wrapped by every Claim refusal.
var ErrNotGuest = errors.New("not the init of this machine")

// Machine is the capability to act on the machine as its init. Only Claim
// makes one.
type Machine struct {
	claimed bool
}

// Claim returns the Machine when the caller is PID 1 of the initial PID
// namespace. A kernel-started init may find /proc unmounted; Claim then
// mounts proc to look, and unmounts it again if the answer is no (on a host,
// /proc is always mounted, so Claim never mounts there).
func Claim() (*Machine, error) {
	if pid := os.Getpid(); pid != 1 {
		return nil, fmt.Errorf("%w: running as pid %d, not as init (pid 1)", ErrNotGuest, pid)
	}
	mounted := false
	var fs unix.Statfs_t
	if err := unix.Statfs("/proc", &fs); err != nil || fs.Type != unix.PROC_SUPER_MAGIC {
		if err := os.MkdirAll("/proc", 0o555); err != nil {
			return nil, fmt.Errorf("%w: /proc is not mounted and cannot be created: %v", ErrNotGuest, err)
		}
		if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return nil, fmt.Errorf("%w: /proc is not mounted and mounting it failed: %v", ErrNotGuest, err)
		}
		mounted = true
	}
	ino, err := pidNamespaceInode()
	if err == nil && ino == InitPIDNamespaceInode {
		return &Machine{claimed: true}, nil
	}
	if mounted {
		_ = unix.Unmount("/proc", unix.MNT_DETACH)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: cannot tell the PID namespace: %v", ErrNotGuest, err)
	}
	return nil, fmt.Errorf("%w: pid 1 of a child PID namespace (inode %d, the machine's is %d)", ErrNotGuest, ino, uint64(InitPIDNamespaceInode))
}

func pidNamespaceInode() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/pid", &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// check panics on a Machine not made by Claim (a zero Machine{} literal):
// the capability cannot be forged by accident.
func (m *Machine) check() {
	if m == nil || !m.claimed {
		panic("kestrel/guest: Machine used without Claim")
	}
}

// Check is for the other guest packages: it panics unless m came from Claim.
func (m *Machine) Check() { m.check() }

// DisableCtrlAltDel makes the kernel send SIGINT to init on Ctrl-Alt-Del
// instead of rebooting at once, so kestrel can shut down cleanly.
func (m *Machine) DisableCtrlAltDel() error {
	m.check()
	return unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)
}

// SetHostname sets the kernel's hostname.
func (m *Machine) SetHostname(name string) error {
	m.check()
	return unix.Sethostname([]byte(name))
}

// PowerOff syncs and powers the machine off. It does not return: if the
// kernel refuses to power off, it halts, then reboots (with panic=-1 and
// QEMU's -no-reboot a reboot also ends the VM), then sleeps forever as a
// last resort.
func (m *Machine) PowerOff() {
	m.check()
	unix.Sync()
	for _, cmd := range []int{unix.LINUX_REBOOT_CMD_POWER_OFF, unix.LINUX_REBOOT_CMD_HALT, unix.LINUX_REBOOT_CMD_RESTART} {
		if err := unix.Reboot(cmd); err != nil {
			fmt.Fprintf(os.Stderr, "kestrel: reboot(%#x): %v\n", cmd, err)
		}
	}
	for {
		time.Sleep(time.Hour)
	}
}

// KillAll sends sig to every process but init (kill(-1, sig)).
func (m *Machine) KillAll(sig syscall.Signal) error {
	m.check()
	err := unix.Kill(-1, sig)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// Uptime is the time since the kernel booted (CLOCK_BOOTTIME).
func Uptime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// Executed is when the kernel ran init (its "Run /init as init process"
// record in the kernel log, /dev/kmsg), as an uptime, or 0 when the log
// does not say. The gap between it and a later Uptime is what the exec,
// the Go runtime and the packages' initialization took before main ran.
// It reads the whole kernel log, so kestrel asks only when debugging.
func Executed() time.Duration {
	f, err := os.OpenFile("/dev/kmsg", os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return 0
	}
	defer f.Close()
	buf := make([]byte, 8192)
	for {
		n, err := f.Read(buf) // one record per read; EAGAIN at the end
		if err != nil {
			if errors.Is(err, unix.EPIPE) { // a record was overwritten: go on
				continue
			}
			return 0
		}
		if d, ok := initRecord(string(buf[:n])); ok {
			return d
		}
	}
}

// initRecord reads a /dev/kmsg record ("PRI,SEQ,USEC,FLAGS;MESSAGE") and,
// when it is the kernel's "Run <path> as init process", returns its time.
func initRecord(rec string) (time.Duration, bool) {
	head, msg, ok := strings.Cut(rec, ";")
	if !ok || !strings.HasPrefix(msg, "Run ") || !strings.Contains(msg, " as init process") {
		return 0, false
	}
	f := strings.Split(head, ",")
	if len(f) < 3 {
		return 0, false
	}
	us, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil {
		return 0, false
	}
	return time.Duration(us) * time.Microsecond, true
}

// Release is the running kernel's release (uname -r).
func Release() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return strings.TrimRight(string(u.Release[:]), "\x00")
}
