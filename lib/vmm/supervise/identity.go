package supervise

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/renameio/v2"
	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/vmm/jail"
)

// Identity names one process for its whole life: its pid, its start time
// (clock ticks after boot, field 22 of /proc/<pid>/stat) and the boot it
// belongs to. A pid alone is not an identity: after the process exits the
// kernel hands the number to the next process that asks, and signalling it
// would hit a stranger (flintlock's reused-PID problem).
type Identity struct {
	Pid       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
	BootID    string `json:"boot_id,omitempty"`
}

// ErrGone is returned (wrapped) when the identified process no longer exists:
// it exited, or its pid now belongs to another process.
var ErrGone = errors.New("process is gone")

// procRoot is where /proc is read from; a const so nothing can swap it.
const procRoot = "/proc"

// Of returns the identity of the running process pid.
func Of(pid int) (Identity, error) {
	st, err := readStat(pid)
	if err != nil {
		return Identity{}, err
	}
	if st.state == 'Z' || st.state == 'X' {
		return Identity{}, fmt.Errorf("process %d: %w (exited, not yet reaped)", pid, ErrGone)
	}
	return Identity{Pid: pid, StartTime: st.start, BootID: bootID()}, nil
}

// Self is the identity of the calling process.
func Self() (Identity, error) { return Of(os.Getpid()) }

// Alive reports whether the identified process still runs: same pid, same
// start time, same boot, and not a zombie.
func (id Identity) Alive() bool {
	return id.check() == nil
}

// check returns nil when id names a live process, or an error wrapping ErrGone.
func (id Identity) check() error {
	if id.Pid <= 0 {
		return fmt.Errorf("pid %d: %w", id.Pid, ErrGone)
	}
	if id.BootID != "" && id.BootID != bootID() {
		return fmt.Errorf("process %d belongs to an earlier boot: %w", id.Pid, ErrGone)
	}
	st, err := readStat(id.Pid)
	if err != nil {
		return err
	}
	if st.start != id.StartTime {
		return fmt.Errorf("pid %d now belongs to another process (start time %d, want %d): %w", id.Pid, st.start, id.StartTime, ErrGone)
	}
	if st.state == 'Z' || st.state == 'X' {
		return fmt.Errorf("process %d exited: %w", id.Pid, ErrGone)
	}
	return nil
}

func (id Identity) String() string {
	return fmt.Sprintf("pid %d (start %d)", id.Pid, id.StartTime)
}

type stat struct {
	state byte
	ppid  int
	start uint64
}

// readStat parses /proc/<pid>/stat. The command name (field 2) is in
// parentheses and may itself contain spaces and parentheses, so the fields
// are counted from the last ')'.
func readStat(pid int) (stat, error) {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "stat"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
			return stat{}, fmt.Errorf("process %d: %w", pid, ErrGone)
		}
		return stat{}, fmt.Errorf("reading /proc/%d/stat: %w", pid, err)
	}
	return parseStat(b)
}

func parseStat(b []byte) (stat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return stat{}, fmt.Errorf("malformed /proc stat line %q", b)
	}
	f := strings.Fields(string(b[i+2:]))
	// f[0] is field 3 (state), so field n is f[n-3].
	if len(f) < 20 || len(f[0]) != 1 {
		return stat{}, fmt.Errorf("malformed /proc stat line %q", b)
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return stat{}, fmt.Errorf("malformed ppid in /proc stat: %q", f[1])
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return stat{}, fmt.Errorf("malformed start time in /proc stat: %q", f[19])
	}
	return stat{state: f[0][0], ppid: ppid, start: start}, nil
}

