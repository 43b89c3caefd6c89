package fledge

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"

	"github.com/volantvm/volant/lib/apierr"
)

// busybox's install directories, indexed by the values of its
// applet_install_loc table (include/applets.h: BB_DIR_ROOT, BB_DIR_BIN,
// BB_DIR_SBIN, BB_DIR_USR_BIN, BB_DIR_USR_SBIN).
var busyboxDirs = [...]string{"/", "/bin/", "/sbin/", "/usr/bin/", "/usr/sbin/"}

// busyboxAnchors are applets whose install directory busybox has never
// changed: a table read from the file must agree on every one the busybox
// has, and have at least minAnchors, or it is not that busybox's table.
var busyboxAnchors = map[string]uint8{
	"sh": 1, "ls": 1, "cat": 1, "cp": 1, "echo": 1, "mount": 1, "sed": 1, "grep": 1,
	"ifconfig": 2, "init": 2, "route": 2, "syslogd": 2,
	"env": 3, "awk": 3, "wc": 3, "[": 3,
	"chroot": 4, "httpd": 4,
}

// minAnchors is how many anchors a table must name. With one, a file that
// is not busybox can pass: the Go test binary holds the sorted pair "iO",
// "ls" before an empty string, and a byte near it has the nibble ls needs.
const minAnchors = 3

// maxBusybox bounds what is read of a busybox binary.
const maxBusybox = 64 << 20

// busyboxApplets reads busybox's applets from its ELF file and returns
// their guest paths, sorted — without running it: the file comes from the
// build context, and fledge often runs as root. busybox carries its applet
// list as data (applets/applet_tables.c): applet_names, the names sorted,
// each NUL-terminated, ending in an empty name; and applet_install_loc,
// each applet's install directory in 4 bits, two to a byte. fledge finds
// both in the file's read-only data, checks the names are sorted and the
// directories of well-known applets, and refuses a file where it cannot.
func busyboxApplets(bb string) ([]string, error) {
	ro, err := readOnlyData(bb)
	if err != nil {
		return nil, err
	}
	names, locs, ok := findAppletTables(ro)
	if !ok {
		return nil, apierr.New(apierr.InvalidInput, "cannot read busybox's applet list from %s: no applet table found in its read-only data", bb).
			With("hint", "[source] busybox must be a busybox binary built with its installer tables (busybox --list-full works on it)")
	}
	var applets []string
	for i, n := range names {
		g := path.Clean(busyboxDirs[locs[i]] + n)
		if checkDest(g) != "" {
			continue
		}
		applets = append(applets, g)
	}
	if len(applets) == 0 {
		return nil, apierr.New(apierr.InvalidInput, "%s lists no applets", bb)
	}
	sort.Strings(applets)
	return applets, nil
}

// readOnlyData returns the contents of an ELF file's allocated, read-only,
// non-executable sections (where a C compiler puts const data), or of its
// non-executable loadable segments when it has no section headers.
func readOnlyData(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, apierr.Wrap(apierr.NotFound, err, "busybox "+p+" does not exist")
		}
		return nil, fmt.Errorf("busybox: %w", err)
	}
	defer f.Close()
	ef, err := elf.NewFile(f)
	if err != nil {
		return nil, apierr.Wrap(apierr.InvalidInput, err, "busybox "+p+" is not an ELF file")
	}
	var out []byte
	add := func(r io.Reader, size uint64) error {
		if uint64(len(out))+size > maxBusybox {
			return apierr.New(apierr.TooLarge, "busybox %s has more than %d MiB of data", p, maxBusybox>>20)
		}
		b := make([]byte, size)
		if _, err := io.ReadFull(r, b); err != nil {
			return apierr.Wrap(apierr.InvalidInput, err, "reading busybox "+p)
		}
		out = append(append(out, b...), 0) // a NUL between pieces ends any name
		return nil
	}
	for _, s := range ef.Sections {
		if s.Type != elf.SHT_PROGBITS || s.Flags&elf.SHF_ALLOC == 0 || s.Flags&(elf.SHF_WRITE|elf.SHF_EXECINSTR) != 0 {
			continue
		}
		if err := add(s.Open(), s.Size); err != nil {
			return nil, err
		}
	}
	if len(ef.Sections) == 0 {
		for _, pr := range ef.Progs {
			if pr.Type == elf.PT_LOAD && pr.Flags&elf.PF_X == 0 {
				if err := add(pr.Open(), pr.Filesz); err != nil {
					return nil, err
				}
			}
		}
	}
	return out, nil
}

