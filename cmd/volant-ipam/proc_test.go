package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mattn/go-sqlite3"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/ipam"
	"github.com/volantvm/volant/lib/store"
)

// The process tests run real volant-ipam processes. The test binary is that
// binary: started with asCommand set, TestMain runs the command's main
// instead of the tests (the os/exec helper-process pattern), so there is one
// build, with the test's build tags.
const asCommand = "VOLANT_IPAM_TEST_AS_COMMAND"

func TestMain(m *testing.M) {
	if os.Getenv(asCommand) == "1" {
		cli.MainKillable(run)
	}
	// The tests themselves run on every CPU (startup.go pinned the
	// process to one), and so do the processes they start.
	unpin()
	os.Exit(m.Run())
}

type proc struct {
	vm     string
	cmd    *exec.Cmd
	stdout bytes.Buffer
	stderr bytes.Buffer
	code   int
}

func command(t *testing.T, db string, args ...string) *exec.Cmd {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, args...)
	cmd.Env = append(os.Environ(), asCommand+"=1", "VOLANT_DB="+db)
	return cmd
}

func startLease(t *testing.T, db, vm string, pool ...string) *proc {
	t.Helper()
	p, err := spawnLease(t, db, vm, pool...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// spawnLease is startLease for any goroutine: it reports a failed start
// instead of ending the test.
func spawnLease(t *testing.T, db, vm string, pool ...string) (*proc, error) {
	p := &proc{vm: vm, cmd: command(t, db, append([]string{"lease", "--vm", vm}, pool...)...)}
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	t.Cleanup(func() {
		// A test that failed early leaves no process writing into its
		// temporary directory.
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			p.cmd.Wait()
		}
	})
	return p, nil
}

func (p *proc) wait() {
	err := p.cmd.Wait()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		p.code = ee.ExitCode() // -1 when killed by a signal
	default:
		p.code = -2
	}
}

func openStore(t *testing.T, db string) *store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), db, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

var concurrencyPool = []string{"--subnet", "10.77.0.0/16", "--gateway", "10.77.0.1", "--range-start", "10.77.1.1", "--range-end", "10.77.1.254"}

