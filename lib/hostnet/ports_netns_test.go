package hostnet

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/portmap"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// portLab is a "host" namespace with bridge vbr0 (192.168.127.1/24),
// "guests" (namespaces on the bridge through veths, each serving HTTP on
// port 80 with its own name) and a "client" namespace reaching the host
// through a veth (10.77.0.2 → 10.77.0.1), as a machine on the LAN would.
type portLab struct {
	host, client *netnstest.NS
	guests       []*netnstest.NS
	ips          []string
}

func newPortLab(t *testing.T, n int) *portLab {
	t.Helper()
	l := &portLab{host: newNS(t), client: netnstest.New(t)}
	h := l.host
	h.Run("ip", "link", "add", "vbr0", "type", "bridge")
	h.Run("ip", "addr", "add", "192.168.127.1/24", "dev", "vbr0")
	h.Run("ip", "link", "set", "vbr0", "up")
	h.Run("sysctl", "-qw", "net.ipv4.ip_forward=1")
	h.Run("ip", "link", "add", "hc", "type", "veth", "peer", "name", "eth0", "netns", l.client.Name)
	h.Run("ip", "addr", "add", "10.77.0.1/24", "dev", "hc")
	h.Run("ip", "link", "set", "hc", "up")
	l.client.Run("ip", "addr", "add", "10.77.0.2/24", "dev", "eth0")
	l.client.Run("ip", "link", "set", "eth0", "up")
	for i := range n {
		g := netnstest.New(t)
		ip := fmt.Sprintf("192.168.127.%d", 100+i)
		veth := fmt.Sprintf("vg%d", i)
		h.Run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", g.Name)
		h.Run("ip", "link", "set", veth, "master", "vbr0", "up")
		g.Run("ip", "addr", "add", ip+"/24", "dev", "eth0")
		g.Run("ip", "link", "set", "eth0", "up")
		g.Run("ip", "route", "add", "default", "via", "192.168.127.1")
		name := fmt.Sprintf("guest%d", i)
		var ln net.Listener
		if err := g.Do(func() error { var err error; ln, err = net.Listen("tcp4", ":80"); return err }); err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) })}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		// UDP port 80 answers each datagram with the guest's name.
		var pc net.PacketConn
		if err := g.Do(func() error { var err error; pc, err = net.ListenPacket("udp4", ":80"); return err }); err != nil {
			t.Fatal(err)
		}
		go func() {
			buf := make([]byte, 1500)
			for {
				_, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo([]byte(name), from)
			}
		}()
		t.Cleanup(func() { pc.Close() })
		l.guests = append(l.guests, g)
		l.ips = append(l.ips, ip)
	}
	return l
}

// get fetches http://addr/ from inside ns on a new connection.
func get(ns *netnstest.NS, addr string) (string, error) {
	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			var c net.Conn
			err := ns.Do(func() error {
				var err error
				c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, a)
				return err
			})
			return c, err
		}}
	resp, err := (&http.Client{Transport: tr, Timeout: 3 * time.Second}).Get("http://" + addr + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// ask sends one UDP datagram to addr from inside ns and returns the
// answer, waiting at most 2 s for it.
func ask(ns *netnstest.NS, addr string) (string, error) {
	var c net.Conn
	if err := ns.Do(func() error { var err error; c, err = net.Dial("udp4", addr); return err }); err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("who")); err != nil {
		return "", err
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	return string(buf[:n]), err
}

// spread sends n requests and counts the answers by guest.
func spread(t *testing.T, ns *netnstest.NS, addr string, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		body, err := get(ns, addr)
		if err != nil {
			got["error: "+err.Error()]++
			continue
		}
		got[body]++
	}
	return got
}

