// Package store is Volant's state: one SQLite database shared by volantd and
// by the volant-* commands run from shells. Where it lives is lib/layout's
// rule (<data>/volant.db, VOLANT_DB); Open takes the path.
//
// Open creates the file (and its directory) when missing and brings the
// schema up to date with the versioned migrations in migrations.go; the
// version is the database's PRAGMA user_version. A database written by a newer
// build (a higher version than this build knows) is refused, not guessed at.
//
// Several processes use the file at once, so every connection runs with:
//
//   - journal_mode=WAL: readers never block the writer or each other;
//   - synchronous=FULL: a committed transaction survives power loss, not only
//     a crash of the process;
//   - foreign_keys=ON;
//   - busy_timeout (Options.BusyTimeout, default 10 s): a process that finds
//     the write lock taken waits for it instead of failing, for as long as
//     other writers keep committing; it fails (UNAVAILABLE) only when the
//     lock stays with one holder, nobody committing, for the whole timeout;
//   - writes in BEGIN IMMEDIATE transactions (Tx), which take the write lock
//     up front. A read-then-write transaction therefore cannot fail halfway
//     with SQLITE_BUSY because another process wrote in between: what it read
//     is still true when it writes. Inside a process, writers queue on one
//     connection and share commits (group commit: the writes of callers
//     that queued together cost one fsync; each caller still returns only
//     once its writes are durable); across processes, they queue on the
//     busy timeout;
//   - persistent -wal and -shm files (SQLITE_FCNTL_PERSIST_WAL) with
//     journal_size_limit=0: the last connection to close still checkpoints
//     into the database file, then empties the WAL instead of deleting it.
//
// Reads that need one consistent view go through Read (a deferred
// transaction on a separate, query-only connection pool).
//
// A process killed at any point, SIGKILL included, leaves either the whole
// transaction or none of it: that is SQLite's WAL commit protocol, and the
// tests of lib/ipam and cmd/volant-ipam kill processes inside transactions to
// check it.
//
// Tables (schema version 8; see migrations.go for the DDL):
//
//	plugins             installed plugins, with their default version's manifest
//	plugin_versions     every installed version of each plugin
//	deployments         desired/current replica counts, the version new replicas run
//	rollouts            deployments' rolling updates, by revision
//	vms                 VMs volantd runs
//	ip_leases           addresses leased to VM names (lib/ipam)
//	events              the event log; ids increase and are never reused (SSE resume)
//	volumes             disk images that outlive VMs (lib/volume)
//	volume_attachments  which VM uses which volume, where
//	ports               published host ports (lib/portmap)
//	settings            the daemon's settings
//	tokens              the API's named tokens, hashed (lib/auth)
//
// Timestamps are stored as TEXT in one fixed-width UTC form (TimeFormat), so
// they sort as strings and read well in the sqlite3 shell.
package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mattn/go-sqlite3"

	"github.com/volantvm/volant/lib/apierr"
)

// DefaultBusyTimeout is how long a write waits for another process's write
// lock, while nobody commits, before failing with UNAVAILABLE.
const DefaultBusyTimeout = 10 * time.Second

// TimeFormat is how timestamps are stored: UTC, millisecond precision, fixed
// width (so text order is time order), and valid RFC 3339.
const TimeFormat = "2006-01-02T15:04:05.000Z"

// FormatTime returns t in TimeFormat.
func FormatTime(t time.Time) string { return t.UTC().Format(TimeFormat) }

// ParseTime reads a timestamp written by FormatTime (or any RFC 3339 time).
func ParseTime(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("parsing stored time %q: %w", s, err)
	}
	return t.UTC(), nil
}

// Options tune Open. The zero value is the documented default.
type Options struct {
	// BusyTimeout bounds the wait for another process's write lock
	// while nobody commits (a writer queued behind others that commit
	// waits on); 0 means DefaultBusyTimeout.
	BusyTimeout time.Duration
	// Logger receives debug logs (migrations applied); nil discards them.
	Logger *slog.Logger
	// Check is run on an existing database before it is used (and
	// before migrating it): a damaged one is refused with DATA_CORRUPT.
	Check Check
}

