package main

import (
	"regexp"
	"strings"
	"testing"
)

// guestLogLine is a line the guest's kernel or kestrel writes on its
// console ("[    3.007849] kestrel: later kernel modules loaded ..."). It
// comes whenever the guest logs, also in the middle of the echo of what
// is being typed (on a loaded host kestrel still loads modules and opens
// the agent channel after it offers the shell).
var guestLogLine = regexp.MustCompile(`\[ *[0-9]+\.[0-9]+\] [^\n]*\n`)

// shellText is the screen without the guest's log lines: what the
// guest's shell and the terminal wrote.
func shellText(screen string) string { return guestLogLine.ReplaceAllString(screen, "") }

// TestShellTextDropsGuestLogLines: the screen of a run where kestrel's
// log lines came in the middle of the echo of a typed command (the echo
// was not on the screen in one piece, and the test waited for it in vain).
func TestShellTextDropsGuestLogLines(t *testing.T) {
	screen := "Connected to the console of VM con1. Type ^] to detach.\n\n" +
		"/ # echo [    3.007849] kestrel: later kernel modules loaded modules=button,evdev loaded=2 took=81ms\n" +
		"sum=$((40+2))[    4.566903] kestrel: later kernel modules loaded modules=virtio_console loaded=1 took=49ms\n" +
		"[    4.604176] kestrel: agent channel on a virtio-serial port device=/dev/vport0p1\n" +
		"[    4.621711] kestrel: agent channel: host connected\n\n\n"
	if strings.Contains(screen, "echo sum=$((40+2))") {
		t.Fatal("the screen holds the echo in one piece: it shows nothing")
	}
	got := shellText(screen)
	if !strings.Contains(got, "/ # echo sum=$((40+2))\n") || strings.Contains(got, "kestrel") {
		t.Fatalf("without the log lines:\n%s", got)
	}
}
