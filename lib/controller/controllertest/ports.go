package controllertest

import (
	"context"
	"maps"
	"slices"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/hostnet"
	"github.com/volantvm/volant/lib/portmap"
)

// The Network fake also publishes ports, in memory (controller.Ports).

var _ controller.Ports = (*Network)(nil)

// SetPorts implements controller.Ports.
func (n *Network) SetPorts(_ context.Context, set hostnet.PortSet) (*hostnet.PortsResult, error) {
	n.mu.Lock()
	if hold := n.hold; hold != nil {
		n.held = append(n.held, set)
		n.mu.Unlock()
		<-hold
		n.mu.Lock()
	}
	defer n.mu.Unlock()
	if n.ports == nil {
		n.ports = map[hostnet.PortOwner]hostnet.PortSet{}
	}
	for o, s := range n.ports {
		if o == set.Owner {
			continue
		}
		for _, a := range s.Ports {
			for _, b := range set.Ports {
				if portmap.Overlaps(a, b) {
					return nil, apierr.New(apierr.PortInUse, "host port %s is published by %s", b, o)
				}
			}
		}
	}
	old, had := n.ports[set.Owner]
	set.Ports = slices.Clone(set.Ports)
	set.Backends = slices.Clone(set.Backends)
	changed := !had || !slices.Equal(old.Ports, set.Ports) || !slices.Equal(old.Backends, set.Backends)
	n.ports[set.Owner] = set
	n.portWrites++
	return &hostnet.PortsResult{Owner: set.Owner, Changed: changed}, nil
}

// HoldPorts makes SetPorts wait, as a slow kernel would, until release
// is called; Held lists the sets that waited.
func (n *Network) HoldPorts() (release func()) {
	n.mu.Lock()
	defer n.mu.Unlock()
	hold := make(chan struct{})
	n.hold, n.held = hold, nil
	return func() {
		n.mu.Lock()
		n.hold = nil
		n.mu.Unlock()
		close(hold)
	}
}

// Held returns the sets SetPorts was asked for while held.
func (n *Network) Held() []hostnet.PortSet {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.held)
}

// DelPorts implements controller.Ports.
func (n *Network) DelPorts(_ context.Context, owner hostnet.PortOwner) (*hostnet.PortsResult, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	_, had := n.ports[owner]
	delete(n.ports, owner)
	return &hostnet.PortsResult{Owner: owner, Changed: had}, nil
}

// GCPorts implements controller.Ports.
func (n *Network) GCPorts(_ context.Context, keep []hostnet.PortOwner) (*hostnet.PortsGCResult, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	res := &hostnet.PortsGCResult{Removed: []hostnet.PublishedPort{}, Kept: []hostnet.PublishedPort{}}
	for o, s := range n.ports {
		for _, m := range s.Ports {
			p := hostnet.PublishedPort{Owner: o, Mapping: m, Backends: s.Backends}
			if slices.Contains(keep, o) {
				res.Kept = append(res.Kept, p)
			} else {
				res.Removed = append(res.Removed, p)
			}
		}
		if !slices.Contains(keep, o) {
			delete(n.ports, o)
		}
	}
	return res, nil
}

// PortFree implements controller.Ports: ports marked with Listen are taken.
func (n *Network) PortFree(m portmap.Mapping) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.listening[m.Normalized().HostPort] {
		return apierr.New(apierr.PortInUse, "host port %s is in use: a process on the host listens on it", m)
	}
	return nil
}

// Listen marks a host port as one a host process listens on.
func (n *Network) Listen(port int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.listening == nil {
		n.listening = map[int]bool{}
	}
	n.listening[port] = true
}

// Published returns what is published, by owner.
func (n *Network) Published() map[hostnet.PortOwner]hostnet.PortSet {
	n.mu.Lock()
	defer n.mu.Unlock()
	return maps.Clone(n.ports)
}
