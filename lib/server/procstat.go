package server

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"sync"
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

// statFiles keeps each VMM's /proc/<pid>/stat open between scrapes, so a
// scrape reads each with one pread at offset 0 (the kernel formats the
// line afresh): no open, no path walk, no allocation, no fmt
// (procfs.Proc.Stat stats the directory, reads the file and scans 42
// fields with fmt.Fscan). An open stat file stays bound to its process:
// once that process is gone a read fails and the file is dropped, so a
// reused pid is never read through an old file.
type statFiles struct {
	mu   sync.Mutex
	fds  map[int]int // pid → open /proc/<pid>/stat
	read map[int]bool
	buf  [1024]byte
	path []byte
}

// begin starts a scrape's reads; end closes the files of the processes
// the scrape did not read. Between them the caller holds s.
func (s *statFiles) begin() {
	s.mu.Lock()
	if s.fds == nil {
		s.fds, s.read = map[int]int{}, map[int]bool{}
	}
	clear(s.read)
}

func (s *statFiles) end() {
	for pid, fd := range s.fds {
		if !s.read[pid] {
			syscall.Close(fd)
			delete(s.fds, pid)
		}
	}
	s.mu.Unlock()
}

// stat returns pid's CPU time and resident memory.
func (s *statFiles) stat(pid int) (procStat, error) {
	s.read[pid] = true
	fd, ok := s.fds[pid]
	if !ok {
		s.path = append(strconv.AppendInt(append(s.path[:0], "/proc/"...), int64(pid), 10), "/stat"...)
		var err error
		fd, err = syscall.Open(string(s.path), syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			return procStat{}, err
		}
		s.fds[pid] = fd
	}
	n, err := syscall.Pread(fd, s.buf[:], 0)
	if err != nil {
		syscall.Close(fd)
		delete(s.fds, pid)
		return procStat{}, err
	}
	return parseProcStat(s.buf[:n])
}

// open is how many stat files are open.
func (s *statFiles) open() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.fds)
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
