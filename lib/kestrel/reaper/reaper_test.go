package reaper

import (
	"context"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func forkExec(argv ...string) func() (int, error) {
	return func() (int, error) {
		return syscall.ForkExec(argv[0], argv, &syscall.ProcAttr{Env: []string{"PATH=/usr/bin:/bin"}, Files: []uintptr{0, 1, 2}})
	}
}

func TestStartDeliversExitAndReapsOrphans(t *testing.T) {
	// A subreaper inherits the orphans of its descendants, as PID 1 does.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("cannot become a subreaper: %v", err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	r := New(nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)

	sh := "/bin/sh"
	if _, err := os.Stat(sh); err != nil {
		t.Skip("no /bin/sh")
	}
	// The shell starts three background sleeps and exits 3 at once: the
	// sleeps become our orphans.
	pid, exit, err := r.Start(forkExec(sh, "-c", "sleep 0.2 & sleep 0.2 & sleep 0.2 & exit 3"))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-exit:
		if e.PID != pid || e.Code() != 3 || e.String() != "exit status 3" {
			t.Fatalf("exit %+v (%s)", e, e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit delivered")
	}
	deadline := time.Now().Add(10 * time.Second)
	for r.Orphans() < 3 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := r.Orphans(); n != 3 {
		t.Fatalf("reaped %d orphans, want 3", n)
	}
}

func TestKilledBySignal(t *testing.T) {
	r := New(nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	pid, exit, err := r.Start(forkExec("/bin/sleep", "60"))
	if err != nil {
		t.Skip(err)
	}
	unix.Kill(pid, unix.SIGKILL)
	select {
	case e := <-exit:
		if e.Signal() != unix.SIGKILL || e.Code() != -1 || e.Success() || e.String() != "killed by SIGKILL" {
			t.Fatalf("exit %+v (%s)", e, e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit delivered")
	}
}
