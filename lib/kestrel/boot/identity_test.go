package boot

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/agentchan"
)

func TestParseIdentity(t *testing.T) {
	seed := bytes.Repeat([]byte{7}, agentchan.MinSeed)
	ok := agentchan.IdentityRequest{VM: "clone-2", MAC: "02:11:22:33:44:55", IP: "192.168.127.105/24", Gateway: "192.168.127.1",
		DNS: []string{"1.1.1.1"}, Time: 1, Seed: seed}
	c, mac, err := parseIdentity(ok)
	if err != nil || c.Hostname != "clone-2" || c.Address != netip.MustParsePrefix("192.168.127.105/24") ||
		c.Gateway != netip.MustParseAddr("192.168.127.1") || len(c.DNS) != 1 || mac.String() != "02:11:22:33:44:55" {
		t.Fatalf("parseIdentity = %+v %v %v", c, mac, err)
	}
	for name, mod := range map[string]func(*agentchan.IdentityRequest){
		"vm":      func(r *agentchan.IdentityRequest) { r.VM = "Bad Name" },
		"seed":    func(r *agentchan.IdentityRequest) { r.Seed = seed[:8] },
		"time":    func(r *agentchan.IdentityRequest) { r.Time = 0 },
		"mac":     func(r *agentchan.IdentityRequest) { r.MAC = "03:00:00:00:00:01" }, // multicast
		"ip":      func(r *agentchan.IdentityRequest) { r.IP = "192.168.127.105" },
		"gateway": func(r *agentchan.IdentityRequest) { r.Gateway = "gw" },
		"dns":     func(r *agentchan.IdentityRequest) { r.DNS = []string{"x"} },
	} {
		r := ok
		mod(&r)
		if _, _, err := parseIdentity(r); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: %v, want an error naming it", name, err)
		}
	}
}
