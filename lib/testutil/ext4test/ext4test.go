// Package ext4test inspects ext4 images in tests with e2fsprogs: debugfs
// to read inside an image without mounting it, e2fsck to check it.
package ext4test

import (
	"os/exec"
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

// Fsck checks image with e2fsck -fn (forced, changing nothing) and fails
// the test on any problem.
func Fsck(t testing.TB, image string) {
	t.Helper()
	if out, err := exec.Command("e2fsck", "-fn", image).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn %s: %v\n%s", image, err, out)
	}
}
