package jail

import (
	"errors"
	"fmt"
	"github.com/volantvm/volant/lib/layout"
	"hash/fnv"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/apierr"
)

// Range is the uids VMMs run as; each VMM's gid is its uid. The range must
// belong to no user and no subordinate-id range of the host (/etc/subuid):
// a process of that uid would share the VMM's files.
type Range struct {
	First uint32 `json:"first"`
	Count uint32 `json:"count"`
}

// DefaultRange is 65536 uids from 0x40000000 (1073741824).
var DefaultRange = Range{First: 1 << 30, Count: 65536}

// DefaultUIDDir holds one lock file per uid in use. It is host-wide on
// purpose: a uid must be unique among all the host's VMMs, whatever data
// or run directory their supervisors use.
const DefaultUIDDir = layout.DefaultUIDDir

// ParseRange reads "FIRST-LAST" (inclusive) or "FIRST+COUNT".
func ParseRange(s string) (Range, error) {
	bad := apierr.New(apierr.Usage, "uid range %q: want FIRST-LAST or FIRST+COUNT, above 0", s).With("range", s)
	var first, other uint64
	var err1, err2 error
	switch a, b, ok := strings.Cut(s, "-"); {
	case ok:
		first, err1 = strconv.ParseUint(a, 10, 32)
		other, err2 = strconv.ParseUint(b, 10, 32)
		if err1 != nil || err2 != nil || other < first {
			return Range{}, bad
		}
		other = other - first + 1
	default:
		a, b, ok := strings.Cut(s, "+")
		if !ok {
			return Range{}, bad
		}
		first, err1 = strconv.ParseUint(a, 10, 32)
		other, err2 = strconv.ParseUint(b, 10, 32)
		if err1 != nil || err2 != nil {
			return Range{}, bad
		}
	}
	if first == 0 || other == 0 || first+other-1 > 1<<32-2 {
		return Range{}, bad
	}
	return Range{First: uint32(first), Count: uint32(other)}, nil
}

func (r Range) String() string {
	return fmt.Sprintf("%d-%d", r.First, uint64(r.First)+uint64(r.Count)-1)
}

// AllocateUID picks a free uid of r for VM name and holds it until release
// is called (or the process dies: the hold is an flock on dir/<uid>). The
// search starts at a place derived from the name, so a VM usually gets
// the same uid again. Uids that /etc/passwd names are skipped.
func AllocateUID(dir string, r Range, name string) (uid uint32, release func(), err error) {
	if r.Count == 0 {
		r = DefaultRange
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, nil, failed(err, "uid lock directory")
	}
	h := fnv.New32a()
	h.Write([]byte(name))
	start := h.Sum32() % r.Count
	taken := passwdUIDs()
	for i := uint32(0); i < r.Count; i++ {
		u := r.First + (start+i)%r.Count
		if taken[u] {
			continue
		}
		f, err := os.OpenFile(filepath.Join(dir, strconv.FormatUint(uint64(u), 10)), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return 0, nil, failed(err, "uid lock")
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				continue
			}
			return 0, nil, failed(err, "uid lock")
		}
		f.Truncate(0)
		f.WriteAt([]byte(name+"\n"), 0)
		return u, func() { f.Close() }, nil
	}
	return 0, nil, apierr.New(Failed, "jail: every uid of %s is in use", r).With("range", r.String()).
		With("hint", "give a larger range (--vmm-uids)")
}

// passwdUIDs are the uids /etc/passwd names.
func passwdUIDs() map[uint32]bool {
	out := map[uint32]bool{}
	b, err := os.ReadFile("/etc/passwd")
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ":")
		if len(f) > 2 {
			if n, err := strconv.ParseUint(f[2], 10, 32); err == nil {
				out[uint32(n)] = true
			}
		}
	}
	return out
}
