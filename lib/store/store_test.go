package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/apierr"
)

func open(t *testing.T, path string, opts Options) *Store {
	t.Helper()
	s, err := Open(context.Background(), path, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func pragma(t *testing.T, s *Store, name string) string {
	t.Helper()
	var v string
	err := s.Tx(context.Background(), func(tx *sql.Tx) error {
		return tx.QueryRow("PRAGMA " + name).Scan(&v)
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestOpenCreatesAndMigrates(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "a", "b", "volant.db")
	s := open(t, path, Options{})
	if s.Path() != path {
		t.Fatalf("Path() = %s, want %s", s.Path(), path)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("database mode %v, want 0600", st.Mode().Perm())
	}
	v, err := s.SchemaVersion(ctx)
	if err != nil || v != LatestSchemaVersion() || v < 1 {
		t.Fatalf("schema version %d (%v), want %d", v, err, LatestSchemaVersion())
	}
	for name, want := range map[string]string{
		"journal_mode": "wal",
		"foreign_keys": "1",
		"synchronous":  "2", // FULL
		"busy_timeout": "10000",
	} {
		if got := pragma(t, s, name); got != want {
			t.Errorf("PRAGMA %s = %s, want %s", name, got, want)
		}
	}
	var tables []string
	err = s.Read(ctx, func(tx *sql.Tx) error {
		rows, err := tx.Query("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var n string
			rows.Scan(&n)
			tables = append(tables, n)
		}
		return rows.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(tables, " "); got != "deployment_inputs deployments events ip_leases plugin_versions plugins ports rollouts settings tokens vm_inputs vms volume_attachments volumes" {
		t.Fatalf("tables: %s", got)
	}
	if err := s.Check(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestReopenKeepsData(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "volant.db")
	s, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AppendEvent(ctx, "test.one", "x", nil); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, path, Options{})
	evs, err := s.EventsSince(ctx, 0, 0)
	if err != nil || len(evs) != 1 || evs[0].Type != "test.one" {
		t.Fatalf("after reopen: %+v %v", evs, err)
	}
}

func TestMigrationsApplyInOrderOnce(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "volant.db")
	s := open(t, path, Options{})
	ms := append(migrations(),
		migration{len(migrations()) + 1, "add a column", "ALTER TABLE vms ADD COLUMN note TEXT"},
		migration{len(migrations()) + 2, "index it", "CREATE INDEX vms_note ON vms(note)"},
	)
	if err := s.migrate(ctx, ms); err != nil {
		t.Fatal(err)
	}
	if err := s.migrate(ctx, ms); err != nil { // nothing left to do: ALTER would fail if rerun
		t.Fatalf("second migrate: %v", err)
	}
	v, _ := s.SchemaVersion(ctx)
	if v != len(ms) {
		t.Fatalf("version %d, want %d", v, len(ms))
	}
}

func TestFailedMigrationChangesNothing(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "volant.db"), Options{})
	base := len(migrations())
	ms := append(migrations(),
		migration{base + 1, "good", "ALTER TABLE vms ADD COLUMN note TEXT"},
		migration{base + 2, "bad", "ALTER TABLE no_such_table ADD COLUMN x TEXT"},
	)
	if err := s.migrate(ctx, ms); err == nil || !strings.Contains(err.Error(), "schema version "+itoa(base+2)) {
		t.Fatalf("want a failure naming version %d, got %v", base+2, err)
	}
	v, _ := s.SchemaVersion(ctx)
	if v != base {
		t.Fatalf("version %d after a failed migration, want %d", v, base)
	}
	err := s.Tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.Exec("SELECT note FROM vms")
		return err
	})
	if err == nil {
		t.Fatal("the good migration of a failed batch was kept")
	}
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

func TestNewerSchemaRefused(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "volant.db")
	s := open(t, path, Options{})
	if err := s.Tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.Exec("PRAGMA user_version = 999")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	_, err := Open(ctx, path, Options{})
	if !apierr.Is(err, apierr.NotSupported) || !strings.Contains(err.Error(), "999") {
		t.Fatalf("want NOT_SUPPORTED naming version 999, got %v", err)
	}
}

func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	notDB := filepath.Join(dir, "junk.db")
	os.WriteFile(notDB, []byte(strings.Repeat("this is not sqlite\n", 300)), 0o600)
	blocker := filepath.Join(dir, "file")
	os.WriteFile(blocker, nil, 0o600)
	for _, tc := range []struct {
		path string
		code apierr.Code
	}{
		{"", apierr.InvalidInput},
		{filepath.Join(dir, "x?mode=ro"), apierr.InvalidInput},
		{notDB, apierr.DataCorrupt},                               // not a database: refused, with the recovery steps
		{filepath.Join(blocker, "volant.db"), apierr.Unavailable}, // parent is a file
	} {
		_, err := Open(ctx, tc.path, Options{})
		if !apierr.Is(err, tc.code) {
			t.Errorf("Open(%q) = %v (%s), want %s", tc.path, err, apierr.CodeOf(err), tc.code)
		}
	}
}

