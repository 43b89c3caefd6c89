package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/client"
)

// TestVMLiveness boots a real guest (QEMU TCG) as a deployment's replica,
// kills its workload (restart "no": it stays dead and the replica
// unhealthy), and checks that volantd replaces the replica once it has
// been unhealthy for --liveness-grace: a delete that says why, and a new
// guest of the same name serving again.
func TestVMLiveness(t *testing.T) {
	h := newQEMUHost(t)
	k, kestrel := h.k, h.kestrel
	const grace = 6 * time.Second
	d := h.daemon(t, "--liveness-grace", grace.String())
	ctx := context.Background()
	if _, err := d.c.InstallPlugin(ctx, svcPlugin(t, filepath.Join(h.dir, "data"), k.ModulesDir, kestrel, "1", "/health"), client.InstallOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.c.CreateDeployment(ctx, api.CreateDeploymentRequest{Name: "svc", Plugin: "svc", Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	var first *api.VM
	for t0 := time.Now(); ; time.Sleep(500 * time.Millisecond) {
		var err error
		if first, err = d.c.WaitVM(ctx, "svc-1", api.VMRunning, 300*time.Second); err == nil {
			break
		}
		if time.Since(t0) > 300*time.Second {
			t.Fatal(err)
		}
	}
	evctx, cancel := context.WithTimeout(ctx, 6*time.Minute)
	defer cancel()
	evs, err := d.c.Events(evctx, api.EventOptions{Types: []string{api.EventVMUnhealthy, api.EventVMDeleted, api.EventVMHealthy}})
	if err != nil {
		t.Fatal(err)
	}
	defer evs.Close()
	if b, err := getIn(h.ns, "http://"+first.IP+"/cgi-bin/die", 5*time.Second); err != nil && !strings.Contains(b, "dying") {
		t.Logf("die: %q %v (the connection may end with the workload)", b, err)
	}
	var unhealthyAt, deletedAt time.Time
	var reason string
	for {
		e, err := evs.Next()
		if err != nil {
			t.Fatalf("events: %v", err)
		}
		if e.ResourceID != "svc-1" {
			continue
		}
		switch e.Type {
		case api.EventVMUnhealthy:
			if unhealthyAt.IsZero() {
				unhealthyAt = e.Timestamp
			}
		case api.EventVMDeleted:
			var dd struct{ Reason string }
			json.Unmarshal(e.Data, &dd)
			deletedAt, reason = e.Timestamp, dd.Reason
		}
		if !deletedAt.IsZero() && e.Type == api.EventVMHealthy {
			break
		}
	}
	if unhealthyAt.IsZero() || deletedAt.Sub(unhealthyAt) < grace || !strings.Contains(reason, "liveness grace") {
		t.Fatalf("unhealthy at %s, deleted at %s (%q); want the delete at least %s after", unhealthyAt, deletedAt, reason, grace)
	}
	t.Logf("svc-1 unhealthy at %s, replaced %s later (grace %s): %s", unhealthyAt.Format(time.TimeOnly),
		deletedAt.Sub(unhealthyAt).Round(time.Millisecond), grace, reason)
	v, err := d.c.VM(ctx, "svc-1")
	if err != nil || v.State != api.VMRunning || v.PID == first.PID {
		t.Fatalf("the new svc-1: %+v %v (the first had pid %d)", v, err, first.PID)
	}
	if b, err := getIn(h.ns, "http://"+v.IP+"/name.txt", 5*time.Second); err != nil || b != "svc-1" {
		t.Fatalf("the new svc-1 answers %q %v", b, err)
	}
	if _, err := d.c.DeleteDeployment(ctx, "svc"); err != nil {
		t.Fatal(err)
	}
}
