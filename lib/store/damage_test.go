package store

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/store/storetest"
)

// TestEmptyFileIsNotANewDatabase: an existing zero-length file is refused
// and left as it is; a new database is never seen empty (it is made whole
// under another name and linked into place).
func TestEmptyFileIsNotANewDatabase(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db := filepath.Join(dir, "volant.db")
	if err := os.WriteFile(db, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(ctx, db, Options{})
	if !apierr.Is(err, apierr.DataCorrupt) {
		t.Fatalf("an empty file: %v (%s)", err, apierr.CodeOf(err))
	}
	if st, _ := os.Stat(db); st.Size() != 0 {
		t.Fatalf("the empty file was written: %d bytes", st.Size())
	}
	t.Logf("%v %v", err, apierr.From(err).Details)

	fresh := filepath.Join(dir, "new", "volant.db")
	s := open(t, fresh, Options{})
	if v, err := s.SchemaVersion(ctx); err != nil || v == 0 {
		t.Fatalf("schema version %d: %v", v, err)
	}
	s.Close()
	var names []string
	ents, _ := os.ReadDir(filepath.Dir(fresh))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	if got := strings.Join(names, " "); got != "volant.db volant.db-shm volant.db-wal" {
		t.Fatalf("files beside a new database: %s", got)
	}
	if st, _ := os.Stat(fresh); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode())
	}
}

// damagedDB makes a database with 300 plugins and 3000 events, closes it
// and garbles one leaf page of table (the middle one).
func damagedDB(t *testing.T, table string) string {
	t.Helper()
	ctx := context.Background()
	db := filepath.Join(t.TempDir(), "volant.db")
	s, err := Open(ctx, db, Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Tx(ctx, func(tx *sql.Tx) error {
		for i := 0; i < 300; i++ {
			m := fmt.Sprintf(`{"name":"p%03d","pad":%q}`, i, strings.Repeat("x", 200))
			if _, err := tx.Exec(`INSERT INTO plugins (name, version, runtime, manifest, enabled, created_at, updated_at) VALUES (?, '1', ?, ?, 1, '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z')`,
				fmt.Sprintf("p%03d", i), fmt.Sprintf("p%03d", i), m); err != nil {
				return err
			}
		}
		for i := 0; i < 3000; i++ {
			if _, err := AppendEvent(ctx, tx, "test.event", fmt.Sprintf("r%d", i), map[string]int{"i": i}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	pages := storetest.TablePages(t, db, table)
	if len(pages) < 3 {
		t.Fatalf("table %s has %d leaf pages; the test needs more", table, len(pages))
	}
	storetest.Garble(t, db, pages[len(pages)/2])
	return db
}

func countEvents(t *testing.T, db string) int {
	t.Helper()
	s, err := Open(context.Background(), db, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var n int
	if err := s.r.QueryRow(`SELECT count(*) FROM events WHERE id < 100`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestDamagedDatabase: a database with a damaged page fails the start-up
// check (quick or full) with DATA_CORRUPT, its problems and the recovery
// steps; opened without the check, the first read that meets the damage
// is DATA_CORRUPT (not INTERNAL), and from then on writes are refused
// instead of landing in a damaged file.
func TestDamagedDatabase(t *testing.T) {
	ctx := context.Background()
	t.Run("start-up check", func(t *testing.T) {
		for _, check := range []Check{QuickCheck, FullCheck} {
			db := damagedDB(t, "plugins")
			_, err := Open(ctx, db, Options{Check: check})
			if !apierr.Is(err, apierr.DataCorrupt) {
				t.Fatalf("%s: %v (%s)", check, err, apierr.CodeOf(err))
			}
			d := apierr.From(err).Details
			if d["problems"] == nil || d["recovery"] == nil || d["db"] != db {
				t.Fatalf("%s: details %v", check, d)
			}
			if err := Verify(ctx, db, check); !apierr.Is(err, apierr.DataCorrupt) {
				t.Fatalf("Verify %s: %v", check, err)
			}
		}
	})
	t.Run("reads then writes", func(t *testing.T) {
		db := damagedDB(t, "plugins")
		s := open(t, db, Options{})
		before := countEvents(t, db)
		err := s.Read(ctx, func(tx *sql.Tx) error {
			rows, err := tx.Query(`SELECT name, manifest FROM plugins ORDER BY rowid`)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
			}
			return rows.Err()
		})
		if !apierr.Is(err, apierr.DataCorrupt) {
			t.Fatalf("reading the damaged table: %v (%s)", err, apierr.CodeOf(err))
		}
		_, err = s.AppendEvent(ctx, "test.after", "x", nil)
		if !apierr.Is(err, apierr.DataCorrupt) {
			t.Fatalf("a write after the damage was seen: %v", err)
		}
		if after := countEvents(t, db); after != before {
			t.Fatalf("events %d → %d", before, after)
		}
	})
	t.Run("events", func(t *testing.T) {
		db := damagedDB(t, "events")
		s := open(t, db, Options{})
		evs, err := s.EventsSince(ctx, 0, 0)
		if !apierr.Is(err, apierr.DataCorrupt) {
			t.Fatalf("events since 0: %d events, %v (%s)", len(evs), err, apierr.CodeOf(err))
		}
	})
	t.Run("intact", func(t *testing.T) {
		db := filepath.Join(t.TempDir(), "volant.db")
		open(t, db, Options{}).Close()
		for _, check := range []Check{QuickCheck, FullCheck} {
			if err := Verify(ctx, db, check); err != nil {
				t.Fatal(err)
			}
			s, err := Open(ctx, db, Options{Check: check})
			if err != nil {
				t.Fatal(err)
			}
			s.Close()
		}
		if err := Verify(ctx, filepath.Join(t.TempDir(), "none.db"), QuickCheck); !apierr.Is(err, apierr.NotFound) {
			t.Fatalf("a missing file: %v", err)
		}
	})
}
