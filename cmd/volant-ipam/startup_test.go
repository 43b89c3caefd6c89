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
// keeps SQLite's memory in a 2 MB arena, a huge page where the kernel
// gives them (startup.go); with GOMAXPROCS in its environment it keeps
// every CPU. Each process is caught waiting for the write lock, after
// SQLite has read the schema.
func TestStartupShape(t *testing.T) {
	var all unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(t.TempDir(), "volant.db")
	release := holdWriteLock(t, openStore(t, db))
	defer func() {
		if err := release(); err != nil {
			t.Error(err)
		}
	}()

	p := startWaiting(t, db, "pinned")
	cpus := allowedCPUs(t, p.cmd.Process.Pid)
	if all.Count() > 1 && cpus != 1 {
		t.Errorf("volant-ipam may run on %d CPUs, want 1 (this host has %d)", cpus, all.Count())
	}
	// Without transparent huge pages in the kernel, madvise fails and the
	// arena may merge with a neighbouring mapping: nothing to look for.
	if thp, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled"); err == nil {
		arena, huge := sqliteArena(t, p.cmd.Process.Pid)
		if !arena {
			t.Error("no 2 MB arena holds SQLite's memory")
		}
		if (bytes.Contains(thp, []byte("[always]")) || bytes.Contains(thp, []byte("[madvise]"))) && !huge {
			t.Errorf("SQLite's arena is not one huge page, though the kernel gives them (%s)", bytes.TrimSpace(thp))
		}
	}

	q := startWaiting(t, db, "unpinned", "GOMAXPROCS=2")
	if got := allowedCPUs(t, q.cmd.Process.Pid); got != all.Count() {
		t.Errorf("with GOMAXPROCS set volant-ipam may run on %d CPUs, want all %d", got, all.Count())
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

// sqliteArena looks in pid's memory map for the arena: a read-write
// mapping of exactly 2 MB on a 2 MB boundary, advised MADV_HUGEPAGE (hg in
// its VmFlags), partly resident. huge reports whether it is one huge page.
func sqliteArena(t *testing.T, pid int) (found, huge bool) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	const size = 2 << 20
	var candidate bool
	var rss, hugeKB int
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 0:
		case !strings.HasSuffix(f[0], ":"): // a mapping: start-end perms offset dev inode [path]
			lo, hi, _ := strings.Cut(f[0], "-")
			start, err1 := strconv.ParseUint(lo, 16, 64)
			end, err2 := strconv.ParseUint(hi, 16, 64)
			candidate = err1 == nil && err2 == nil && end-start == size && start%size == 0 &&
				len(f) > 1 && strings.HasPrefix(f[1], "rw")
			rss, hugeKB = 0, 0
		case !candidate:
		case f[0] == "Rss:" && len(f) > 1:
			rss, _ = strconv.Atoi(f[1])
		case f[0] == "AnonHugePages:" && len(f) > 1:
			hugeKB, _ = strconv.Atoi(f[1])
		case f[0] == "VmFlags:" && slices.Contains(f[1:], "hg") && rss > 0:
			found = true
			huge = huge || hugeKB == size>>10
		}
	}
	return found, huge
}
