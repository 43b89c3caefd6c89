package portmap

import (
	"testing"

	"github.com/volantvm/volant/lib/apierr"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Mapping
		str  string
	}{
		{"8080:80", Mapping{HostPort: 8080, GuestPort: 80, Protocol: "tcp"}, "8080:80/tcp"},
		{"8080:80/tcp", Mapping{HostPort: 8080, GuestPort: 80, Protocol: "tcp"}, "8080:80/tcp"},
		{"53:5353/UDP", Mapping{HostPort: 53, GuestPort: 5353, Protocol: "udp"}, "53:5353/udp"},
		{"127.0.0.1:8443:443", Mapping{HostIP: "127.0.0.1", HostPort: 8443, GuestPort: 443, Protocol: "tcp"}, "127.0.0.1:8443:443/tcp"},
		{"0.0.0.0:1:65535/udp", Mapping{HostPort: 1, GuestPort: 65535, Protocol: "udp"}, "1:65535/udp"},
	} {
		got, err := Parse(tc.in)
		if err != nil {
			t.Fatalf("Parse(%q): %v", tc.in, err)
		}
		if got != tc.want || got.String() != tc.str {
			t.Errorf("Parse(%q) = %+v (%s), want %+v (%s)", tc.in, got, got, tc.want, tc.str)
		}
		again, err := Parse(got.String())
		if err != nil || again != got {
			t.Errorf("round trip of %s: %+v %v", got, again, err)
		}
	}
	for _, in := range []string{"", "80", "a:80", "80:b", "0:80", "80:0", "65536:80", "80:70000", "1.2.3.4:5:6:7",
		"::1:80:80", "999.1.1.1:80:80", "80:80/sctp", "224.0.0.1:80:80", "fe80::1:80:80", "-1:80", "80:80/"} {
		if m, err := Parse(in); err == nil || apierr.CodeOf(err) != apierr.InvalidInput {
			t.Errorf("Parse(%q) = %+v, %v; want INVALID_INPUT", in, m, err)
		}
	}
}

func TestOverlaps(t *testing.T) {
	m := func(s string) Mapping {
		x, err := Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"8080:80", "8080:81", true},
		{"8080:80", "127.0.0.1:8080:80", true},
		{"10.0.0.1:8080:80", "127.0.0.1:8080:80", false},
		{"10.0.0.1:8080:80", "10.0.0.1:8080:90", true},
		{"8080:80/tcp", "8080:80/udp", false},
		{"8080:80", "8081:80", false},
	} {
		if got := Overlaps(m(tc.a), m(tc.b)); got != tc.want || Overlaps(m(tc.b), m(tc.a)) != tc.want {
			t.Errorf("Overlaps(%s, %s) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
	if _, err := ValidateList([]Mapping{m("8080:80"), m("127.0.0.1:8080:81")}); apierr.CodeOf(err) != apierr.InvalidInput {
		t.Errorf("overlapping list accepted: %v", err)
	}
	got, err := ValidateList([]Mapping{{HostPort: 9000, GuestPort: 1, Protocol: "udp"}, {HostPort: 9000, GuestPort: 2}, {HostIP: "0.0.0.0", HostPort: 80, GuestPort: 80}})
	if err != nil {
		t.Fatal(err)
	}
	if s := Strings(got); len(s) != 3 || s[0] != "80:80/tcp" || s[1] != "9000:2/tcp" || s[2] != "9000:1/udp" {
		t.Errorf("ValidateList order/normalization: %v", s)
	}
}
