// Package netnstest gives privileged tests a network namespace of their own.
//
// The project's network rule: bridges, taps, VMs and any traffic to private
// addresses happen only inside namespaces a test creates and deletes itself.
// New creates one (named vt-<pid>-<n>, loopback up) and registers cleanup that
// kills every process still inside it and deletes it, also when the test
// fails. It never touches a namespace it did not create.
//
// Privileged tests run when the capability is there. When they are demanded
// (CI=true or VOLANT_TEST_PRIVILEGED=1) and the capability is missing, Require
// fails the test instead of skipping it, so CI cannot go green by skipping.
package netnstest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// Demanded reports whether privileged tests must run rather than skip.
func Demanded() bool {
	return os.Getenv("CI") == "true" || os.Getenv("VOLANT_TEST_PRIVILEGED") == "1"
}

// SkipOrFail skips the test with reason, or fails it when privileged tests
// are demanded.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Demanded() {
		t.Fatalf("privileged test cannot run (CI=true or VOLANT_TEST_PRIVILEGED=1 demands it): %s", msg)
	}
	t.Skip(msg)
}

// Require checks for root and the named programs on PATH. Under -short
// (make test-unit) privileged tests always skip.
func Require(t testing.TB, programs ...string) {
	t.Helper()
	if testing.Short() {
		t.Skip("privileged test skipped under -short")
	}
	if os.Geteuid() != 0 {
		SkipOrFail(t, "needs root")
	}
	for _, p := range append([]string{"ip"}, programs...) {
		if _, err := exec.LookPath(p); err != nil {
			SkipOrFail(t, "needs %s on PATH", p)
		}
	}
}

// NS is a network namespace owned by one test.
type NS struct {
	Name string
	t    testing.TB
}

var seq atomic.Int64

// New creates a fresh namespace with loopback up and IP forwarding off (as
// on a freshly booted kernel, whatever the host's setting); cleanup
// deletes it.
func New(t testing.TB) *NS {
	t.Helper()
	Require(t)
	name := fmt.Sprintf("vt-%d-%d", os.Getpid(), seq.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		SkipOrFail(t, "cannot create a network namespace: %v: %s", err, out)
	}
	n := &NS{Name: name, t: t}
	t.Cleanup(n.destroy)
	n.Run("ip", "link", "set", "lo", "up")
	// A new namespace copies the host's IPv4 settings (with the default
	// net.core.devconf_inherit_init_net=0), so ip_forward would be the
	// host's. Start from the kernel's default, whatever the host set.
	if err := n.Do(func() error { return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("0\n"), 0o644) }); err != nil {
		t.Fatalf("resetting ip_forward in netns %s: %v", name, err)
	}
	return n
}

// Cmd returns a command that runs inside the namespace (ip netns exec).
func (n *NS) Cmd(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Run runs a command inside the namespace and returns its stdout; the test
// fails if it fails.
func (n *NS) Run(name string, args ...string) string {
	n.t.Helper()
	out, err := n.Output(name, args...)
	if err != nil {
		n.t.Fatalf("in netns %s: %s %s: %v", n.Name, name, strings.Join(args, " "), err)
	}
	return out
}

// Output runs a command inside the namespace; the error includes stderr.
func (n *NS) Output(name string, args ...string) (string, error) {
	var out, errb bytes.Buffer
	c := n.Cmd(name, args...)
	c.Stdout, c.Stderr = &out, &errb
	if err := c.Run(); err != nil {
		return out.String(), fmt.Errorf("%w: %s", err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Do runs fn on a locked OS thread switched into the namespace, then switches
// the thread back. Goroutines fn starts do not inherit the namespace.
func (n *NS) Do(fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("getting current netns: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(n.Name)
	if err != nil {
		return fmt.Errorf("opening netns %s: %w", n.Name, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return fmt.Errorf("entering netns %s: %w", n.Name, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			// A thread stuck in the wrong namespace must not be reused.
			panic(fmt.Sprintf("restoring netns: %v", err))
		}
	}()
	return fn()
}

// Path is the namespace's bind-mount path, for tools that take a path.
func (n *NS) Path() string { return "/run/netns/" + n.Name }

// Pids lists the processes inside the namespace.
func (n *NS) Pids() []int {
	out, _ := exec.Command("ip", "netns", "pids", n.Name).Output()
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids
}

func (n *NS) destroy() {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		pids := n.Pids()
		if len(pids) == 0 {
			break
		}
		for _, p := range pids {
			_ = syscall.Kill(p, sig)
		}
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) && len(n.Pids()) > 0 {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
		n.t.Errorf("deleting netns %s: %v: %s", n.Name, err, out)
	}
}
