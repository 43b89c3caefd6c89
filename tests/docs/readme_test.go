// Package docs checks that the examples in README.md and docs/*.md work.
//
// A ```console block is a transcript: each line starting with "$ " is run
// with bash from the repository root, with bin/ first on PATH (make build),
// and the lines after it, up to the next "$ ", are its expected combined
// output. "..." on a line of its own matches any number of lines; inside a
// line it matches any text. A block whose info string says "norun"
// (```console norun) is shown, not run. Commands of one file share a
// scratch directory in $SCRATCH.
package docs

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

type step struct {
	line int
	cmd  string
	want []string
}

func parse(t *testing.T, path string) []step {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var steps []step
	in, run := false, false
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		l := sc.Text()
		switch {
		case !in && strings.HasPrefix(l, "```console"):
			in, run = true, !strings.Contains(l, "norun")
		case in && strings.HasPrefix(l, "```"):
			in = false
		case in && run && strings.HasPrefix(l, "$ "):
			steps = append(steps, step{line: n, cmd: l[2:]})
		case in && run && len(steps) > 0:
			steps[len(steps)-1].want = append(steps[len(steps)-1].want, l)
		}
	}
	return steps
}

func match(want, got []string) bool {
	if len(want) == 0 {
		return len(got) == 0
	}
	if want[0] == "..." {
		for i := 0; i <= len(got); i++ {
			if match(want[1:], got[i:]) {
				return true
			}
		}
		return false
	}
	if len(got) == 0 {
		return false
	}
	parts := strings.Split(want[0], "...")
	for i := range parts {
		parts[i] = regexp.QuoteMeta(parts[i])
	}
	if !regexp.MustCompile("^" + strings.Join(parts, ".*") + "$").MatchString(got[0]) {
		return false
	}
	return match(want[1:], got[1:])
}

func TestExamples(t *testing.T) {
	root, _ := filepath.Abs("../..")
	bin := os.Getenv("VOLANT_BIN")
	if bin == "" {
		bin = filepath.Join(root, "bin")
	}
	if _, err := os.Stat(filepath.Join(bin, "volant-manifest")); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("binaries missing in %s: run make build", bin)
		}
		t.Skipf("binaries missing in %s: run make build", bin)
	}
	files, _ := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	files = append([]string{filepath.Join(root, "README.md")}, files...)
	total := 0
	for _, file := range files {
		steps := parse(t, file)
		total += len(steps)
		scratch := t.TempDir()
		for _, s := range steps {
			name := filepath.Base(file) + ":" + s.cmd
			cmd := exec.Command("bash", "-o", "pipefail", "-c", s.cmd)
			cmd.Dir = root
			cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "SCRATCH="+scratch)
			out, err := cmd.CombinedOutput()
			got := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
			if len(out) == 0 {
				got = nil
			}
			want := s.want
			for len(want) > 0 && want[len(want)-1] == "" {
				want = want[:len(want)-1]
			}
			if err != nil && !strings.Contains(strings.Join(want, "\n"), "exit status") {
				// A failing command is fine only when its output is what the doc shows.
				if !match(want, got) {
					t.Errorf("%s:%d: %s: %v\n%s", filepath.Base(file), s.line, name, err, out)
					continue
				}
			}
			if !match(want, got) {
				t.Errorf("%s:%d: %s\n got:\n%s\nwant:\n%s", filepath.Base(file), s.line, s.cmd, strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		}
	}
	if total == 0 {
		t.Fatal("no runnable examples found")
	}
}
