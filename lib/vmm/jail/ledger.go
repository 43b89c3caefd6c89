package jail

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/renameio/v2"
	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/apierr"
)

// What a run changes on the host for its VMM's uid (the chown of a
// writable disk, an ACL entry on a read-only one, the tap's owner, a
// cgroup) is undone by the run when it ends. A supervisor killed with
// SIGKILL undoes nothing: its uid's lock is free again at once (an flock
// dies with its process), but the files, tap and cgroup it changed would
// stay the uid's, for the next VM that gets it.
//
// So each change is first written to a record beside the uid's lock,
// <dir>/<uid>.json (temp + fsync + rename), and only then made. A clean
// end undoes the changes, removes the record and the lock file. Whoever
// next takes the lock of a uid that has a record — the next run that gets
// that uid, the next run of any VM (Lease sweeps the directory first), or
// volantd when it starts (Reclaim) — undoes what the record names before
// anything else, and a uid whose record cannot be undone is not handed
// out. Undoing is idempotent and measures first: a file is given back
// only while the uid still owns it, a cgroup that is gone is done.

// Record is what a run of uid changed, written before each change.
type Record struct {
	UID uint32 `json:"uid"`
	VM  string `json:"vm"`
	// Chowns are files made the uid's, with their owners before.
	Chowns []Owner `json:"chowns,omitempty"`
	// ACLs are files with an ACL entry granting the uid read access.
	ACLs []string `json:"acls,omitempty"`
	// Taps were made the uid's.
	Taps []Tap `json:"taps,omitempty"`
	// Cgroup is the VMM's cgroup path.
	Cgroup string `json:"cgroup,omitempty"`
}

// Owner is a file's owner before the jail changed it.
type Owner struct {
	Path string `json:"path"`
	UID  uint32 `json:"uid"`
	GID  uint32 `json:"gid"`
}

// Tap is a tap device made the VMM's, with its owner before (nil: none)
// and the network namespace it is in (the inode of its nsfs file).
type Tap struct {
	Name  string  `json:"name"`
	Owner *uint32 `json:"owner"`
	NetNS uint64  `json:"netns"`
}

// UIDs hands out the VMMs' uids (Lease) and reclaims what dead runs left.
type UIDs struct {
	// Dir holds the locks and records (DefaultUIDDir).
	Dir string
	// Range is where uids come from (DefaultRange when empty).
	Range Range
	// RestoreTap gives a recorded tap back to its owner (lib/hostnet's,
	// through lib/launch); nil fails the undo of a record naming a tap.
	RestoreTap func(uid uint32, t Tap) error
	Logger     *slog.Logger
}

// Lease is a uid held for one run, and its record.
type Lease struct {
	UID  uint32
	f    *os.File
	path string // the lock file
	rec  Record
	// saved is the record as last written.
	saved []byte
	// done is set once the record's changes are undone.
	done bool
}

func (u UIDs) log() *slog.Logger {
	if u.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return u.Logger
}

func (u UIDs) dir() string {
	if u.Dir == "" {
		return DefaultUIDDir
	}
	return u.Dir
}

// Lease picks a free uid of the range for VM name and holds it until
// Release (or the process dies: the hold is an flock on dir/<uid>). It
// first reclaims what dead runs left in the directory. The search starts
// at a place derived from the name, so a VM usually gets the same uid
// again. Uids that /etc/passwd names are skipped.
func (u UIDs) Lease(name string) (*Lease, error) {
	r := u.Range
	if r.Count == 0 {
		r = DefaultRange
	}
	dir := u.dir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, failed(err, "uid lock directory")
	}
	u.Reclaim()
	h := fnv.New32a()
	h.Write([]byte(name))
	start := h.Sum32() % r.Count
	taken := passwdUIDs()
	for i := uint32(0); i < r.Count; i++ {
		uid := r.First + (start+i)%r.Count
		if taken[uid] {
			continue
		}
		l, err := lockUID(dir, uid)
		if err != nil {
			return nil, err
		}
		if l == nil {
			continue // held
		}
		if err := u.undo(l); err != nil {
			// Never hand out a uid that still owns what a dead run gave it.
			u.log().Warn("a dead run's leftovers could not be undone; its uid stays out of use", "uid", uid, "err", err)
			l.f.Close()
			continue
		}
		l.rec = Record{UID: uid, VM: name}
		if err := l.save(); err != nil {
			l.f.Close()
			return nil, failed(err, "writing the uid's record")
		}
		l.f.Truncate(0)
		l.f.WriteAt([]byte(name+"\n"), 0)
		return l, nil
	}
	return nil, apierr.New(Failed, "jail: every uid of %s is in use", r).With("range", r.String()).
		With("hint", "give a larger range (--vmm-uids)")
}