func TestTxRollsBack(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "volant.db"), Options{})
	boom := errors.New("boom")
	err := s.Tx(ctx, func(tx *sql.Tx) error {
		if _, err := AppendEvent(ctx, tx, "test.rolledback", "", nil); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Tx returned %v, want fn's error", err)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("panic was swallowed")
			}
		}()
		s.Tx(ctx, func(tx *sql.Tx) error {
			AppendEvent(ctx, tx, "test.panicked", "", nil)
			panic("inside tx")
		})
	}()
	evs, err := s.EventsSince(ctx, 0, 0)
	if err != nil || len(evs) != 0 {
		t.Fatalf("rolled-back events are visible: %+v %v", evs, err)
	}
	// The write connection is usable again after both.
	if _, err := s.AppendEvent(ctx, "test.after", "", nil); err != nil {
		t.Fatal(err)
	}
}

func TestEventsMonotonicNeverReused(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "volant.db"), Options{})
	var ids []int64
	for i, typ := range []string{"vm.created", "vm.started", "vm.stopped"} {
		e, err := s.AppendEvent(ctx, typ, "web1", map[string]any{"n": i})
		if err != nil {
			t.Fatal(err)
		}
		if e.Timestamp.IsZero() || e.Type != typ {
			t.Fatalf("event %+v", e)
		}
		ids = append(ids, e.ID)
	}
	if !(ids[0] < ids[1] && ids[1] < ids[2]) {
		t.Fatalf("ids not increasing: %v", ids)
	}
	all, _ := s.EventsSince(ctx, 0, 0)
	if len(all) != 3 || string(all[1].Data) != `{"n":1}` || all[1].ResourceID != "web1" {
		t.Fatalf("EventsSince(0): %+v", all)
	}
	after, _ := s.EventsSince(ctx, ids[0], 1)
	if len(after) != 1 || after[0].ID != ids[1] {
		t.Fatalf("EventsSince(%d, 1): %+v", ids[0], after)
	}
	// Deleting the newest events must not let their ids come back.
	if err := s.Tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.Exec("DELETE FROM events")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	e, err := s.AppendEvent(ctx, "vm.deleted", "web1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if e.ID <= ids[2] {
		t.Fatalf("id %d reused after delete (last was %d)", e.ID, ids[2])
	}
	if got, _ := s.EventsSince(ctx, ids[2], 0); len(got) != 1 || got[0].Data != nil {
		t.Fatalf("after delete: %+v", got)
	}
	if _, err := s.AppendEvent(ctx, "", "", nil); err == nil {
		t.Fatal("empty event type accepted")
	}
}

