package controller_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/controller/controllertest"
	"github.com/volantvm/volant/lib/hostnet"
	"github.com/volantvm/volant/lib/portmap"
	"github.com/volantvm/volant/lib/testutil/wait"
)

func pm(t *testing.T, specs ...string) []portmap.Mapping {
	t.Helper()
	ms, err := portmap.ParseAll(specs)
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

// eventuallyPublished waits until the fake network publishes owner's ports
// to exactly backends.
func eventuallyPublished(t *testing.T, nw *controllertest.Network, owner hostnet.PortOwner, backends ...string) {
	t.Helper()
	var set hostnet.PortSet
	var ok bool
	if err := wait.For(5*time.Second, func() bool {
		set, ok = nw.Published()[owner]
		return ok && strings.Join(set.Backends, ",") == strings.Join(backends, ",")
	}); err != nil {
		t.Fatalf("%s publishes %+v (%v), want backends %v (%v)", owner, set, ok, backends, err)
	}
}

// TestPublishedPorts (fakes): a VM's ports are published to its address
// from its create until its delete; a deployment's follow its healthy
// replicas; taken host ports are refused before anything is made; a
// restarted controller rebuilds what the database says and removes the
// ports of owners that are gone.
func TestPublishedPorts(t *testing.T) {
	f := newFixture(t)
	pr := controllertest.NewProber()
	c, _ := f.controllerWith(controller.Config{Prober: pr, MaxBooting: -1})
	f.plugin(c, "web")

	vm, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "web1", Plugin: "web", Ports: pm(t, "8080:80", "127.0.0.1:8443:443")})
	if err != nil {
		t.Fatal(err)
	}
	if got := portmap.Strings(vm.Ports); strings.Join(got, " ") != "8080:80/tcp 127.0.0.1:8443:443/tcp" {
		t.Fatalf("created VM's ports: %v", got)
	}
	// Published when the create answers, to the VM's address.
	if set := f.nw.Published()[hostnet.VMPorts("web1")]; strings.Join(set.Backends, ",") != vm.IP || len(set.Ports) != 2 {
		t.Fatalf("published at create: %+v", set)
	}
	// Taken ports: by another VM (any address overlaps), by a host
	// listener; nothing is made for a refused create.
	f.nw.Listen(9000)
	for _, tc := range []struct {
		ports []string
		want  apierr.Code
	}{
		{[]string{"10.0.0.1:8080:80"}, apierr.PortInUse},
		{[]string{"9000:80"}, apierr.PortInUse},
		{[]string{"9001:80", "9001:81"}, apierr.InvalidInput},
		{[]string{"9002:80/sctp"}, apierr.InvalidInput},
	} {
		ms := make([]portmap.Mapping, 0)
		for _, s := range tc.ports {
			m, err := portmap.Parse(s)
			if err != nil {
				m = portmap.Mapping{HostPort: 9002, GuestPort: 80, Protocol: "sctp"}
			}
			ms = append(ms, m)
		}
		_, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "web2", Plugin: "web", Ports: ms})
		if apierr.CodeOf(err) != tc.want {
			t.Errorf("ports %v: %v, want %s", tc.ports, err, tc.want)
		}
		if _, err := c.VM(f.ctx, "web2"); !apierr.Is(err, apierr.NotFound) {
			t.Fatalf("a refused create left VM web2: %v", err)
		}
	}
	if _, err := c.CreateDeployment(f.ctx, api.CreateDeploymentRequest{Name: "svc", Plugin: "web", Replicas: 1, Ports: pm(t, "8443:80")}); apierr.CodeOf(err) != apierr.PortInUse {
		t.Fatalf("a deployment on a VM's port: %v", err)
	}

	// A deployment: its port goes to the healthy replicas only.
	d, err := c.CreateDeployment(f.ctx, api.CreateDeploymentRequest{Name: "svc", Plugin: "web", Replicas: 3, Ports: pm(t, "9090:80")})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Ports) != 1 || len(d.Endpoints) != 0 {
		t.Fatalf("new deployment: %+v", d)
	}
	eventuallyPublished(t, f.nw, hostnet.DeploymentPorts("svc"))
	ips := map[string]netip.Addr{}
	deadline := time.Now().Add(5 * time.Second)
	for len(ips) < 3 {
		vms, _ := c.ListVMs(f.ctx, api.VMFilter{Deployment: "svc"})
		for _, v := range vms {
			if v.IP != "" {
				ips[v.Name] = netip.MustParseAddr(v.IP)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("replicas: %v", ips)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, n := range []string{"svc-1", "svc-2", "svc-3"} {
		st := controllertest.Healthy(n)
		pr.Set(ips[n], &st)
	}
	eventuallyPublished(t, f.nw, hostnet.DeploymentPorts("svc"), ips["svc-1"].String(), ips["svc-2"].String(), ips["svc-3"].String())
	// report is a replica's kestrel posting its status, which the
	// controller's polls (every 50 ms here) then also read, as they would
	// from a real guest.
	report := func(name string, st agentapi.Status) {
		t.Helper()
		pr.Set(ips[name], &st)
		if err := c.Report(f.ctx, name, st, netip.Addr{}); err != nil {
			t.Fatal(err)
		}
	}
	// svc-2 fails its check: it leaves the set, and rejoins when it passes.
	sick := controllertest.Healthy("svc-2")
	sick.Health.State = agentapi.HealthUnhealthy
	report("svc-2", sick)
	eventuallyPublished(t, f.nw, hostnet.DeploymentPorts("svc"), ips["svc-1"].String(), ips["svc-3"].String())
	if d, _ := c.Deployment(f.ctx, "svc"); strings.Join(d.Endpoints, ",") != "svc-1,svc-3" {
		t.Fatalf("endpoints while svc-2 is unhealthy: %v", d.Endpoints)
	}
	report("svc-2", controllertest.Healthy("svc-2"))
	eventuallyPublished(t, f.nw, hostnet.DeploymentPorts("svc"), ips["svc-1"].String(), ips["svc-2"].String(), ips["svc-3"].String())

	// Endpoints say where the kernel sends connections: while the rules
	// that drop an unhealthy replica are still being written, it is still
	// an endpoint (a client that waits for the set to change and then
	// sends requests must not reach it).
	release := f.nw.HoldPorts()
	report("svc-3", sick3())
	for deadline := time.Now().Add(5 * time.Second); len(f.nw.Held()) == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no rules were written after svc-3 turned unhealthy")
		}
	}
	if d, _ := c.Deployment(f.ctx, "svc"); strings.Join(d.Endpoints, ",") != "svc-1,svc-2,svc-3" {
		t.Errorf("endpoints while the rules dropping svc-3 are being written: %v", d.Endpoints)
	}
	release()
	eventuallyPublished(t, f.nw, hostnet.DeploymentPorts("svc"), ips["svc-1"].String(), ips["svc-2"].String())
	if d, _ := c.Deployment(f.ctx, "svc"); strings.Join(d.Endpoints, ",") != "svc-1,svc-2" {
		t.Fatalf("endpoints once svc-3 is dropped: %v", d.Endpoints)
	}
	report("svc-3", controllertest.Healthy("svc-3"))
	eventuallyPublished(t, f.nw, hostnet.DeploymentPorts("svc"), ips["svc-1"].String(), ips["svc-2"].String(), ips["svc-3"].String())

	// Deleting the VM removes its ports before the answer.
	if _, err := c.DeleteVM(f.ctx, "web1"); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.nw.Published()[hostnet.VMPorts("web1")]; ok {
		t.Fatal("web1's ports are published after its delete")
	}
	// Its port is free again.
	if _, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "web3", Plugin: "web", Ports: pm(t, "8080:80")}); err != nil {
		t.Fatalf("reusing a freed port: %v", err)
	}

	// A restart rebuilds the rules from the database and removes strays.
	f.nw.DelPorts(f.ctx, hostnet.VMPorts("web3"))
	f.nw.SetPorts(f.ctx, hostnet.PortSet{Owner: hostnet.VMPorts("ghost"), Ports: pm(t, "7777:77"), Backends: []string{"192.168.127.250"}})
	c, _ = f.controllerWith(controller.Config{Prober: pr, MaxBooting: -1})
	pub := f.nw.Published()
	if _, ok := pub[hostnet.VMPorts("ghost")]; ok {
		t.Fatal("a stray owner's ports survived reconciliation")
	}
	if _, ok := pub[hostnet.VMPorts("web3")]; !ok {
		t.Fatal("reconciliation did not rebuild web3's ports")
	}

	// Deleting the deployment removes its ports.
	if _, err := c.DeleteDeployment(f.ctx, "svc"); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.nw.Published()[hostnet.DeploymentPorts("svc")]; ok {
		t.Fatal("svc's ports are published after its delete")
	}
}

func sick3() agentapi.Status {
	st := controllertest.Healthy("svc-3")
	st.Health.State = agentapi.HealthUnhealthy
	return st
}
