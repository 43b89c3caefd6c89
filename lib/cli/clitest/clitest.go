// Package clitest runs a command's run function in memory and compares its
// output with golden files, for the contract tests of every volant-* command.
//
// Golden files live in the calling package's testdata/ and are rewritten only
// when the tests run with -update:
//
//	go test ./cmd/volant-manifest -run TestContract -update
package clitest

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/volantvm/volant/lib/cli"
)

var update = flag.Bool("update", false, "rewrite golden files with the current output")

// Result is what one command run produced.
type Result struct {
	Stdout string
	Stderr string
	Code   int
}

// Run calls run with args and stdin, an environment from env (nil: empty),
// and returns its output and exit status as cli.Main would produce them.
func Run(t testing.TB, run func(context.Context, *cli.Env) error, stdin string, env map[string]string, args ...string) Result {
	t.Helper()
	var out, errb bytes.Buffer
	e := &cli.Env{
		Args:   args,
		Stdin:  strings.NewReader(stdin),
		Stdout: &out,
		Stderr: &errb,
		Getenv: func(k string) string { return env[k] },
	}
	code := cli.Exit(e, run(context.Background(), e))
	return Result{Stdout: out.String(), Stderr: errb.String(), Code: code}
}

// Golden compares got with testdata/<name>.golden, or rewrites it under -update.
func Golden(t testing.TB, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading golden file (run with -update to create it): %v", err)
	}
	if diff := cmp.Diff(lines(string(want)), lines(got)); diff != "" {
		t.Fatalf("output differs from %s (-want +got; run with -update if the change is intended):\n%s", path, diff)
	}
}

// lines splits output for a line-by-line diff; a one-line JSON result is
// split at its fields, so the diff points at the field that changed.
func lines(s string) []string {
	if !strings.Contains(strings.TrimSuffix(s, "\n"), "\n") {
		return strings.SplitAfter(s, `,"`)
	}
	return strings.SplitAfter(s, "\n")
}
