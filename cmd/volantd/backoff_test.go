package main

import (
	"context"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/testutil/kvmtest"
)

// TestDeploymentWithoutBridgeBacksOff is issue 21's storm on the real
// daemon: with the bridge missing, a deployment of one replica whose tap
// step fails made 4,879 events in 20 s (the replica recreated as fast as
// its own undo woke the reconciler). With the backoff (1 s, doubled with
// each failure) the replica is tried at 0, 1, 3 and 7 s: at most 4 creates
// in 6 s, each a vm.created, ip.leased, ip.released and vm.deleted, and the
// deployment says why.
func TestDeploymentWithoutBridgeBacksOff(t *testing.T) {
	kvmtest.Require(t)
	h := newFakeHost(t)
	d := h.start(t, "--no-network-setup") // and the namespace has no bridge
	ctx := context.Background()
	if _, err := d.c.InstallPlugin(ctx, h.manifest, client.InstallOptions{}); err != nil {
		t.Fatal(err)
	}
	h0, err := d.c.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.c.CreateDeployment(ctx, api.CreateDeploymentRequest{Name: "svc", Plugin: "app", Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	const window = 6 * time.Second
	time.Sleep(window)
	h1, err := d.c.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	evs, err := d.c.Events(ctx, api.EventOptions{Since: h0.LastEventID})
	if err != nil {
		t.Fatal(err)
	}
	defer evs.Close()
	created, total := 0, 0
	types := map[string]int{}
	for total < int(h1.LastEventID-h0.LastEventID) {
		ev, err := evs.Next()
		if err != nil {
			t.Fatal(err)
		}
		total++
		types[ev.Type]++
		if ev.Type == api.EventVMCreated {
			created++
		}
	}
	t.Logf("%d events (%v), %d creates of the replica in %s", h1.LastEventID-h0.LastEventID, types, created, window)
	if created < 2 || created > 4 {
		t.Errorf("%d creates of the replica in %s, want 3 (tries at 0, 1 and 3 s)", created, window)
	}
	// deployment.created and its audit event, then at most 4 tries.
	if n := h1.LastEventID - h0.LastEventID; n > 2+4*4 {
		t.Errorf("%d events in %s", n, window)
	}
	dep, err := d.c.Deployment(ctx, "svc")
	if err != nil || dep.Error == "" || dep.Current != 0 {
		t.Errorf("the deployment does not say why: %+v %v", dep, err)
	}
	t.Logf("the deployment's error: %s", dep.Error)
	if _, err := d.c.DeleteDeployment(ctx, "svc"); err != nil {
		t.Fatal(err)
	}
}
