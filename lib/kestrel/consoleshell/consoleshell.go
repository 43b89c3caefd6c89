// Package consoleshell runs a shell on the guest's serial console, so that an
// attached console (`volar vms console`) is interactive, not only the
// guest's output. It is off unless asked for: the manifest's console.shell
// names the shell, and a VM's volant.console_shell kernel argument (a create
// request's kernel_args) overrides it, with "off" refusing one.
//
// The shell runs as root in a session of its own with the console's tty as
// its controlling terminal, so Ctrl-C and job control work in it and never
// reach kestrel. It is respawned when it exits (as a getty would), and given
// up after it fails to stay up several times in a row. An image without the
// named shell keeps an output-only console; kestrel says so on it.
package consoleshell

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/bootargs"
	"github.com/volantvm/volant/lib/kestrel/reaper"
	"github.com/volantvm/volant/lib/manifest"
)

// Respawn settings: a shell that exits sooner than MinUp after starting,
// GiveUpAfter times in a row, is not started again.
const (
	RespawnDelay = 500 * time.Millisecond
	MinUp        = 2 * time.Second
	GiveUpAfter  = 5
)

// Choose returns the shell to run on the console, or "" for none: the
// kernel command line's volant.console_shell when set ("off": none), else
// the manifest's console.shell.
func Choose(args bootargs.Args, m *manifest.Manifest) string {
	switch args.ConsoleShell {
	case bootargs.ConsoleShellOff:
		return ""
	case "":
		if m != nil && m.Console != nil {
			return m.Console.Shell
		}
		return ""
	}
	return args.ConsoleShell
}

// Device returns the console's tty under root ("/" in a guest): the last
// device of /sys/class/tty/console/active, the kernel's primary console
// (/dev/ttyS0 with console=ttyS0), else /dev/console. The real device, not
// /dev/console, can be a shell's controlling terminal.
func Device(root string) string {
	b, err := os.ReadFile(filepath.Join(root, "sys/class/tty/console/active"))
	if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
		dev := "/dev/" + f[len(f)-1]
		if _, err := os.Stat(filepath.Join(root, dev)); err == nil {
			return dev
		}
	}
	return "/dev/console"
}

// Env is the shell's environment.
func Env(shell string) []string {
	home := "/root"
	if st, err := os.Stat(home); err != nil || !st.IsDir() {
		home = "/"
	}
	return []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + home, "TERM=vt220", "SHELL=" + shell, "USER=root", "LOGNAME=root",
	}
}

// Run offers shell on tty until ctx ends, then hangs the running shell up
// (SIGHUP, then SIGKILL to its session's process group). It returns at once,
// logging why, when the shell is not an executable file.
func Run(ctx context.Context, r *reaper.Reaper, shell, tty string, log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := executable(shell); err != nil {
		log.Warn("no console shell: the console is output only", "shell", shell, "err", err)
		return
	}
	log.Info("console shell offered: press Enter on the console", "shell", shell, "tty", tty)
	fast := 0
	for {
		t0 := time.Now()
		pid, exit, err := start(r, shell, tty)
		if err != nil {
			log.Warn("console shell cannot start: the console is output only", "shell", shell, "err", err)
			return
		}
		var e reaper.Exit
		select {
		case e = <-exit:
		case <-ctx.Done():
			hangUp(pid, exit)
			return
		}
		up := time.Since(t0)
		log.Info("console shell exited", "shell", shell, "status", e.String(), "ran", up.Round(time.Millisecond))
		if up < MinUp {
			fast++
		} else {
			fast = 0
		}
		if fast >= GiveUpAfter {
			log.Warn("console shell keeps exiting at once: not starting it again", "shell", shell, "times", fast)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(RespawnDelay):
		}
	}
}

func executable(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", p)
	}
	return nil
}

// start runs the shell as a login shell (argv[0] "-sh") in a new session
// whose controlling terminal is tty.
func start(r *reaper.Reaper, shell, tty string) (int, <-chan reaper.Exit, error) {
	fd, err := unix.Open(tty, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, nil, fmt.Errorf("opening %s: %w", tty, err)
	}
	defer unix.Close(fd)
	attr := &syscall.ProcAttr{
		Dir:   "/",
		Env:   Env(shell),
		Files: []uintptr{uintptr(fd), uintptr(fd), uintptr(fd)},
		// Setctty takes the tty from a session that still holds it (a
		// killed predecessor's), which only root may do: kestrel is.
		Sys: &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0},
	}
	return r.Start(func() (int, error) {
		return syscall.ForkExec(shell, []string{"-" + path.Base(shell)}, attr)
	})
}

// hangUp ends the shell's session the way a closed terminal would.
func hangUp(pid int, exit <-chan reaper.Exit) {
	_ = unix.Kill(-pid, unix.SIGHUP)
	_ = unix.Kill(-pid, unix.SIGCONT)
	select {
	case <-exit:
		return
	case <-time.After(time.Second):
	}
	if err := unix.Kill(-pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		_ = unix.Kill(pid, unix.SIGKILL)
	}
	select {
	case <-exit:
	case <-time.After(5 * time.Second):
	}
}
