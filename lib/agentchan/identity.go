package agentchan

import (
	"context"
	"time"
)

// OpIdentity gives a guest restored from a snapshot the identity of the VM
// it now is. The supervisor of that VM sends it once the restored guest's
// agent answers, before the VM's network is let out (its tap is down until
// then), and it is not passed on for clients of the supervisor's socket.
//
//	op        request          reply            then
//	identity  IdentityRequest  IdentityReply    the host ends the stream
//
// kestrel mixes Seed into the kernel's random pool, credits it and forces
// a reseed of the kernel's generator (so two guests from one snapshot draw
// different random numbers from then on), sets the clock to Time, gives
// the NIC MAC and IP (removing the saved address), the default route via
// Gateway and the resolvers DNS, sets the hostname to VM, reports to the
// control plane as VM from then on, and writes /run/volant/identity.json.
// Its first report as VM goes out when the host ends the stream: the host
// does so once it let the VM's network out (BeginIdentity), so that report
// is not sent into a tap that is still down and retried a second later.
const OpIdentity = "identity"

// IdentityRequest is the identity a restored guest takes.
type IdentityRequest struct {
	Op string `json:"op"` // "identity"
	// VM is the VM's name, also its hostname.
	VM string `json:"vm"`
	// MAC, IP (address/prefix), Gateway and DNS are the NIC's; with no IP
	// the network is left as it is.
	MAC     string   `json:"mac,omitempty"`
	IP      string   `json:"ip,omitempty"`
	Gateway string   `json:"gateway,omitempty"`
	DNS     []string `json:"dns,omitempty"`
	// Time is the host's clock when the request was sent, in unix
	// nanoseconds.
	Time int64 `json:"time"`
	// Seed is fresh randomness from the host (crypto/rand), at least
	// MinSeed bytes.
	Seed []byte `json:"seed"`
}

// MinSeed is the least randomness an identity request carries.
const MinSeed = 32

// IdentityReply says what the guest was before.
type IdentityReply struct {
	Reply
	PreviousVM string `json:"previous_vm,omitempty"`
	PreviousIP string `json:"previous_ip,omitempty"`
	// ClockStepMS is how far the guest's clock moved (the time between the
	// snapshot and the restore, mostly).
	ClockStepMS int64 `json:"clock_step_ms"`
	// Generation counts the identities the guest took since it booted.
	Generation int `json:"generation"`
}

// SetIdentity sends an identity request, waits for its reply and ends the
// stream.
func (s *Session) SetIdentity(ctx context.Context, req IdentityRequest) (*IdentityReply, error) {
	rep, st, err := s.BeginIdentity(ctx, req)
	if err != nil {
		return nil, err
	}
	st.Conn.Close()
	return rep, nil
}

// BeginIdentity sends an identity request and waits for its reply. The
// caller closes the stream once the guest's network is let out: the guest
// then reports as the VM it now is.
func (s *Session) BeginIdentity(ctx context.Context, req IdentityRequest) (*IdentityReply, *Stream, error) {
	req.Op = OpIdentity
	if req.Time == 0 {
		req.Time = time.Now().UnixNano()
	}
	var rep IdentityReply
	st, err := s.Call(ctx, req, &rep)
	if err != nil {
		return nil, nil, err
	}
	return &rep, st, nil
}

// ClientOps are the operations a supervisor's socket passes on to the
// guest (every op but identity, which only the supervisor sends).
func ClientOps() []string { return []string{OpExec, OpAttach, OpRead, OpWrite, OpLogs} }
