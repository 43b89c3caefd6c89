package docs

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRealVMTestsRunUnderTestVM fails when a test in a *_vm_test.go or
// vm_test.go file (the files whose tests boot real guests) is not named TestVM…: `make
// test-vm` runs `-run TestVM`, so a real-VM test named otherwise is
// silently left out of it (TestRollingUpdateVM and three more were).
func TestRealVMTestsRunUnderTestVM(t *testing.T) {
	root := filepath.Join("..", "..")
	var files []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if !d.IsDir() && (strings.HasSuffix(p, "_vm_test.go") || d.Name() == "vm_test.go") {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 5 {
		t.Fatalf("found only %d real-VM test files", len(files))
	}
	for _, p := range files {
		misnamed, err := testsNotNamed(p, "TestVM")
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range misnamed {
			rel, _ := filepath.Rel(root, p)
			t.Errorf("%s: %s boots real guests but `make test-vm` (-run TestVM) does not run it: name it TestVM…", rel, name)
		}
	}
}

// testsNotNamed lists the top-level Test functions of the Go file p whose
// names do not start with prefix.
func testsNotNamed(p, prefix string) ([]string, error) {
	f, err := parser.ParseFile(token.NewFileSet(), p, nil, parser.SkipObjectResolution)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, d := range f.Decls {
		fn, ok := d.(*ast.FuncDecl)
		if !ok || fn.Recv != nil || !strings.HasPrefix(fn.Name.Name, "Test") || fn.Name.Name == "TestMain" {
			continue
		}
		if !strings.HasPrefix(fn.Name.Name, prefix) {
			out = append(out, fn.Name.Name)
		}
	}
	return out, nil
}