// Store is an open database. It is safe for concurrent use.
type Store struct {
	path        string
	busyTimeout time.Duration
	log         *slog.Logger
	w           *sql.DB // writes: BEGIN IMMEDIATE, one connection
	r           *sql.DB // reads: deferred transactions, query_only
	gen         atomic.Uint64
	// damaged is set once SQLite found the file damaged; every
	// transaction is then refused with it.
	damaged atomic.Pointer[apierr.Error]

	// Group commit (see Tx). One caller at a time holds the turn on the
	// write connection (to run its fn, or to commit); the others wait in
	// queue, first come first served. group is the open transaction, nil
	// between groups; only the turn's holder touches it.
	turnMu sync.Mutex
	busy   bool
	queue  []chan struct{}
	group  *group
	// maxAge is maxGroupAge; the group tests lift it, because on a
	// loaded machine their scripted group outlives 20 ms and splits.
	maxAge time.Duration
}

// Open opens (creating when missing) the database at path and migrates it to
// the current schema version. An existing file of zero bytes is refused
// (DATA_CORRUPT): a new database is made whole under another name and
// linked into place, so Volant never leaves an empty one, and taking one
// for a new database would forget every VM and lease. With opts.Check an
// existing database is checked first.
func Open(ctx context.Context, path string, opts Options) (*Store, error) {
	if path == "" {
		return nil, apierr.New(apierr.InvalidInput, "database path is empty")
	}
	if strings.Contains(path, "?") { // go-sqlite3 reads what follows '?' as options
		return nil, apierr.New(apierr.InvalidInput, "database path %q must not contain '?'", path).With("db", path)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("database path %q: %w", path, err)
	}
	if opts.BusyTimeout <= 0 {
		opts.BusyTimeout = DefaultBusyTimeout
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	switch st, err := os.Stat(abs); {
	case errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOTDIR): // create says why it cannot be made
		if err := create(ctx, abs, opts); err != nil {
			return nil, err
		}
	case err != nil:
		return nil, wrapOSErr(fmt.Errorf("opening the database: %w", err), abs)
	case st.Size() == 0:
		return nil, emptyFile(abs)
	default:
		if err := Verify(ctx, abs, opts.Check); err != nil {
			return nil, err
		}
	}
	s := &Store{path: abs, busyTimeout: opts.BusyTimeout, log: log, maxAge: maxGroupAge}
	s.w = sql.OpenDB(s.connector("immediate", false))
	s.w.SetMaxOpenConns(1)
	s.r = sql.OpenDB(s.connector("deferred", true))
	// Every reader connection stays open: with database/sql's default of
	// two idle connections, readers beyond two (volantd's health pollers,
	// one per VM) closed their connection after each read and the next
	// opened one again (sqlite3_open and the pragmas, in cgo).
	s.r.SetMaxOpenConns(readConns)
	s.r.SetMaxIdleConns(readConns)
	if err := s.migrate(ctx, migrations()); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// create makes a new database at path: its directory when missing, then
// the database, owner-only and migrated, under a temporary name, which is
// then linked to path. Processes that race to create it take turns (a
// lock on the directory), so one makes it and the others find it made; a
// process killed halfway leaves no file at path. SQLite gives the -wal and
// -shm files the same mode.
func create(ctx context.Context, path string, opts Options) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return wrapOSErr(fmt.Errorf("creating the database directory: %w", err), path)
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return wrapOSErr(fmt.Errorf("creating the database: %w", err), path)
	}
	defer dir.Close() // and with it the lock
	if err := syscall.Flock(int(dir.Fd()), syscall.LOCK_EX); err != nil {
		return wrapOSErr(fmt.Errorf("creating the database: locking its directory: %w", err), path)
	}
	if _, err := os.Lstat(path); err == nil {
		return nil // another process made it meanwhile
	}
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".new-*") // mode 0600
	if err != nil {
		return wrapOSErr(fmt.Errorf("creating the database: %w", err), path)
	}
	tmp := f.Name()
	f.Close()
	defer func() {
		for _, suffix := range []string{"", "-wal", "-shm", "-journal"} {
			os.Remove(tmp + suffix)
		}
	}()
	s := &Store{path: tmp, busyTimeout: opts.BusyTimeout, log: slog.New(slog.DiscardHandler), maxAge: maxGroupAge}
	s.w = sql.OpenDB(s.connector("immediate", false))
	s.w.SetMaxOpenConns(1)
	s.r = sql.OpenDB(s.connector("deferred", true))
	err = s.migrate(ctx, migrations())
	if cerr := s.Close(); err == nil {
		err = cerr // closing checkpoints the WAL into the file
	}
	if err != nil {
		return fmt.Errorf("creating the database %s: %w", path, err)
	}
	if err := os.Link(tmp, path); err != nil && !errors.Is(err, os.ErrExist) {
		return wrapOSErr(fmt.Errorf("creating the database: %w", err), path)
	}
	return nil
}

