package main

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/ipam"
	"github.com/volantvm/volant/lib/store"
	"github.com/volantvm/volant/lib/testutil/kvmtest"
)

// TestKillDuringCreatesThenFailingResumes: volantd is killed with SIGKILL
// while 20 creates are in flight, 3 booting and the rest waiting for a
// boot slot (--max-booting 3), so they have no hypervisor. When it comes
// back the bridge is gone and the plugin's artifact changed, so those
// creates fail when they are resumed. The outcome must be the one without
// the crash, where a create that fails is undone: no VM left failed
// holding its lease (the phantoms of issue 21: 36 after five rounds),
// every lease a live VM's, every interrupted create either adopted (its
// hypervisor runs) or deleted with its reason, and the start-up summary
// counts them.
func TestKillDuringCreatesThenFailingResumes(t *testing.T) {
	kvmtest.Require(t)
	h := newFakeHost(t)
	d1 := h.start(t, "--max-booting", "3")
	ctx := context.Background()
	if _, err := d1.c.InstallPlugin(ctx, h.manifest, client.InstallOptions{}); err != nil {
		t.Fatal(err)
	}
	createThenKill(t, d1, 20)

	// What the kill left: creates cut off before their VM ever ran.
	db := filepath.Join(h.dir, "data", "volant.db")
	st, err := store.Open(ctx, db, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var interrupted []string
	err = st.Read(ctx, func(tx *sql.Tx) error {
		rows, err := tx.Query(`SELECT id FROM vms WHERE step != '' AND started_at IS NULL ORDER BY id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var n string
			if err := rows.Scan(&n); err != nil {
				return err
			}
			interrupted = append(interrupted, n)
		}
		return rows.Err()
	})
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("interrupted creates: %v", interrupted)
	// The host changed meanwhile: no bridge, and the plugin's artifact no
	// longer has its checksum. A create that has to make its tap or start
	// its hypervisor now fails; one whose hypervisor runs is adopted.
	h.ns.Run("ip", "link", "del", "vbr0")
	if err := os.WriteFile(h.artifact, []byte("not the image the manifest names"), 0o644); err != nil {
		t.Fatal(err)
	}

	d2 := h.start(t, "--no-network-setup")
	vms, err := d2.c.ListVMs(ctx, api.VMFilter{})
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]api.VM{}
	for _, v := range vms {
		names[v.Name] = v
		if v.State == api.VMFailed || v.Step != "" {
			t.Errorf("%s is %s (step %q, %s): a phantom", v.Name, v.State, v.Step, v.Error)
		}
	}
	var live []string
	for _, n := range interrupted {
		if v, ok := names[n]; ok {
			if v.PID == 0 {
				t.Errorf("the interrupted create %s is there without a hypervisor: %+v", n, v)
			}
			live = append(live, n)
		}
	}
	st, err = store.Open(ctx, db, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	leases, err := ipam.List(ctx, st)
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != len(vms) {
		t.Errorf("%d leases for %d VMs", len(leases), len(vms))
	}
	for _, l := range leases {
		if _, ok := names[l.VM]; !ok {
			t.Errorf("lease %s of %s, which is not a VM", l.IP, l.VM)
		}
	}
	// Each undone create says why.
	evs, err := d2.c.Events(ctx, api.EventOptions{FromStart: true})
	if err != nil {
		t.Fatal(err)
	}
	last, err := d2.c.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var undone []string
	for {
		ev, err := evs.Next()
		if err != nil {
			t.Fatal(err)
		}
		if ev.Type == api.EventVMDeleted && strings.Contains(string(ev.Data), "create failed after a volantd restart") {
			undone = append(undone, ev.ResourceID)
		}
		if ev.ID >= last.LastEventID {
			break
		}
	}
	evs.Close()
	sort.Strings(undone)
	t.Logf("undone: %v; adopted: %v", undone, live)
	// The boot slots held all but 3 back: most had no hypervisor.
	if len(undone) < len(interrupted)-3 || len(undone) == 0 {
		t.Errorf("interrupted %v: only %v undone", interrupted, undone)
	}
	if all := slices.Sorted(slices.Values(append(append([]string{}, undone...), live...))); !slices.Equal(all, interrupted) {
		t.Errorf("interrupted %v: undone %v, adopted %v", interrupted, undone, live)
	}
	b, err := os.ReadFile(d2.log)
	if err != nil {
		t.Fatal(err)
	}
	summary := ""
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "msg=reconciled ") {
			summary = l
		}
	}
	if want := fmt.Sprintf(" undone=%d ", len(undone)); !strings.Contains(summary, want) || !strings.Contains(summary, " failed=0 ") {
		t.Errorf("the start-up summary does not count the undone creates (want%sfailed=0): %q", want, summary)
	}

	// The same failure without a crash: the create fails and is undone.
	if _, err := d2.c.CreateVM(ctx, api.CreateVMRequest{Name: "nocrash", Plugin: "app"}); err == nil {
		t.Fatal("a create without the bridge succeeded")
	}
	if _, err := d2.c.VM(ctx, "nocrash"); !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("without a crash: %v", err)
	}
	for _, v := range vms {
		d2.c.DeleteVM(ctx, v.Name)
	}
}