func TestConstraints(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "volant.db"), Options{})
	now := FormatTime(time.Now())
	exec := func(q string, args ...any) error {
		return s.Tx(ctx, func(tx *sql.Tx) error {
			_, err := tx.Exec(q, args...)
			return err
		})
	}
	// Foreign keys are enforced: a VM of an unknown plugin is refused.
	err := exec(`INSERT INTO vms (id, plugin, state, cpu_cores, memory_mb, created_at, updated_at) VALUES ('web1', 'nginx', 'created', 1, 128, ?, ?)`, now, now)
	if !IsConstraint(err) {
		t.Fatalf("VM with unknown plugin: %v", err)
	}
	if err := exec(`INSERT INTO plugins (name, version, runtime, manifest, created_at, updated_at) VALUES ('nginx', '1', 'nginx', '{"name":"nginx"}', ?, ?)`, now, now); err != nil {
		t.Fatal(err)
	}
	if err := exec(`INSERT INTO vms (id, plugin, state, cpu_cores, memory_mb, created_at, updated_at) VALUES ('web1', 'nginx', 'created', 1, 128, ?, ?)`, now, now); err != nil {
		t.Fatal(err)
	}
	if err := exec(`DELETE FROM plugins WHERE name = 'nginx'`); !IsConstraint(err) {
		t.Fatalf("deleting a plugin in use: %v", err)
	}
	// STRICT + CHECK: wrong types and invalid JSON are refused.
	if err := exec(`INSERT INTO plugins (name, version, runtime, manifest, created_at, updated_at) VALUES ('bad', '1', 'x', 'not json', ?, ?)`, now, now); !IsConstraint(err) {
		t.Fatalf("invalid manifest JSON: %v", err)
	}
	if err := exec(`INSERT INTO ip_leases (ip, ip_num, vm_id, mac, subnet, gateway, leased_at) VALUES ('10.0.0.2', 'ten', 'a', 'm', 's', 'g', ?)`, now); err == nil {
		t.Fatal("text in an INTEGER column of a STRICT table was accepted")
	}
	if err := s.Check(ctx); err != nil {
		t.Fatal(err)
	}
}

// A writer that finds the write lock held waits up to the busy timeout, then
// fails with UNAVAILABLE; once the lock is free it succeeds.
func TestBusyTimeout(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "volant.db")
	holder := open(t, path, Options{})
	waiter := open(t, path, Options{BusyTimeout: 200 * time.Millisecond})
	locked, release := make(chan struct{}), make(chan struct{})
	done := make(chan error)
	go func() {
		done <- holder.Tx(ctx, func(tx *sql.Tx) error {
			close(locked)
			<-release
			return nil
		})
	}()
	<-locked
	start := time.Now()
	_, err := waiter.AppendEvent(ctx, "test.blocked", "", nil)
	if !apierr.Is(err, apierr.Unavailable) || !strings.Contains(err.Error(), "locked") {
		t.Fatalf("want UNAVAILABLE (locked), got %v", err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Fatalf("gave up after %s, before the busy timeout", d)
	}
	// Reads are not blocked by the writer (WAL).
	if _, err := waiter.EventsSince(ctx, 0, 0); err != nil {
		t.Fatalf("read while a write lock is held: %v", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := waiter.AppendEvent(ctx, "test.unblocked", "", nil); err != nil {
		t.Fatal(err)
	}
}

// A writer waits as long as other writers make progress: the busy timeout
// bounds how long one holder may keep the write lock, not how long a
// writer may queue behind many short transactions (200 volant-ipam
// processes at once on a loaded machine queued past 10 s, each holding the
// lock for milliseconds, and failed with "held its write lock for more
// than 10s").
func TestBusyWaitOutlastsAQueue(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "volant.db")
	holder := open(t, path, Options{})
	waiter := open(t, path, Options{BusyTimeout: time.Second})
	// The holder commits one short transaction after another for three
	// busy timeouts, taking the lock back at once each time.
	started, done := make(chan struct{}), make(chan error, 1)
	go func() {
		var once sync.Once
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) {
			if err := holder.Tx(ctx, func(tx *sql.Tx) error {
				once.Do(func() { close(started) })
				_, err := AppendEvent(ctx, tx, "test.holder", "", nil)
				time.Sleep(20 * time.Millisecond)
				return err
			}); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	<-started
	start := time.Now()
	if _, err := waiter.AppendEvent(ctx, "test.waiter", "", nil); err != nil {
		t.Fatalf("a writer queued behind short transactions failed after %s: %v", time.Since(start), err)
	}
	t.Logf("the writer waited %s behind the short transactions", time.Since(start))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestReadIsReadOnly(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "volant.db"), Options{})
	err := s.Read(ctx, func(tx *sql.Tx) error {
		_, err := tx.Exec("INSERT INTO events (type, timestamp) VALUES ('x', 'y')")
		return err
	})
	if err == nil {
		t.Fatal("write through Read succeeded")
	}
}

func TestCanceledContext(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "volant.db"), Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.AppendEvent(ctx, "test.canceled", "", nil)
	if !apierr.Is(err, apierr.Canceled) && apierr.CodeOf(err) != apierr.Canceled {
		t.Fatalf("want CANCELED, got %v (%s)", err, apierr.CodeOf(err))
	}
}