func wrapOSErr(err error, path string) error {
	code := apierr.CodeOf(err)
	if code == apierr.Internal || code == apierr.NotFound {
		code = apierr.Unavailable
	}
	return &apierr.Error{Code: code, Message: err.Error(), Details: map[string]any{"db": path}, Err: err}
}

func (s *Store) connector(txlock string, readOnly bool) driver.Connector {
	q := url.Values{}
	q.Set("_busy_timeout", fmt.Sprint(s.busyTimeout.Milliseconds()))
	q.Set("_journal_mode", "WAL")
	q.Set("_synchronous", "FULL")
	q.Set("_foreign_keys", "on")
	q.Set("_txlock", txlock)
	// Keep prepared statements per connection: volantd runs the same few
	// queries over and over (a VM read, a lease, an event), and preparing
	// one costs about as much as running it.
	q.Set("_stmt_cache_size", "64")
	if readOnly {
		q.Set("_query_only", "on")
	}
	return &connector{dsn: s.path + "?" + q.Encode(), drv: &sqlite3.SQLiteDriver{ConnectHook: persistWAL}}
}

// sqliteFcntlPersistWAL is SQLITE_FCNTL_PERSIST_WAL (sqlite3.h).
const sqliteFcntlPersistWAL = 10

// persistWAL keeps the -wal and -shm files when the last connection
// closes, truncating the WAL to zero bytes instead of deleting it.
//
// Without it, every short-lived process (a volant-ipam run) is the last
// connection when it exits: SQLite checkpoints, deletes both files, and the
// next process creates them again. On ext4 that inode churn was the largest
// single cost of a lease (a fifth of its CPU time in __ext4_new_inode, see
// bench/ipam). The checkpoint at close still runs, so the database file
// alone holds every committed transaction once the last process is gone,
// and journal_size_limit=0 keeps the idle WAL empty rather than full of
// frames the next process would have to read back.
func persistWAL(c *sqlite3.SQLiteConn) error {
	if _, err := c.Exec("PRAGMA journal_size_limit = 0", nil); err != nil {
		return fmt.Errorf("setting journal_size_limit: %w", err)
	}
	if err := c.SetFileControlInt("main", sqliteFcntlPersistWAL, 1); err != nil {
		return fmt.Errorf("setting SQLITE_FCNTL_PERSIST_WAL: %w", err)
	}
	return nil
}

// connector opens go-sqlite3 connections without registering a driver name
// in database/sql's process-wide registry.
type connector struct {
	dsn string
	drv *sqlite3.SQLiteDriver
}

func (c *connector) Connect(context.Context) (driver.Conn, error) { return c.drv.Open(c.dsn) }
func (c *connector) Driver() driver.Driver                        { return c.drv }

// Path is the absolute path of the database file.
func (s *Store) Path() string { return s.path }

// Close closes both connection pools.
func (s *Store) Close() error {
	return errors.Join(s.w.Close(), s.r.Close())
}