// lockUID takes dir/<uid>'s flock; nil without an error when another
// process holds it.
func lockUID(dir string, uid uint32) (*Lease, error) {
	path := filepath.Join(dir, strconv.FormatUint(uint64(uid), 10))
	for range 3 {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, failed(err, "uid lock")
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, nil
			}
			return nil, failed(err, "uid lock")
		}
		// A lock file is removed by the release that held it: a lock
		// taken on a file no longer at path guards nothing.
		var a, b unix.Stat_t
		if unix.Fstat(int(f.Fd()), &a) != nil || unix.Stat(path, &b) != nil || a.Ino != b.Ino || a.Dev != b.Dev {
			f.Close()
			continue
		}
		return &Lease{UID: uid, f: f, path: path}, nil
	}
	return nil, nil
}

func (l *Lease) recordPath() string { return l.path + ".json" }

func (l *Lease) save() error {
	b, err := json.Marshal(l.rec)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if bytes.Equal(b, l.saved) {
		return nil // planned already (Plan): on disk as it is
	}
	if err := renameio.WriteFile(l.recordPath(), b, 0o600, renameio.WithTempDir(filepath.Dir(l.recordPath()))); err != nil {
		return err
	}
	l.saved = b
	return nil
}

// Changes are what a run is about to change for its VMM's uid: files to
// make the uid's, files to grant it read access to, taps, its cgroup
// (a path as CgroupPath makes it).
type Changes struct {
	Chowns []string
	ACLs   []string
	Taps   []Tap
	Cgroup string
}

// Plan records every change of c before any is made, in one write (one
// fsync instead of one per change); the Chown, GrantRead, NoteTap and
// NewCgroup that follow and that the record names already write nothing.
// A change planned but then not made (the run failed before it) is safe
// to undo: undoing measures first (a file is given back only while the
// uid owns it, a tap only while it is the uid's, a cgroup that is not
// there is done).
func (l *Lease) Plan(c Changes) error {
	for _, p := range c.Chowns {
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			return err
		}
		l.rec.addChown(Owner{Path: p, UID: st.Uid, GID: st.Gid})
	}
	for _, p := range c.ACLs {
		l.rec.addACL(p)
	}
	for _, t := range c.Taps {
		l.rec.addTap(t)
	}
	if c.Cgroup != "" {
		l.rec.Cgroup = c.Cgroup
	}
	if err := l.save(); err != nil {
		return failed(err, "writing the uid's record")
	}
	return nil
}

func (r *Record) addChown(o Owner) {
	if !slices.ContainsFunc(r.Chowns, func(c Owner) bool { return c.Path == o.Path }) {
		r.Chowns = append(r.Chowns, o)
	}
}

func (r *Record) addACL(p string) {
	if !slices.Contains(r.ACLs, p) {
		r.ACLs = append(r.ACLs, p)
	}
}

func (r *Record) addTap(t Tap) {
	if !slices.ContainsFunc(r.Taps, func(x Tap) bool { return x.Name == t.Name }) {
		r.Taps = append(r.Taps, t)
	}
}

// CgroupPath is the path of the cgroup NewCgroup(parent, name) makes.
func CgroupPath(parent, name string) string { return cgroupPath(parent, name) }

// change records c, then makes the change.
func (l *Lease) change(record func(*Record), make func() error) error {
	record(&l.rec)
	if err := l.save(); err != nil {
		return failed(err, "writing the uid's record")
	}
	return make()
}

// Chown makes path the lease's uid's (and gid's, the same number) after
// recording its owner, and returns the undo.
func (l *Lease) Chown(path string) (undo func() error, err error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return nil, err
	}
	o := Owner{Path: path, UID: st.Uid, GID: st.Gid}
	if err := l.change(func(r *Record) { r.addChown(o) }, func() error {
		return os.Chown(path, int(l.UID), int(l.UID))
	}); err != nil {
		return nil, err
	}
	return func() error { return giveBack(o, l.UID) }, nil
}

// GrantRead is GrantRead for the lease's uid, recorded first.
func (l *Lease) GrantRead(path string) (undo func() error, err error) {
	var undoACL func() error
	if err := l.change(func(r *Record) { r.addACL(path) }, func() (err error) {
		undoACL, err = GrantRead(path, l.UID)
		return err
	}); err != nil {
		return nil, err
	}
	return undoACL, nil
}

// NoteTap records that tap t is about to be made the uid's.
func (l *Lease) NoteTap(t Tap) error {
	return l.change(func(r *Record) { r.addTap(t) }, func() error { return nil })
}

// NewCgroup is NewCgroup, recorded first.
func (l *Lease) NewCgroup(parent, name string, lim Limits) (*Cgroup, error) {
	var cg *Cgroup
	path := cgroupPath(parent, name)
	if err := l.change(func(r *Record) { r.Cgroup = path }, func() (err error) {
		cg, err = NewCgroup(parent, name, lim)
		return err
	}); err != nil {
		return nil, err
	}
	return cg, nil
}

