package main

import (
	"slices"
	"testing"

	"github.com/volantvm/volant/lib/kernel"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// qemuHost is what a test that boots real guests through volantd needs:
// Debian's kernel and its modules, QEMU, the kestrel under test, and a
// network namespace of the test's own for volantd, its bridge and taps.
type qemuHost struct {
	*fakeHost
	k       *kernel.Kernel
	kestrel string
	wrap    []string // runs a program in the namespace
}

// newQEMUHost skips the test (or fails it, see netnstest.SkipOrFail) where
// the kernel, QEMU, kestrel or one of programs is missing.
func newQEMUHost(t *testing.T, programs ...string) *qemuHost {
	t.Helper()
	k, _ := guesttest.Kernel(t)
	guesttest.QEMU(t)
	for _, p := range programs {
		netnstest.Require(t, p)
	}
	kestrel := guesttest.Kestrel(t)
	h := &fakeHost{ns: netnstest.New(t), dir: t.TempDir()}
	return &qemuHost{fakeHost: h, k: k, kestrel: kestrel, wrap: []string{"ip", "netns", "exec", h.ns.Name}}
}

// daemon starts volantd in the namespace, booting guests with QEMU under
// TCG: health checked every 2 s, 90 s to start, 5 s to stop unless extra
// sets these flags (volantd refuses a flag given twice). The flags in
// extra come after the others.
func (q *qemuHost) daemon(t *testing.T, extra ...string) *volantdProc {
	t.Helper()
	args := []string{"--vmm", "qemu", "--accel", "tcg", "--kernel", q.k.Dir, "--kestrel", q.kestrel}
	for _, d := range [][2]string{{"--health-interval", "2s"}, {"--start-timeout", "90s"}, {"--stop-timeout", "5s"}} {
		if !slices.Contains(extra, d[0]) {
			args = append(args, d[0], d[1])
		}
	}
	args = append(args, extra...)
	return startDaemon(t, q.dir, q.wrap, nil, args...)
}
