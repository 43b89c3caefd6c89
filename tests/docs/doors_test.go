package docs

import (
	"go/scanner"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// maxDoorLines bounds the code of a command's main.go: a door builds the
// process's context and calls one lib/ package (issue 14, STYLE.md "The
// house"). The package comment, the command's man page, does not count.
const maxDoorLines = 60

// TestDoorsAreThin fails when a cmd/*/main.go holds more than
// maxDoorLines lines of code (lines with a token that is not a comment):
// a command's verbs, their flags and their request parsing belong in its
// lib/ package, where volantd, tests and other commands can import them.
func TestDoorsAreThin(t *testing.T) {
	mains, err := filepath.Glob(filepath.Join("..", "..", "cmd", "*", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	if len(mains) < 5 {
		t.Fatalf("found only %d cmd/*/main.go", len(mains))
	}
	for _, p := range mains {
		src, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Base(filepath.Dir(p))
		n, err := codeLines(src)
		if err != nil {
			t.Errorf("cmd/%s/main.go: %v", name, err)
			continue
		}
		if n > maxDoorLines {
			t.Errorf("cmd/%s/main.go has %d lines of code, more than %d: move its verbs into its lib/ package (docs/architecture.md, \"From a command to the code\")", name, n, maxDoorLines)
		}
	}
}

// codeLines counts the lines of Go source on which a token other than a
// comment starts or continues (a raw string spanning lines counts each).
func codeLines(src []byte) (int, error) {
	fset := token.NewFileSet()
	file := fset.AddFile("main.go", -1, len(src))
	var errs scanner.ErrorList
	var s scanner.Scanner
	s.Init(file, src, errs.Add, 0) // mode 0: comments are skipped
	lines := map[int]bool{}
	for {
		pos, tok, lit := s.Scan()
		if tok == token.EOF {
			break
		}
		if tok == token.SEMICOLON && lit == "\n" {
			continue // inserted at a line's end, not written
		}
		first := file.Line(pos)
		for l := first; l <= first+strings.Count(lit, "\n"); l++ {
			lines[l] = true
		}
	}
	if errs.Len() > 0 {
		return 0, errs.Err()
	}
	return len(lines), nil
}

// TestCodeLines keeps the counter honest: comments, blank lines and the
// package comment do not count; code, raw strings and a line holding
// code and a comment do.
func TestCodeLines(t *testing.T) {
	src := "// Command x is long.\n//\n// Very long.\npackage main\n\n/* block\ncomment */\nimport \"os\"\n\nfunc main() { // exit\n\tos.Exit(len(`a\nb`))\n}\n"
	n, err := codeLines([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	// package, import, func, os.Exit + the raw string's second line, }.
	if n != 6 {
		t.Errorf("codeLines = %d, want 6", n)
	}
}