// Done says the run undid every change of the record: Release then
// removes the record.
func (l *Lease) Done() { l.done = true }

// Release frees the uid. After Done the record and lock file go; without
// it (a teardown that failed) they stay for Reclaim.
func (l *Lease) Release() {
	if l == nil || l.f == nil {
		return
	}
	if l.done {
		os.Remove(l.recordPath())
		os.Remove(l.path) // while still locked: see lockUID
	}
	l.f.Close()
	l.f = nil
}

// Reclaim undoes the records of dead runs in the directory: for each
// record whose uid's lock no process holds, what it names is given back,
// then the record and lock go. It returns the uids reclaimed; a record
// that cannot be undone stays (its uid is not handed out) and is in err.
func (u UIDs) Reclaim() (uids []uint32, err error) {
	dir := u.dir()
	recs, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	var errs []error
	for _, p := range recs {
		n, perr := strconv.ParseUint(strings.TrimSuffix(filepath.Base(p), ".json"), 10, 32)
		if perr != nil {
			continue
		}
		l, lerr := lockUID(dir, uint32(n))
		if lerr != nil {
			errs = append(errs, lerr)
			continue
		}
		if l == nil {
			continue // a live run's
		}
		if uerr := u.undo(l); uerr != nil {
			errs = append(errs, fmt.Errorf("uid %d: %w", n, uerr))
			l.f.Close()
			continue
		}
		l.done = true
		l.Release()
		uids = append(uids, uint32(n))
	}
	return uids, errors.Join(errs...)
}

// undo gives back what l's record (left by a dead holder of the uid) names,
// and removes the record; no record is nothing to do.
func (u UIDs) undo(l *Lease) error {
	b, err := os.ReadFile(l.recordPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		// A record is renamed into place whole; one that does not decode
		// is not ours to act on.
		return fmt.Errorf("the record %s: %w", l.recordPath(), err)
	}
	if r.UID != l.UID {
		return fmt.Errorf("the record %s is of uid %d", l.recordPath(), r.UID)
	}
	var errs []error
	if r.Cgroup != "" {
		if err := DeleteCgroup(r.Cgroup); err != nil {
			errs = append(errs, err)
		}
	}
	for _, t := range r.Taps {
		if u.RestoreTap == nil {
			errs = append(errs, fmt.Errorf("tap %s: no way to restore taps here", t.Name))
		} else if err := u.RestoreTap(r.UID, t); err != nil {
			errs = append(errs, fmt.Errorf("tap %s: %w", t.Name, err))
		}
	}
	for _, p := range r.ACLs {
		err := editACL(p, func(es []aclEntry) []aclEntry { return withUser(es, r.UID, 0) })
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for i := len(r.Chowns) - 1; i >= 0; i-- {
		if err := giveBack(r.Chowns[i], r.UID); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	u.log().Info("undid what a dead run left for its VMM's uid", "uid", r.UID, "vm", r.VM,
		"files", len(r.Chowns), "acls", len(r.ACLs), "taps", len(r.Taps), "cgroup", r.Cgroup)
	if err := os.Remove(l.recordPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// giveBack returns a file to its owner while uid still owns it; a file
// that is gone or was given to someone else since is left alone.
func giveBack(o Owner, uid uint32) error {
	var st syscall.Stat_t
	if err := syscall.Lstat(o.Path, &st); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	if st.Uid != uid {
		return nil
	}
	return os.Lchown(o.Path, int(o.UID), int(o.GID))
}

func cgroupPath(parent, name string) string {
	return "/" + strings.Trim(filepath.Clean("/"+parent), "/") + "/" + name
}

// DeleteCgroup removes the cgroup at path (as Cgroup.Path names it) on
// whichever layout the host has, killing what still runs in it (a dead
// run's VMM that has not finished dying). One that does not exist is done.
func DeleteCgroup(path string) error {
	root, mode := hostCgroups()
	cg := &Cgroup{Path: path}
	switch mode {
	case modeUnified:
		cg.v2 = filepath.Join(root, path)
	case modeHybrid, modeLegacy:
		cg.v1, cg.root = map[string]string{}, root
		for _, ctl := range controllers {
			cg.v1[ctl] = filepath.Join(root, ctl, path)
		}
	default:
		return nil // no cgroups, so none was made
	}
	gone := true
	for _, d := range cg.dirs() {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			gone = false
		}
	}
	if gone {
		return nil
	}
	kill, del := cg.kill, cg.Delete
	err := del()
	for deadline := time.Now().Add(5 * time.Second); err != nil && time.Now().Before(deadline); err = del() {
		kill()
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("removing cgroup %s: %w", path, err)
	}
	return nil
}
