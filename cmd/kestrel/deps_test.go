package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/kestrel/kestrelbuild"
)

// allowed lists what kestrel may link besides the standard library. It is
// an allow-list on purpose: a new dependency must be added here, in a
// reviewed change, after checking what it costs the guest.
var allowed = []string{
	"github.com/volantvm/volant/cmd/kestrel",
	"github.com/volantvm/volant/lib/kestrel", // and its subpackages
	"github.com/volantvm/volant/lib/agentapi",
	"github.com/volantvm/volant/lib/apierr",
	"github.com/volantvm/volant/lib/bootargs",
	"github.com/volantvm/volant/lib/buildinfo",
	"github.com/volantvm/volant/lib/kmod",
	"github.com/volantvm/volant/lib/manifest",
	"github.com/volantvm/volant/lib/names",      // lib/manifest's name rule; stdlib + apierr only
	"github.com/volantvm/volant/lib/didyoumean", // lib/manifest's typo hints; stdlib only
	"github.com/volantvm/volant/lib/agentchan",  // the host-only agent channel's protocol; stdlib, yamux, apierr
	"github.com/hashicorp/yamux",                // the channel's stream multiplexing; stdlib only (~60 KB in the binary)
	"golang.org/x/sys/unix",
	// Atomic writes (resolv.conf, hosts, stage 1's handoff): stdlib only
	// (os, path/filepath, strconv, math/rand/v2); 25 KB more kestrel.
	"github.com/google/renameio/v2",
}

// forbidden are named so a failure says plainly what went wrong.
var forbidden = []string{
	"github.com/volantvm/volant/lib/store", "github.com/volantvm/volant/lib/server",
	"github.com/volantvm/volant/lib/client", "github.com/volantvm/volant/lib/launch",
	"github.com/volantvm/volant/lib/vmm", "github.com/volantvm/volant/lib/ipam",
	"github.com/volantvm/volant/lib/hostnet", "github.com/volantvm/volant/lib/fledge",
	"github.com/volantvm/volant/lib/cli", "github.com/volantvm/volant/lib/initramfs",
	"github.com/volantvm/volant/lib/bootimage", "github.com/volantvm/volant/lib/testutil",
	"github.com/mattn/go-sqlite3", "github.com/containers/image", "github.com/opencontainers/umoci",
	"github.com/google/go-containerregistry", "github.com/u-root/u-root",
	"github.com/modelcontextprotocol", "github.com/mark3labs/mcp-go",
	// The manifest's schema generator: its packages' init would run at boot.
	"github.com/volantvm/volant/lib/manifest/schema", "github.com/invopop/jsonschema", "go.yaml.in/yaml",
	// xz and zstd decoders: guest archives carry modules decompressed
	// (lib/bootimage), so lib/kmod reads plain or gzip'd ones only.
	"github.com/ulikunitz/xz", "github.com/klauspost/compress",
	// How kestrel is built: host code (os/exec, debug/elf).
	"github.com/volantvm/volant/lib/kestrel/kestrelbuild",
	// net/http's HTTP/2, which kestrel's build tags leave out (kestrelbuild).
	"vendor/golang.org/x/net/http2", "net/http/internal/httpcommon",
}

func under(pkg, prefix string) bool { return pkg == prefix || strings.HasPrefix(pkg, prefix+"/") }

func TestImportGraph(t *testing.T) {
	// As kestrel is built: its tags choose files.
	cmd := exec.Command("go", "list", "-tags", strings.Join(kestrelbuild.Tags, ","), "-deps", "-f", "{{.ImportPath}} {{.Standard}} {{len .CgoFiles}}", ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	n := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			t.Fatalf("unexpected go list line %q", line)
		}
		pkg, std, cgo := f[0], f[1] == "true", f[2] != "0"
		n++
		if cgo {
			t.Errorf("%s has cgo files: kestrel must build with CGO_ENABLED=0", pkg)
		}
		for _, bad := range forbidden {
			if under(pkg, bad) {
				t.Errorf("kestrel imports %s, which it must not (see why in deps_test.go's forbidden list)", pkg)
			}
		}
		if std {
			continue
		}
		ok := false
		for _, a := range allowed {
			ok = ok || under(pkg, a)
		}
		if !ok {
			t.Errorf("kestrel imports %s, which is not on the allow-list in deps_test.go", pkg)
		}
	}
	if n < 20 {
		t.Fatalf("go list returned only %d packages; the check is not looking", n)
	}
}
