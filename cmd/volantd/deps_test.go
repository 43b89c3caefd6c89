package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// forbiddenDeps are what volantd must not link. Image builds run the
// fledge command in a process of its own (lib/fledge/fledgecmd), so the
// image libraries' code, its package-initialisation heap and its share of
// read-only data stay out of the daemon's resident memory (bench/README.md,
// volantd-scale: idle RSS).
var forbiddenDeps = []string{
	"github.com/containers/image",
	"github.com/containers/storage",
	"github.com/opencontainers/umoci",
	"github.com/sigstore",
	"github.com/json-iterator/go",
	"github.com/BurntSushi/toml",
	"github.com/schollz/progressbar",
	// Its package initialisation compiles regexps (90 KiB of heap in
	// every start); crypto/sha256 and encoding/hex do what volantd needs.
	"github.com/opencontainers/go-digest",
	// lib/fledge itself and its image half; lib/fledge/fledgecmd and
	// lib/fledge/progress (standard library only) are what volantd uses.
	"github.com/volantvm/volant/lib/fledge/ociimage",
	"github.com/volantvm/volant/lib/fledge/ext4",
	"github.com/volantvm/volant/lib/fledge/progress/bar",
}

// TestDependencies lists volantd's packages as its build links them (the
// Makefile's tags) and fails on any under forbiddenDeps, or on lib/fledge.
func TestDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-tags", "containers_image_openpgp libsqlite3", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	pkgs := strings.Fields(string(out))
	if len(pkgs) < 50 || !slices.Contains(pkgs, "github.com/volantvm/volant/lib/controller") {
		t.Fatalf("go list named %d packages, without lib/controller: %q", len(pkgs), out)
	}
	for _, p := range pkgs {
		if p == "github.com/volantvm/volant/lib/fledge" {
			t.Errorf("volantd links lib/fledge: image builds belong in the fledge command (lib/fledge/fledgecmd runs it)")
		}
		for _, bad := range forbiddenDeps {
			if p == bad || strings.HasPrefix(p, bad+"/") {
				t.Errorf("volantd links %s: image builds belong in the fledge command (lib/fledge/fledgecmd runs it)", p)
			}
		}
	}
}
