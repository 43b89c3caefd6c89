package main

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/cli/clitest"
)

// What the host's filesystem allocates for an image differs between hosts.
var (
	reAllocated  = regexp.MustCompile(`"allocated_bytes": \d+`)
	reAllocCells = regexp.MustCompile(`(?m)^(Allocated: +|\S+ +\d+[KMGT]iB +)\d+(B|KiB|MiB)\b`)
)

func maskAllocated(s string) string {
	s = reAllocated.ReplaceAllString(s, `"allocated_bytes": $$N`)
	return reAllocCells.ReplaceAllString(s, "${1}$$USED")
}

// TestVolumeCommands: create, list/show in every form, -v on vms create
// (and its refusals: a bad flag, the one-writer rule), resize, delete
// refused while attached, delete.
func TestVolumeCommands(t *testing.T) {
	d := startDaemon(t)
	tr := &transcript{d: d}
	tr.run(0, "plugins", "install", "--manifest", d.manifest("caddy", "2.8.4", ""))

	tr.all("volumes", "list")
	tr.run(0, "volumes", "create", "data", "--size", "64MiB")
	tr.run(1, "volumes", "create", "data", "--size", "64MiB") // CONFLICT
	tr.run(2, "volumes", "create", "big", "--size", "lots")   // USAGE: not a size
	tr.run(2, "volumes", "create", "Big", "--size", "1G")     // USAGE: the name rule
	tr.run(2, "volumes", "create", "small", "--fs", "vfat", "--size", "1G")
	tr.run(1, "volumes", "create", "tiny", "--size", "1MiB") // INVALID_INPUT from volantd
	tr.run(0, "-o", "json", "volumes", "create", "logs", "--size", "16MiB")

	tr.run(0, "vms", "create", "web1", "--plugin", "caddy", "-v", "data:/data", "-v", "logs:/var/log/app:ro")
	tr.run(2, "vms", "create", "web2", "--plugin", "caddy", "-v", "data")       // USAGE
	tr.run(2, "vms", "create", "web2", "--plugin", "caddy", "-v", "data:/d:x")  // USAGE
	tr.run(1, "vms", "create", "web2", "--plugin", "caddy", "-v", "data:/data") // VOLUME_IN_USE
	tr.run(0, "vms", "create", "web3", "--plugin", "caddy", "-v", "logs:/logs:ro")
	tr.run(1, "vms", "create", "web4", "--plugin", "caddy", "-v", "nope:/data") // NOT_FOUND
	tr.all("volumes", "list")
	tr.all("volumes", "show", "data")
	tr.run(0, "-o", "json", "vms", "show", "web1")

	tr.run(1, "volumes", "resize", "data", "--size", "128MiB") // VOLUME_IN_USE
	tr.run(0, "vms", "stop", "web1")
	tr.run(1, "volumes", "resize", "data", "--size", "32MiB") // volumes only grow
	tr.run(0, "volumes", "resize", "data", "--size", "128MiB")
	tr.run(1, "volumes", "delete", "data") // attached to web1
	tr.run(0, "vms", "delete", "web1")
	tr.run(0, "vms", "delete", "web3")
	tr.run(0, "volumes", "delete", "data")
	tr.run(0, "-q", "volumes", "rm", "logs")
	tr.run(1, "volumes", "show", "data")
	tr.all("volumes", "list")

	// A deployment's volume template.
	for i := 100; i < 104; i++ {
		d.healthy(fmt.Sprintf("192.168.127.%d", i), "")
	}
	tr.run(2, "deployments", "create", "svc", "--plugin", "caddy", "--replicas", "1", "--volume-template", "data:/data")
	tr.run(2, "deployments", "create", "svc", "--plugin", "caddy", "--replicas", "1", "--volume-template", "data:lots:/data")
	tr.run(0, "deployments", "create", "svc", "--plugin", "caddy", "--replicas", "2", "--volume-template", "cache:16MiB:/var/cache")
	d.waitDeployment("svc", 2)
	tr.run(0, "deployments", "show", "svc")
	tr.run(0, "-q", "volumes", "list")
	tr.run(0, "deployments", "scale", "svc", "--replicas", "1")
	d.waitDeployment("svc", 1)
	tr.run(0, "volumes", "show", "cache-2")
	tr.run(0, "deployments", "delete", "svc")
	tr.run(0, "-q", "volumes", "list")
	clitest.Golden(t, "session-volumes", maskAllocated(tr.b.String()))
	if strings.Contains(tr.b.String(), "\"allocated_bytes\": 0") {
		t.Error("a volume was listed with nothing allocated: its image was not made")
	}
}
