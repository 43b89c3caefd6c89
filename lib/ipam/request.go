package ipam

import (
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/names"
)

// Environment variables that describe the default pool (volant-ipam's
// and volantd's).
const (
	EnvSubnet     = "VOLANT_SUBNET"
	EnvGateway    = "VOLANT_GATEWAY"
	EnvRangeStart = "VOLANT_RANGE_START"
	EnvRangeEnd   = "VOLANT_RANGE_END"
)

// PoolFromEnv is the pool the VOLANT_SUBNET, VOLANT_GATEWAY,
// VOLANT_RANGE_START and VOLANT_RANGE_END variables describe; unset ones
// stay empty (Pool fills the defaults).
func PoolFromEnv(getenv func(string) string) PoolConfig {
	return PoolConfig{Subnet: getenv(EnvSubnet), Gateway: getenv(EnvGateway),
		RangeStart: getenv(EnvRangeStart), RangeEnd: getenv(EnvRangeEnd)}
}

// LeaseRequest is the request of `volant-ipam lease`.
type LeaseRequest struct {
	VM string `json:"vm"`
	PoolConfig
}

// Resolve checks the request and resolves its pool, before anything is
// written.
func (r LeaseRequest) Resolve() (Pool, error) {
	if r.VM == "" {
		return Pool{}, needVM("lease")
	}
	if err := names.Check("VM name", r.VM); err != nil {
		return Pool{}, err
	}
	return r.PoolConfig.Pool()
}

// VMRequest is the request of `volant-ipam release` and `show`: a VM name,
// or a piped lease result (kind ipam.lease), which names the VM too.
type VMRequest struct {
	VM    string `json:"vm,omitempty"`
	Lease *Lease `json:"lease,omitempty"`
}

// Accepts implements cli.Chainer: a lease result fills Lease.
func (VMRequest) Accepts() map[string]string { return map[string]string{Kind: "lease"} }

// Name returns the VM the request names, checked; verb is for the error
// when it names none.
func (r VMRequest) Name(verb string) (string, error) {
	vm := r.VM
	if r.Lease != nil {
		if vm != "" && vm != r.Lease.VM {
			return "", apierr.New(apierr.InvalidInput, "request names VM %q but carries the lease of %q", vm, r.Lease.VM)
		}
		vm = r.Lease.VM
	}
	if vm == "" {
		return "", needVM(verb)
	}
	return vm, names.Check("VM name", vm)
}

func needVM(verb string) error {
	return apierr.New(apierr.Usage, "%s needs the VM name: --vm NAME, or {\"vm\":\"NAME\"} on stdin", verb).
		With("hint", "run volant-ipam "+verb+" --help")
}
