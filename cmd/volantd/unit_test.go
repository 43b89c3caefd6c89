package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/controller/controllertest"
	"github.com/volantvm/volant/lib/runner"
	"github.com/volantvm/volant/lib/store"
	"github.com/volantvm/volant/lib/testutil/netnstest"
	"github.com/volantvm/volant/lib/volantd"
)

const unitDir = "../../contrib/systemd"

// verifyUnits runs systemd-analyze verify on copies of volantd.socket and
// volantd.service (edited by edit) and returns what it printed.
// systemd-analyze checks that ExecStart's program exists, so the copies
// name the test's volantd instead of the install path.
func verifyUnits(t *testing.T, edit func(name, unit string) string) string {
	t.Helper()
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		netnstest.SkipOrFail(t, "systemd-analyze not installed (Debian package systemd)")
	}
	dir := t.TempDir()
	for _, n := range []string{"volantd.socket", "volantd.service"} {
		b, err := os.ReadFile(filepath.Join(unitDir, n))
		if err != nil {
			t.Fatal(err)
		}
		u := strings.ReplaceAll(string(b), "/usr/local/bin/volantd", filepath.Join(bins(t), "volantd"))
		if edit != nil {
			u = edit(n, u)
		}
		if err := os.WriteFile(filepath.Join(dir, n), []byte(u), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command("systemd-analyze", "verify", filepath.Join(dir, "volantd.socket"), filepath.Join(dir, "volantd.service")).CombinedOutput()
	if err != nil && len(out) == 0 {
		t.Fatalf("systemd-analyze verify: %v", err)
	}
	return strings.TrimSpace(string(out))
}

func TestSystemdUnitsVerify(t *testing.T) {
	// systemd-analyze only warns about unknown keys and bad values, so any
	// output at all is a failure.
	if out := verifyUnits(t, nil); out != "" {
		t.Fatalf("systemd-analyze verify complained:\n%s", out)
	}
	// The check can fail: a misspelt key in either unit is reported.
	if out := verifyUnits(t, func(n, u string) string { return strings.Replace(u, "SocketMode=", "SocketMod=", 1) }); !strings.Contains(out, "SocketMod") {
		t.Fatalf("a broken socket unit passed: %q", out)
	}
	if out := verifyUnits(t, func(n, u string) string { return strings.Replace(u, "NotifyAccess=", "NotifyAcces=", 1) }); !strings.Contains(out, "NotifyAcces") {
		t.Fatalf("a broken service unit passed: %q", out)
	}

	read := func(n string) string {
		b, err := os.ReadFile(filepath.Join(unitDir, n))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	key := func(unit, k string) string {
		m := regexp.MustCompile(`(?m)^` + k + `=(.*)$`).FindStringSubmatch(unit)
		if m == nil {
			t.Fatalf("no %s= in unit", k)
		}
		return m[1]
	}
	sock, svc := read("volantd.socket"), read("volantd.service")
	if key(sock, "ListenStream") != volantd.DefaultSocket || key(sock, "SocketMode") != "0660" {
		t.Fatalf("socket unit: ListenStream=%s SocketMode=%s", key(sock, "ListenStream"), key(sock, "SocketMode"))
	}
	if key(svc, "Type") != "notify" || !strings.HasPrefix(key(svc, "ExecStart"), "/usr/local/bin/volantd") {
		t.Fatalf("service unit: Type=%s ExecStart=%s", key(svc, "Type"), key(svc, "ExecStart"))
	}
	// VMs are their own units; stopping volantd must not kill children it
	// may have as detached runs.
	if key(svc, "KillMode") != "process" {
		t.Fatalf("KillMode=%s", key(svc, "KillMode"))
	}
	// The environment the unit sets must name flags volantd has.
	for _, m := range regexp.MustCompile(`(?m)^#? ?Environment=(VOLANT_[A-Z_]+)=`).FindAllStringSubmatch(svc, -1) {
		if !strings.Contains(mainSource(t), `env:"`+m[1]+`"`) {
			t.Errorf("the unit sets %s, which volantd does not read", m[1])
		}
	}
}

// mainSource is the source of volantd's flags: its verbs are in
// lib/volantd (cli.go), main.go calls them.
func mainSource(t *testing.T) string {
	var src string
	for _, p := range []string{"main.go", filepath.Join("..", "..", "lib", "volantd", "cli.go")} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		src += string(b)
	}
	return src
}

// TestVMUnitReadsTheStagedSpec: in systemd mode volantd stages each VM's
// spec where volant-vm@.service reads it.
func TestVMUnitReadsTheStagedSpec(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(unitDir, "volant-vm@.service"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^StandardInput=file:(.*)$`).FindStringSubmatch(string(b))
	if m == nil {
		t.Fatal("volant-vm@.service has no StandardInput=file:")
	}
	c, err := controller.New(controller.Config{Store: &store.Store{}, Runtime: controllertest.NewRuntime(), DataDir: volantd.DefaultDataDir})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.ReplaceAll(m[1], "%i", "web1"); got != c.SpecPath("web1") {
		t.Fatalf("the unit reads %s; volantd stages %s", got, c.SpecPath("web1"))
	}
	if runner.UnitName("web1") != "volant-vm@web1.service" {
		t.Fatal(runner.UnitName("web1"))
	}
}