func bootID() string {
	b, err := os.ReadFile(procRoot + "/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// Handle is an open reference to a process that is not (necessarily) our
// child: a pidfd verified against the identity after opening, so every
// signal sent through it reaches that process and no other.
type Handle struct {
	id Identity
	fd int
}

// Open opens a pidfd for id. The identity is checked after the pidfd is
// open: if the pid had been reused in between, the start time differs and
// Open fails with ErrGone, so a Handle never refers to a stranger.
func (id Identity) Open() (*Handle, error) {
	if id.Pid <= 0 {
		return nil, fmt.Errorf("pid %d: %w", id.Pid, ErrGone)
	}
	fd, err := unix.PidfdOpen(id.Pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("process %d: %w", id.Pid, ErrGone)
		}
		return nil, fmt.Errorf("pidfd_open %d: %w", id.Pid, err)
	}
	if err := id.check(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &Handle{id: id, fd: fd}, nil
}

// Identity is the process this handle refers to.
func (h *Handle) Identity() Identity { return h.id }

// Signal sends sig to the process; a process that already exited is not an
// error (the signal has nothing left to do).
func (h *Handle) Signal(sig syscall.Signal) error {
	err := unix.PidfdSendSignal(h.fd, sig, nil, 0)
	if err == nil || errors.Is(err, unix.ESRCH) {
		return nil
	}
	return fmt.Errorf("signalling %s: %w", h.id, err)
}

// Exited reports whether the process has exited (the pidfd is readable).
func (h *Handle) Exited() bool {
	fds := []unix.PollFd{{Fd: int32(h.fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0
}

// Wait blocks until the process exits or ctx is done. The pidfd waits in
// the Go runtime's poller (it becomes readable when the process exits), so
// a waiter holds no OS thread and costs nothing while it waits: volantd
// waits on every VM's supervisor at once (polling each pidfd every 50 ms
// in a blocking syscall cost a thread per VM and, with 200 VMs, 4,000
// wake-ups a second).
func (h *Handle) Wait(ctx context.Context) error {
	if h.Exited() {
		return nil
	}
	// A duplicate, so that the os.File owns and closes its own descriptor;
	// O_NONBLOCK (shared with h.fd, which needs no blocking I/O) lets the
	// runtime poll it.
	fd, err := unix.FcntlInt(uintptr(h.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("waiting for %s: %w", h.id, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return fmt.Errorf("waiting for %s: %w", h.id, err)
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("waiting for %s: %w", h.id, err)
	}
	// ctx ends the wait through a deadline in the past.
	stop := context.AfterFunc(ctx, func() { f.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	exited := false
	err = rc.Read(func(fd uintptr) bool {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, _ := unix.Poll(fds, 0)
		exited = n > 0
		return exited
	})
	switch {
	case exited:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("waiting for %s to exit: %w", h.id, ctx.Err())
	}
	// The runtime could not poll the pidfd: poll it here, a thread busy.
	for {
		fds := []unix.PollFd{{Fd: int32(h.fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 50)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("waiting for %s: %w", h.id, err)
		}
		if n > 0 {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("waiting for %s to exit: %w", h.id, err)
		}
	}
}

// Close releases the pidfd.
func (h *Handle) Close() error { return unix.Close(h.fd) }

// PidFile is what a supervisor records in its run directory: who supervises
// and which VMM process it runs, each with its identity.
type PidFile struct {
	Supervisor Identity  `json:"supervisor"`
	VMM        Identity  `json:"vmm"`
	Backend    string    `json:"backend"`
	Socket     string    `json:"socket"`
	StartedAt  time.Time `json:"started_at"`
	// Jail says how the VMM is confined (nil: not recorded, a run of an
	// older build).
	Jail *jail.Info `json:"jail,omitempty"`
}

// WritePidFile writes pf to path atomically (temp + rename). It does not
// fsync: a pid file describes processes of this boot and lives in a run
// directory (/run, tmpfs) that does not survive a reboot; readers need it
// whole, not durable.
func WritePidFile(path string, pf PidFile) error {
	b, err := json.MarshalIndent(pf, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding pid file: %w", err)
	}
	return WriteRunFile(path, append(b, '\n'), 0o644)
}

// WriteRunFile writes data to path through a temporary file in the same
// directory renamed over path, without fsync: for a run directory's files
// (pid file, plan), which describe processes of this boot, so readers
// need them whole but not durable. (An fsync there cost a VM's start
// 5-15 ms on a loaded disk when the run directory is not on tmpfs.)
func WriteRunFile(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// ReadPidFile reads a pid file written by WritePidFile.
func ReadPidFile(path string) (PidFile, error) {
	var pf PidFile
	b, err := os.ReadFile(path)
	if err != nil {
		return pf, fmt.Errorf("reading pid file: %w", err)
	}
	if err := json.Unmarshal(b, &pf); err != nil {
		return pf, fmt.Errorf("pid file %s is corrupt: %w", path, err)
	}
	return pf, nil
}

// WriteFileAtomic writes data to path through a temporary file in the same
// directory, fsynced and renamed over path (google/renameio), so readers
// see the old content or the new, never a part, also after a crash. A new
// file gets perm (less the umask); an existing one keeps its mode.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	return renameio.WriteFile(path, data, perm, renameio.WithTempDir(filepath.Dir(path)))
}