// 200 lease processes at once on a database that does not exist yet (they
// race to create and migrate it) get 200 distinct addresses, the lowest 200
// of the pool, without an error. Then 60 more, released together from
// behind a held write lock, fill the 254-address pool: 54 leases and 6
// clean IP_EXHAUSTED errors. The database passes its integrity check.
func TestProcessesLeaseConcurrently(t *testing.T) {
	db := filepath.Join(t.TempDir(), "state", "volant.db")
	procs := make([]*proc, 200)
	for i := range procs {
		procs[i] = startLease(t, db, fmt.Sprintf("web-%d", i), concurrencyPool...)
	}
	got := map[netip.Addr]string{}
	for _, p := range procs {
		p.wait()
		if p.code != 0 {
			t.Fatalf("%s: exit %d: %s", p.vm, p.code, p.stderr.String())
		}
		l := parseLease(t, p)
		if o, dup := got[l.IP]; dup {
			t.Fatalf("%s and %s both got %s", o, p.vm, l.IP)
		}
		got[l.IP] = p.vm
	}
	first := netip.MustParseAddr("10.77.1.1")
	for i, a := 0, first; i < 200; i, a = i+1, a.Next() {
		if _, ok := got[a]; !ok {
			t.Fatalf("%s was skipped: 200 leases should be the pool's lowest 200 addresses", a)
		}
	}

	// Phase 2: hold the write lock while the 60 start, then let go.
	st := openStore(t, db)
	gate := make(chan struct{})
	held := make(chan error)
	go func() {
		held <- st.Tx(context.Background(), func(*sql.Tx) error { <-gate; return nil })
	}()
	// Started all at once: started one after another on a loaded host,
	// the first waited for the lock while the other 59 were spawned, and
	// that took longer than the busy timeout (10 s of nobody committing
	// is UNAVAILABLE, rightly).
	more := make([]*proc, 60)
	errs := make([]error, len(more))
	var wg sync.WaitGroup
	for i := range more {
		wg.Add(1)
		go func() {
			defer wg.Done()
			more[i], errs[i] = spawnLease(t, db, fmt.Sprintf("late-%d", i), concurrencyPool...)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		close(gate)
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	close(gate)
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	leased, exhausted := 0, 0
	for _, p := range more {
		p.wait()
		switch p.code {
		case 0:
			l := parseLease(t, p)
			if o, dup := got[l.IP]; dup {
				t.Fatalf("%s and %s both got %s", o, p.vm, l.IP)
			}
			got[l.IP] = p.vm
			leased++
		case apierr.IPExhausted.ExitCode():
			var e apierr.Error
			if err := json.Unmarshal(p.stderr.Bytes(), &e); err != nil || e.Code != apierr.IPExhausted || p.stdout.Len() != 0 {
				t.Fatalf("%s: exit 6 but stderr %q stdout %q", p.vm, p.stderr.String(), p.stdout.String())
			}
			exhausted++
		default:
			t.Fatalf("%s: exit %d: %s", p.vm, p.code, p.stderr.String())
		}
	}
	if leased != 54 || exhausted != 6 {
		t.Fatalf("%d leased, %d exhausted; want 54 and 6", leased, exhausted)
	}
	checkDB(t, st, got)
}

func parseLease(t *testing.T, p *proc) ipam.Lease {
	t.Helper()
	var l struct {
		Version string `json:"version"`
		Kind    string `json:"kind"`
		ipam.Lease
	}
	if err := json.Unmarshal(p.stdout.Bytes(), &l); err != nil || l.Kind != ipam.Kind || l.Version != "1" {
		t.Fatalf("%s: stdout %q: %v", p.vm, p.stdout.String(), err)
	}
	if l.VM != p.vm {
		t.Fatalf("%s got the lease of %s", p.vm, l.VM)
	}
	if err := l.Lease.Validate(); err != nil {
		t.Fatal(err)
	}
	return l.Lease
}

// checkDB verifies the database against what the processes printed: the
// same leases, one ip.leased event per lease, integrity.
func checkDB(t *testing.T, st *store.Store, want map[netip.Addr]string) {
	t.Helper()
	ctx := context.Background()
	if err := st.Check(ctx); err != nil {
		t.Fatal(err)
	}
	leases, err := ipam.List(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != len(want) {
		t.Fatalf("%d leases in the database, %d printed", len(leases), len(want))
	}
	for _, l := range leases {
		if want[l.IP] != l.VM {
			t.Fatalf("database: %s has %s; the process printed %s", l.VM, l.IP, want[l.IP])
		}
	}
	evs, err := st.EventsSince(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != len(want) {
		t.Fatalf("%d events for %d leases", len(evs), len(want))
	}
}

// A lease process killed with SIGKILL at any moment, including while it
// holds the write lock inside its transaction, leaves the whole lease or none
// of it: never a lease row without its event (or the reverse), never a hole
// in the lowest-first order, never a stuck lock.
//
// To kill inside the transaction without a hook in the product, the test
// steps each process: SIGSTOP, probe whether it holds the database's write
// lock (F_GETLK on SQLite's write-lock byte), SIGCONT and sleep a
// little if not, until it holds the lock; then SIGKILL. Every few processes
// are killed at a random moment instead, without probing.
func TestProcessKilledMidLease(t *testing.T) {
	ctx := context.Background()
	db := filepath.Join(t.TempDir(), "volant.db")
	st := openStore(t, db)
	// SQLite's WAL write lock is an fcntl lock on byte 120 of the -shm file
	// (the WAL-index format, sqlite.org/walformat.html). F_GETLK asks who
	// holds it without taking it, so probing does not slow the victim down.
	shm, err := os.OpenFile(db+"-shm", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer shm.Close()
	holdsLock := func(pid int) bool {
		lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: 0, Start: 120, Len: 1}
		if err := syscall.FcntlFlock(shm.Fd(), syscall.F_GETLK, &lk); err != nil {
			t.Fatalf("F_GETLK: %v", err)
		}
		return lk.Type == syscall.F_WRLCK && int(lk.Pid) == pid
	}
	// writeLocked confirms a catch the slow way: a BEGIN IMMEDIATE that
	// does not wait must fail with SQLITE_BUSY.
	probe, err := sql.Open("sqlite3", db+"?_busy_timeout=0&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	writeLocked := func() bool {
		tx, err := probe.Begin()
		if err == nil {
			tx.Rollback()
			return false
		}
		var se sqlite3.Error
		if errors.As(err, &se) && se.Code == sqlite3.ErrBusy {
			return true
		}
		t.Fatalf("probe: %v", err)
		return false
	}

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	const rounds = 120
	inTx, random := 0, 0
	for i := range rounds {
		vm := fmt.Sprintf("victim-%d", i)
		p := startLease(t, db, vm)
		pid := p.cmd.Process.Pid
		caught := false
		if i%4 == 3 {
			time.Sleep(time.Duration(rng.IntN(15000)) * time.Microsecond)
			random++
		} else {
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
				if syscall.Kill(pid, syscall.SIGSTOP) != nil {
					break
				}
				if !waitStopped(pid) {
					break // exited
				}
				if holdsLock(pid) {
					caught = true
					break
				}
				if syscall.Kill(pid, syscall.SIGCONT) != nil {
					break
				}
				time.Sleep(time.Duration(rng.IntN(300)) * time.Microsecond)
			}
		}
		if caught && !writeLocked() {
			t.Fatalf("%s: F_GETLK says it holds the write lock, but BEGIN IMMEDIATE succeeds", vm)
		}
		syscall.Kill(pid, syscall.SIGKILL)
		p.wait()
		if caught {
			inTx++
			if p.code != -1 {
				t.Fatalf("%s: caught holding the lock but exited %d", vm, p.code)
			}
		}
		checkAtomic(t, st, vm)
	}
	t.Logf("%d processes killed holding the write lock, %d at random moments", inTx, random)
	if inTx < rounds/2 {
		t.Fatalf("only %d of %d processes were caught inside their transaction; the test proves nothing", inTx, rounds)
	}

	// Every victim now leases normally; the addresses are the lowest ones,
	// with no hole left by a killed process.
	want := map[netip.Addr]string{}
	for i := range rounds {
		r := command(t, db, "lease", "--vm", fmt.Sprintf("victim-%d", i))
		var out, errb bytes.Buffer
		r.Stdout, r.Stderr = &out, &errb
		if err := r.Run(); err != nil {
			t.Fatalf("lease after the kills: %v: %s", err, errb.String())
		}
		l := parseLease(t, &proc{vm: fmt.Sprintf("victim-%d", i), stdout: out})
		want[l.IP] = l.VM
	}
	first := netip.MustParseAddr("192.168.127.100")
	for i, a := 0, first; i < rounds; i, a = i+1, a.Next() {
		if _, ok := want[a]; !ok {
			t.Fatalf("%s is not leased: a killed process left a hole or a stray row", a)
		}
	}
	if err := st.Check(ctx); err != nil {
		t.Fatal(err)
	}
}

// waitStopped waits until /proc says pid is stopped (SIGSTOP is delivered
// asynchronously); false when it exited.
func waitStopped(pid int) bool {
	for range 1000 {
		switch state(pid) {
		case 'T', 't':
			return true
		case 'Z', 'X', 0:
			return false
		}
		time.Sleep(20 * time.Microsecond)
	}
	return false
}

// state is the process state letter of /proc/PID/stat (0 when gone).
func state(pid int) byte {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// pid (comm) STATE ...; comm may hold spaces, so look after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0
	}
	return b[i+2]
}

// checkAtomic: vm has a lease row exactly when it has an ip.leased event,
// and the whole database is intact.
func checkAtomic(t *testing.T, st *store.Store, vm string) {
	t.Helper()
	ctx := context.Background()
	var rows, events int
	err := st.Read(ctx, func(tx *sql.Tx) error {
		return tx.QueryRow(`SELECT (SELECT count(*) FROM ip_leases WHERE vm_id = ?1),
			(SELECT count(*) FROM events WHERE type = 'ip.leased' AND resource_id = ?1)`, vm).Scan(&rows, &events)
	})
	if err != nil {
		t.Fatal(err)
	}
	if rows != events || rows > 1 {
		t.Fatalf("%s: %d lease rows, %d ip.leased events: a half-written lease", vm, rows, events)
	}
	if rows == 1 {
		l, err := ipam.Get(ctx, st, vm)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Validate(); err != nil {
			t.Fatalf("%s: stored lease is incomplete: %v", vm, err)
		}
	}
	if err := st.Check(ctx); err != nil {
		t.Fatal(err)
	}
}

// SIGTERM ends a lease that waits for the write lock at once, by the
// signal: volant-ipam installs no handler (lib/cli.MainKillable), and the
// lease it never began leaves nothing behind.
func TestSignalEndsAWaitingLease(t *testing.T) {
	db := filepath.Join(t.TempDir(), "volant.db")
	st := openStore(t, db)
	release := holdWriteLock(t, st)
	p := startWaiting(t, db, "waiter")
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := p.cmd.Wait()
	if err := release(); err != nil {
		t.Fatal(err)
	}
	ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Fatalf("lease ended with %v (stderr %q), not by SIGTERM", err, p.stderr.String())
	}
	checkAtomic(t, st, "waiter")
	if _, err := ipam.Get(context.Background(), st, "waiter"); !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("the killed lease left a lease: %v", err)
	}
}

