package jail

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sort"

	"golang.org/x/sys/unix"
)

// GrantRead lets uid read path for one run, through a POSIX access ACL
// entry (user:UID:r), and returns the undo that takes the entry away
// again. It is how a jailed hypervisor reads a disk it must not own: a
// volume attached read-only, which several VMs (several uids) may read at
// once, and which must not become readable by every user of the host.
//
// Entries of other uids are kept: each run adds and removes only its own,
// under an exclusive flock on the file (hypervisors lock images with OFD
// locks, which flock does not touch). A filesystem without ACLs answers
// ENOTSUP, which the caller reports.
func GrantRead(path string, uid uint32) (undo func() error, err error) {
	if err := editACL(path, func(es []aclEntry) []aclEntry { return withUser(es, uid, aclRead) }); err != nil {
		return nil, err
	}
	return func() error {
		return editACL(path, func(es []aclEntry) []aclEntry { return withUser(es, uid, 0) })
	}, nil
}

// The xattr form of a POSIX ACL (linux/posix_acl_xattr.h).
const (
	aclXattr   = "system.posix_acl_access"
	aclVersion = 2

	aclUserObj  = 0x01
	aclUser     = 0x02
	aclGroupObj = 0x04
	aclGroup    = 0x08
	aclMask     = 0x10
	aclOther    = 0x20

	aclRead      = 4
	aclUndefined = ^uint32(0)
)

type aclEntry struct {
	tag  uint16
	perm uint16
	id   uint32
}

func editACL(path string, edit func([]aclEntry) []aclEntry) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("locking %s: %w", path, err)
	}
	defer unix.Flock(int(f.Fd()), unix.LOCK_UN)
	es, err := readACL(f)
	if err != nil {
		return fmt.Errorf("reading the ACL of %s: %w", path, err)
	}
	if err := unix.Fsetxattr(int(f.Fd()), aclXattr, encodeACL(edit(es)), 0); err != nil {
		return fmt.Errorf("setting the ACL of %s: %w", path, err)
	}
	return nil
}

// readACL returns the file's access ACL, or the one its mode amounts to.
func readACL(f *os.File) ([]aclEntry, error) {
	buf := make([]byte, 4096)
	n, err := unix.Fgetxattr(int(f.Fd()), aclXattr, buf)
	if errors.Is(err, unix.ENODATA) {
		st, err := f.Stat()
		if err != nil {
			return nil, err
		}
		m := uint16(st.Mode().Perm())
		return []aclEntry{
			{aclUserObj, m >> 6 & 7, aclUndefined},
			{aclGroupObj, m >> 3 & 7, aclUndefined},
			{aclOther, m & 7, aclUndefined},
		}, nil
	}
	if err != nil {
		return nil, err
	}
	b := buf[:n]
	if len(b) < 4 || binary.LittleEndian.Uint32(b) != aclVersion || (len(b)-4)%8 != 0 {
		return nil, errors.New("not a version 2 POSIX ACL")
	}
	var es []aclEntry
	for b = b[4:]; len(b) > 0; b = b[8:] {
		es = append(es, aclEntry{binary.LittleEndian.Uint16(b), binary.LittleEndian.Uint16(b[2:]), binary.LittleEndian.Uint32(b[4:])})
	}
	return es, nil
}

// withUser sets uid's named entry to perm (0 removes it) and keeps the
// mask the union of the group class, as setfacl does; with no named
// entry left, the ACL is its mode again (no mask: the kernel then drops
// the xattr and the group bits are the owning group's).
func withUser(es []aclEntry, uid uint32, perm uint16) []aclEntry {
	var out []aclEntry
	for _, e := range es {
		if e.tag == aclMask || e.tag == aclUser && e.id == uid {
			continue
		}
		out = append(out, e)
	}
	if perm != 0 {
		out = append(out, aclEntry{aclUser, perm, uid})
	}
	var mask uint16
	named := false
	for _, e := range out {
		switch e.tag {
		case aclUser, aclGroup:
			named = true
			mask |= e.perm
		case aclGroupObj:
			mask |= e.perm
		}
	}
	if named {
		out = append(out, aclEntry{aclMask, mask, aclUndefined})
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].tag != out[j].tag {
			return out[i].tag < out[j].tag
		}
		return out[i].id < out[j].id
	})
	return out
}

func encodeACL(es []aclEntry) []byte {
	b := binary.LittleEndian.AppendUint32(nil, aclVersion)
	for _, e := range es {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, e.id)
	}
	return b
}