// TestPublishedPortsInKernel publishes a deployment-like port balanced
// over three guests and a VM-like port to one, and checks what reaches
// them from a LAN client, from the host (its own address, the bridge's and
// 127.0.0.1) and from a guest (the bridge hairpin), that a UDP port carries
// datagrams both ways and a TCP port does not, that conflicts are
// refused, that backends can change, and that deleting leaves the
// namespace's other nftables tables exactly as they were.
func TestPublishedPortsInKernel(t *testing.T) {
	l := newPortLab(t, 3)
	h := l.host
	// Someone else's table, which must survive everything below.
	h.Run("nft", "add", "table", "ip", "someone")
	h.Run("nft", "add", "chain", "ip", "someone", "c", "{ type filter hook input priority 0; }")
	h.Run("nft", "add", "rule", "ip", "someone", "c", "tcp", "dport", "9", "counter")
	foreign := h.Run("nft", "list", "table", "ip", "someone")

	host := &Host{}
	svc := PortSet{Owner: DeploymentPorts("svc"), Ports: []portmap.Mapping{{HostPort: 8080, GuestPort: 80}}, Backends: l.ips}
	res := in(t, h, func() (*PortsResult, error) { return host.SetPorts(ctx, svc) })
	if !res.Changed || len(res.Ports) != 1 || strings.Join(res.Ports[0].Backends, ",") != strings.Join(l.ips, ",") {
		t.Fatalf("SetPorts: %+v", res)
	}
	again := in(t, h, func() (*PortsResult, error) { return host.SetPorts(ctx, svc) })
	if again.Changed {
		t.Fatalf("the same set again changed something: %+v", again)
	}
	t.Logf("table:\n%s", h.Run("nft", "list", "table", "ip", PortTable))

	// From the LAN: 300 requests, 100 per guest.
	got := spread(t, l.client, "10.77.0.1:8080", 300)
	t.Logf("distribution over 300 requests from the client: %v", got)
	for i := range l.guests {
		if n := got[fmt.Sprintf("guest%d", i)]; n != 100 {
			t.Fatalf("guest%d answered %d of 300, want 100: %v", i, n, got)
		}
	}
	if ps := in(t, h, func() ([]PublishedPort, error) { return host.ListPorts(ctx) }); len(ps) != 1 || ps[0].Packets < 300 {
		t.Fatalf("ListPorts after 300 connections: %+v", ps)
	}
	// From the host itself: its own address, the bridge's, loopback.
	for _, addr := range []string{"10.77.0.1:8080", "192.168.127.1:8080", "127.0.0.1:8080"} {
		got := spread(t, h, addr, 6)
		if len(got) != 3 || got["guest0"] != 2 {
			t.Fatalf("from the host to %s: %v", addr, got)
		}
	}
	// From a guest, through the host's address (hairpin): the others answer.
	for range 4 {
		body, err := get(l.guests[0], "10.77.0.1:8080")
		if err == nil && body != "guest1" && body != "guest2" {
			t.Fatalf("hairpin from guest0 answered by %q", body)
		}
	}
	if b, err := get(l.guests[0], "10.77.0.1:8080"); err == nil {
		t.Logf("hairpin from guest0: %s", b)
	}
	// The guard keeps guests off the host's loopback despite route_localnet.
	var ln net.Listener
	if err := h.Do(func() error { var err error; ln, err = net.Listen("tcp4", "127.0.0.1:9999"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	// guest1 sends 127.0.0.1 to the host, as a hostile guest could.
	g := l.guests[1]
	g.Run("sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1")
	g.Run("ip", "route", "add", "127.0.0.1/32", "via", "192.168.127.1", "dev", "eth0", "table", "100")
	g.Run("ip", "rule", "add", "pref", "10", "lookup", "local")
	g.Run("ip", "rule", "del", "pref", "0")
	g.Run("ip", "rule", "add", "pref", "5", "to", "127.0.0.1", "lookup", "100")
	dialLoop := func() error {
		return inErr(t, g, func() error {
			c, err := net.DialTimeout("tcp4", "127.0.0.1:9999", time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	// Without the guard the host's loopback listener is reachable (this is
	// what route_localnet alone would allow) ...
	handle := ""
	for _, line := range strings.Split(h.Run("nft", "-a", "list", "chain", "ip", PortTable, "guard"), "\n") {
		if i := strings.Index(line, "# handle "); i > 0 && strings.Contains(line, "drop") {
			handle = strings.TrimSpace(line[i+len("# handle "):])
		}
	}
	h.Run("nft", "delete", "rule", "ip", PortTable, "guard", "handle", handle)
	if err := dialLoop(); err != nil {
		t.Fatalf("the control failed: without the guard a guest should reach the host's 127.0.0.1 here: %v", err)
	}
	// ... and SetPorts puts the guard back, which stops it.
	if r := in(t, h, func() (*PortsResult, error) { return host.SetPorts(ctx, svc) }); !r.Changed {
		t.Fatal("SetPorts did not restore the missing guard rule")
	}
	if err := dialLoop(); err == nil {
		t.Fatal("a guest reached the host's 127.0.0.1:9999 through the bridge")
	}

	// Fewer backends: only they answer.
	svc.Backends = l.ips[1:]
	in(t, h, func() (*PortsResult, error) { return host.SetPorts(ctx, svc) })
	got = spread(t, l.client, "10.77.0.1:8080", 20)
	if got["guest1"] != 10 || got["guest2"] != 10 {
		t.Fatalf("after removing guest0: %v", got)
	}
	// No backend: refused quickly, the rule stays as the port's record.
	svc.Backends = nil
	in(t, h, func() (*PortsResult, error) { return host.SetPorts(ctx, svc) })
	if b, err := get(l.client, "10.77.0.1:8080"); err == nil {
		t.Fatalf("with no backend the port answered %q", b)
	}
	svc.Backends = l.ips

	// A VM's port on one host address only, UDP beside TCP on the same number.
	vm := PortSet{Owner: VMPorts("web1"), Ports: []portmap.Mapping{{HostIP: "10.77.0.1", HostPort: 9090, GuestPort: 80}, {HostPort: 9090, GuestPort: 80, Protocol: "udp"}}, Backends: l.ips[2:]}
	in(t, h, func() (*PortsResult, error) { return host.SetPorts(ctx, vm) })
	if b, err := get(l.client, "10.77.0.1:9090"); err != nil || b != "guest2" {
		t.Fatalf("VM port: %q %v", b, err)
	}
	if b, err := get(h, "127.0.0.1:9090"); err == nil {
		t.Fatalf("a port published on 10.77.0.1 answered on 127.0.0.1: %q", b)
	}
	// UDP 9090 (every host address) reaches the VM's UDP 80: from the LAN
	// and from the host itself; TCP and UDP on one number are two ports.
	for _, c := range []struct {
		ns   *netnstest.NS
		addr string
	}{{l.client, "10.77.0.1:9090"}, {h, "10.77.0.1:9090"}, {h, "127.0.0.1:9090"}, {h, "192.168.127.1:9090"}} {
		if b, err := ask(c.ns, c.addr); err != nil || b != "guest2" {
			t.Fatalf("UDP to %s from %s: %q %v", c.addr, c.ns.Name, b, err)
		}
	}
	// Control: the guests answer UDP only through a published UDP port.
	if b, err := ask(l.client, "10.77.0.1:8080"); err == nil {
		t.Fatalf("UDP to the deployment's TCP-only port 8080 answered %q", b)
	}

	// Conflicts: another owner's port, and a host listener.
	clash := PortSet{Owner: VMPorts("web2"), Ports: []portmap.Mapping{{HostIP: "10.77.0.1", HostPort: 8080, GuestPort: 81}}, Backends: l.ips[:1]}
	if err := inErr(t, h, func() error { _, err := host.SetPorts(ctx, clash); return err }); apierr.CodeOf(err) != apierr.PortInUse {
		t.Fatalf("a port another owner publishes: %v", err)
	}
	if err := inErr(t, h, func() error { return PortFree(portmap.Mapping{HostPort: 9999, GuestPort: 1}) }); apierr.CodeOf(err) != apierr.PortInUse {
		t.Fatalf("a port a host process listens on: %v", err)
	}
	// A UDP socket holds 9997/udp, not 9997/tcp.
	var upc net.PacketConn
	if err := h.Do(func() error { var err error; upc, err = net.ListenPacket("udp4", "0.0.0.0:9997"); return err }); err != nil {
		t.Fatal(err)
	}
	defer upc.Close()
	if err := inErr(t, h, func() error { return PortFree(portmap.Mapping{HostPort: 9997, GuestPort: 1, Protocol: "udp"}) }); apierr.CodeOf(err) != apierr.PortInUse {
		t.Fatalf("a UDP port a host process has bound: %v", err)
	}
	if err := inErr(t, h, func() error { return PortFree(portmap.Mapping{HostPort: 9997, GuestPort: 1}) }); err != nil {
		t.Fatalf("TCP 9997 while only UDP 9997 is bound: %v", err)
	}
	if err := inErr(t, h, func() error { return PortFree(portmap.Mapping{HostIP: "10.9.9.9", HostPort: 9998, GuestPort: 1}) }); apierr.CodeOf(err) != apierr.InvalidInput {
		t.Fatalf("an address the host does not have: %v", err)
	}
	if err := inErr(t, h, func() error { return PortFree(portmap.Mapping{HostPort: 9998, GuestPort: 1}) }); err != nil {
		t.Fatalf("a free port: %v", err)
	}

	// List: every rule read back with its backends and counters.
	ps := in(t, h, func() ([]PublishedPort, error) { return host.ListPorts(ctx) })
	if len(ps) != 3 || ps[0].Owner != "dep:svc" || len(ps[0].Backends) != 0 || ps[0].Packets == 0 ||
		ps[1].Owner != "vm:web1" || strings.Join(ps[1].Backends, ",") != l.ips[2] || ps[2].Mapping.Protocol != "udp" {
		t.Fatalf("ListPorts: %+v", ps)
	}

	// GC keeps the named owners only; deleting the last removes the table.
	gc := in(t, h, func() (*PortsGCResult, error) { return host.GCPorts(ctx, []PortOwner{VMPorts("web1")}) })
	if len(gc.Removed) != 1 || gc.Removed[0].Owner != "dep:svc" || len(gc.Kept) != 2 {
		t.Fatalf("GCPorts: %+v", gc)
	}
	del := in(t, h, func() (*PortsResult, error) { return host.DelPorts(ctx, VMPorts("web1")) })
	if !del.Changed {
		t.Fatalf("DelPorts: %+v", del)
	}
	if del := in(t, h, func() (*PortsResult, error) { return host.DelPorts(ctx, VMPorts("web1")) }); del.Changed {
		t.Fatalf("DelPorts again: %+v", del)
	}
	if out, err := h.Output("nft", "list", "table", "ip", PortTable); err == nil {
		t.Fatalf("the table is left after deleting every port:\n%s", out)
	}
	if now := h.Run("nft", "list", "table", "ip", "someone"); now != foreign {
		t.Fatalf("another table changed:\nbefore\n%s\nafter\n%s", foreign, now)
	}
}
