// Package kestrelbuild is the one statement of how kestrel is built. The
// Makefile (through make.go beside this file) and the tests' kestrel
// (lib/testutil/guesttest) both build it with Command, and Check tells
// whether a binary was built that way: guesttest refuses a $VOLANT_KESTREL
// that was not, so a build site that drops a flag fails the real-VM tests.
//
// kestrel is PID 1 of every guest, and under software emulation each
// distinct piece of code it runs is translated before it runs and each
// page it touches is faulted in: what the binary links costs every boot.
// Hence:
//
//   - CGO_ENABLED=0: static, no libc in the guest;
//   - -trimpath and -ldflags "-s -w": no paths, symbol table or DWARF;
//   - -tags nethttpomithttp2: net/http without its bundled HTTP/2 (about
//     550 KB of the binary and its package-level tables). kestrel needs none:
//     its API server, proxy, control-plane client and health probes speak
//     HTTP/1.1, and its https client (health probes of https:// URLs)
//     negotiates HTTP/1.1 without it.
//
// This package runs on the host only; kestrel must never import it
// (cmd/kestrel/deps_test.go).
package kestrelbuild

import (
	"context"
	"debug/buildinfo"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
)

// Package is kestrel's main package, relative to the module root.
const Package = "./cmd/kestrel"

// Tags are kestrel's build tags.
var Tags = []string{"nethttpomithttp2"}

// versionVar is the variable the version is stamped into.
const versionVar = "github.com/volantvm/volant/lib/buildinfo.Version"

// Options are what differs between builds of kestrel.
type Options struct {
	Go      string // the go command; "go" when empty
	Dir     string // the module root, where the command runs
	Out     string // the binary to write
	Version string // stamped into lib/buildinfo.Version; must not be empty
}

// Command returns the go build that writes kestrel to o.Out. Run it with
// the caller's environment; it sets CGO_ENABLED=0 itself.
func Command(ctx context.Context, o Options) (*exec.Cmd, error) {
	if o.Out == "" || o.Version == "" {
		return nil, errors.New("kestrelbuild: an output path and a version are required")
	}
	goCmd := o.Go
	if goCmd == "" {
		goCmd = "go"
	}
	// Without a version kestrel would read its build info at every start
	// (lib/buildinfo), which a release build does not do.
	cmd := exec.CommandContext(ctx, goCmd, "build", "-trimpath",
		"-tags", strings.Join(Tags, ","),
		"-ldflags", "-s -w -X "+versionVar+"="+o.Version,
		"-o", o.Out, Package)
	cmd.Dir = o.Dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	return cmd, nil
}

// Check returns nil when the binary at path was built as Command builds,
// else an error naming every difference.
func Check(path string) error {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading the build info of %s: %w", path, err)
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	var bad []string
	if settings["CGO_ENABLED"] != "0" {
		bad = append(bad, "not built with CGO_ENABLED=0")
	}
	if settings["-trimpath"] != "true" {
		bad = append(bad, "not built with -trimpath")
	}
	have := strings.Split(settings["-tags"], ",")
	for _, tag := range Tags {
		if !slices.Contains(have, tag) {
			bad = append(bad, "not built with -tags "+tag)
		}
	}
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	defer f.Close()
	if f.Section(".symtab") != nil {
		bad = append(bad, "has a symbol table (not linked with -s)")
	}
	if f.Section(".debug_info") != nil || f.Section(".zdebug_info") != nil {
		bad = append(bad, "has DWARF (not linked with -w)")
	}
	if bad != nil {
		return fmt.Errorf("%s was not built as kestrel is built (lib/kestrel/kestrelbuild): %s", path, strings.Join(bad, "; "))
	}
	return nil
}
