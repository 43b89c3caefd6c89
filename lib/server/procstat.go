package server

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"syscall"
)

// userHZ is USER_HZ, the unit of /proc/<pid>/stat's CPU times (100 on
// every Linux architecture Volant runs on).
const userHZ = 100

var pageSize = uint64(os.Getpagesize())

// procStat is what a scrape reads of a VMM process: its user+system CPU
// time in seconds and its resident memory in bytes.
type procStat struct {
	cpuSeconds float64
	rssBytes   uint64
}

// statReader reads /proc/<pid>/stat files into one buffer, so a scrape
// of many VMMs costs a read each and no allocation (procfs.Proc.Stat
// stats the directory and scans 42 fields with fmt.Fscan, ~10 µs a VM).
// Not safe for concurrent use.
type statReader struct {
	buf  [1024]byte
	path []byte
}

// read returns pid's CPU time and resident memory.
func (r *statReader) read(pid int) (procStat, error) {
	r.path = append(strconv.AppendInt(append(r.path[:0], "/proc/"...), int64(pid), 10), "/stat"...)
	fd, err := syscall.Open(string(r.path), syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return procStat{}, err
	}
	n, err := syscall.Read(fd, r.buf[:])
	syscall.Close(fd)
	if err != nil {
		return procStat{}, err
	}
	return parseProcStat(r.buf[:max(n, 0)])
}

var errStatFormat = errors.New("unexpected /proc/<pid>/stat format")

// parseProcStat takes utime (field 14), stime (15) and rss (24, in pages)
// from a /proc/<pid>/stat line (proc(5)). The command name (field 2) is
// in parentheses and may itself hold spaces and parentheses, so fields
// are counted from the last ')'.
func parseProcStat(b []byte) (procStat, error) {
	r := bytes.LastIndexByte(b, ')')
	if r < 0 || r+2 > len(b) {
		return procStat{}, errStatFormat
	}
	b = b[r+2:] // field 3 (state) on
	var utime, stime, rss uint64
	field := 3
	for len(b) > 0 && field <= 24 {
		i := bytes.IndexByte(b, ' ')
		if i < 0 {
			i = len(b)
		}
		var err error
		switch field {
		case 14:
			utime, err = strconv.ParseUint(string(b[:i]), 10, 64)
		case 15:
			stime, err = strconv.ParseUint(string(b[:i]), 10, 64)
		case 24:
			// rss is signed in the kernel's format (%ld).
			var v int64
			v, err = strconv.ParseInt(string(bytes.TrimSpace(b[:i])), 10, 64)
			rss = uint64(max(v, 0))
		}
		if err != nil {
			return procStat{}, errStatFormat
		}
		field++
		b = b[min(i+1, len(b)):]
	}
	if field <= 24 {
		return procStat{}, errStatFormat
	}
	return procStat{cpuSeconds: float64(utime+stime) / userHZ, rssBytes: rss * pageSize}, nil
}