// Tx runs fn in a write transaction (BEGIN IMMEDIATE) and returns once
// what fn wrote is committed (durable: synchronous=FULL) when fn returns
// nil; what fn wrote is undone when fn returns an error or panics. fn must
// use only tx: the store has one write connection, so a second write from
// inside fn would wait for itself. fn's error is returned as is.
//
// Concurrent calls share commits (group commit): callers take turns on the
// one write connection, each fn in a savepoint of a transaction that stays
// open while other callers wait for their turn, and the last of them (or
// the one that reaches maxGroup callers or maxGroupAge) commits for all.
// A commit costs an fsync of the WAL (milliseconds); a fn, tens of
// microseconds. So N leases requested at once cost about one fsync, not
// N, and each caller still returns only after its writes are on disk. The
// price: a fn sees the writes of the fns before it in its group (they are
// committed together or not at all), and when the group's commit fails,
// or a fn's failure takes the whole transaction with it (an interrupted
// statement, a full disk), every caller of the group gets the error.
func (s *Store) Tx(ctx context.Context, fn func(*sql.Tx) error) error {
	if err := s.refused(); err != nil {
		return err
	}
	if err := s.takeTurn(ctx); err != nil {
		return s.dbErr(ctx, "beginning a write transaction", err)
	}
	g := s.group
	if g == nil {
		conn, tx, err := s.begin(ctx)
		if err != nil {
			s.passTurn()
			return s.dbErr(ctx, "beginning a write transaction", err)
		}
		g = &group{conn: conn, tx: tx, begun: time.Now(), done: make(chan struct{})}
		s.group = g
	}
	ferr, panicked, pval := g.run(ctx, fn)
	if isCorrupt(ferr) {
		// The file is damaged: nothing of this group is committed, and
		// no later write is tried (refused).
		ferr = s.seen(ferr)
		g.fail(ferr)
	}
	if !panicked && ferr == nil {
		g.members++
	}
	if !g.broken && g.members < maxGroup && time.Since(g.begun) < s.maxAge && s.handOff() {
		// The next caller continues the group; the last one commits.
		switch {
		case panicked:
			panic(pval)
		case ferr != nil:
			return ferr
		}
		<-g.done
		return g.err
	}
	s.endGroup()
	switch {
	case panicked:
		panic(pval)
	case ferr != nil:
		return ferr
	}
	return g.err
}

// begin begins a write transaction (BEGIN IMMEDIATE) on a connection of
// its own, waiting for other processes' write locks as long as they make
// progress. SQLite's busy timeout bounds one wait for the lock; when it
// runs out but some other connection committed meanwhile (PRAGMA
// data_version moved), the lock is changing hands, not stuck, and the
// wait goes on: the busy timeout bounds how long one holder may keep the
// lock, not how long a writer may queue behind many short transactions
// (200 volant-ipam processes at once on a loaded host). A wait with no
// commit by anyone for a whole busy timeout fails (UNAVAILABLE), as does
// one whose ctx ends. The transaction outlives ctx (later callers join the
// group), so it is not begun with ctx: database/sql would roll it back
// when ctx ends.
func (s *Store) begin(ctx context.Context) (*sql.Conn, *sql.Tx, error) {
	conn, err := s.w.Conn(ctx)
	if err != nil {
		return nil, nil, err
	}
	for {
		before, verr := dataVersion(ctx, conn)
		tx, err := conn.BeginTx(context.WithoutCancel(ctx), nil)
		if err == nil {
			return conn, tx, nil
		}
		var after int64
		if verr == nil {
			after, verr = dataVersion(ctx, conn)
		}
		if !isBusy(err) || verr != nil || after == before || ctx.Err() != nil {
			conn.Close()
			return nil, nil, err
		}
		s.log.Debug("write lock still busy, but other writers committed: waiting on", "db", s.path)
	}
}

