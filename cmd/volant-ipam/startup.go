package main

// volant-ipam's process start-up, in C: it runs before the Go runtime
// starts (a constructor), to shape the process for one short transaction.
//
// An operation is one process, so its start-up is most of its time, and on
// a host where a page fault costs ~30 us (a PVM or Firecracker guest) most
// of that is page faults: each thread, each P's fresh spans, each fresh
// page of SQLite's memory and of the Go heap. Three things cut them:
//
//   - One CPU. The process pins itself to the CPU it starts on, so the Go
//     runtime sizes itself for one (GOMAXPROCS 1: Go reads the affinity
//     mask once, at start, before any Go code could set it; a later
//     runtime.GOMAXPROCS(1) comes after the second P's thread and spans
//     were made). A run has no work for two, and with two Ps a lease
//     made one more thread and ~60 more page faults. A GOMAXPROCS
//     variable in the environment is the user's choice: then nothing is
//     pinned.
//   - SQLite's memory in one huge page. A run allocates ~400 KB through
//     SQLite (the schema it parses, its page cache, statements); from
//     glibc's heap that touched ~90 fresh 4 KB pages, one fault each.
//     SQLite is given an allocator that hands out a 2 MB, huge-page-aligned
//     arena (MADV_HUGEPAGE) by bumping a pointer: one fault. It never
//     reuses what SQLite frees; past 2 MB (a long-lived test process) it
//     passes every allocation to SQLite's own allocator. Where the kernel
//     gives no huge page the arena is ordinary memory, about as costly as
//     the heap it replaces.
//
//   - The Go heap in huge pages. The Go runtime maps its heap 4 MB at a
//     time (mmap MAP_FIXED, read-write, anonymous); a run's heap then
//     touched ~120 fresh 4 KB pages. Go does not ask for huge pages, and
//     the heap is mapped before any code of ours runs, so the static
//     build links with -Wl,--wrap=mmap (the Makefile's IPAM_LDFLAGS): the
//     runtime's maps, made through cgo's x_cgo_mmap and libc's mmap, come
//     through __wrap_mmap below, which advises such a mapping
//     MADV_HUGEPAGE. glibc maps its own memory (thread stacks, malloc)
//     with its internal __mmap, which the wrap does not see. Builds
//     without the flag (go test's) leave the Go heap as it was.
//
// The symbols of SQLite's configuration interface (sqlite3.h, stable since
// SQLite 3.6) are go-sqlite3's, from its amalgamation or from libsqlite3;
// they are declared weak so that this package's own cgo link does not look
// for them.

