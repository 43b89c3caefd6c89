package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/cli/clitest"
	"github.com/volantvm/volant/lib/store"
	"github.com/volantvm/volant/lib/store/storetest"
)

// damagedDB writes a real database with 300 plugins, closes it and
// garbles a page of the plugins table in the middle.
func damagedDB(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	db := filepath.Join(t.TempDir(), "volant.db")
	st, err := store.Open(ctx, db, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = st.Tx(ctx, func(tx *sql.Tx) error {
		for i := 0; i < 300; i++ {
			_, err := tx.Exec(`INSERT INTO plugins (name, version, runtime, manifest, enabled, created_at, updated_at) VALUES (?, '1', ?, ?, 1, '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z')`,
				fmt.Sprintf("p%03d", i), fmt.Sprintf("p%03d", i), fmt.Sprintf(`{"pad":%q}`, strings.Repeat("x", 200)))
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	pages := storetest.TablePages(t, db, "plugins")
	storetest.Garble(t, db, pages[len(pages)/2])
	return db
}

// TestDamagedDatabaseIsRefused: volantd does not serve a damaged
// database, an empty file or a file that is not a database: it exits with
// DATA_CORRUPT (13) and the recovery steps, before it listens or touches
// the host, and leaves the file as it was. volantd check says the same
// offline, and ok for an intact database.
func TestDamagedDatabaseIsRefused(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "volant.db")
	os.WriteFile(empty, nil, 0o600)
	junk := filepath.Join(t.TempDir(), "volant.db")
	os.WriteFile(junk, []byte(strings.Repeat("not sqlite\n", 500)), 0o600)
	for name, db := range map[string]string{"damaged": damagedDB(t), "empty": empty, "junk": junk} {
		t.Run(name, func(t *testing.T) {
			before, _ := os.ReadFile(db)
			for _, args := range [][]string{
				safe(t, "--db", db, "--socket", filepath.Join(t.TempDir(), "s.sock")),
				safe(t, "--db", db, "--socket", filepath.Join(t.TempDir(), "s.sock"), "--integrity-check"),
				{"check", "--db", db},
				{"check", "--db", db, "--full"},
			} {
				res := clitest.Run(t, run, "", nil, args...)
				if res.Code != 13 || !strings.Contains(res.Stderr, `"code":"DATA_CORRUPT"`) || !strings.Contains(res.Stderr, "recovery") {
					t.Errorf("%v: exit %d, stderr %s", args, res.Code, res.Stderr)
				}
				if res.Stdout != "" {
					t.Errorf("%v: stdout %s", args, res.Stdout)
				}
			}
			if after, _ := os.ReadFile(db); string(after) != string(before) {
				t.Errorf("the database file changed")
			}
		})
	}
	ok := filepath.Join(t.TempDir(), "volant.db")
	st, err := store.Open(context.Background(), ok, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	res := clitest.Run(t, run, "", nil, "check", "--db", ok, "--full")
	var out struct {
		Kind  string `json:"kind"`
		DB    string `json:"db"`
		Check string `json:"check"`
		OK    bool   `json:"ok"`
	}
	if res.Code != 0 || json.Unmarshal([]byte(res.Stdout), &out) != nil || !out.OK || out.Check != "integrity_check" || out.DB != ok {
		t.Fatalf("check of an intact database: %+v", res)
	}
	res = clitest.Run(t, run, "", nil, "check", "--db", filepath.Join(t.TempDir(), "none.db"))
	if res.Code != apierr.NotFound.ExitCode() {
		t.Fatalf("check of no file: %+v", res)
	}
}
