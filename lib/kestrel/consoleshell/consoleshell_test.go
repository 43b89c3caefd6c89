package consoleshell

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/bootargs"
	"github.com/volantvm/volant/lib/kestrel/reaper"
	"github.com/volantvm/volant/lib/manifest"
)

func TestChoose(t *testing.T) {
	with := &manifest.Manifest{Console: &manifest.Console{Shell: "/bin/sh"}}
	for _, tc := range []struct {
		name string
		arg  string
		m    *manifest.Manifest
		want string
	}{
		{"off by default", "", &manifest.Manifest{}, ""},
		{"no manifest", "", nil, ""},
		{"the manifest asks", "", with, "/bin/sh"},
		{"the VM refuses", bootargs.ConsoleShellOff, with, ""},
		{"the VM asks", "/bin/ash", &manifest.Manifest{}, "/bin/ash"},
		{"the VM's choice wins", "/bin/ash", with, "/bin/ash"},
	} {
		if got := Choose(bootargs.Args{ConsoleShell: tc.arg}, tc.m); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestDevice(t *testing.T) {
	root := t.TempDir()
	if got := Device(root); got != "/dev/console" {
		t.Fatalf("without sysfs: %s", got)
	}
	os.MkdirAll(filepath.Join(root, "sys/class/tty/console"), 0o755)
	os.MkdirAll(filepath.Join(root, "dev"), 0o755)
	os.WriteFile(filepath.Join(root, "sys/class/tty/console/active"), []byte("tty0 ttyS0\n"), 0o644)
	if got := Device(root); got != "/dev/console" {
		t.Fatalf("without the device node: %s", got)
	}
	os.WriteFile(filepath.Join(root, "dev/ttyS0"), nil, 0o644)
	if got := Device(root); got != "/dev/ttyS0" {
		t.Fatalf("got %s, want the primary console /dev/ttyS0", got)
	}
}

// term is the master side of a pseudo-terminal whose slave plays the
// serial console.
type term struct {
	t      *testing.T
	master *os.File
	slave  string
	mu     sync.Mutex
	out    bytes.Buffer
}

func newTerm(t *testing.T) *term {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	tm := &term{t: t, master: m, slave: fmt.Sprintf("/dev/pts/%d", n)}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := m.Read(buf)
			tm.mu.Lock()
			tm.out.Write(buf[:n])
			tm.mu.Unlock()
			// EIO while no one has the slave open (between two
			// shells); the end once the test closes the master.
			if errors.Is(err, os.ErrClosed) {
				return
			}
			if err != nil {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}()
	return tm
}

func (tm *term) typeText(s string) {
	tm.t.Helper()
	if _, err := tm.master.WriteString(s); err != nil {
		tm.t.Fatal(err)
	}
}

// wait waits until the output holds want, which the commands typed
// compute (their echo cannot hold it).
func (tm *term) wait(want string) {
	tm.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		tm.mu.Lock()
		s := tm.out.String()
		tm.mu.Unlock()
		if strings.Contains(s, want) {
			return
		}
		if time.Now().After(deadline) {
			tm.t.Fatalf("no %q; the terminal shows:\n%s", want, s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A shell on a terminal, as kestrel runs it on the serial console: typed
// commands run, Ctrl-C interrupts the shell's foreground job (the terminal
// is its controlling terminal), exit respawns it, and the end of the
// context hangs it up.
func TestRunOnATerminal(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	tm := newTerm(t)
	r := reaper.New(nil)
	rctx, stopReaper := context.WithCancel(context.Background())
	defer stopReaper()
	go r.Run(rctx)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Run(ctx, r, sh, tm.slave, slog.New(slog.NewTextHandler(os.Stderr, nil))); close(done) }()

	tm.typeText("echo sum=$((40+2))\n")
	tm.wait("sum=42")
	// Ctrl-C reaches the foreground job through the terminal.
	tm.typeText("sleep 60; echo slept\n")
	time.Sleep(300 * time.Millisecond)
	tm.typeText("\x03")
	tm.typeText("echo after=$((1+1))\n")
	tm.wait("after=2")
	// A new shell after exit.
	tm.typeText("echo $$ > " + filepath.Join(t.TempDir(), "x") + "; exit\n")
	time.Sleep(RespawnDelay + 300*time.Millisecond)
	tm.typeText("echo again=$((2+2))\n")
	tm.wait("again=4")

	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the context ended")
	}
	tm.mu.Lock()
	defer tm.mu.Unlock()
	if strings.Contains("\n"+strings.ReplaceAll(tm.out.String(), "\r", "")+"\n", "\nslept\n") {
		t.Fatalf("Ctrl-C did not interrupt sleep:\n%s", tm.out.String())
	}
}

func TestRunWithoutTheShell(t *testing.T) {
	done := make(chan struct{})
	go func() { Run(context.Background(), reaper.New(nil), "/nonexistent/sh", "/dev/null", nil); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run waited for a shell the image does not have")
	}
}
