package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

const unitPath = "../../contrib/systemd/volant-vm@.service"

// verifyUnit runs systemd-analyze verify on an instance of the template (a
// copy named volant-vm@x.service next to it, as systemd resolves templated
// units) and returns everything it printed. systemd-analyze checks that
// ExecStart's program exists, so the copies name the freshly built binary
// instead of the install path; every other line is the template's.
func verifyUnit(t *testing.T, unit string) string {
	t.Helper()
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		netnstest.SkipOrFail(t, "systemd-analyze not installed (Debian package systemd)")
	}
	bin := guesttest.Command(t, "volant-launch")
	unit = strings.ReplaceAll(unit, "/usr/local/bin/volant-launch", bin)
	dir := t.TempDir()
	for _, n := range []string{"volant-vm@.service", "volant-vm@x.service"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(unit), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command("systemd-analyze", "verify", filepath.Join(dir, "volant-vm@x.service")).CombinedOutput()
	if err != nil && len(out) == 0 {
		t.Fatalf("systemd-analyze verify: %v", err)
	}
	return strings.TrimSpace(string(out))
}

func TestSystemdUnitVerifies(t *testing.T) {
	b, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	unit := string(b)
	// systemd-analyze only warns about unknown keys and bad values
	// ("ignoring"), so any output at all is a failure.
	if out := verifyUnit(t, unit); out != "" {
		t.Fatalf("systemd-analyze verify complained:\n%s", out)
	}
	// The check can fail: a misspelt key is reported.
	if out := verifyUnit(t, strings.Replace(unit, "KillMode=mixed", "KillMod=mixed", 1)); !strings.Contains(out, "KillMod") {
		t.Fatalf("a broken unit passed verification: %q", out)
	}

	key := func(k string) string {
		m := regexp.MustCompile(`(?m)^` + k + `=(.*)$`).FindStringSubmatch(unit)
		if m == nil {
			t.Fatalf("unit has no %s=", k)
		}
		return m[1]
	}
	if key("Type") != "notify" || key("KillMode") != "mixed" {
		t.Fatalf("Type=%s KillMode=%s: run speaks sd_notify and handles SIGTERM itself", key("Type"), key("KillMode"))
	}
	exe := key("ExecStart")
	if !strings.Contains(exe, "volant-launch run") || !strings.Contains(exe, "--name %i") {
		t.Fatalf("ExecStart=%s", exe)
	}
	// systemd must not kill the VM before volant-launch's own escalation
	// (power button, stop timeout, hard stop, kill) has run.
	stop := regexp.MustCompile(`--stop-timeout (\S+)`).FindStringSubmatch(exe)
	if stop == nil {
		t.Fatal("ExecStart sets no --stop-timeout")
	}
	st, _ := time.ParseDuration(stop[1])
	limit, err := time.ParseDuration(key("TimeoutStopSec") + "s")
	if err != nil || limit < st+15*time.Second {
		t.Fatalf("TimeoutStopSec=%s leaves too little room after --stop-timeout %s", key("TimeoutStopSec"), stop[1])
	}
	if !strings.Contains(key("StandardInput"), "%i") {
		t.Fatal("the spec on stdin must be the instance's")
	}
}
