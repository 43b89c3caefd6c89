package store

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// openScripted opens a store for a test that scripts who shares a group:
// without the age limit, which would split the group wherever the machine
// is slow enough for the script to take more than maxGroupAge.
func openScripted(t *testing.T) *Store {
	s := open(t, filepath.Join(t.TempDir(), "volant.db"), Options{})
	s.maxAge = time.Hour
	return s
}

// queued waits until n callers wait for the write connection's turn.
func queued(t *testing.T, s *Store, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		s.turnMu.Lock()
		q := len(s.queue)
		s.turnMu.Unlock()
		if q >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d callers queued, want %d", q, n)
		}
	}
}

func eventTypes(t *testing.T, s *Store) map[string]bool {
	t.Helper()
	evs, err := s.EventsSince(context.Background(), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, e := range evs {
		out[e.Type] = true
	}
	return out
}

// TestGroupCommitSharesCommits: writes requested together are committed
// together (far fewer commits than writes), and each is there when its Tx
// returns.
func TestGroupCommitSharesCommits(t *testing.T) {
	ctx := context.Background()
	s := openScripted(t)
	const n = 50
	g0 := s.Generation()
	inside, release := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.Tx(ctx, func(tx *sql.Tx) error {
				if i == 0 {
					close(inside)
					<-release // hold the turn until the others queue behind
				}
				_, err := AppendEvent(ctx, tx, fmt.Sprintf("test.w%d", i), "", nil)
				return err
			})
			if errs[i] == nil && !eventTypes(t, s)[fmt.Sprintf("test.w%d", i)] {
				errs[i] = fmt.Errorf("write %d is not visible after its Tx returned", i)
			}
		}()
		if i == 0 {
			<-inside
		}
	}
	queued(t, s, n-1)
	close(release)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := len(eventTypes(t, s)); got != n {
		t.Fatalf("%d writes committed, want %d", got, n)
	}
	commits := s.Generation() - g0
	if commits > 10 {
		t.Fatalf("%d concurrent writes took %d commits: not grouped", n, commits)
	}
	t.Logf("%d writes, %d commits", n, commits)
}

// TestGroupCommitIsolatesFailures: in one group, a fn that fails or panics
// has its own writes undone and gets its own error or panic; the writes of
// the others commit and their Tx calls succeed.
func TestGroupCommitIsolatesFailures(t *testing.T) {
	ctx := context.Background()
	s := openScripted(t)
	boom := errors.New("boom")
	inside, release := make(chan struct{}), make(chan struct{})
	type result struct {
		err      error
		panicked any
	}
	results := make([]result, 4)
	fns := []func(tx *sql.Tx) error{
		func(tx *sql.Tx) error {
			close(inside)
			<-release
			_, err := AppendEvent(ctx, tx, "test.first", "", nil)
			return err
		},
		func(tx *sql.Tx) error {
			if _, err := AppendEvent(ctx, tx, "test.failed", "", nil); err != nil {
				return err
			}
			return boom
		},
		func(tx *sql.Tx) error {
			AppendEvent(ctx, tx, "test.panicked", "", nil)
			panic("inside a grouped tx")
		},
		func(tx *sql.Tx) error {
			// A constraint violation fails the statement, not the group.
			if _, err := tx.ExecContext(ctx, "INSERT INTO events (type, timestamp) VALUES (NULL, 'x')"); err == nil {
				return errors.New("NULL type accepted")
			}
			_, err := AppendEvent(ctx, tx, "test.last", "", nil)
			return err
		},
	}
	var wg sync.WaitGroup
	for i, fn := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { results[i].panicked = recover() }()
			results[i].err = s.Tx(ctx, fn)
		}()
		if i == 0 {
			<-inside
		} else {
			queued(t, s, i) // keep the order: 1, 2, 3 behind 0
		}
	}
	g0 := s.Generation()
	close(release)
	wg.Wait()
	if results[0].err != nil || results[3].err != nil {
		t.Fatalf("the good writes failed: %v, %v", results[0].err, results[3].err)
	}
	if !errors.Is(results[1].err, boom) {
		t.Fatalf("the failing fn got %v, want its own error", results[1].err)
	}
	if results[2].panicked != "inside a grouped tx" {
		t.Fatalf("the panicking fn's caller recovered %v", results[2].panicked)
	}
	got := eventTypes(t, s)
	if !got["test.first"] || !got["test.last"] || got["test.failed"] || got["test.panicked"] || len(got) != 2 {
		t.Fatalf("committed events %v, want test.first and test.last only", got)
	}
	if c := s.Generation() - g0; c != 1 {
		t.Fatalf("%d commits for one group", c)
	}
}

