// Package badinput is Volant's bad-input corpus: requests a careless or
// hostile user sends, each with the one outcome allowed, a clear error and
// no change. CI runs it with the rest of `go test ./...`; a fixed bug
// stays fixed because its case stays here.
//
// Cases are JSON Lines files, one case per line ('#' starts a comment line;
// blank lines are ignored), decoded strictly: a misspelled field fails the
// test instead of being ignored. Each directory holds one kind of case and
// has its own runner:
//
//	stdio/<command>.jsonl   runs bin/<command> (stdio_test.go)
//	http/volantd.jsonl      sends requests to one volantd (http_test.go)
//
// A stdio case is
//
//	{"name":"...", "args":[...], "stdin":"...", "code":"USAGE",
//	 "files":{"m.json":"..."}, "exec":["m.json"],
//	 "setup":[{"args":[...],"stdin":"..."}], "netns":false, "issue":"21"}
//
// The command runs in a scratch directory $TMP (its working directory;
// "$TMP" in args, stdin and files is replaced by its path) holding only
// files (those in exec executable), with VOLANT_DB=$TMP/volant.db, VOLANT_DATA_DIR=$TMP/data and
// VOLANT_RUN_ROOT=$TMP/run. setup steps run first and must succeed. The
// case passes when the command exits with the exit status of code, writes
// nothing on stdout, ends stderr with one JSON error object carrying code,
// and leaves $TMP's files as setup left them (names, modes, contents;
// empty directories aside). With
// "netns":true (always for volant-net) the steps run inside a network
// namespace the test creates, whose links, addresses, nftables ruleset and
// ip_forward must not change either. "issue" names where the case comes from.
//
// An http case is
//
//	{"name":"...", "method":"POST", "path":"/api/v1/plugins",
//	 "content_type":"application/json", "accept":"...", "body":"...",
//	 "auth":"", "status":403, "code":"PERMISSION_DENIED",
//	 "files":{...}, "dirs":[...], "fifos":[...], "links":{"name":"target"},
//	 "body_bytes":0, "header_bytes":0, "server_answers":false,
//	 "issue":"21"}
//
// One volantd runs for all of them in a scratch directory $TMP (no
// bridge, no agent endpoint; the API on a unix socket and on loopback TCP
// over TLS with a token) with one plugin installed and named tokens made
// by root on the socket; files, directories, FIFOs and
// symlinks a case names are made under $TMP before its request and
// removed after it; "$TMP" and "$HTTP" (a server whose /blob matches no
// checksum) in path, body, files and link targets are replaced. auth is
// how the request is authenticated: "" (volantd's own token, an admin's,
// in the Authorization header), "none", "wrong", "malformed" (Basic),
// "query" (in the query string), "query+header" (both), "viewer" and
// "operator" (named tokens of those roles), "expired", "revoked", "plain"
// (plain HTTP to the TLS port). body_bytes pads the body with spaces to
// that size (keep it within a few hundred KiB of the 1 MiB limit: volantd
// answers TOO_LARGE and closes the connection, and a client still writing
// megabytes then sees a reset, not the answer); header_bytes adds an
// X-Pad header that long. The case passes
// when the answer has its status, is a JSON error object with its code and
// a message (with "server_answers", no code: Go's HTTP server refuses the
// request before volantd reads it, in plain text), and the
// plugins, VMs, deployments and volumes the API lists, the last event's
// ID (audit events aside) and the files and directories under $TMP/data
// (the database aside) are as before; no audit event records the call as
// done, and a viewer's or operator's refused change is audited under the
// token's name with PERMISSION_DENIED.
//
// To add a case, append a line; to cover a new command, add a file named
// after it. The run ends by printing on stderr the number of cases and how
// many ended in a clear error with no change.
package badinput

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
)

// readCases decodes every line of the JSON Lines files matching pattern
// into values of T, strictly, keyed by "<file>:<line>".
func readCases[T any](t *testing.T, pattern string) []located[T] {
	t.Helper()
	files, err := filepath.Glob(pattern)
	if err != nil || len(files) == 0 {
		t.Fatalf("no case files match %s", pattern)
	}
	sort.Strings(files)
	var out []located[T]
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(nil, 1<<20)
		for n := 1; sc.Scan(); n++ {
			line := strings.TrimSpace(sc.Text())
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			var c T
			dec := json.NewDecoder(strings.NewReader(line))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&c); err != nil || dec.More() {
				t.Fatalf("%s:%d: not one case object: %v", f, n, err)
			}
			out = append(out, located[T]{File: f, Line: n, Case: c})
		}
		if err := sc.Err(); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
	return out
}

type located[T any] struct {
	File string
	Line int
	Case T
}

// tally counts the cases run and those that ended as they must, for the
// summary TestMain prints.
var tally struct{ cases, clear atomic.Int64 }

func TestMain(m *testing.M) {
	code := m.Run()
	if n := tally.cases.Load(); n > 0 {
		fmt.Fprintf(os.Stderr, "badinput: %d cases, %d ended in a clear error with no change\n", n, tally.clear.Load())
	}
	os.Exit(code)
}
