package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// A volant-ipam process runs on one CPU (so Go sizes itself for one) and
// keeps SQLite's memory in a 2 MB arena advised MADV_HUGEPAGE
// (startup.go); with GOMAXPROCS in its environment it keeps every CPU.
// The volant-ipam the Makefile builds ($VOLANT_BIN) also advises its Go
// heap (--wrap=mmap). Each process is caught waiting
// for the write lock, after SQLite has read the schema.
func TestStartupShape(t *testing.T) {
	var all unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil {
		t.Fatal(err)
	}
	// Without transparent huge pages in the kernel, madvise fails and an
	// advised mapping may merge with a neighbour: no memory to look at.
	thp, thpErr := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	bins := []string{""}
	if dir := os.Getenv("VOLANT_BIN"); dir != "" {
		bins = append(bins, filepath.Join(dir, "volant-ipam"))
	}
	for _, bin := range bins {
		name := "test-binary"
		if bin != "" {
			name = filepath.Base(bin)
		}
		t.Run(name, func(t *testing.T) {
			db := filepath.Join(t.TempDir(), "volant.db")
			release := holdWriteLock(t, openStore(t, db))
			defer func() {
				if err := release(); err != nil {
					t.Error(err)
				}
			}()

			p := startWaitingBin(t, bin, db, "pinned")
			cpus := allowedCPUs(t, p.cmd.Process.Pid)
			if all.Count() > 1 && cpus != 1 {
				t.Errorf("volant-ipam may run on %d CPUs, want 1 (this host has %d)", cpus, all.Count())
			}
			// Whether the kernel grants a huge page depends on its free
			// memory, so what is checked is the advice and its use; the
			// huge pages are logged.
			if thpErr == nil {
				maps := advisedMappings(t, p.cmd.Process.Pid)
				t.Logf("mappings advised MADV_HUGEPAGE (transparent huge pages %s): %+v", bytes.TrimSpace(thp), maps)
				if !slices.ContainsFunc(maps, func(m mapping) bool { return m.size == 2<<20 && m.start%(2<<20) == 0 && m.rssKB > 0 }) {
					t.Error("no 2 MB arena advised MADV_HUGEPAGE holds SQLite's memory")
				}
				if bin != "" && !slices.ContainsFunc(maps, func(m mapping) bool { return m.size >= 4<<20 && m.rssKB > 0 }) {
					t.Errorf("%s's Go heap is not advised MADV_HUGEPAGE", bin)
				}
			}

			q := startWaitingBin(t, bin, db, "unpinned", "GOMAXPROCS=2")
			if got := allowedCPUs(t, q.cmd.Process.Pid); got != all.Count() {
				t.Errorf("with GOMAXPROCS set volant-ipam may run on %d CPUs, want all %d", got, all.Count())
			}
		})
	}
}

// allowedCPUs is the size of pid's CPU affinity mask.
func allowedCPUs(t *testing.T, pid int) int {
	t.Helper()
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(pid, &set); err != nil {
		t.Fatal(err)
	}
	return set.Count()
}

// mapping is one read-write mapping of /proc/PID/smaps.
type mapping struct {
	start, size   uint64
	rssKB, hugeKB int
}

// advisedMappings are pid's read-write mappings advised MADV_HUGEPAGE (hg
// in their VmFlags).
func advisedMappings(t *testing.T, pid int) []mapping {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []mapping
	var cur *mapping
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 0:
		case !strings.HasSuffix(f[0], ":"): // a mapping: start-end perms offset dev inode [path]
			cur = nil
			lo, hi, _ := strings.Cut(f[0], "-")
			start, err1 := strconv.ParseUint(lo, 16, 64)
			end, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 == nil && err2 == nil && len(f) > 1 && strings.HasPrefix(f[1], "rw") {
				cur = &mapping{start: start, size: end - start}
			}
		case cur == nil || len(f) < 2:
		case f[0] == "Rss:":
			cur.rssKB, _ = strconv.Atoi(f[1])
		case f[0] == "AnonHugePages:":
			cur.hugeKB, _ = strconv.Atoi(f[1])
		case f[0] == "VmFlags:" && slices.Contains(f[1:], "hg"):
			out = append(out, *cur)
		}
	}
	return out
}
