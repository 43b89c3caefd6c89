package subnet

import (
	"net/netip"
	"testing"
)

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		subnet string
		ok     bool
	}{
		{"192.168.127.0/24", true},
		{"192.168.127.1/24", true}, // host bits ignored
		{"10.0.0.0/8", true},
		{"172.16.0.0/12", true},
		{"100.64.0.0/10", true},
		{"10.1.2.0/30", true},
		{"203.0.113.0/24", true}, // public ranges an operator owns are allowed
		{"0.0.0.0/0", false},
		{"0.0.0.0/8", false},
		{"0.1.2.0/24", false},
		{"10.0.0.0/7", false},
		{"10.0.0.0/31", false},
		{"10.0.0.1/32", false},
		{"127.0.0.0/24", false},
		{"169.254.0.0/16", false},
		{"169.254.10.0/24", false},
		{"224.0.0.0/24", false},
		{"239.255.0.0/16", false},
		{"240.0.0.0/8", false},
		{"255.255.255.0/24", false},
		{"fd00::/64", false},
		{"::ffff:10.0.0.0/104", false},
	} {
		err := Check(netip.MustParsePrefix(tc.subnet))
		if (err == nil) != tc.ok {
			t.Errorf("Check(%s) = %v, want ok=%v", tc.subnet, err, tc.ok)
		}
	}
	if Check(netip.Prefix{}) == nil {
		t.Error("the zero prefix passed")
	}
}
