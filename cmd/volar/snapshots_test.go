package main

import (
	"fmt"
	"testing"

	"github.com/volantvm/volant/lib/cli/clitest"
)

// TestSnapshotCommands: vms snapshot, snapshots list/show in every form,
// vms create --from-snapshot (and its refusals), vms restore, deployments
// create --from-snapshot, delete refused while in use, delete.
func TestSnapshotCommands(t *testing.T) {
	d := startDaemon(t)
	tr := &transcript{d: d}
	tr.run(0, "plugins", "install", "--manifest", d.manifest("caddy", "2.8.4", ""))
	tr.run(0, "plugins", "install", "--manifest", d.manifest("nginx", "1.27.0", ""))
	tr.run(0, "vms", "create", "web1", "--plugin", "caddy", "--memory", "256")

	tr.all("snapshots", "list")
	tr.run(0, "vms", "snapshot", "web1", "--name", "warm")
	tr.run(1, "vms", "snapshot", "web1", "--name", "warm")  // CONFLICT
	tr.run(2, "vms", "snapshot", "web1", "--name", "Warm!") // USAGE: the name rule
	tr.run(1, "vms", "snapshot", "nope", "--name", "cold")  // NOT_FOUND
	tr.all("snapshots", "list")
	tr.all("snapshots", "show", "warm")

	tr.run(2, "vms", "create", "web2")                                                 // USAGE: no plugin, no snapshot
	tr.run(1, "vms", "create", "web2", "--from-snapshot", "warm", "--plugin", "nginx") // INVALID_INPUT
	tr.run(1, "vms", "create", "web2", "--from-snapshot", "warm", "--memory", "128")   // INVALID_INPUT
	tr.run(1, "vms", "create", "web2", "--from-snapshot", "nope")                      // NOT_FOUND
	tr.run(0, "vms", "create", "web2", "--from-snapshot", "warm")
	tr.run(0, "-o", "json", "snapshots", "show", "warm")
	tr.run(1, "snapshots", "delete", "warm") // CONFLICT: web2 uses it

	tr.run(0, "vms", "create", "other", "--plugin", "nginx")
	tr.run(1, "vms", "restore", "other", "warm") // INVALID_INPUT: another plugin
	tr.run(0, "vms", "restore", "web1", "warm")
	for i := 100; i < 106; i++ {
		d.healthy(fmt.Sprintf("192.168.127.%d", i), "")
	}
	tr.run(0, "deployments", "create", "svc", "--from-snapshot", "warm", "--replicas", "1")
	d.waitDeployment("svc", 1)
	tr.run(0, "deployments", "show", "svc")
	tr.run(0, "deployments", "delete", "svc")
	for _, vm := range []string{"web1", "web2", "other"} {
		tr.run(0, "-q", "vms", "delete", vm)
	}
	tr.run(0, "snapshots", "delete", "warm")
	tr.run(1, "snapshots", "show", "warm")
	tr.all("snapshots", "list")
	clitest.Golden(t, "session-snapshots", tr.b.String())
}