// dataVersion is PRAGMA data_version: it changes when another connection
// commits.
func dataVersion(ctx context.Context, conn *sql.Conn) (int64, error) {
	var v int64
	err := conn.QueryRowContext(ctx, "PRAGMA data_version").Scan(&v)
	return v, err
}

func isBusy(err error) bool {
	var se sqlite3.Error
	return errors.As(err, &se) && (se.Code == sqlite3.ErrBusy || se.Code == sqlite3.ErrLocked)
}

// Group commit limits: a group is committed when no caller waits for the
// write connection, or when it holds maxGroup callers' writes, or when it
// has been open for maxGroupAge, so a steady stream of callers cannot keep
// the first one waiting.
const (
	maxGroup    = 128
	maxGroupAge = 20 * time.Millisecond
)

// group is a write transaction shared by the Tx calls that took turns
// while it was open.
type group struct {
	conn    *sql.Conn // the write connection, held until the group ends
	tx      *sql.Tx
	begun   time.Time
	members int  // fns that succeeded: their writes wait for the commit
	broken  bool // the transaction was rolled back under the group
	seq     int
	done    chan struct{} // closed when the group committed or rolled back
	err     error         // the commit's error, for every member
}

// run runs fn in a savepoint of the group's transaction, undoing fn's
// writes when it fails or panics. A savepoint that cannot be released or
// rolled back means the transaction itself is gone (SQLite rolls back the
// whole transaction on an interrupt, a full disk, an I/O error): the group
// is broken and no member's writes will be committed.
func (g *group) run(ctx context.Context, fn func(*sql.Tx) error) (ferr error, panicked bool, pval any) {
	g.seq++
	sp := "tx" + strconv.Itoa(g.seq)
	// Savepoint statements run whatever ctx says: the group needs them.
	bg := context.WithoutCancel(ctx)
	if _, err := g.tx.ExecContext(bg, "SAVEPOINT "+sp); err != nil {
		g.fail(fmt.Errorf("starting savepoint: %w", err))
		return err, false, nil
	}
	func() {
		defer func() {
			if p := recover(); p != nil {
				panicked, pval = true, p
			}
		}()
		ferr = fn(g.tx)
	}()
	if ferr != nil || panicked {
		if _, err := g.tx.ExecContext(bg, "ROLLBACK TO "+sp); err != nil {
			g.fail(fmt.Errorf("the transaction ended under a failed write: %w", err))
			return ferr, panicked, pval
		}
	}
	if _, err := g.tx.ExecContext(bg, "RELEASE "+sp); err != nil {
		g.fail(fmt.Errorf("the transaction ended under a write: %w", err))
		if ferr == nil && !panicked {
			ferr = g.err
		}
	}
	return ferr, panicked, pval
}

func (g *group) fail(err error) {
	if !g.broken {
		g.broken, g.err = true, err
	}
}

// endGroup commits the open group (rolls it back when it holds no writes
// or is broken), wakes its members and passes the turn on. The caller
// holds the turn. Its error is every member's, so no caller's context
// colours it.
func (s *Store) endGroup() {
	ctx := context.Background()
	g := s.group
	s.group = nil
	switch {
	case g.broken:
		_ = g.tx.Rollback()
		g.err = s.dbErr(ctx, "committing", g.err)
	case g.members == 0:
		_ = g.tx.Rollback()
	default:
		if err := g.tx.Commit(); err != nil {
			g.err = s.dbErr(ctx, "committing", err)
		} else {
			s.gen.Add(1)
		}
	}
	g.conn.Close()
	close(g.done)
	s.passTurn()
}

// takeTurn waits for the turn on the write connection.
func (s *Store) takeTurn(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.turnMu.Lock()
	if !s.busy {
		s.busy = true
		s.turnMu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	s.queue = append(s.queue, ch)
	s.turnMu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
	}
	s.turnMu.Lock()
	for i, q := range s.queue {
		if q == ch {
			s.queue = append(s.queue[:i], s.queue[i+1:]...)
			s.turnMu.Unlock()
			return ctx.Err()
		}
	}
	s.turnMu.Unlock()
	// The turn was handed over as ctx ended: an open group's members wait
	// for a commit, so pass the group on, or commit it.
	if s.group != nil && !s.handOff() {
		s.endGroup()
	} else if s.group == nil {
		s.passTurn()
	}
	return ctx.Err()
}