// TestGroupCommitInterruptedStatement: SQLite rolls back the whole
// transaction when a write statement is interrupted (its context ended
// mid-statement). Every member of that group then gets an error: none is
// told its write committed, and none of their writes is there. The store
// works again afterwards.
func TestGroupCommitInterruptedStatement(t *testing.T) {
	ctx := context.Background()
	s := openScripted(t)
	inside, release := make(chan struct{}), make(chan struct{})
	errs := make([]error, 3)
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		errs[0] = s.Tx(ctx, func(tx *sql.Tx) error {
			_, err := AppendEvent(ctx, tx, "test.before", "", nil)
			close(inside)
			<-release
			return err
		})
	}()
	<-inside
	ictx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	go func() {
		defer wg.Done()
		errs[1] = s.Tx(ctx, func(tx *sql.Tx) error {
			// A write that runs until its context ends.
			_, err := tx.ExecContext(ictx, `INSERT INTO events (type, timestamp)
				WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT 'test.flood', 'x' FROM n`)
			return err
		})
	}()
	queued(t, s, 1)
	go func() {
		defer wg.Done()
		errs[2] = s.Tx(ctx, func(tx *sql.Tx) error {
			_, err := AppendEvent(ctx, tx, "test.after", "", nil)
			return err
		})
	}()
	queued(t, s, 2)
	close(release)
	wg.Wait()
	if errs[1] == nil {
		t.Fatal("the interrupted write succeeded")
	}
	got := eventTypes(t, s)
	if got["test.flood"] {
		t.Fatal("the interrupted write's rows are there")
	}
	// The group's first member had written before the interrupt: its write
	// went with the transaction, so it must not have been told otherwise.
	if errs[0] == nil || got["test.before"] {
		t.Fatalf("the first member of the interrupted group: err %v, its write there: %v", errs[0], got["test.before"])
	}
	if errs[2] == nil && !got["test.after"] {
		t.Fatal("test.after: Tx succeeded but its write is missing")
	}
	t.Logf("errors: %v | %v | %v", errs[0], errs[1], errs[2])
	if _, err := s.AppendEvent(ctx, "test.later", "", nil); err != nil {
		t.Fatalf("the store after an interrupted group: %v", err)
	}
}

// TestGroupCommitCanceledWaiter: a caller whose context ends while it waits
// for its turn returns CANCELED and leaves no group hanging.
func TestGroupCommitCanceledWaiter(t *testing.T) {
	ctx := context.Background()
	s := openScripted(t)
	inside, release := make(chan struct{}), make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- s.Tx(ctx, func(tx *sql.Tx) error {
			close(inside)
			<-release
			_, err := AppendEvent(ctx, tx, "test.first", "", nil)
			return err
		})
	}()
	<-inside
	wctx, cancel := context.WithCancel(ctx)
	waiter := make(chan error, 1)
	go func() {
		waiter <- s.Tx(wctx, func(tx *sql.Tx) error {
			_, err := AppendEvent(ctx, tx, "test.canceled", "", nil)
			return err
		})
	}()
	queued(t, s, 1)
	cancel()
	if err := <-waiter; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled waiter: %v", err)
	}
	close(release)
	select {
	case err := <-first:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the group was left hanging")
	}
	if got := eventTypes(t, s); !got["test.first"] || got["test.canceled"] {
		t.Fatalf("events %v", got)
	}
}

