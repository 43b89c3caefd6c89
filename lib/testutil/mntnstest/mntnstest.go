// Package mntnstest runs test code in a mount namespace of its own, so a
// test can mount what it needs (a small tmpfs to fill up, a loop device)
// without the host seeing it and without leaving anything mounted.
//
// Do runs fn on a goroutine locked to an OS thread that has left the
// process's mount namespace (unshare(CLONE_FS|CLONE_NEWNS), propagation
// private). Everything fn does on that goroutine, and every process it
// starts from it, sees the namespace; other goroutines do not. The thread
// is never given back to the Go runtime: it exits with the goroutine, and
// with it the namespace and its mounts.
package mntnstest

import (
	"fmt"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// Do runs fn in a fresh private mount namespace and returns its error.
// Without the privilege to make one it skips the test (fails under
// CI=true or VOLANT_TEST_PRIVILEGED=1, as netnstest does).
func Do(t testing.TB, fn func() error) error {
	t.Helper()
	netnstest.Require(t)
	type result struct {
		err   error
		setup bool
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread leaves with this goroutine.
		if err := unix.Unshare(unix.CLONE_FS | unix.CLONE_NEWNS); err != nil {
			done <- result{err: fmt.Errorf("unshare: %w", err), setup: true}
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			done <- result{err: fmt.Errorf("making mounts private: %w", err), setup: true}
			return
		}
		done <- result{err: fn()}
	}()
	r := <-done
	if r.setup {
		netnstest.SkipOrFail(t, "cannot make a mount namespace: %v", r.err)
	}
	return r.err
}

// TmpFS mounts a tmpfs of size bytes on dir; call it inside Do.
func TmpFS(dir string, size int64) error {
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		return fmt.Errorf("mounting a %d-byte tmpfs on %s: %w", size, dir, err)
	}
	return nil
}
