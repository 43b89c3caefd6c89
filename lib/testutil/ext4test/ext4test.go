// Package ext4test inspects ext4 images in tests with e2fsprogs: debugfs
// to read inside an image without mounting it, e2fsck to check it.
package ext4test

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// Require skips the test (fails it under CI) when e2fsck or debugfs is
// missing (Debian package e2fsprogs).
func Require(t testing.TB) {
	t.Helper()
	for _, p := range []string{"e2fsck", "debugfs"} {
		if _, err := exec.LookPath(p); err != nil {
			netnstest.SkipOrFail(t, "%s not installed (e2fsprogs)", p)
		}
	}
}

// Debugfs runs one debugfs request ("stat /etc/passwd", "ls -l /usr/bin",
// "ea_list /bin/tool", "cat /etc/hostname") on image, read-only, and
// returns what it printed; a failure fails the test.
func Debugfs(t testing.TB, image, req string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", req, image).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs -R %q %s: %v\n%s", req, image, err, out)
	}
	return string(out)
}

// Cat returns the bytes of the file at path inside image, exactly (what
// debugfs prints on stdout; its banner and messages go to stderr). A path
// that is not there fails the test, although debugfs itself exits 0.
func Cat(t testing.TB, image, path string) []byte {
	t.Helper()
	out, err := request(image, false, "cat "+path)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Write copies the host file src into image as path (debugfs -w "write";
// path must not exist yet), and fails the test when debugfs reports a
// problem.
func Write(t testing.TB, image, src, path string) {
	t.Helper()
	if _, err := request(image, true, "write "+src+" "+path); err != nil {
		t.Fatal(err)
	}
}

// request runs one debugfs request and returns its stdout. debugfs exits 0
// when a request fails and says so on stderr, after its version banner:
// any other line there is an error.
func request(image string, write bool, req string) ([]byte, error) {
	args := []string{"-R", req, image}
	if write {
		args = append([]string{"-w"}, args...)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("debugfs", args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var problems []string
	for _, l := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		if l != "" && !strings.HasPrefix(l, "debugfs ") {
			problems = append(problems, l)
		}
	}
	if err != nil || len(problems) > 0 {
		return nil, fmt.Errorf("debugfs -R %q %s: %v: %s", req, image, err, strings.Join(problems, "; "))
	}
	return stdout.Bytes(), nil
}

// Fsck checks image with e2fsck -fn (forced, changing nothing) and fails
// the test on any problem.
func Fsck(t testing.TB, image string) {
	t.Helper()
	if out, err := exec.Command("e2fsck", "-fn", image).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn %s: %v\n%s", image, err, out)
	}
}
