package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/mattn/go-sqlite3"

	"github.com/volantvm/volant/lib/apierr"
)

// Check names one of SQLite's checks of a database file.
type Check string

const (
	// NoCheck skips the check.
	NoCheck Check = ""
	// QuickCheck is PRAGMA quick_check: every page and record is read and
	// its structure checked, in time linear in the file's size (volantd
	// runs it at every start).
	QuickCheck Check = "quick_check"
	// FullCheck is PRAGMA integrity_check and foreign_key_check: also
	// whether every index matches its table (slower; volantd
	// --integrity-check, volantd check --full).
	FullCheck Check = "integrity_check"
)

// Recovery is what an operator does with a damaged database; DATA_CORRUPT
// errors carry it as details.recovery.
func Recovery(path string) []string {
	return []string{
		"stop volantd (the VMs keep running) and keep a copy of the damaged files: cp -a " + path + " " + path + "-wal " + path + "-shm <somewhere safe>/",
		"restore the latest backup (`sqlite3 " + path + " \".backup /backup/volant.db\"` makes one while volantd runs), " +
			"or salvage what SQLite can still read: sqlite3 " + path + " .recover | sqlite3 " + path + ".recovered",
		"check the result offline: volantd check --db <file> --full",
		"move it into place (as " + path + ", without the old -wal and -shm files) and start volantd: it adopts the VMs that still run and reconciles the rest",
	}
}

// corrupt is the DATA_CORRUPT error for the database at path.
func corrupt(path, what string, problems []string, cause error) *apierr.Error {
	msg := fmt.Sprintf("database %s is damaged (%s); it will not be used until it is restored: see details.recovery", path, what)
	e := &apierr.Error{Code: apierr.DataCorrupt, Message: msg, Err: cause,
		Details: map[string]any{"db": path, "recovery": Recovery(path)}}
	if len(problems) > 0 {
		e.With("problems", problems)
	}
	return e
}

// emptyFile is the answer for an existing database file of zero bytes:
// Open never leaves one (it makes a new database whole under another name
// and links it into place), so it is a copy cut short or a mistake, and
// treating it as a new, empty database would forget every VM and lease.
func emptyFile(path string) error {
	return corrupt(path, "the file is empty: it is not a database volantd made", nil, nil).
		With("hint", "if this host never had a database, remove the empty file and volantd makes a new one; otherwise restore the backup")
}

// isCorrupt reports whether err is SQLite finding a damaged file.
func isCorrupt(err error) bool {
	var se sqlite3.Error
	return errors.As(err, &se) && (se.Code == sqlite3.ErrCorrupt || se.Code == sqlite3.ErrNotADB)
}

// Verify runs check on the database file at path without changing it
// (no migration) and returns DATA_CORRUPT listing what it found, NOT_FOUND
// when there is no file, or nil. `volantd check` is this, offline.
func Verify(ctx context.Context, path string, check Check) error {
	if check == NoCheck {
		return nil
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	st, err := os.Stat(abs)
	if errors.Is(err, os.ErrNotExist) {
		return apierr.New(apierr.NotFound, "there is no database at %s", abs).With("db", abs)
	}
	if err != nil {
		return wrapOSErr(fmt.Errorf("checking the database: %w", err), abs)
	}
	if st.Size() == 0 {
		return emptyFile(abs)
	}
	s := &Store{path: abs, busyTimeout: DefaultBusyTimeout}
	db := sql.OpenDB(s.connector("deferred", true))
	defer db.Close()
	db.SetMaxOpenConns(1)
	problems, err := runCheck(ctx, db, check)
	if err != nil {
		if isCorrupt(err) {
			return corrupt(abs, string(check)+": "+err.Error(), []string{err.Error()}, err)
		}
		return s.dbErr(ctx, "checking the database", err)
	}
	if len(problems) > 0 {
		return corrupt(abs, fmt.Sprintf("%s found %d problem(s)", check, len(problems)), problems, nil)
	}
	return nil
}

type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// runCheck runs check (and, for FullCheck, the foreign key check) and
// returns what it reports other than "ok" (at most 100 lines).
func runCheck(ctx context.Context, q queryer, check Check) ([]string, error) {
	var problems []string
	rows, err := q.QueryContext(ctx, fmt.Sprintf("PRAGMA %s(100)", check))
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var msg string
		if err := rows.Scan(&msg); err != nil {
			rows.Close()
			return nil, err
		}
		if msg != "ok" {
			problems = append(problems, msg)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if check != FullCheck {
		return problems, nil
	}
	fk, err := q.QueryContext(ctx, "PRAGMA foreign_key_check")
	if err != nil {
		return nil, err
	}
	defer fk.Close()
	for fk.Next() {
		var table, parent string
		var rowid sql.NullInt64
		var idx int
		if err := fk.Scan(&table, &rowid, &parent, &idx); err != nil {
			return nil, err
		}
		problems = append(problems, fmt.Sprintf("%s row %d: missing %s", table, rowid.Int64, parent))
	}
	return problems, fk.Err()
}

// Check runs the full check on the open database: nil, or DATA_CORRUPT
// listing the problems.
func (s *Store) Check(ctx context.Context) error {
	var problems []string
	err := s.Read(ctx, func(tx *sql.Tx) error {
		var err error
		problems, err = runCheck(ctx, tx, FullCheck)
		return err
	})
	if err != nil {
		return err
	}
	if len(problems) > 0 {
		return s.damage(corrupt(s.path, fmt.Sprintf("%s found %d problem(s): %s", FullCheck, len(problems), strings.Join(problems, "; ")), problems, nil))
	}
	return nil
}

// damage records that the database is damaged: from now on every
// transaction is refused with e, so nothing more is written into a
// damaged file. It returns e.
func (s *Store) damage(e *apierr.Error) *apierr.Error {
	s.damaged.CompareAndSwap(nil, e)
	return e
}

// refused is the error for a transaction on a damaged database, or nil.
func (s *Store) refused() error {
	if e := s.damaged.Load(); e != nil {
		return &apierr.Error{Code: e.Code, Message: e.Message, Details: e.Details}
	}
	return nil
}

// seen converts an error a transaction met into DATA_CORRUPT (and
// records the damage) when SQLite found the file damaged; other errors
// pass as they are.
func (s *Store) seen(err error) error {
	if err == nil || !isCorrupt(err) {
		return err
	}
	return s.damage(corrupt(s.path, err.Error(), nil, err))
}
