package access

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentchan"
	"github.com/volantvm/volant/lib/apierr"
)

// The identity op reaches the hook with the request as sent, its answer
// comes back, and later handshakes name the new VM; a proxy for clients
// (a supervisor's socket) refuses the op.
func TestIdentityOp(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var got agentchan.IdentityRequest
	srv := New(Config{VM: "saved", Version: "test", Identity: func(_ context.Context, r agentchan.IdentityRequest) (agentchan.IdentityReply, error) {
		got = r
		if r.VM == "refused" {
			return agentchan.IdentityReply{}, apierr.New(apierr.InvalidInput, "no")
		}
		return agentchan.IdentityReply{PreviousVM: "saved", ClockStepMS: 1234, Generation: 1}, nil
	}})
	host, guest := socketpair(t)
	go srv.ServeConn(ctx, guest)
	sess, err := agentchan.Connect(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	if !contains(sess.Hello.Ops, agentchan.OpIdentity) {
		t.Errorf("hello ops %v lack identity", sess.Hello.Ops)
	}
	seed := bytes.Repeat([]byte{1}, 32)
	rep, err := sess.SetIdentity(ctx, agentchan.IdentityRequest{VM: "clone1", IP: "10.0.0.5/24", Seed: seed})
	if err != nil || !rep.OK || rep.PreviousVM != "saved" || rep.ClockStepMS != 1234 || rep.Generation != 1 {
		t.Fatalf("SetIdentity = %+v, %v", rep, err)
	}
	if got.VM != "clone1" || got.IP != "10.0.0.5/24" || !bytes.Equal(got.Seed, seed) || got.Time == 0 {
		t.Errorf("the hook got %+v", got)
	}
	if _, err := sess.SetIdentity(ctx, agentchan.IdentityRequest{VM: "refused", Seed: seed}); !apierr.Is(err, apierr.InvalidInput) {
		t.Errorf("a refused identity: %v", err)
	}
	sess.Close()

	// The next host session meets the guest under its new name.
	host2, guest2 := socketpair(t)
	go srv.ServeConn(ctx, guest2)
	sess2, err := agentchan.Connect(ctx, host2)
	if err != nil {
		t.Fatal(err)
	}
	defer sess2.Close()
	if sess2.Hello.VM != "clone1" {
		t.Errorf("hello after the identity change: %+v", sess2.Hello)
	}

	// Through a proxy for clients, the op is refused before the guest.
	pc, ph := socketpair(t)
	go agentchan.Proxy(ctx, ph, func(context.Context) (*agentchan.Session, error) { return sess2, nil },
		agentchan.ProxyOptions{Allow: agentchan.ClientOps()})
	client, err := agentchan.Client(pc)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	got = agentchan.IdentityRequest{}
	if _, err := client.SetIdentity(ctx, agentchan.IdentityRequest{VM: "intruder", Seed: seed}); !apierr.Is(err, apierr.PermissionDenied) {
		t.Errorf("identity through a client proxy: %v, want PERMISSION_DENIED", err)
	}
	if got.VM != "" {
		t.Errorf("the refused request reached the guest: %+v", got)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// The guest reports as its new VM (NetworkUp) only once the host ended the
// identity stream — the host does so when it let the VM's network out —
// and not for an identity refused.
func TestIdentityNetworkUpWaitsForTheHost(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	up := make(chan string, 4)
	var current string
	srv := New(Config{VM: "saved", Version: "test",
		Identity: func(_ context.Context, r agentchan.IdentityRequest) (agentchan.IdentityReply, error) {
			if r.VM == "refused" {
				return agentchan.IdentityReply{}, apierr.New(apierr.InvalidInput, "no")
			}
			current = r.VM
			return agentchan.IdentityReply{PreviousVM: "saved"}, nil
		},
		NetworkUp: func() { up <- current }})
	host, guest := socketpair(t)
	go srv.ServeConn(ctx, guest)
	sess, err := agentchan.Connect(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	seed := bytes.Repeat([]byte{1}, 32)
	rep, st, err := sess.BeginIdentity(ctx, agentchan.IdentityRequest{VM: "clone1", Seed: seed})
	if err != nil || rep.PreviousVM != "saved" {
		t.Fatalf("BeginIdentity = %+v, %v", rep, err)
	}
	select {
	case vm := <-up:
		t.Fatalf("the guest announced itself as %s before the host let its network out", vm)
	case <-time.After(300 * time.Millisecond):
	}
	st.Conn.Close()
	select {
	case vm := <-up:
		if vm != "clone1" {
			t.Errorf("announced as %q", vm)
		}
	case <-ctx.Done():
		t.Fatal("the guest did not announce itself after the host ended the stream")
	}
	// SetIdentity ends the stream itself: the announcement follows.
	if _, err := sess.SetIdentity(ctx, agentchan.IdentityRequest{VM: "clone2", Seed: seed}); err != nil {
		t.Fatal(err)
	}
	if vm := <-up; vm != "clone2" {
		t.Errorf("announced as %q", vm)
	}
	if _, err := sess.SetIdentity(ctx, agentchan.IdentityRequest{VM: "refused", Seed: seed}); !apierr.Is(err, apierr.InvalidInput) {
		t.Fatalf("refused: %v", err)
	}
	select {
	case vm := <-up:
		t.Errorf("a refused identity announced %q", vm)
	case <-time.After(300 * time.Millisecond):
	}
}
