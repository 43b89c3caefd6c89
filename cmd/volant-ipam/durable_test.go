package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/ipam"
)

// A lease and a release are on disk before volant-ipam prints them: the
// process, traced by strace, fsyncs the database's WAL after its last
// write to it and before its first write(2), the result, and strace kills
// it there (SIGKILL injected into
// that write). The database then holds what the process never printed.
// Checked on this test binary and, when the Makefile provides it, on the
// volant-ipam it builds (static, with its own SQLite).
func TestOnDiskBeforePrinted(t *testing.T) {
	strace, err := exec.LookPath("strace")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("strace is missing (scripts/install-deps.sh installs it)")
		}
		t.Skip("strace is missing")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	type binary struct{ path, env string }
	bins := []binary{{self, asCommand + "=1"}}
	if dir := os.Getenv("VOLANT_BIN"); dir != "" {
		bins = append(bins, binary{filepath.Join(dir, "volant-ipam"), ""})
	}
	for _, bin := range bins {
		t.Run(filepath.Base(bin.path), func(t *testing.T) {
			db := filepath.Join(t.TempDir(), "volant.db")
			run := func(args ...string) *exec.Cmd {
				cmd := exec.Command(bin.path, append([]string{"--db", db}, args...)...)
				cmd.Env = append(os.Environ(), bin.env)
				return cmd
			}
			// killedAtPrint runs the verb under strace, killed at its
			// first write, and checks that the WAL was synced before.
			killedAtPrint := func(args ...string) {
				t.Helper()
				trace := filepath.Join(t.TempDir(), "trace")
				cmd := run(args...)
				cmd.Args = append([]string{strace, "-f", "-qq", "-y", "-o", trace,
					"-e", "trace=fsync,fdatasync,write,pwrite64", "-e", "inject=write:signal=KILL:when=1", "--"}, cmd.Args...)
				cmd.Path = strace
				out, err := cmd.Output()
				if len(out) > 0 || err == nil {
					t.Fatalf("%v: printed %q (%v): strace did not kill it at its first write", args, out, err)
				}
				b, err := os.ReadFile(trace)
				if err != nil {
					t.Fatal(err)
				}
				wal, err := filepath.EvalSymlinks(db + "-wal")
				if err != nil {
					t.Fatal(err)
				}
				// The WAL's last write before the print must be followed
				// by a sync of it.
				written, dirty := false, false
				for _, line := range strings.Split(string(b), "\n") {
					onWAL := strings.Contains(line, "<"+wal+">")
					switch {
					case onWAL && strings.Contains(line, "pwrite64("):
						written, dirty = true, true
					case onWAL && (strings.Contains(line, "fsync(") || strings.Contains(line, "fdatasync(")):
						dirty = false
					case strings.Contains(line, "write(1<"):
						if !written || dirty {
							t.Fatalf("%v: printed before what it wrote to the WAL was synced:\n%s", args, b)
						}
						return
					}
				}
				t.Fatalf("%v: the trace shows no write to stdout:\n%s", args, b)
			}

			// The database exists, as on a host.
			if out, err := run("list").CombinedOutput(); err != nil {
				t.Fatalf("creating the database: %v: %s", err, out)
			}
			killedAtPrint("lease", "--vm", "web1")
			st := openStore(t, db)
			ctx := context.Background()
			if l, err := ipam.Get(ctx, st, "web1"); err != nil || l.Validate() != nil {
				t.Fatalf("the lease killed as it printed is not in the database: %+v, %v", l, err)
			}
			killedAtPrint("release", "--vm", "web1")
			if _, err := ipam.Get(ctx, st, "web1"); !apierr.Is(err, apierr.NotFound) {
				t.Fatalf("the release killed as it printed left the lease: %v", err)
			}
		})
	}
}
