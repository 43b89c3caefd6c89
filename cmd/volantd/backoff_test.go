package main

import (
	"context"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/testutil/kvmtest"
	"github.com/volantvm/volant/lib/testutil/wait"
)

// TestDeploymentWithoutBridgeBacksOff is issue 21's storm on the real
// daemon: with the bridge missing, a deployment of one replica whose tap
// step fails made 4,879 events in 20 s (the replica recreated as fast as
// its own undo woke the reconciler). With the backoff (1 s, doubled with
// each failure) the replica is tried at 0, 1, 3 and 7 s: each try at least
// its backoff after the one before, each a vm.created, ip.leased,
// ip.released and vm.deleted, and the deployment says why. The gaps are
// read from the events' own times, so a slow host only makes them longer.
func TestDeploymentWithoutBridgeBacksOff(t *testing.T) {
	kvmtest.Require(t)
	h := newFakeHost(t)
	d := h.start(t, "--no-network-setup") // and the namespace has no bridge
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := d.c.InstallPlugin(ctx, h.manifest, client.InstallOptions{}); err != nil {
		t.Fatal(err)
	}
	h0, err := d.c.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	evs, err := d.c.Events(ctx, api.EventOptions{Since: h0.LastEventID})
	if err != nil {
		t.Fatal(err)
	}
	defer evs.Close()
	if _, err := d.c.CreateDeployment(ctx, api.CreateDeploymentRequest{Name: "svc", Plugin: "app", Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	var created []time.Time
	total := 0
	types := map[string]int{}
	for len(created) < 3 {
		ev, err := evs.Next()
		if err != nil {
			t.Fatalf("after %d events (%v): %v", total, types, err)
		}
		total++
		types[ev.Type]++
		if ev.Type == api.EventVMCreated {
			created = append(created, ev.Timestamp)
		}
	}
	t.Logf("%d events (%v) up to the third try, made at +%s and +%s", total, types,
		created[1].Sub(created[0]), created[2].Sub(created[0]))
	for i, want := range []time.Duration{time.Second, 2 * time.Second} {
		if gap := created[i+1].Sub(created[i]); gap < want {
			t.Errorf("try %d came %s after try %d, want at least %s", i+2, gap, i+1, want)
		}
	}
	// deployment.created and its audit event, two tries, the third's lease
	// and create.
	if total > 2+2*4+2 {
		t.Errorf("%d events up to the third try", total)
	}
	var dep *api.Deployment
	if err := wait.For(20*time.Second, func() bool {
		dep, err = d.c.Deployment(ctx, "svc")
		return err == nil && dep.Error != "" && dep.Current == 0
	}); err != nil {
		t.Fatalf("the deployment does not say why: %+v %v", dep, err)
	}
	t.Logf("the deployment's error: %s", dep.Error)
	if _, err := d.c.DeleteDeployment(ctx, "svc"); err != nil {
		t.Fatal(err)
	}
}
