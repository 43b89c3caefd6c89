package kestrelbuild

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const root = "../../.."

// TestCheck builds kestrel as the Makefile does (make.go, hence Command)
// and as it was built before this package, and asks Check about each.
func TestCheck(t *testing.T) {
	if testing.Short() {
		t.Skip("builds kestrel three times")
	}
	dir := t.TempDir()
	// build runs go with args and "-o" dir/name: after the package for go
	// build, after the program for go run (make.go's own -o).
	build := func(name string, env []string, args ...string) string {
		t.Helper()
		out := filepath.Join(dir, name)
		if args[0] == "build" {
			args = append([]string{"build", "-o", out}, args[1:]...)
		} else {
			args = append(args, "-o", out)
		}
		cmd := exec.Command("go", args...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), env...)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", cmd, err, b)
		}
		return out
	}
	made := build("made", nil, "run", "./lib/kestrel/kestrelbuild/make.go", "-version", "test")
	if err := Check(made); err != nil {
		t.Errorf("the Makefile's build: %v", err)
	}
	for _, c := range []struct {
		name string
		env  []string
		args []string
		want []string // what the error must name, and nothing else
	}{
		{"notag", []string{"CGO_ENABLED=0"}, []string{"build", "-trimpath", "-ldflags", "-s -w", Package},
			[]string{"-tags nethttpomithttp2"}},
		{"plain", []string{"CGO_ENABLED=1"}, []string{"build", Package},
			[]string{"CGO_ENABLED=0", "-trimpath", "-tags nethttpomithttp2", "symbol table", "DWARF"}},
	} {
		err := Check(build(c.name, c.env, c.args...))
		if err == nil {
			t.Errorf("%s: Check passed", c.name)
			continue
		}
		_, list, _ := strings.Cut(err.Error(), "): ")
		if got := strings.Split(list, "; "); len(got) != len(c.want) {
			t.Errorf("%s: %d differences named, want %d: %v", c.name, len(got), len(c.want), err)
		}
		for _, w := range c.want {
			if !strings.Contains(list, w) {
				t.Errorf("%s: %v does not name %q", c.name, err, w)
			}
		}
	}
}

// TestEveryBuildGoesThroughHere fails when a file of this repository builds
// kestrel by itself instead of through this package (Command or make.go):
// a go build/install/run line naming cmd/kestrel in a script, the Makefile
// or the docs, or Go code naming the package "cmd/kestrel".
func TestEveryBuildGoesThroughHere(t *testing.T) {
	goLiteral := regexp.MustCompile(`"(\./)?cmd/kestrel/?"`)
	goCommand := regexp.MustCompile(`(?i)\bgo[)}]?\s+(build|install|run)\b.*\bcmd/kestrel($|[^/\w.-]|/\s|/$|/\.\.\.)`)
	self, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	scanned := 0
	err = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if slices.Contains([]string{".git", "node_modules", "results"}, d.Name()) {
				return filepath.SkipDir
			}
			if abs, _ := filepath.Abs(p); abs == self {
				return filepath.SkipDir
			}
			return nil
		}
		name := d.Name()
		isGo := strings.HasSuffix(name, ".go")
		if !isGo && !strings.HasSuffix(name, ".sh") && !strings.HasSuffix(name, ".md") &&
			!strings.HasSuffix(name, ".mk") && name != "Makefile" && filepath.Base(filepath.Dir(p)) != ".ci" {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		scanned++
		rel, _ := filepath.Rel(root, p)
		for i, line := range strings.Split(string(b), "\n") {
			if goCommand.MatchString(line) || (isGo && goLiteral.MatchString(line)) {
				t.Errorf("%s:%d builds kestrel by itself; build it through lib/kestrel/kestrelbuild (Command, or make.go as the Makefile does), so its flags stay the same everywhere:\n\t%s", rel, i+1, strings.TrimSpace(line))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if scanned < 200 {
		t.Fatalf("scanned only %d files; the check is not looking", scanned)
	}
}
