package jail

import (
	"fmt"
	"github.com/volantvm/volant/lib/layout"
	"os"
	"strconv"
	"strings"

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

// AllocateUID is UIDs{Dir: dir, Range: r}.Lease(name): a uid of r for VM
// name, held until release is called (or the process dies).
func AllocateUID(dir string, r Range, name string) (uid uint32, release func(), err error) {
	l, err := UIDs{Dir: dir, Range: r}.Lease(name)
	if err != nil {
		return 0, nil, err
	}
	return l.UID, func() { l.Done(); l.Release() }, nil
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
