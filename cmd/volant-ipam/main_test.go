package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/cli/clitest"
	"github.com/volantvm/volant/lib/store"
)

var (
	timeRE  = regexp.MustCompile(`"leased_at":"[^"]+"`)
	buildRE = regexp.MustCompile(`"build":"[^"]+"`)
)

// normalize replaces what differs between runs: times, the build, the
// temporary database path.
func normalize(s, db string) string {
	s = timeRE.ReplaceAllString(s, `"leased_at":"<time>"`)
	s = buildRE.ReplaceAllString(s, `"build":"<build>"`)
	// Every migration bumps the schema version; the golden holds "the
	// latest", so a version that is not this build's latest still shows.
	s = strings.ReplaceAll(s, fmt.Sprintf(`"schema_version":%d}`, store.LatestSchemaVersion()), `"schema_version":"<latest>"}`)
	return strings.ReplaceAll(s, filepath.Dir(db), "$TMP")
}

type step struct {
	stdin string
	env   map[string]string
	args  []string
}

func TestContract(t *testing.T) {
	lease := func(vm string, extra ...string) step {
		return step{args: append([]string{"lease", "--vm", vm}, extra...)}
	}
	for _, tc := range []struct {
		name  string
		setup []step
		step
		code int
	}{
		{name: "lease", step: lease("web1"), code: 0},
		{name: "lease-second", setup: []step{lease("web1")}, step: lease("web2")},
		{name: "lease-stdin", step: step{stdin: `{"version":"1","vm":"web1","subnet":"10.0.0.0/24","gateway":"10.0.0.254","range_start":"10.0.0.10","range_end":"10.0.0.20"}`, args: []string{"lease"}}},
		{name: "lease-flags-override-stdin", step: step{stdin: `{"vm":"a","subnet":"10.0.0.0/24"}`, args: []string{"lease", "--vm", "b", "--subnet", "10.1.0.0/16"}}},
		{name: "lease-env", step: step{env: map[string]string{"VOLANT_SUBNET": "10.2.0.0/16", "VOLANT_RANGE_START": "10.2.3.4", "VOLANT_RANGE_END": "10.2.3.9"}, args: []string{"lease", "--vm", "web1"}}},
		{name: "lease-stdin-overrides-env", step: step{stdin: `{"vm":"web1","subnet":"10.3.0.0/24"}`, env: map[string]string{"VOLANT_SUBNET": "10.2.0.0/16"}, args: []string{"lease"}}},
		{name: "lease-conflict", setup: []step{lease("web1")}, step: lease("web1", "--subnet", "10.0.0.0/24"), code: 5},
		{name: "lease-exhausted", setup: []step{lease("a", "--range-end", "192.168.127.101"), lease("b", "--range-end", "192.168.127.101")}, step: lease("c", "--range-end", "192.168.127.101"), code: 6},
		{name: "lease-bad-name", step: lease("Web1"), code: 3},
		{name: "lease-bad-subnet", step: lease("web1", "--subnet", "fd00::/64"), code: 3},
		{name: "lease-bad-gateway", step: lease("web1", "--gateway", "10.0.0.1"), code: 3},
		{name: "lease-bad-range", step: lease("web1", "--range-start", "192.168.127.200", "--range-end", "192.168.127.100"), code: 3},
		{name: "lease-no-vm", step: step{args: []string{"lease"}}, code: 2},
		{name: "lease-unknown-field", step: step{stdin: `{"vm":"web1","subnt":"10.0.0.0/24"}`, args: []string{"lease"}}, code: 3},
		{name: "lease-positional", step: step{args: []string{"lease", "web1"}}, code: 2},
		{name: "release", setup: []step{lease("web1")}, step: step{args: []string{"release", "--vm", "web1"}}},
		{name: "release-none", step: step{args: []string{"release", "--vm", "web1"}}},
		{name: "release-stdin", setup: []step{lease("web1")}, step: step{stdin: `{"vm":"web1"}`, args: []string{"release"}}},
		{name: "show", setup: []step{lease("web1"), lease("web2")}, step: step{args: []string{"show", "--vm", "web2"}}},
		{name: "show-missing", step: step{args: []string{"show", "--vm", "web1"}}, code: 4},
		{name: "show-wrong-kind", step: step{stdin: `{"version":"1","kind":"ipam.list","leases":[]}`, args: []string{"show"}}, code: 3},
		{name: "list-empty", step: step{args: []string{"list"}}},
		{name: "list", setup: []step{lease("c"), lease("a"), lease("b", "--subnet", "10.0.0.0/24")}, step: step{args: []string{"list"}}},
		{name: "gc-array", setup: []step{lease("a"), lease("b"), lease("c")}, step: step{stdin: `["b", "gone"]`, args: []string{"gc"}}},
		{name: "gc-keep", setup: []step{lease("a"), lease("b"), lease("c")}, step: step{args: []string{"gc", "--keep", "a", "--keep", "c"}}},
		{name: "gc-object-dry-run", setup: []step{lease("a"), lease("b")}, step: step{stdin: `{"keep":["a"],"dry_run":true}`, args: []string{"gc"}}},
		{name: "gc-empty-array", setup: []step{lease("a"), lease("b")}, step: step{stdin: `[]`, args: []string{"gc"}}},
		{name: "gc-no-keep", setup: []step{lease("a")}, step: step{args: []string{"gc"}}, code: 2},
		{name: "gc-bad-name", setup: []step{lease("a")}, step: step{stdin: `["a","B"]`, args: []string{"gc"}}, code: 3},
		{name: "gc-not-array", step: step{stdin: `["a",1]`, args: []string{"gc"}}, code: 3},
		{name: "gc-object-no-keep", step: step{stdin: `{"dry_run":true}`, args: []string{"gc"}}, code: 3},
		{name: "version", step: step{args: []string{"version"}}},
		{name: "no-verb", step: step{}, code: 2},
		{name: "db-parent-is-file", step: step{args: []string{"--db", "$TMP/file/volant.db", "list"}}, code: 9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			db := filepath.Join(dir, "volant.db")
			os.WriteFile(filepath.Join(dir, "file"), nil, 0o600)
			call := func(s step) clitest.Result {
				env := map[string]string{"VOLANT_DB": db}
				for k, v := range s.env {
					env[k] = v
				}
				args := make([]string, len(s.args))
				for i, a := range s.args {
					args[i] = strings.ReplaceAll(a, "$TMP", dir)
				}
				return clitest.Run(t, run, s.stdin, env, args...)
			}
			for _, s := range tc.setup {
				if r := call(s); r.Code != 0 {
					t.Fatalf("setup %v: %s", s.args, r.Stderr)
				}
			}
			before := snapshot(t, db)
			r := call(tc.step)
			if r.Code != tc.code {
				t.Fatalf("exit %d, want %d; stdout %s stderr %s", r.Code, tc.code, r.Stdout, r.Stderr)
			}
			if tc.code == 0 {
				if r.Stderr != "" {
					t.Fatalf("stderr must be empty on success: %s", r.Stderr)
				}
				clitest.Golden(t, tc.name, normalize(r.Stdout, db))
				return
			}
			if r.Stdout != "" {
				t.Fatalf("stdout must be empty on failure: %s", r.Stdout)
			}
			var e apierr.Error
			if err := json.Unmarshal([]byte(r.Stderr), &e); err != nil || e.Code.ExitCode() != tc.code {
				t.Fatalf("stderr is not an error object of exit %d: %q", tc.code, r.Stderr)
			}
			clitest.Golden(t, tc.name+".err", normalize(r.Stderr, db))
			if after := snapshot(t, db); after != before {
				t.Fatalf("a failed run changed the database:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// snapshot summarizes what is in the database. A missing file reads as an
// empty database: any verb may create the database, as CNI plugins create
// their data directory.
func snapshot(t *testing.T, db string) string {
	t.Helper()
	if _, err := os.Stat(db); err != nil {
		return " | "
	}
	st, err := store.Open(context.Background(), db, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var leases, events string
	err = st.Read(context.Background(), func(tx *sql.Tx) error {
		return tx.QueryRow(`SELECT
			(SELECT coalesce(group_concat(vm_id || '=' || ip || '/' || mac, ' '), '') FROM (SELECT * FROM ip_leases ORDER BY ip_num)),
			(SELECT coalesce(group_concat(id || ':' || type || ':' || resource_id, ' '), '') FROM events)`).Scan(&leases, &events)
	})
	if err != nil {
		t.Fatal(err)
	}
	return leases + " | " + events
}

// lease is idempotent: the second run prints exactly what the first did.
func TestLeaseTwicePrintsTheSame(t *testing.T) {
	env := map[string]string{"VOLANT_DB": filepath.Join(t.TempDir(), "volant.db")}
	a := clitest.Run(t, run, "", env, "lease", "--vm", "web1")
	b := clitest.Run(t, run, "", env, "lease", "--vm", "web1")
	if a.Code != 0 || a.Stdout != b.Stdout {
		t.Fatalf("first %q (%s)\nsecond %q", a.Stdout, a.Stderr, b.Stdout)
	}
}

// A lease piped into release or show names the VM: the chaining contract.
func TestPipedLease(t *testing.T) {
	env := map[string]string{"VOLANT_DB": filepath.Join(t.TempDir(), "volant.db")}
	l := clitest.Run(t, run, "", env, "lease", "--vm", "web1")
	show := clitest.Run(t, run, l.Stdout, env, "show")
	if show.Code != 0 || show.Stdout != l.Stdout {
		t.Fatalf("show of a piped lease: %s %s", show.Stdout, show.Stderr)
	}
	mismatch := clitest.Run(t, run, strings.Replace(l.Stdout, `"kind":"ipam.lease",`, `"kind":"ipam.lease","vm_extra":1,`, 1), env, "release")
	if mismatch.Code != 3 {
		t.Fatalf("unknown field inside a piped lease: %d %s", mismatch.Code, mismatch.Stderr)
	}
	rel := clitest.Run(t, run, l.Stdout, env, "release")
	if rel.Code != 0 || !strings.Contains(rel.Stdout, `"released":true`) {
		t.Fatalf("release of a piped lease: %s %s", rel.Stdout, rel.Stderr)
	}
	// --vm overrides the piped lease.
	other := clitest.Run(t, run, l.Stdout, env, "release", "--vm", "web2")
	if other.Code != 0 || !strings.Contains(other.Stdout, `"vm":"web2","released":false`) {
		t.Fatalf("--vm over a piped lease: %s %s", other.Stdout, other.Stderr)
	}
}

// Invalid requests are refused before the database is opened, so they do
// not even create it.
func TestInvalidRequestCreatesNothing(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "sub", "volant.db")
	env := map[string]string{"VOLANT_DB": db}
	for _, args := range [][]string{
		{"lease", "--vm", "Web1"},
		{"lease", "--vm", "web1", "--subnet", "10.0.0.0/31"},
		{"release", "--vm", "a/b"},
		{"show"},
		{"gc", "--keep", "UPPER"},
		{"gc"},
	} {
		if r := clitest.Run(t, run, "", env, args...); r.Code == 0 {
			t.Fatalf("%v succeeded", args)
		}
	}
	if _, err := os.Stat(filepath.Dir(db)); !os.IsNotExist(err) {
		t.Fatalf("invalid requests created %s", filepath.Dir(db))
	}
}

func TestNewerDatabaseRefused(t *testing.T) {
	db := filepath.Join(t.TempDir(), "volant.db")
	st, err := store.Open(context.Background(), db, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st.Tx(context.Background(), func(tx *sql.Tx) error { _, err := tx.Exec("PRAGMA user_version = 99"); return err })
	st.Close()
	r := clitest.Run(t, run, "", map[string]string{"VOLANT_DB": db}, "list")
	if r.Code != 7 || !strings.Contains(r.Stderr, "NOT_SUPPORTED") {
		t.Fatalf("exit %d: %s", r.Code, r.Stderr)
	}
}

// --db beats VOLANT_DB.
func TestDBFlag(t *testing.T) {
	dir := t.TempDir()
	flagDB, envDB := filepath.Join(dir, "flag.db"), filepath.Join(dir, "env.db")
	r := clitest.Run(t, run, "", map[string]string{"VOLANT_DB": envDB}, "--db", flagDB, "lease", "--vm", "web1")
	if r.Code != 0 {
		t.Fatal(r.Stderr)
	}
	if _, err := os.Stat(flagDB); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(envDB); err == nil {
		t.Fatal("VOLANT_DB used although --db was given")
	}
	// The option also works after the verb.
	if r := clitest.Run(t, run, "", nil, "show", "--vm", "web1", "--db", flagDB); r.Code != 0 {
		t.Fatal(r.Stderr)
	}
}
