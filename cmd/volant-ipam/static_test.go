package main

import (
	"debug/buildinfo"
	"debug/elf"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestBuiltStatic checks the volant-ipam the Makefile builds
// ($VOLANT_BIN/volant-ipam, which `make test` provides and CI demands):
// statically linked, with SQLite inside rather than Debian's libsqlite3,
// so no dynamic loader runs at each of its starts (see the Makefile's
// IPAM_LDFLAGS).
func TestBuiltStatic(t *testing.T) {
	dir := os.Getenv("VOLANT_BIN")
	if dir == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("VOLANT_BIN is not set: CI checks the volant-ipam `make build` writes")
		}
		t.Skip("VOLANT_BIN is not set (make test sets it)")
	}
	bin := filepath.Join(dir, "volant-ipam")
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s asks for a dynamic loader (PT_INTERP): it is not statically linked", bin)
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		t.Fatal(err)
	}
	if len(libs) > 0 {
		t.Errorf("%s needs shared libraries %v", bin, libs)
	}
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range info.Settings {
		if s.Key == "-tags" && slices.Contains(strings.Split(s.Value, ","), "libsqlite3") {
			t.Errorf("%s was built with the libsqlite3 tag (tags %s): it should carry go-sqlite3's own SQLite", bin, s.Value)
		}
	}
}
