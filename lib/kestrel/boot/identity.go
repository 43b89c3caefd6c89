package boot

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/kestrel/agent"
	"github.com/volantvm/volant/lib/kestrel/network"
	"github.com/volantvm/volant/lib/kestrel/report"
	"github.com/volantvm/volant/lib/names"
)

// IdentityFile is where kestrel tells the workload which VM it is now: a
// guest restored from a snapshot (whose memory is another VM's) finds its
// new name, address and generation there.
const IdentityFile = "/run/volant/identity.json"

// identity is what the guest is on the network and to the control plane,
// and how it becomes another VM (agentchan.OpIdentity).
type identity struct {
	b       *booter
	agent   *agent.Agent
	apiHost string
	apiPort int

	mu         sync.Mutex
	net        network.Config
	generation int
}

// parseIdentity checks a request and turns it into a network config.
func parseIdentity(req agentchan.IdentityRequest) (network.Config, net.HardwareAddr, error) {
	bad := func(format string, args ...any) error { return apierr.New(apierr.InvalidInput, format, args...) }
	c := network.Config{Hostname: req.VM}
	if !names.Valid(req.VM) {
		return c, nil, bad("identity: vm %q is not a VM name", req.VM)
	}
	if len(req.Seed) < agentchan.MinSeed {
		return c, nil, bad("identity: a seed of %d bytes; at least %d", len(req.Seed), agentchan.MinSeed)
	}
	if req.Time <= 0 {
		return c, nil, bad("identity: no time")
	}
	var mac net.HardwareAddr
	if req.MAC != "" {
		m, err := net.ParseMAC(req.MAC)
		if err != nil || len(m) != 6 || m[0]&1 != 0 {
			return c, nil, bad("identity: mac %q is not a unicast Ethernet address", req.MAC)
		}
		mac = m
	}
	if req.IP != "" {
		p, err := netip.ParsePrefix(req.IP)
		if err != nil || !p.Addr().Is4() {
			return c, nil, bad("identity: ip %q is not an IPv4 address with prefix length", req.IP)
		}
		c.Address = p
	}
	if req.Gateway != "" {
		g, err := netip.ParseAddr(req.Gateway)
		if err != nil {
			return c, nil, bad("identity: gateway %q is not an IP address", req.Gateway)
		}
		c.Gateway = g
	}
	for _, d := range req.DNS {
		a, err := netip.ParseAddr(d)
		if err != nil {
			return c, nil, bad("identity: dns %q is not an IP address", d)
		}
		c.DNS = append(c.DNS, a)
	}
	return c, mac, nil
}

// apply makes the guest the VM req names: fresh randomness first (what
// follows may draw on it), the clock, the network, then the agent's
// reports.
func (id *identity) apply(ctx context.Context, req agentchan.IdentityRequest) (agentchan.IdentityReply, error) {
	c, mac, err := parseIdentity(req)
	if err != nil {
		return agentchan.IdentityReply{}, err
	}
	id.mu.Lock()
	defer id.mu.Unlock()
	rep := agentchan.IdentityReply{PreviousVM: id.net.Hostname}
	if id.net.Address.IsValid() {
		rep.PreviousIP = id.net.Address.String()
	}
	if err := id.b.m.AddEntropy(req.Seed); err != nil {
		return rep, fmt.Errorf("identity: reseeding the random generator: %w", err)
	}
	host := time.Unix(0, req.Time)
	rep.ClockStepMS = host.Sub(time.Now()).Milliseconds()
	if err := id.b.m.SetClock(host); err != nil {
		return rep, fmt.Errorf("identity: setting the clock: %w", err)
	}
	if err := network.Reconfigure(id.b.m, id.net, c, mac, id.b.log); err != nil {
		return rep, fmt.Errorf("identity: %w", err)
	}
	if !c.Address.IsValid() {
		c.Address, c.Gateway, c.DNS = id.net.Address, id.net.Gateway, id.net.DNS
	}
	id.net = c
	id.generation++
	rep.Generation = id.generation
	url := ""
	if id.apiHost != "" {
		url = report.URL(id.apiHost, id.apiPort, req.VM)
	}
	id.agent.SetIdentity(req.VM, url)
	rec := map[string]any{"vm": req.VM, "ip": c.Address.String(), "mac": mac.String(), "generation": id.generation,
		"previous_vm": rep.PreviousVM, "at": host.UTC()}
	if b, err := json.Marshal(rec); err == nil {
		os.MkdirAll(filepath.Dir(IdentityFile), 0o755)
		if err := os.WriteFile(IdentityFile, append(b, '\n'), 0o644); err != nil {
			id.b.log.Warn("cannot write "+IdentityFile, "err", err)
		}
	}
	id.b.log.Info("identity changed", "vm", req.VM, "was", rep.PreviousVM, "ip", c.Address.String(),
		"clock_step", time.Duration(rep.ClockStepMS)*time.Millisecond, "generation", id.generation)
	return rep, nil
}
