package docs

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestArchitectureMapsEveryCommand keeps docs/architecture.md's two hops
// true: in "From a command to the code" every command under cmd/ has a
// row, either for the whole command or for each of its verbs (the
// go-flags `command:"…"` tags of its cmd/ files and of the packages its
// rows say its verbs are in, but `version`); every lib/ package a row
// names exists, and the command's main.go imports the packages its verbs
// are said to be in. In the package table every package of the module is
// named (lib/kestrel/... and lib/testutil/* stand for their subpackages,
// which kestrel.md and the testutil row describe).
func TestArchitectureMapsEveryCommand(t *testing.T) {
	root := filepath.Join("..", "..")
	doc, err := os.ReadFile(filepath.Join(root, "docs", "architecture.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	start := strings.Index(text, "## From a command to the code")
	if start < 0 {
		t.Fatal(`docs/architecture.md has no "From a command to the code" section`)
	}
	section := text[start:]
	if end := strings.Index(section[3:], "\n## "); end >= 0 {
		section = section[:end+3]
	}

	// Rows: `cmd verb`, `verb`, … | where the verbs are | the packages that do the work.
	code := regexp.MustCompile("`([^`]+)`")
	libPath := regexp.MustCompile(`lib/[a-z0-9_/]+[a-z0-9]`)
	whole := map[string]bool{}
	verbs := map[string]map[string]bool{}
	doors := map[string]map[string]bool{}
	rows := 0
	for _, l := range strings.Split(section, "\n") {
		cells := strings.Split(l, "|")
		if len(cells) < 5 || strings.HasPrefix(strings.TrimSpace(cells[1]), "---") || strings.TrimSpace(cells[1]) == "command" {
			continue
		}
		rows++
		cmd := ""
		for _, m := range code.FindAllStringSubmatch(cells[1], -1) {
			f := strings.Fields(m[1])
			switch {
			case cmd == "" && len(f) == 1:
				cmd = f[0]
				whole[cmd] = true
			default:
				if cmd == "" {
					cmd = f[0]
				}
				if verbs[cmd] == nil {
					verbs[cmd] = map[string]bool{}
				}
				verbs[cmd][f[len(f)-1]] = true
			}
		}
		for _, p := range libPath.FindAllString(strings.Join(cells[2:], "|"), -1) {
			if st, err := os.Stat(filepath.Join(root, p)); err != nil || !st.IsDir() {
				t.Errorf("the row for %s names %s, which is not a package", cmd, p)
			}
		}
		for _, p := range libPath.FindAllString(cells[2], -1) {
			if doors[cmd] == nil {
				doors[cmd] = map[string]bool{}
			}
			doors[cmd][p] = true
		}
	}
	if rows < 5 {
		t.Fatalf("found only %d rows in the command table", rows)
	}

	tag := regexp.MustCompile("`command:\"([a-z-]+)\"")
	cmds, err := os.ReadDir(filepath.Join(root, "cmd"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cmds {
		main, err := os.ReadFile(filepath.Join(root, "cmd", c.Name(), "main.go"))
		if err != nil {
			continue
		}
		dirs := []string{filepath.Join("cmd", c.Name())}
		for p := range doors[c.Name()] {
			if !strings.Contains(string(main), `"github.com/volantvm/volant/`+p+`"`) {
				t.Errorf("docs/architecture.md: the verbs of %s are said to be in %s, which cmd/%s/main.go does not import", c.Name(), p, c.Name())
			}
			dirs = append(dirs, p)
		}
		if whole[c.Name()] {
			continue
		}
		if verbs[c.Name()] == nil {
			t.Errorf("docs/architecture.md: no row for the command %s", c.Name())
			continue
		}
		for _, v := range verbTags(t, root, dirs, tag) {
			if v != "version" && !verbs[c.Name()][v] {
				t.Errorf("docs/architecture.md: no row for `%s %s`", c.Name(), v)
			}
		}
	}

	// Every package is named somewhere in the document.
	seen := map[string]bool{}
	err = filepath.WalkDir(filepath.Join(root, "lib"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == "testdata" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		rel, _ := filepath.Rel(root, filepath.Dir(p))
		pkg := filepath.ToSlash(rel)
		if seen[pkg] || strings.HasPrefix(pkg, "lib/kestrel/") || strings.HasPrefix(pkg, "lib/testutil/") {
			return nil
		}
		seen[pkg] = true
		if !regexp.MustCompile("`" + regexp.QuoteMeta(pkg) + "[`.]").MatchString(text) {
			t.Errorf("docs/architecture.md does not name the package %s", pkg)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// verbTags returns the go-flags command tags in the non-test Go files of
// dirs (relative to root).
func verbTags(t *testing.T, root string, dirs []string, tag *regexp.Regexp) []string {
	t.Helper()
	var tags []string
	for _, d := range dirs {
		files, err := filepath.Glob(filepath.Join(root, d, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range tag.FindAllStringSubmatch(string(b), -1) {
				tags = append(tags, m[1])
			}
		}
	}
	return tags
}