// holdWriteLock holds st's write lock, in a transaction of its own, until
// the returned release is called; release returns the transaction's error.
func holdWriteLock(t *testing.T, st *store.Store) (release func() error) {
	t.Helper()
	locked, free, done := make(chan struct{}), make(chan struct{}), make(chan error)
	go func() {
		done <- st.Tx(context.Background(), func(*sql.Tx) error { close(locked); <-free; return nil })
	}()
	<-locked
	return func() error { close(free); return <-done }
}

// startWaiting starts a lease of vm, with env added to its environment,
// and returns once it has opened the database (its -wal file among its
// open files): with the write lock held by another, it then waits for
// the lock, its schema read.
func startWaiting(t *testing.T, db, vm string, env ...string) *proc {
	t.Helper()
	return startWaitingBin(t, "", db, vm, env...)
}

// startWaitingBin is startWaiting with the volant-ipam at bin ("": this
// test binary).
func startWaitingBin(t *testing.T, bin, db, vm string, env ...string) *proc {
	t.Helper()
	p := &proc{vm: vm, cmd: command(t, db, "lease", "--vm", vm)}
	if bin != "" {
		p.cmd.Path, p.cmd.Args[0] = bin, bin
	}
	p.cmd.Env = append(p.cmd.Env, env...)
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			p.cmd.Wait()
		}
	})
	for deadline := time.Now().Add(10 * time.Second); !hasOpen(p.cmd.Process.Pid, db+"-wal"); {
		if time.Now().After(deadline) {
			t.Fatalf("%s never opened the database", vm)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return p
}

// hasOpen reports whether process pid has the file path open.
func hasOpen(pid int, path string) bool {
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		if target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && target == path {
			return true
		}
	}
	return false
}

// Lease processes that find the write lock held by another process wait
// for it (busy timeout) instead of failing, and finish once it is free.
func TestLeasesWaitForTheWriteLock(t *testing.T) {
	db := filepath.Join(t.TempDir(), "volant.db")
	st := openStore(t, db) // to the processes, another process
	release := holdWriteLock(t, st)
	procs := make([]*proc, 5)
	for i := range procs {
		procs[i] = startLease(t, db, fmt.Sprintf("waiter-%d", i))
	}
	time.Sleep(time.Second)
	for _, p := range procs {
		if state(p.cmd.Process.Pid) == 'Z' {
			t.Fatalf("%s exited while the write lock was held", p.vm)
		}
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	var ips []string
	for _, p := range procs {
		p.wait()
		if p.code != 0 {
			t.Fatalf("%s: exit %d: %s", p.vm, p.code, p.stderr.String())
		}
		ips = append(ips, parseLease(t, p).IP.String())
	}
	sort.Strings(ips)
	if fmt.Sprint(ips) != "[192.168.127.100 192.168.127.101 192.168.127.102 192.168.127.103 192.168.127.104]" {
		t.Fatal(ips)
	}
}