// TestGroupCommitSurvivesKill: a process writing from many goroutines is
// killed (SIGKILL) mid-stream; every write whose Tx had returned is in the
// database afterwards.
func TestGroupCommitSurvivesKill(t *testing.T) {
	path := filepath.Join(t.TempDir(), "volant.db")
	open(t, path, Options{}).Close()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = append(os.Environ(), writerEnv+"="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := map[string]bool{}
	sc := bufio.NewScanner(out)
	for sc.Scan() && len(acked) < 300 {
		acked[sc.Text()] = true
	}
	cmd.Process.Signal(syscall.SIGKILL)
	for sc.Scan() {
		acked[sc.Text()] = true // written before the kill landed
	}
	cmd.Wait()
	if len(acked) < 300 {
		t.Fatalf("the writer acknowledged only %d writes", len(acked))
	}
	got := eventTypes(t, open(t, path, Options{}))
	for w := range acked {
		if !got[w] {
			t.Fatalf("write %s was acknowledged but is not in the database (%d acknowledged, %d there)", w, len(acked), len(got))
		}
	}
	t.Logf("%d acknowledged, %d in the database", len(acked), len(got))
}

const writerEnv = "VOLANT_STORE_TEST_WRITER"

// groupWriter is the killed process of TestGroupCommitSurvivesKill: 16
// goroutines append events and print each one's type once Tx returned.
func groupWriter(path string) {
	s, err := Open(context.Background(), path, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var mu sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	for g := 0; g < 16; g++ {
		go func() {
			for i := 0; ; i++ {
				typ := "test.g" + strconv.Itoa(g) + "." + strconv.Itoa(i)
				if _, err := s.AppendEvent(context.Background(), typ, "", nil); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(1)
				}
				mu.Lock()
				w.WriteString(typ + "\n")
				w.Flush()
				mu.Unlock()
			}
		}()
	}
	select {}
}

func TestMain(m *testing.M) {
	if p := os.Getenv(writerEnv); p != "" {
		groupWriter(p)
	}
	os.Exit(m.Run())
}

// TestGeneration: a commit advances the generation; a rolled-back write
// and a read do not.
func TestGeneration(t *testing.T) {
	ctx := context.Background()
	s := openScripted(t)
	g0 := s.Generation()
	if _, err := s.AppendEvent(ctx, "test.one", "", nil); err != nil {
		t.Fatal(err)
	}
	if g := s.Generation(); g != g0+1 {
		t.Fatalf("after a commit: generation %d, want %d", g, g0+1)
	}
	s.Tx(ctx, func(tx *sql.Tx) error {
		AppendEvent(ctx, tx, "test.undone", "", nil)
		return errors.New("no")
	})
	s.Read(ctx, func(tx *sql.Tx) error { return nil })
	if g := s.Generation(); g != g0+1 {
		t.Fatalf("after a rollback and a read: generation %d, want %d", g, g0+1)
	}
}

// TestGroupCommitAgeLimit: a group open longer than maxGroupAge is
// committed when its current fn ends, even with callers waiting, so a
// steady stream of callers cannot keep the first one waiting.
func TestGroupCommitAgeLimit(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "volant.db"), Options{})
	inside, release := make(chan struct{}), make(chan struct{})
	errs := make([]error, 2)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		errs[0] = s.Tx(ctx, func(tx *sql.Tx) error {
			close(inside)
			<-release
			_, err := AppendEvent(ctx, tx, "test.old", "", nil)
			return err
		})
	}()
	<-inside
	go func() {
		defer wg.Done()
		errs[1] = s.Tx(ctx, func(tx *sql.Tx) error {
			_, err := AppendEvent(ctx, tx, "test.next", "", nil)
			return err
		})
	}()
	queued(t, s, 1)
	g0 := s.Generation()
	time.Sleep(2 * maxGroupAge)
	close(release)
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatal(errs)
	}
	if c := s.Generation() - g0; c != 2 {
		t.Fatalf("%d commits, want 2: a group older than %s took the next caller in", c, maxGroupAge)
	}
}

// TestReadersKeepTheirConnections: readers at full concurrency, again
// and again, reuse the reader connections instead of closing and
// reopening them.
func TestReadersKeepTheirConnections(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "volant.db"), Options{})
	ctx := context.Background()
	for range 20 {
		var wg, inside sync.WaitGroup
		inside.Add(readConns)
		for range readConns {
			wg.Go(func() {
				if err := s.Read(ctx, func(tx *sql.Tx) error {
					var n int
					err := tx.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_master").Scan(&n)
					inside.Done()
					inside.Wait() // all readers hold a connection at once
					return err
				}); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
	}
	if st := s.r.Stats(); st.MaxIdleClosed > 0 || st.OpenConnections > readConns {
		t.Errorf("reader pool: %d connections closed for want of an idle slot, %d open", st.MaxIdleClosed, st.OpenConnections)
	}
}