func TestTimeFormat(t *testing.T) {
	tm := time.Date(2026, 11, 28, 23, 5, 7, 123456789, time.FixedZone("x", 3600))
	s := FormatTime(tm)
	if s != "2026-11-28T22:05:07.123Z" {
		t.Fatalf("FormatTime = %s", s)
	}
	back, err := ParseTime(s)
	if err != nil || !back.Equal(tm.Truncate(time.Millisecond)) {
		t.Fatalf("ParseTime(%s) = %v %v", s, back, err)
	}
	if FormatTime(tm.Add(-time.Hour)) > s || FormatTime(tm.Add(time.Millisecond)) < s {
		t.Fatal("text order is not time order")
	}
}

// After the last connection closes, the -wal and -shm files stay (no inode
// churn for the next process), the WAL is empty, and the database file
// alone holds every committed transaction.
func TestCloseCheckpointsAndKeepsWALFiles(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "volant.db")
	s, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if _, err := s.AppendEvent(ctx, "test.n", itoa(i), map[string]int{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	if st, err := os.Stat(path + "-wal"); err != nil || st.Size() == 0 {
		t.Fatalf("while open, the WAL should hold the commits: %v %v", st, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, suffix := range []string{"-wal", "-shm"} {
		if _, err := os.Stat(path + suffix); err != nil {
			t.Fatalf("%s removed at close: %v", suffix, err)
		}
	}
	if st, _ := os.Stat(path + "-wal"); st.Size() != 0 {
		t.Fatalf("WAL holds %d bytes after the last close; want 0 (checkpointed and truncated)", st.Size())
	}
	// The database file on its own, copied away from its WAL, has it all.
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	alone := filepath.Join(t.TempDir(), "copy.db")
	if err := os.WriteFile(alone, b, 0o600); err != nil {
		t.Fatal(err)
	}
	c := open(t, alone, Options{})
	evs, err := c.EventsSince(ctx, 0, 0)
	if err != nil || len(evs) != 20 {
		t.Fatalf("copy of the database file alone: %d events, %v", len(evs), err)
	}
}

// TestSchemaV8KeepsPluginsAndVMs: a database of schema 7 with a plugin, a
// deployment and a VM of it migrates to plugin versions: the plugin is its
// only version, the VM and the deployment run it, and nothing is lost.
func TestSchemaV8KeepsPluginsAndVMs(t *testing.T) {
	ctx := context.Background()
	s := &Store{path: filepath.Join(t.TempDir(), "volant.db"), busyTimeout: DefaultBusyTimeout, log: slog.New(slog.DiscardHandler), maxAge: maxGroupAge}
	s.w = sql.OpenDB(s.connector("immediate", false))
	s.w.SetMaxOpenConns(1)
	s.r = sql.OpenDB(s.connector("deferred", true))
	t.Cleanup(func() { s.Close() })
	if err := s.migrate(ctx, migrations()[:7]); err != nil {
		t.Fatal(err)
	}
	now := FormatTime(time.Now())
	err := s.Tx(ctx, func(tx *sql.Tx) error {
		for _, q := range []string{
			`INSERT INTO plugins (name, version, runtime, manifest, enabled, created_at, updated_at) VALUES ('web', '1.2', 'web', '{"name":"web"}', 1, ?1, ?1)`,
			`INSERT INTO deployments (name, plugin, replicas, current, config, created_at, updated_at) VALUES ('svc', 'web', 1, 1, NULL, ?1, ?1)`,
			`INSERT INTO vms (id, plugin, deployment, state, cpu_cores, memory_mb, created_at, updated_at) VALUES ('svc-1', 'web', 'svc', 'running', 1, 128, ?1, ?1)`,
		} {
			if _, err := tx.Exec(q, now); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.migrate(ctx, migrations()); err != nil {
		t.Fatal(err)
	}
	var versions, vmVersion, depVersion, manifest string
	err = s.Read(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRow(`SELECT group_concat(version), min(manifest) FROM plugin_versions WHERE name = 'web'`).Scan(&versions, &manifest); err != nil {
			return err
		}
		if err := tx.QueryRow(`SELECT plugin_version FROM vms WHERE id = 'svc-1'`).Scan(&vmVersion); err != nil {
			return err
		}
		return tx.QueryRow(`SELECT plugin_version FROM deployments WHERE name = 'svc'`).Scan(&depVersion)
	})
	if err != nil || versions != "1.2" || manifest != `{"name":"web"}` || vmVersion != "1.2" || depVersion != "1.2" {
		t.Fatalf("after the migration: versions %q manifest %q, the VM runs %q, the deployment %q (%v)", versions, manifest, vmVersion, depVersion, err)
	}
	// One update under way per deployment.
	err = s.Tx(ctx, func(tx *sql.Tx) error {
		q := `INSERT INTO rollouts (deployment, revision, from_plugin, from_version, to_plugin, to_version, max_surge, max_unavailable,
			deadline_ms, state, started_at, updated_at) VALUES ('svc', ?, 'web', '1.2', 'web', '1.3', 1, 0, 1000, 'progressing', ?, ?)`
		if _, err := tx.Exec(q, 1, now, now); err != nil {
			return err
		}
		_, err := tx.Exec(q, 2, now, now)
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "UNIQUE") {
		t.Fatalf("two updates under way: %v", err)
	}
}

// TestSchemaV9SealedInputs: a VM's sealed inputs row goes with the VM,
// follows a rename, and a row too short to be a sealed record is refused.
func TestSchemaV9SealedInputs(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "volant.db"), Options{})
	now := FormatTime(time.Now())
	exec := func(q string, args ...any) error {
		return s.Tx(ctx, func(tx *sql.Tx) error { _, err := tx.Exec(q, args...); return err })
	}
	for _, q := range []string{
		`INSERT INTO plugins (name, version, runtime, manifest, enabled, created_at, updated_at) VALUES ('web', '1', 'web', '{}', 1, ?1, ?1)`,
		`INSERT INTO vms (id, plugin, state, cpu_cores, memory_mb, created_at, updated_at) VALUES ('a', 'web', 'running', 1, 128, ?1, ?1)`,
	} {
		if err := exec(q, now); err != nil {
			t.Fatal(err)
		}
	}
	if err := exec(`INSERT INTO vm_inputs (vm, key_id, sealed) VALUES ('a', 'k', ?)`, make([]byte, 28)); err == nil {
		t.Fatal("a 28-byte sealed record was accepted")
	}
	if err := exec(`INSERT INTO vm_inputs (vm, key_id, sealed) VALUES ('nosuch', 'k', ?)`, make([]byte, 64)); err == nil {
		t.Fatal("sealed inputs of no VM were accepted")
	}
	if err := exec(`INSERT INTO vm_inputs (vm, key_id, sealed) VALUES ('a', 'k', ?)`, make([]byte, 64)); err != nil {
		t.Fatal(err)
	}
	count := func() (n int) {
		s.Read(ctx, func(tx *sql.Tx) error { return tx.QueryRow(`SELECT count(*) FROM vm_inputs`).Scan(&n) })
		return n
	}
	if err := exec(`DELETE FROM vms WHERE id = 'a'`); err != nil || count() != 0 {
		t.Fatalf("after the VM's delete: %d rows (%v)", count(), err)
	}
}
