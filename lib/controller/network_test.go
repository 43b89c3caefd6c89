package controller_test

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"sync"
	"testing"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/ipam"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/layout"
	"github.com/volantvm/volant/lib/store"
)

// TestSetNetwork: the guest subnet changes while no VM exists, the host
// side follows (Renetwork), VMs then lease from the new pool and kestrel
// reports to its gateway; another subnet is refused while a VM holds an
// address; the same subnet again is a no-op; the subnet is stored.
func TestSetNetwork(t *testing.T) {
	f := newFixture(t)
	var mu sync.Mutex
	var hostSide []string
	c, _ := f.controllerWith(controller.Config{Prober: nil, MaxBooting: -1,
		Renetwork: func(_ context.Context, p ipam.Pool) (string, error) {
			mu.Lock()
			defer mu.Unlock()
			hostSide = append(hostSide, p.Subnet.String())
			return p.Gateway.String(), nil
		}})
	f.plugin(c, "web")
	if got := c.Network().Subnet; got != ipam.DefaultSubnet {
		t.Fatalf("subnet before: %s", got)
	}
	n, changed, err := c.SetNetwork(f.ctx, "10.244.3.7/24") // host bits masked
	if err != nil || !changed {
		t.Fatalf("SetNetwork: %v changed=%v", err, changed)
	}
	if n.Subnet != "10.244.3.0/24" || n.Gateway != "10.244.3.1" || c.Network() != n {
		t.Fatalf("network after: %+v, controller says %+v", n, c.Network())
	}
	if len(hostSide) != 1 || hostSide[0] != "10.244.3.0/24" {
		t.Fatalf("host side changed for %v", hostSide)
	}
	var set controller.NetworkSetting
	if found, err := f.st.Setting(f.ctx, store.SettingNetwork, &set); err != nil || !found || set.Subnet != "10.244.3.0/24" {
		t.Fatalf("stored setting %+v found=%v err=%v", set, found, err)
	}

	vm, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "a", Plugin: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if ip := netip.MustParseAddr(vm.IP); !netip.MustParsePrefix("10.244.3.0/24").Contains(ip) {
		t.Fatalf("VM address %s is not in the new subnet", vm.IP)
	}
	var spec launch.Spec
	if b, err := os.ReadFile(layout.Dirs{Data: f.dir}.VMFile("a", layout.SpecName)); err != nil {
		t.Fatal(err)
	} else if err := json.Unmarshal(b, &spec); err != nil {
		t.Fatal(err)
	}
	if spec.APIHost != "10.244.3.1" {
		t.Fatalf("kestrel reports to %q, want the new gateway", spec.APIHost)
	}

	// The same subnet with a VM: nothing to do.
	if _, changed, err := c.SetNetwork(f.ctx, "10.244.3.0/24"); err != nil || changed {
		t.Fatalf("same subnet again: changed=%v err=%v", changed, err)
	}
	// Another one: refused, nothing changed.
	_, _, err = c.SetNetwork(f.ctx, "10.244.4.0/24")
	if !apierr.Is(err, apierr.Conflict) {
		t.Fatalf("another subnet with a VM: %v, want CONFLICT", err)
	}
	if c.Network().Subnet != "10.244.3.0/24" || len(hostSide) != 1 {
		t.Fatalf("a refused change changed %+v (host side %v)", c.Network(), hostSide)
	}
	if _, err := c.DeleteVM(f.ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, changed, err := c.SetNetwork(f.ctx, "10.244.4.0/24"); err != nil || !changed {
		t.Fatalf("after the VM's delete: changed=%v err=%v", changed, err)
	}
	if _, _, err := c.SetNetwork(f.ctx, "300.0.0.0/24"); !apierr.Is(err, apierr.InvalidInput) {
		t.Fatalf("bad subnet: %v", err)
	}
}

// TestSetNetworkUnsupported: a daemon that cannot change its host network
// says so and keeps its subnet.
func TestSetNetworkUnsupported(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controller()
	if _, _, err := c.SetNetwork(f.ctx, "10.9.0.0/24"); !apierr.Is(err, apierr.NotSupported) {
		t.Fatalf("SetNetwork without Renetwork: %v", err)
	}
	if _, changed, err := c.SetNetwork(f.ctx, ipam.DefaultSubnet); err != nil || changed {
		t.Fatalf("the same subnet: changed=%v err=%v", changed, err)
	}
}
