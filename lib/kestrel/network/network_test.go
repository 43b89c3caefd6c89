package network

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/volantvm/volant/lib/bootargs"
)

func TestFromArgs(t *testing.T) {
	for line, want := range map[string]Config{
		"volant.ip=192.168.127.100/24 volant.gw=192.168.127.1 volant.dns=1.1.1.1,8.8.8.8 volant.vm=web-1": {
			Address: netip.MustParsePrefix("192.168.127.100/24"), Gateway: netip.MustParseAddr("192.168.127.1"),
			DNS: []netip.Addr{netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("8.8.8.8")}, Hostname: "web-1"},
		"ip=10.0.0.5::10.0.0.1:255.255.255.0:box:eth0:off": {
			Address: netip.MustParsePrefix("10.0.0.5/24"), Gateway: netip.MustParseAddr("10.0.0.1"), Hostname: "box"},
		"console=ttyS0": {},
	} {
		a, err := bootargs.Parse(line)
		if err != nil {
			t.Fatal(err)
		}
		got := FromArgs(a)
		if got.Address != want.Address || got.Gateway != want.Gateway || got.Hostname != want.Hostname || len(got.DNS) != len(want.DNS) {
			t.Errorf("%q: %+v, want %+v", line, got, want)
		}
	}
}

func TestPickLink(t *testing.T) {
	for _, tc := range []struct {
		links []Link
		want  string
	}{
		{[]Link{{1, "lo", "device", false}, {3, "eth1", "device", true}, {2, "eth0", "device", true}}, "eth0"},
		{[]Link{{1, "lo", "device", false}, {2, "sit0", "sit", false}, {4, "eth0", "device", true}}, "eth0"},
		{[]Link{{1, "lo", "device", false}, {2, "br0", "bridge", true}}, ""},
		{[]Link{{1, "lo", "device", false}}, ""},
	} {
		got, ok := PickLink(tc.links)
		if got.Name != tc.want || ok != (tc.want != "") {
			t.Errorf("%v: %q %v", tc.links, got.Name, ok)
		}
	}
}

func TestFiles(t *testing.T) {
	rc := string(ResolvConf([]netip.Addr{netip.MustParseAddr("9.9.9.9"), netip.MustParseAddr("2620:fe::fe")}))
	if rc != "# written by kestrel from volant.dns\nnameserver 9.9.9.9\nnameserver 2620:fe::fe\n" {
		t.Fatalf("%q", rc)
	}
	h := string(Hosts(netip.MustParseAddr("192.168.127.100"), "web-1"))
	if h != "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n192.168.127.100\tweb-1\n" {
		t.Fatalf("%q", h)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "etc", "resolv.conf")
	os.MkdirAll(filepath.Dir(p), 0o755)
	os.Symlink("/run/systemd/resolve/stub-resolv.conf", p)
	if err := writeFile(p, []byte("x\n")); err != nil {
		t.Fatal(err)
	}
	st, err := os.Lstat(p)
	if err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != 0o644 {
		t.Fatalf("%v %v", st, err)
	}
	if ents, _ := os.ReadDir(filepath.Dir(p)); len(ents) != 1 {
		t.Fatalf("temp files left: %v", ents)
	}
}
