package layout_test

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

// TestOneRule: the defaults of the layout and "find the binary next to
// me" are written here and nowhere else. Outside lib/layout, no Go string
// in the module's non-test code spells a default directory (comments,
// which document them, may), and only lib/layout asks os.Executable where
// the running binary is.
func TestOneRule(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	// findsItself are files that call os.Executable to run themselves, not
	// to find a sibling: the fake Cloud Hypervisor re-executes its own test
	// binary.
	findsItself := map[string]bool{"lib/vmm/cloudhypervisor/chtest/fake.go": true}
	spelled := []string{"/var/lib/volant", "/run/volant"}
	fset := token.NewFileSet()
	files := 0
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() {
			// lib/kestrel runs in the guest: its /run/volant is the guest's.
			if rel == filepath.Join("lib", "layout") || rel == filepath.Join("lib", "kestrel") || d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".") && rel != "." {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		files++
		tags := map[*ast.BasicLit]bool{}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.Field:
				if n.Tag != nil {
					tags[n.Tag] = true // go-flags tags name the variables, not the defaults
				}
			case *ast.BasicLit:
				if n.Kind != token.STRING || tags[n] {
					return true
				}
				s, err := strconv.Unquote(n.Value)
				if err != nil {
					return true
				}
				for _, d := range spelled {
					if strings.Contains(s, d) {
						t.Errorf("%s: %q spells a default of lib/layout; use its constants", fset.Position(n.Pos()), s)
					}
				}
			case *ast.SelectorExpr:
				if x, ok := n.X.(*ast.Ident); ok && x.Name == "os" && n.Sel.Name == "Executable" && !findsItself[filepath.ToSlash(rel)] {
					t.Errorf("%s: os.Executable outside lib/layout; find binaries with layout.Sibling or layout.FindBinary", fset.Position(n.Pos()))
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 100 {
		t.Fatalf("looked at only %d files under %s: the check is not looking", files, root)
	}
}
