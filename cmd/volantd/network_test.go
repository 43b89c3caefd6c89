package main

import (
	"context"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/testutil/kvmtest"
)

// TestSetNetwork: PUT /api/v1/network (what volant-kubelet does with its
// node's podCIDR) re-addresses the real bridge and moves kestrel's
// endpoint to the new gateway; VMs then lease from the new subnet; another
// subnet is refused while a VM holds an address; a restarted volantd keeps
// the subnet over its --subnet flag.
func TestSetNetwork(t *testing.T) {
	kvmtest.Require(t)
	h := newFakeHost(t)
	d := h.start(t, "--subnet", "192.168.127.0/24")
	ctx := context.Background()
	addrs := func() string { return h.ns.Run("ip", "-4", "-o", "addr", "show", "dev", "vbr0") }
	dials := func(addr string) bool {
		ok := false
		h.ns.Do(func() error {
			c, err := net.DialTimeout("tcp", addr, 2*time.Second)
			if err == nil {
				c.Close()
				ok = true
			}
			return nil
		})
		return ok
	}
	if !strings.Contains(addrs(), "192.168.127.1/24") || !dials("192.168.127.1:7070") {
		t.Fatalf("before: bridge %q, agent endpoint on the old gateway: %v", addrs(), dials("192.168.127.1:7070"))
	}

	n, err := d.c.SetNetwork(ctx, "10.244.7.0/24")
	if err != nil {
		t.Fatal(err)
	}
	if n.Subnet != "10.244.7.0/24" || n.Gateway != "10.244.7.1" {
		t.Fatalf("network %+v", n)
	}
	if a := addrs(); !strings.Contains(a, "10.244.7.1/24") || strings.Contains(a, "192.168.127.1") {
		t.Fatalf("bridge after: %q", a)
	}
	if !dials("10.244.7.1:7070") {
		t.Fatal("kestrel's endpoint is not on the new gateway")
	}
	if hl, err := d.c.Health(ctx); err != nil || hl.Network.Subnet != "10.244.7.0/24" {
		t.Fatalf("/healthz network %+v %v", hl, err)
	}

	if _, err := d.c.InstallPlugin(ctx, h.manifest, client.InstallOptions{}); err != nil {
		t.Fatal(err)
	}
	vm, err := d.c.CreateVM(ctx, api.CreateVMRequest{Name: "a", Plugin: "app"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(vm.IP, "10.244.7.") {
		t.Fatalf("VM address %s", vm.IP)
	}
	if _, err := d.c.SetNetwork(ctx, "10.244.7.0/24"); err != nil {
		t.Fatalf("the same subnet with a VM: %v", err)
	}
	if _, err := d.c.SetNetwork(ctx, "10.244.8.0/24"); !apierr.Is(err, apierr.Conflict) {
		t.Fatalf("another subnet with a VM: %v", err)
	}

	// Restarted with the old flag: the stored subnet wins, the VM keeps
	// its address.
	d.cmd.Process.Signal(syscall.SIGTERM)
	<-d.done
	d2 := h.start(t, "--subnet", "192.168.127.0/24")
	if n, err := d2.c.Network(ctx); err != nil || n.Subnet != "10.244.7.0/24" {
		t.Fatalf("after a restart: %+v %v", n, err)
	}
	if a := addrs(); !strings.Contains(a, "10.244.7.1/24") || strings.Contains(a, "192.168.127.1") {
		t.Fatalf("bridge after the restart: %q", a)
	}
	if v, err := d2.c.VM(ctx, "a"); err != nil || v.IP != vm.IP {
		t.Fatalf("VM after the restart: %+v %v", v, err)
	}
}
