package badinput

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// stdioCase is one line of stdio/<command>.jsonl (see the package comment).
type stdioCase struct {
	Name  string      `json:"name"`
	Args  []string    `json:"args"`
	Stdin string      `json:"stdin,omitempty"`
	Code  apierr.Code `json:"code"`
	Setup []struct {
		Args  []string `json:"args"`
		Stdin string   `json:"stdin,omitempty"`
	} `json:"setup,omitempty"`
	// Files are written into $TMP first (name → content, "$TMP" replaced;
	// directories on the way are made); those named in Exec are executable.
	Files map[string]string `json:"files,omitempty"`
	Exec  []string          `json:"exec,omitempty"`
	NetNS bool              `json:"netns,omitempty"`
	Issue string            `json:"issue,omitempty"`
}

// touchesNetwork are the commands whose cases always run in a namespace of
// their own: a case that is meant to fail before changing anything must
// not reach the host's network when it does not fail.
var touchesNetwork = map[string]bool{"volant-net": true, "volantd": true}

// caseTimeout bounds one command run: a case that does not fail as it
// should may start serving (volantd) instead.
const caseTimeout = 60 * time.Second

func TestStdio(t *testing.T) {
	cases := readCases[stdioCase](t, "stdio/*.jsonl")
	bins := map[string]string{}
	for _, lc := range cases {
		cmd := strings.TrimSuffix(filepath.Base(lc.File), ".jsonl")
		c := lc.Case
		t.Run(cmd+"/"+c.Name, func(t *testing.T) {
			where := fmt.Sprintf("%s:%d", lc.File, lc.Line)
			if c.Name == "" || c.Code == "" {
				t.Fatalf("%s: a case needs a name and a code", where)
			}
			if c.Code.ExitCode() == 1 && c.Code != apierr.Internal {
				t.Fatalf("%s: unknown code %q", where, c.Code)
			}
			var ns *netnstest.NS
			if c.NetNS || touchesNetwork[cmd] {
				netnstest.Require(t, "nft")
				ns = netnstest.New(t)
			}
			tally.cases.Add(1)
			if bins[cmd] == "" {
				bins[cmd] = guesttest.Command(t, cmd)
			}
			dir := t.TempDir()
			run := func(args []string, stdin string) (stdout, stderr string, exit int) {
				for i := range args {
					args[i] = strings.ReplaceAll(args[i], "$TMP", dir)
				}
				var x *exec.Cmd
				if ns != nil {
					x = ns.Cmd(bins[cmd], args...)
				} else {
					x = exec.Command(bins[cmd], args...)
				}
				timer := time.AfterFunc(caseTimeout, func() { x.Process.Kill() })
				defer timer.Stop()
				x.Dir = dir
				x.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "TMPDIR=" + dir, "VOLANT_DB=" + filepath.Join(dir, "volant.db"),
					"VOLANT_DATA_DIR=" + filepath.Join(dir, "data"), "VOLANT_RUN_ROOT=" + filepath.Join(dir, "run")}
				if k := os.Getenv("VOLANT_KERNEL_DIR"); k != "" {
					x.Env = append(x.Env, "VOLANT_KERNEL_DIR="+k)
				}
				x.Stdin = strings.NewReader(strings.ReplaceAll(stdin, "$TMP", dir))
				var o, e bytes.Buffer
				x.Stdout, x.Stderr = &o, &e
				err := x.Run()
				if ee, ok := err.(*exec.ExitError); ok {
					return o.String(), e.String(), ee.ExitCode()
				} else if err != nil {
					t.Fatalf("%s: running %s: %v", where, cmd, err)
				}
				return o.String(), e.String(), 0
			}
			for name, content := range c.Files {
				p := filepath.Join(dir, name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				mode := os.FileMode(0o644)
				if slices.Contains(c.Exec, name) {
					mode = 0o755
				}
				if err := os.WriteFile(p, []byte(strings.ReplaceAll(content, "$TMP", dir)), mode); err != nil {
					t.Fatal(err)
				}
			}
			for _, s := range c.Setup {
				if _, errOut, code := run(append([]string(nil), s.Args...), s.Stdin); code != 0 {
					t.Fatalf("%s: setup %v exited %d: %s", where, s.Args, code, errOut)
				}
			}
			before := snapshot(t, dir, ns)
			stdout, stderr, exit := run(append([]string(nil), c.Args...), c.Stdin)
			var problems []string
			if want := c.Code.ExitCode(); exit != want {
				problems = append(problems, fmt.Sprintf("exit %d, want %d (%s)", exit, want, c.Code))
			}
			if stdout != "" {
				problems = append(problems, "stdout not empty: "+stdout)
			}
			if got := lastError(stderr); got.Code != c.Code {
				problems = append(problems, fmt.Sprintf("stderr does not end with a %s error object: %q", c.Code, stderr))
			} else if got.Message == "" {
				problems = append(problems, "the error has no message")
			}
			if after := snapshot(t, dir, ns); after != before {
				problems = append(problems, "the command changed state:\nbefore:\n"+before+"\nafter:\n"+after)
			}
			if len(problems) > 0 {
				t.Fatalf("%s: %s %s:\n%s", where, cmd, strings.Join(c.Args, " "), strings.Join(problems, "\n"))
			}
			tally.clear.Add(1)
		})
	}
}

// lastError decodes the last line of stderr as an error object.
func lastError(stderr string) apierr.Error {
	lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
	var e apierr.Error
	_ = json.Unmarshal([]byte(lines[len(lines)-1]), &e)
	return e
}

// snapshot describes what a command could change: every file under dir
// with its mode and content (not directories, nor SQLite's -shm index,
// which readers update, nor volantd's lock file) and, in a namespace, its
// links, addresses, nftables ruleset and ip_forward.
func snapshot(t *testing.T, dir string, ns *netnstest.NS) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil // an empty directory made on the way is not a change
		}
		rel, _ := filepath.Rel(dir, p)
		if strings.HasSuffix(rel, ".db-shm") {
			return nil // SQLite's shared-memory index: readers write it too
		}
		if strings.HasSuffix(rel, ".db.volantd-lock") {
			return nil // the empty file volantd's one-daemon-per-database flock is on
		}
		fmt.Fprintf(&b, "%s %s", rel, info.Mode())
		if info.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, " %x", sha256.Sum256(data))
		}
		b.WriteByte('\n')
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if ns != nil {
		b.WriteString(ns.Run("ip", "-o", "link", "show"))
		b.WriteString(ns.Run("ip", "-o", "addr", "show"))
		b.WriteString(ns.Run("nft", "list", "ruleset"))
		b.WriteString(ns.Run("cat", "/proc/sys/net/ipv4/ip_forward"))
	}
	return b.String()
}
