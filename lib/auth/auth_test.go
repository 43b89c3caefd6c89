package auth

import (
	"net/url"
	"regexp"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
)

func TestNewTokenAndHash(t *testing.T) {
	a, err := NewToken()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := NewToken()
	if a == b || !regexp.MustCompile(`^volant_[A-Za-z0-9_-]{43}$`).MatchString(a) {
		t.Fatalf("tokens %q %q", a, b)
	}
	// SHA-256 of "abc", in hex.
	if h := Hash("abc"); h != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Fatalf("Hash: %s", h)
	}
	if Hash(a) == Hash(b) || len(Hash(a)) != 64 {
		t.Fatal("hashes of two tokens")
	}
}

func TestTokenInQuery(t *testing.T) {
	for q, want := range map[string]string{
		"token=x": "token", "Access_Token=x": "Access_Token", "api_key=1&state=running": "api_key",
		"state=running&follow=1": "", "": "", "tokens=1": "",
	} {
		v, _ := url.ParseQuery(q)
		if got := TokenInQuery(v); got != want {
			t.Errorf("%q: %q, want %q", q, got, want)
		}
	}
}

func TestParseRole(t *testing.T) {
	for _, r := range Roles() {
		if got, err := ParseRole(string(r)); err != nil || got != r {
			t.Errorf("%s: %v %v", r, got, err)
		}
	}
	for _, s := range []string{"", "root", "Admin", "anyone"} {
		if _, err := ParseRole(s); !apierr.Is(err, apierr.InvalidInput) {
			t.Errorf("%q: %v", s, err)
		}
	}
	if UnixName(0) != "unix:root" || UnixName(1000) != "unix:uid=1000" {
		t.Fatal(UnixName(0), UnixName(1000))
	}
}
