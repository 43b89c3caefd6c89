package hostnet

import (
	"os/user"
	"strconv"
	"strings"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/names"
)

// The requests of volant-net's tap verbs, as they arrive on stdin: a tap
// configuration, or the result of the command before it in a pipeline.

// LeaseResult is what tap add and tap del read from a `volant-ipam lease`
// result (kind ipam.lease).
type LeaseResult struct {
	VM  string `json:"vm"`
	IP  string `json:"ip"`
	MAC string `json:"mac"`
}

// TapAddRequest is the request of `volant-net tap add`.
type TapAddRequest struct {
	TapConfig
	Lease *cli.Chained[LeaseResult] `json:"lease,omitempty"`
}

// Accepts implements cli.Chainer: a lease result fills Lease.
func (TapAddRequest) Accepts() map[string]string { return map[string]string{"ipam.lease": "lease"} }

// Config is the tap to make: the request's fields, and the lease's VM, IP
// and MAC where the request leaves them empty.
func (r TapAddRequest) Config() TapConfig {
	cfg := r.TapConfig
	if r.Lease != nil {
		l := r.Lease.V
		fill(&cfg.VM, l.VM)
		fill(&cfg.IP, strings.SplitN(l.IP, "/", 2)[0])
		fill(&cfg.MAC, l.MAC)
	}
	return cfg
}

// TapAddResult is the result of tap add: the tap, and the lease it was
// made from, passed on unchanged for volant-launch.
type TapAddResult struct {
	TapResult
	Lease *cli.Chained[LeaseResult] `json:"lease,omitempty"`
}

// TapDelRequest is the request of `volant-net tap del`: a TapRef, or a tap
// add result (kind net.tap) or a lease result naming the tap's VM.
type TapDelRequest struct {
	TapRef
	Tap *cli.Chained[struct {
		Tap string `json:"tap"`
		VM  string `json:"vm"`
	}] `json:"tap,omitempty"`
	Lease *cli.Chained[LeaseResult] `json:"lease,omitempty"`
}

// Accepts implements cli.Chainer.
func (TapDelRequest) Accepts() map[string]string {
	return map[string]string{"ipam.lease": "lease", "net.tap": "tap"}
}

// Ref is the tap to delete: the request's fields, and the piped result's
// where the request leaves them empty.
func (r TapDelRequest) Ref() TapRef {
	ref := r.TapRef
	if r.Tap != nil {
		fill(&ref.Name, r.Tap.V.Tap)
		fill(&ref.VM, r.Tap.V.VM)
	}
	if r.Lease != nil {
		fill(&ref.VM, r.Lease.V.VM)
	}
	return ref
}

// fill sets *dst to v when *dst is empty.
func fill(dst *string, v string) {
	if *dst == "" {
		*dst = v
	}
}

// LookupOwner resolves a user name or numeric uid for TapConfig.Owner.
func LookupOwner(s string) (*uint32, error) {
	return lookupID(s, "owner", func(name string) (string, error) {
		u, err := user.Lookup(name)
		if err != nil {
			return "", err
		}
		return u.Uid, nil
	})
}

// LookupGroup resolves a group name or numeric gid for TapConfig.Group.
func LookupGroup(s string) (*uint32, error) {
	return lookupID(s, "group", func(name string) (string, error) {
		g, err := user.LookupGroup(name)
		if err != nil {
			return "", err
		}
		return g.Gid, nil
	})
}

func lookupID(s, what string, lookup func(string) (string, error)) (*uint32, error) {
	id := s
	if _, err := strconv.ParseUint(s, 10, 32); err != nil {
		if id, err = lookup(s); err != nil {
			return nil, apierr.New(apierr.InvalidInput, "%s %q is neither a number nor a known name", what, s).With(what, s)
		}
	}
	n, err := strconv.ParseUint(id, 10, 32)
	if err != nil || n == 1<<32-1 {
		return nil, apierr.New(apierr.InvalidInput, "%s %q is out of range", what, s).With(what, s)
	}
	v := uint32(n)
	return &v, nil
}

// ValidKeep checks an entry of a tap gc keep list: a VM name, or the name
// of a tap without a VM.
func ValidKeep(s string) error {
	if err := names.Check("VM name", s); err == nil {
		return nil
	}
	if err := ValidateIfName(s); err != nil {
		return apierr.New(apierr.InvalidInput, "%q is neither a VM name nor a tap name", s).With("keep", s)
	}
	return nil
}
