package wait_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestOneHelperOfEach: the test helpers that were once written again in
// package after package stay written once. In the module's Go files:
//   - a helper that takes a condition (a func() bool parameter) polls it
//     through this package, not with a loop of its own;
//   - only lib/testutil/ext4test runs debugfs (its Cat keeps the banner
//     out of a file's bytes and fails on a missing path, which debugfs
//     itself reports with status 0);
//   - only lib/testutil/guesttest runs `go build` (StaticInit, Kestrel and
//     the commands, each built once per test process).
func TestOneHelperOfEach(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	owner := map[string]string{"debugfs": "lib/testutil/ext4test", "go build": "lib/testutil/guesttest"}
	fset := token.NewFileSet()
	files := 0
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if d.Name() == "testdata" || d.Name() == "node_modules" || strings.HasPrefix(d.Name(), ".") && rel != "." {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		files++
		dir := filepath.ToSlash(filepath.Dir(rel))
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.FuncDecl:
				if dir != "lib/testutil/wait" && n.Body != nil && takesCondition(n.Type) && pollsByHand(n.Body) {
					t.Errorf("%s: %s polls its condition in a loop of its own; use lib/testutil/wait (For, ForEvery, Until)",
						fset.Position(n.Pos()), n.Name.Name)
				}
			case *ast.CallExpr:
				if what := runs(n); what != "" && owner[what] != dir {
					t.Errorf("%s: runs %s; use %s", fset.Position(n.Pos()), what, owner[what])
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 500 {
		t.Fatalf("checked only %d Go files under %s", files, root)
	}
}

// takesCondition says whether a function has a func() bool parameter.
func takesCondition(ft *ast.FuncType) bool {
	for _, p := range ft.Params.List {
		if f, ok := p.Type.(*ast.FuncType); ok && (f.Params == nil || len(f.Params.List) == 0) &&
			f.Results != nil && len(f.Results.List) == 1 {
			if id, ok := f.Results.List[0].Type.(*ast.Ident); ok && id.Name == "bool" {
				return true
			}
		}
	}
	return false
}

// pollsByHand says whether body has a for loop that sleeps (time.Sleep or
// time.After).
func pollsByHand(body *ast.BlockStmt) bool {
	found := false
	ast.Inspect(body, func(n ast.Node) bool {
		loop, ok := n.(*ast.ForStmt)
		if !ok || found {
			return !found
		}
		ast.Inspect(loop.Body, func(n ast.Node) bool {
			if sel := selector(n); sel == "time.Sleep" || sel == "time.After" {
				found = true
			}
			return !found
		})
		return !found
	})
	return found
}

// selector is "pkg.Name" for a call of pkg.Name, else "".
func selector(n ast.Node) string {
	c, ok := n.(*ast.CallExpr)
	if !ok {
		return ""
	}
	s, ok := c.Fun.(*ast.SelectorExpr)
	if !ok {
		return ""
	}
	x, ok := s.X.(*ast.Ident)
	if !ok {
		return ""
	}
	return x.Name + "." + s.Sel.Name
}

// runs names the program an exec.Command or exec.CommandContext call runs
// when it is debugfs or `go build`, else "".
func runs(c *ast.CallExpr) string {
	sel := selector(c)
	args := c.Args
	switch sel {
	case "exec.Command":
	case "exec.CommandContext":
		if len(args) == 0 {
			return ""
		}
		args = args[1:]
	default:
		return ""
	}
	var lits []string
	for _, a := range args {
		if b, ok := a.(*ast.BasicLit); ok && b.Kind == token.STRING {
			s, _ := strconv.Unquote(b.Value)
			lits = append(lits, s)
		} else {
			lits = append(lits, "")
		}
	}
	switch {
	case len(lits) > 0 && lits[0] == "debugfs":
		return "debugfs"
	case len(lits) > 1 && lits[0] == "go" && lits[1] == "build":
		return "go build"
	}
	return ""
}