// handOff gives the turn to the first waiting caller, if there is one,
// and reports whether it did. The caller holds the turn.
func (s *Store) handOff() bool {
	s.turnMu.Lock()
	defer s.turnMu.Unlock()
	if len(s.queue) == 0 {
		return false
	}
	close(s.queue[0])
	s.queue = s.queue[1:]
	return true
}

// passTurn gives the turn to the first waiting caller or frees it.
func (s *Store) passTurn() {
	if !s.handOff() {
		s.turnMu.Lock()
		s.busy = false
		s.turnMu.Unlock()
	}
}

// readConns is how many read transactions run at once.
const readConns = 8

// Generation counts the write transactions this Store has committed. It
// advances after a commit returns, so a caller that reads it, then reads
// the database, and later finds it unchanged knows that nothing written
// through this Store since can be missing from what it read: a cache of
// query results stays valid while the generation does. Writes by other
// processes sharing the file (volant-ipam, a second Store) do not count.
func (s *Store) Generation() uint64 { return s.gen.Load() }

// Read runs fn in a read-only transaction: every query in fn sees the same
// snapshot, and writers are not blocked. fn's error is returned as is,
// but for SQLite finding the file damaged, which is DATA_CORRUPT.
func (s *Store) Read(ctx context.Context, fn func(*sql.Tx) error) error {
	if err := s.refused(); err != nil {
		return err
	}
	tx, err := s.r.BeginTx(ctx, nil)
	if err != nil {
		return s.dbErr(ctx, "beginning a read transaction", err)
	}
	defer tx.Rollback() //nolint:errcheck // read-only: nothing to keep
	return s.seen(fn(tx))
}

// SchemaVersion is the database's schema version (PRAGMA user_version).
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	if err := s.r.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return 0, s.dbErr(ctx, "reading the schema version", err)
	}
	return v, nil
}

// dbErr converts a SQLite error met while doing what into an apierr code an
// operator can act on.
func (s *Store) dbErr(ctx context.Context, what string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("%s in %s: %w", what, s.path, ctxErr)
	}
	var se sqlite3.Error
	if !errors.As(err, &se) {
		return fmt.Errorf("%s in %s: %w", what, s.path, err)
	}
	e := &apierr.Error{Code: apierr.Internal, Err: err, Details: map[string]any{"db": s.path}}
	switch se.Code {
	case sqlite3.ErrBusy, sqlite3.ErrLocked:
		e.Code = apierr.Unavailable
		e.Message = fmt.Sprintf("%s: database %s is locked: another process held its write lock for more than %s", what, s.path, s.busyTimeout)
		e.With("busy_timeout", s.busyTimeout.String())
		return e
	case sqlite3.ErrPerm, sqlite3.ErrReadonly, sqlite3.ErrAuth:
		e.Code = apierr.PermissionDenied
	case sqlite3.ErrCantOpen, sqlite3.ErrFull, sqlite3.ErrIoErr:
		e.Code = apierr.Unavailable
		if se.SystemErrno == syscall.EACCES || se.SystemErrno == syscall.EPERM || se.SystemErrno == syscall.EROFS {
			e.Code = apierr.PermissionDenied
		}
	case sqlite3.ErrCorrupt, sqlite3.ErrNotADB:
		return s.damage(corrupt(s.path, fmt.Sprintf("%s: %v", what, err), nil, err))
	}
	e.Message = fmt.Sprintf("%s in %s: %v", what, s.path, err)
	return e
}

// IsConstraint reports whether err is a SQLite constraint violation (UNIQUE,
// FOREIGN KEY, CHECK, NOT NULL).
func IsConstraint(err error) bool {
	var se sqlite3.Error
	return errors.As(err, &se) && se.Code == sqlite3.ErrConstraint
}
