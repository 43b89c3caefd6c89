package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// dropped are packages volant-launch linked once and must not link again:
// every `volant-launch run` runs their package initializers before it can
// start the hypervisor (bench/launch measures that time). Each was
// replaced by the few lines the launch path needed of it.
var dropped = []string{
	// The jail's cgroup: a mkdir and a few cgroupfs writes (lib/vmm/jail).
	"github.com/containerd/cgroups",
	"github.com/containerd/log",
	"github.com/sirupsen/logrus",
	"google.golang.org/protobuf", // containerd/cgroups' stats types
	"github.com/cilium/ebpf",     // containerd/cgroups' v2 device filter
	"github.com/opencontainers/runtime-spec",
	"github.com/moby/sys/userns",
	// Artifact hashing is crypto/sha256 (lib/launch).
	"github.com/opencontainers/go-digest",
	// Cloud Hypervisor's API is a few HTTP/1.1 requests on a unix socket
	// (lib/vmm/cloudhypervisor's client): no HTTP/2, TLS or certificates.
	"net/http",
	"crypto/tls",
	"crypto/x509",
	// The systemd Starter (D-Bus) is lib/runner/systemd, volantd's alone.
	"github.com/godbus/dbus",
	"github.com/coreos/go-systemd/v22/dbus",
}

func TestDroppedDependencies(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // as make build links it
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	pkgs := strings.Fields(string(out))
	if len(pkgs) < 50 {
		t.Fatalf("go list -deps named %d packages: %s", len(pkgs), out)
	}
	for _, p := range pkgs {
		for _, d := range dropped {
			if p == d || strings.HasPrefix(p, d+"/") {
				t.Errorf("volant-launch links %s again: it runs in every VM start; see the comment on dropped", p)
			}
		}
	}
}
