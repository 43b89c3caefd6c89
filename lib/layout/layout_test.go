package layout_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/volantvm/volant/lib/layout"
)

func getenv(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestEnvironRoundTrip(t *testing.T) {
	d := layout.Dirs{Data: "/d", RunRoot: "/r", Cache: "/c", Kernel: "/k", DB: "/db"}
	m := map[string]string{}
	for _, kv := range d.Environ() {
		k, v, _ := cut(kv)
		m[k] = v
	}
	if got := layout.FromEnv(getenv(m)); got != d {
		t.Fatalf("FromEnv(Environ()) = %+v, want %+v", got, d)
	}
	if env := (layout.Dirs{Data: "/d"}).Environ(); !slices.Equal(env, []string{"VOLANT_DATA_DIR=/d"}) {
		t.Fatalf("empty fields must not be set: %q", env)
	}
}

func cut(kv string) (string, string, bool) {
	for i := range kv {
		if kv[i] == '=' {
			return kv[:i], kv[i+1:], true
		}
	}
	return kv, "", false
}

func TestOldStateDirName(t *testing.T) {
	if d := layout.FromEnv(getenv(map[string]string{"VOLANT_STATE_DIR": "/old"})); d.Data != "/old" {
		t.Fatalf("VOLANT_STATE_DIR alone: Data = %q", d.Data)
	}
	d := layout.FromEnv(getenv(map[string]string{"VOLANT_STATE_DIR": "/old", "VOLANT_DATA_DIR": "/new"}))
	if d.Data != "/new" {
		t.Fatalf("VOLANT_DATA_DIR must win over the old name: Data = %q", d.Data)
	}
	if d := layout.FromEnv(nil); d != (layout.Dirs{}) {
		t.Fatalf("FromEnv(nil) = %+v", d)
	}
}

func TestDefaults(t *testing.T) {
	d := layout.Dirs{}.WithDefaults()
	want := layout.Dirs{Data: "/var/lib/volant", RunRoot: "/run/volant/vms", Cache: "/var/lib/volant/cache",
		Kernel: "/var/lib/volant/kernel", DB: "/var/lib/volant/volant.db"}
	if d != want {
		t.Fatalf("defaults %+v, want %+v", d, want)
	}
	// Cache and database follow the data directory; the kernel does not.
	d = layout.Dirs{Data: "/srv/v"}.WithDefaults()
	if d.Cache != "/srv/v/cache" || d.DB != "/srv/v/volant.db" || d.Kernel != "/var/lib/volant/kernel" {
		t.Fatalf("with Data /srv/v: %+v", d)
	}
	e := layout.Dirs{Data: "/srv/v", RunRoot: "/r"}
	for got, want := range map[string]string{
		e.VMDir("web1"):                        "/srv/v/vms/web1",
		e.VMFile("web1", layout.SpecName):      "/srv/v/vms/web1/spec.json",
		e.VMFile("web1", layout.LastErrorName): "/srv/v/vms/web1/last-error.json",
		e.PluginDir("nginx"):                   "/srv/v/plugins/nginx",
		e.RunDir("web1"):                       "/r/web1",
		layout.Dirs{}.RunDir("web1"):           "/run/volant/vms/web1",
	} {
		if got != want {
			t.Errorf("got %s, want %s", got, want)
		}
	}
}

func TestFindBinary(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exe, _ = filepath.EvalSymlinks(exe)
	// A binary next to this test executable is found first.
	name := "volant-layout-test-sibling"
	sib := filepath.Join(filepath.Dir(exe), name)
	if err := os.WriteFile(sib, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Skipf("cannot write next to the test binary: %v", err)
	}
	t.Cleanup(func() { os.Remove(sib) })
	// The same name on PATH loses to the sibling.
	pathDir := t.TempDir()
	onPath := filepath.Join(pathDir, name)
	os.WriteFile(onPath, []byte("#!/bin/sh\n"), 0o755)
	t.Setenv("PATH", pathDir)
	if got := layout.Sibling(name); got != sib {
		t.Fatalf("Sibling = %q, want %q", got, sib)
	}
	if got, err := layout.FindBinary(name, ""); err != nil || got != sib {
		t.Fatalf("FindBinary = %q, %v; want the sibling %s", got, err, sib)
	}
	// Not executable: not a sibling; PATH then.
	os.Chmod(sib, 0o644)
	if got := layout.Sibling(name); got != "" {
		t.Fatalf("a non-executable file is no sibling: %q", got)
	}
	if got, err := layout.FindBinary(name, ""); err != nil || got != onPath {
		t.Fatalf("FindBinary = %q, %v; want %s from PATH", got, err, onPath)
	}
	// Explicit wins, and a missing explicit one is an error, not a fallback.
	if got, err := layout.FindBinary(name, onPath); err != nil || got != onPath {
		t.Fatalf("explicit: %q, %v", got, err)
	}
	if _, err := layout.FindBinary(name, filepath.Join(pathDir, "nope")); err == nil {
		t.Fatal("a missing explicit binary must be an error")
	}
	if _, err := layout.FindBinary("volant-no-such-binary", ""); !errors.Is(err, exec.ErrNotFound) {
		t.Fatalf("nothing anywhere: %v, want exec.ErrNotFound", err)
	}
}
