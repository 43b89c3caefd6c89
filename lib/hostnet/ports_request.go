package hostnet

import (
	"context"
	"slices"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/portmap"
)

// The requests of volant-net's port verbs. volantd computes whole port
// sets and calls SetPorts; a shell adds and removes mappings one at a time.

// PortAddRequest is the request of `volant-net port add`: publish Ports of
// a VM (or a deployment) on the host, forwarded to Backends (a VM's
// address; a deployment's replicas). A lease result on stdin names the VM
// and its address.
type PortAddRequest struct {
	VM         string `json:"vm,omitempty"`
	Deployment string `json:"deployment,omitempty"`
	// Backends replace the owner's backends; empty keeps them (or, for a
	// new owner, takes the lease's address).
	Backends []string                  `json:"backends,omitempty"`
	Ports    []portmap.Mapping         `json:"ports"`
	Bridge   string                    `json:"bridge,omitempty"`
	Lease    *cli.Chained[LeaseResult] `json:"lease,omitempty"`
}

// Accepts implements cli.Chainer: a lease result fills Lease.
func (PortAddRequest) Accepts() map[string]string { return map[string]string{"ipam.lease": "lease"} }

// PortDelRequest is the request of `volant-net port del`: the owner's
// listed ports, or all of them when none is listed.
type PortDelRequest struct {
	VM         string                    `json:"vm,omitempty"`
	Deployment string                    `json:"deployment,omitempty"`
	Ports      []portmap.Mapping         `json:"ports,omitempty"`
	Lease      *cli.Chained[LeaseResult] `json:"lease,omitempty"`
}

// Accepts implements cli.Chainer.
func (PortDelRequest) Accepts() map[string]string { return map[string]string{"ipam.lease": "lease"} }

// OwnerOf is the owner a request names: exactly one of a VM and a
// deployment (a lease names a VM).
func OwnerOf(vm, deployment string, lease *cli.Chained[LeaseResult]) (PortOwner, error) {
	if vm == "" && deployment == "" && lease != nil {
		vm = lease.V.VM
	}
	var o PortOwner
	switch {
	case vm != "" && deployment != "":
		return "", apierr.New(apierr.InvalidInput, "give a VM or a deployment, not both")
	case vm != "":
		o = VMPorts(vm)
	case deployment != "":
		o = DeploymentPorts(deployment)
	default:
		return "", apierr.New(apierr.InvalidInput, "name the VM (--vm) or deployment (--deployment) whose ports these are")
	}
	return o, o.Validate()
}

// AddPorts publishes more ports for an owner, keeping those it has: what
// the owner publishes already is left alone, a host port taken by a host
// process or another owner is PORT_IN_USE, and nothing changes unless
// every new mapping can be made.
func (h *Host) AddPorts(ctx context.Context, req PortAddRequest) (*PortsResult, error) {
	owner, err := OwnerOf(req.VM, req.Deployment, req.Lease)
	if err != nil {
		return nil, err
	}
	if len(req.Ports) == 0 {
		return nil, apierr.New(apierr.InvalidInput, "no port to publish: give -p [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp]").With("field", "ports")
	}
	add, err := portmap.ValidateList(req.Ports)
	if err != nil {
		return nil, err
	}
	have, err := h.ownerPorts(ctx, owner)
	if err != nil {
		return nil, err
	}
	set := PortSet{Owner: owner, Bridge: req.Bridge, Backends: req.Backends}
	for _, p := range have {
		set.Ports = append(set.Ports, p.Mapping)
		if len(req.Backends) == 0 {
			set.Backends = p.Backends
		}
	}
	if len(set.Backends) == 0 && req.Lease != nil && req.Lease.V.IP != "" {
		set.Backends = []string{req.Lease.V.IP}
	}
	if len(set.Backends) == 0 && len(have) == 0 {
		return nil, apierr.New(apierr.InvalidInput, "%s publishes nothing yet: give its address (--backend IP, or a lease on stdin)", owner).
			With("field", "backends")
	}
	for _, m := range add {
		if slices.Contains(set.Ports, m) {
			continue
		}
		for _, o := range set.Ports {
			if portmap.Overlaps(o, m) {
				return nil, portInUse(m, "published by "+string(owner)+" as "+o.String()).With("owner", string(owner))
			}
		}
		if err := PortFree(m); err != nil {
			return nil, err
		}
		set.Ports = append(set.Ports, m)
	}
	return h.SetPorts(ctx, set)
}

// RemovePorts unpublishes the owner's listed ports (all when none is
// listed); a port the owner does not publish is no error.
func (h *Host) RemovePorts(ctx context.Context, req PortDelRequest) (*PortsResult, error) {
	owner, err := OwnerOf(req.VM, req.Deployment, req.Lease)
	if err != nil {
		return nil, err
	}
	if len(req.Ports) == 0 {
		return h.DelPorts(ctx, owner)
	}
	drop, err := portmap.ValidateList(req.Ports)
	if err != nil {
		return nil, err
	}
	have, err := h.ownerPorts(ctx, owner)
	if err != nil {
		return nil, err
	}
	set := PortSet{Owner: owner}
	for _, p := range have {
		set.Backends = p.Backends
		if !slices.Contains(drop, p.Mapping) {
			set.Ports = append(set.Ports, p.Mapping)
		}
	}
	if len(set.Ports) == len(have) {
		return &PortsResult{Owner: owner, Ports: portsOrEmpty(have)}, nil
	}
	return h.SetPorts(ctx, set)
}

func (h *Host) ownerPorts(ctx context.Context, owner PortOwner) ([]PublishedPort, error) {
	all, err := h.ListPorts(ctx)
	if err != nil {
		return nil, err
	}
	var out []PublishedPort
	for _, p := range all {
		if p.Owner == owner {
			out = append(out, p)
		}
	}
	return out, nil
}

func portsOrEmpty(ps []PublishedPort) []PublishedPort {
	if ps == nil {
		return []PublishedPort{}
	}
	return ps
}

// ValidPortKeep checks an entry of a port gc keep list: vm:NAME or dep:NAME.
func ValidPortKeep(s string) error { return PortOwner(s).Validate() }