// appletByte reports whether c can be in an applet name.
func appletByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' || c == '[' || c == ']'
}

// findAppletTables finds busybox's applet names and their install
// directories (one index into busyboxDirs per name) in ro.
func findAppletTables(ro []byte) ([]string, []uint8, bool) {
	for _, run := range nameRuns(ro) {
		if locs, ok := findInstallLocs(ro, run); ok {
			return run.names, locs, true
		}
	}
	return nil, nil, false
}

type nameRun struct {
	names      []string
	start, end int // byte range in ro
}

// nameRuns lists the candidate applet_names tables in ro, longest first:
// runs of two or more sorted names followed by an empty one (the table's
// end). A name glued to the bytes before it (the table need not start
// after a NUL) is tried both with and without them.
func nameRuns(ro []byte) []nameRun {
	var runs []nameRun
	var cur nameRun
	prev := ""
	flush := func() {
		cur, prev = nameRun{}, ""
	}
	i := 0
	for i < len(ro) {
		j := bytes.IndexByte(ro[i:], 0)
		if j < 0 {
			break
		}
		tok := ro[i : i+j]
		switch {
		case len(tok) == 0:
			if len(cur.names) >= 2 {
				cur.end = i
				runs = append(runs, cur)
				// The name before the run may have been glued to other
				// bytes: its valid tail is a candidate first name.
				if k := gluedTail(ro, cur.start); k >= 0 {
					first := string(ro[k : cur.start-1])
					if first < cur.names[0] {
						runs = append(runs, nameRun{names: append([]string{first}, cur.names...), start: k, end: i})
					}
				}
			}
			flush()
		case validName(tok) && (prev == "" || string(tok) > prev):
			if len(cur.names) == 0 {
				cur.start = i
			}
			cur.names = append(cur.names, string(tok))
			prev = string(tok)
		default:
			flush()
			if validName(tok) {
				cur.start, cur.names, prev = i, []string{string(tok)}, string(tok)
			}
		}
		i += j + 1
	}
	sort.SliceStable(runs, func(a, b int) bool { return len(runs[a].names) > len(runs[b].names) })
	return runs
}

// gluedTail returns where the applet-name bytes ending just before the
// NUL at start-1 begin, when they follow other bytes; -1 otherwise.
func gluedTail(ro []byte, start int) int {
	if start < 2 || ro[start-1] != 0 {
		return -1
	}
	k := start - 1
	for k > 0 && appletByte(ro[k-1]) {
		k--
	}
	if k == start-1 || k == 0 || ro[k-1] == 0 {
		return -1 // no name there, or a whole token (already judged)
	}
	return k
}

func validName(b []byte) bool {
	if len(b) == 0 || len(b) > 64 {
		return false
	}
	for _, c := range b {
		if !appletByte(c) {
			return false
		}
	}
	return true
}

// findInstallLocs finds applet_install_loc for run near it: (n+1)/2 bytes
// whose nibbles are directories (0-4; the unused last one 0) and agree with
// every anchor applet, at least one of which the run must have.
func findInstallLocs(ro []byte, run nameRun) ([]uint8, bool) {
	n := len(run.names)
	size := (n + 1) / 2
	type anchor struct {
		i   int
		loc uint8
	}
	var anchors []anchor
	for i, name := range run.names {
		if loc, ok := busyboxAnchors[name]; ok {
			anchors = append(anchors, anchor{i, loc})
		}
	}
	if len(anchors) < minAnchors {
		return nil, false
	}
	nib := func(o, i int) uint8 {
		b := ro[o+i/2]
		if i%2 == 1 {
			return b >> 4
		}
		return b & 0x0f
	}
	const window = 1 << 20
	lo, hi := max(0, run.start-window), min(len(ro)-size, run.end+window)
	best, bestDist := -1, 0
	for o := lo; o <= hi; o++ {
		if o+size > run.start && o < run.end {
			continue // inside the names
		}
		ok := true
		for _, a := range anchors {
			if nib(o, a.i) != a.loc {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		for i := 0; i < 2*size && ok; i++ {
			v := nib(o, i)
			ok = v < uint8(len(busyboxDirs)) && (i < n || v == 0)
		}
		if !ok {
			continue
		}
		d := run.start - o
		if d < 0 {
			d = -d
		}
		if best < 0 || d < bestDist {
			best, bestDist = o, d
		}
	}
	if best < 0 {
		return nil, false
	}
	locs := make([]uint8, n)
	for i := range locs {
		locs[i] = nib(best, i)
	}
	return locs, true
}
