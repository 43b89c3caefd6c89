package controller_test

import (
	"testing"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/ipam"
)

// TestInterruptedCreateThatFailsIsUndone: after a crash, an interrupted
// create that fails when it is resumed is undone (deleted, its lease and
// tap freed), as the same failure is without a crash; an interrupted start
// of a VM that ran before stays failed with its lease, as a failed start
// does. The report and the summary say so (resumed=0 hid them).
func TestInterruptedCreateThatFailsIsUndone(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controller()
	f.plugin(c, "web")
	for _, n := range []string{"midcreate", "midstart"} {
		if _, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: n, Plugin: "web"}); err != nil {
			t.Fatal(err)
		}
		f.rt.Kill(n, nil)
	}
	eventuallyState(t, c, "midcreate", api.VMCrashed)
	eventuallyState(t, c, "midstart", api.VMCrashed)
	// What a kill -9 leaves: a create cut off before its first run, and a
	// start of a VM that ran before, both at the tap step.
	f.exec(`UPDATE vms SET state = 'starting', step = 'tap', pid = NULL, supervisor = NULL, vmm = NULL, started_at = NULL, error = '' WHERE id = 'midcreate'`)
	f.exec(`UPDATE vms SET state = 'starting', step = 'tap', pid = NULL, supervisor = NULL, vmm = NULL, error = '' WHERE id = 'midstart'`)
	f.nw.SetNoBridge(true) // and now the tap step fails

	c2, rep := f.controller()
	if sorted(rep.Undone) != "midcreate" || sorted(rep.Failed) != "midstart" || len(rep.Resumed) != 0 {
		t.Fatalf("undone %v, failed %v, resumed %v", rep.Undone, rep.Failed, rep.Resumed)
	}
	if _, err := c2.VM(f.ctx, "midcreate"); !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("the interrupted create is still there: %v", err)
	}
	if v, err := c2.VM(f.ctx, "midstart"); err != nil || v.State != api.VMFailed || v.IP == "" {
		t.Fatalf("the interrupted start: %+v %v", v, err)
	}
	leases, _ := ipam.List(f.ctx, f.st)
	if len(leases) != 1 || leases[0].VM != "midstart" {
		t.Fatalf("leases %+v", leases)
	}
	if _, ok := f.nw.Taps()["vt-midcreate"]; ok {
		t.Fatal("the undone create's tap is left")
	}
	// The same failure without a crash: the create fails and is undone.
	if _, err := c2.CreateVM(f.ctx, api.CreateVMRequest{Name: "nocrash", Plugin: "web"}); err == nil {
		t.Fatal("a create without a bridge succeeded")
	}
	if _, err := c2.VM(f.ctx, "nocrash"); !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("without a crash: %v", err)
	}
	evs, _ := f.st.EventsSince(f.ctx, 0, 0)
	var reasons []string
	for _, e := range evs {
		if e.Type == api.EventVMDeleted && (e.ResourceID == "midcreate" || e.ResourceID == "nocrash") {
			reasons = append(reasons, e.ResourceID+": "+string(e.Data))
		}
	}
	if len(reasons) != 2 {
		t.Fatalf("vm.deleted events: %v", reasons)
	}
	t.Log(reasons)
}