/*
#define _GNU_SOURCE
#include <dirent.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

typedef struct sqlite3_mem_methods {
	void *(*xMalloc)(int);
	void (*xFree)(void *);
	void *(*xRealloc)(void *, int);
	int (*xSize)(void *);
	int (*xRoundup)(int);
	int (*xInit)(void *);
	void (*xShutdown)(void *);
	void *pAppData;
} sqlite3_mem_methods;

extern int sqlite3_config(int, ...) __attribute__((weak));

#define SQLITE_CONFIG_MALLOC 4
#define SQLITE_CONFIG_GETMALLOC 5

static cpu_set_t start_cpus; // the CPUs the process may use, as started
static int pinned;

static void pin_one_cpu(void) {
	cpu_set_t one;
	int cpu;

	if (getenv("GOMAXPROCS") != NULL)
		return;
	if (sched_getaffinity(0, sizeof start_cpus, &start_cpus) != 0 || CPU_COUNT(&start_cpus) < 2)
		return;
	cpu = sched_getcpu();
	if (cpu < 0 || cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &start_cpus))
		return;
	CPU_ZERO(&one);
	CPU_SET(cpu, &one);
	pinned = sched_setaffinity(0, sizeof one, &one) == 0;
}

#define ARENA_SIZE ((size_t)2 << 20) // one x86-64 huge page
#define ARENA_HEADER 16              // the allocation's size, and 16-byte alignment

static uintptr_t arena_next, arena_end;
static char *arena_base;
static sqlite3_mem_methods sqlite_mem; // SQLite's own allocator

static int in_arena(void *p) {
	return (char *)p >= arena_base && (uintptr_t)p < arena_end;
}

static int arena_roundup(int n) {
	return (n + 15) & ~15;
}

static void *arena_malloc(int n) {
	size_t size = (size_t)arena_roundup(n);
	uintptr_t p = __atomic_load_n(&arena_next, __ATOMIC_RELAXED);
	do {
		if (n < 0 || arena_end - p < ARENA_HEADER + size)
			return sqlite_mem.xMalloc(n);
	} while (!__atomic_compare_exchange_n(&arena_next, &p, p + ARENA_HEADER + size, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
	*(size_t *)p = size;
	return (void *)(p + ARENA_HEADER);
}

static void arena_free(void *p) {
	if (!in_arena(p))
		sqlite_mem.xFree(p);
}

static int arena_size(void *p) {
	if (!in_arena(p))
		return sqlite_mem.xSize(p);
	return (int)*(size_t *)((char *)p - ARENA_HEADER);
}

static void *arena_realloc(void *p, int n) {
	void *q;
	int old;

	if (!in_arena(p))
		return sqlite_mem.xRealloc(p, n);
	old = arena_size(p);
	if (n <= old)
		return p;
	q = arena_malloc(n);
	if (q != NULL)
		memcpy(q, p, (size_t)old);
	return q;
}

static int arena_init(void *unused) {
	return sqlite_mem.xInit(sqlite_mem.pAppData);
}

static void arena_shutdown(void *unused) {
	sqlite_mem.xShutdown(sqlite_mem.pAppData);
}

static sqlite3_mem_methods arena_mem = {
	arena_malloc, arena_free, arena_realloc, arena_size, arena_roundup, arena_init, arena_shutdown, NULL,
};

static void sqlite_arena(void) {
	char *m, *a;

	if (sqlite3_config == NULL || sqlite3_config(SQLITE_CONFIG_GETMALLOC, &sqlite_mem) != 0)
		return;
	m = mmap(NULL, 2 * ARENA_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		return;
	a = (char *)(((uintptr_t)m + ARENA_SIZE - 1) & ~(uintptr_t)(ARENA_SIZE - 1));
	if (a > m)
		munmap(m, (size_t)(a - m));
	munmap(a + ARENA_SIZE, (size_t)(m + ARENA_SIZE - a));
	madvise(a, ARENA_SIZE, MADV_HUGEPAGE); // without huge pages, still an arena
	arena_base = a;
	arena_next = (uintptr_t)a;
	arena_end = (uintptr_t)a + ARENA_SIZE;
	if (sqlite3_config(SQLITE_CONFIG_MALLOC, &arena_mem) != 0) {
		arena_base = NULL;
		arena_next = arena_end = 0;
		munmap(a, ARENA_SIZE);
	}
}

// __real_mmap is libc's mmap when the link wraps it (--wrap=mmap), and
// then every call of mmap outside libc comes here.
extern void *__real_mmap(void *, size_t, int, int, int, off_t) __attribute__((weak));

void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
	void *p = __real_mmap(addr, len, prot, flags, fd, off);
	if (p != MAP_FAILED && (flags & (MAP_ANONYMOUS | MAP_FIXED)) == (MAP_ANONYMOUS | MAP_FIXED) &&
	    prot == (PROT_READ | PROT_WRITE) && len >= ARENA_SIZE)
		madvise(p, len, MADV_HUGEPAGE); // the Go heap: see startup.go's comment
	return p;
}

__attribute__((constructor)) static void volant_ipam_startup(void) {
	pin_one_cpu();
	sqlite_arena();
}

// unpin gives every thread the CPUs the process started with.
static void unpin(void) {
	DIR *d;
	struct dirent *e;

	if (!pinned || (d = opendir("/proc/self/task")) == NULL)
		return;
	while ((e = readdir(d)) != NULL) {
		int tid = atoi(e->d_name);
		if (tid > 0)
			sched_setaffinity(tid, sizeof start_cpus, &start_cpus);
	}
	closedir(d);
}
*/
import "C"

// unpin gives every thread of the process back the CPUs it started with,
// for a process that goes on to do more than one operation (the tests).
// Go raises GOMAXPROCS to match within a second.
func unpin() { C.unpin() }
