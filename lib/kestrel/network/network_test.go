package network

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/volantvm/volant/lib/bootargs"
	"github.com/volantvm/volant/lib/testutil/netnstest"
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
		{[]Link{{1, "lo", "device", false, nil}, {3, "eth1", "device", true, nil}, {2, "eth0", "device", true, nil}}, "eth0"},
		{[]Link{{1, "lo", "device", false, nil}, {2, "sit0", "sit", false, nil}, {4, "eth0", "device", true, nil}}, "eth0"},
		{[]Link{{1, "lo", "device", false, nil}, {2, "br0", "bridge", true, nil}}, ""},
		{[]Link{{1, "lo", "device", false, nil}}, ""},
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
	defer syscall.Umask(syscall.Umask(0o077)) // the mode is 0644 whatever the umask
	// Both ways of writing: atomically (a disk's root, and any rewrite
	// while the workload runs) and in place (the initramfs at boot).
	for name, write := range map[string]func(string, []byte) error{"atomic": writeFile, "in place": writeInPlace} {
		dir := t.TempDir()
		p := filepath.Join(dir, "etc", "resolv.conf")
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.Symlink("/run/systemd/resolve/stub-resolv.conf", p)
		if err := write(p, []byte("x\n")); err != nil {
			t.Fatal(name, err)
		}
		st, err := os.Lstat(p)
		if err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != 0o644 {
			t.Fatalf("%s: %v %v", name, st, err)
		}
		if ents, _ := os.ReadDir(filepath.Dir(p)); len(ents) != 1 {
			t.Fatalf("%s: temp files left: %v", name, ents)
		}
		// An image's own file is replaced with a readable one, whatever its mode.
		hosts := filepath.Join(dir, "etc", "hosts")
		os.WriteFile(hosts, []byte("old, and longer\n"), 0o600)
		if err := write(hosts, []byte("new\n")); err != nil {
			t.Fatal(name, err)
		}
		if st, err := os.Stat(hosts); err != nil || st.Mode().Perm() != 0o644 {
			t.Fatalf("%s: hosts written as %v (%v), want mode 0644", name, st.Mode(), err)
		}
		if b, _ := os.ReadFile(hosts); string(b) != "new\n" {
			t.Fatalf("%s: hosts reads %q", name, b)
		}
		// A missing directory is made.
		if err := write(filepath.Join(dir, "new", "hosts"), []byte("x\n")); err != nil {
			t.Fatal(name, err)
		}
	}
}

// TestConfigureLinksInNamespace runs the rtnetlink requests against a real
// kernel, in a network namespace of the test's own, with a bridge
// standing in for the NIC: loopback and the link come up with the address
// and the default route; running it again replaces rather than fails; a
// gateway outside the subnet gets an onlink route.
func TestConfigureLinksInNamespace(t *testing.T) {
	netnstest.Require(t, "ip")
	ns := netnstest.New(t)
	ns.Run("ip", "link", "add", "d0", "type", "bridge")
	pickD0 := func(links []Link) (Link, bool) {
		for _, l := range links {
			if l.Name == "d0" {
				if l.Type != "bridge" || !l.Ether || len(l.MAC) != 6 {
					t.Errorf("d0 read as %+v", l)
				}
				return l, true
			}
		}
		return Link{}, false
	}
	apply := func(c Config) *Link {
		t.Helper()
		var nic *Link
		if err := ns.Do(func() error {
			var err error
			nic, err = configureLinks(c, pickD0)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return nic
	}
	c := Config{Address: netip.MustParsePrefix("10.9.8.7/24"), Gateway: netip.MustParseAddr("10.9.8.1")}
	for i := 0; i < 2; i++ {
		if nic := apply(c); nic == nil || nic.Name != "d0" {
			t.Fatalf("nic %+v", nic)
		}
	}
	for _, check := range []struct{ argv, want string }{
		{"ip -o -4 addr show dev d0", "inet 10.9.8.7/24 brd 10.9.8.255 scope global d0"},
		{"ip -o link show dev lo", "<LOOPBACK,UP,LOWER_UP>"},
		{"ip -o link show dev d0", ",UP,"},
		{"ip route show default", "default via 10.9.8.1 dev d0"},
	} {
		if out := ns.Run(strings.Fields(check.argv)[0], strings.Fields(check.argv)[1:]...); !strings.Contains(out, check.want) {
			t.Errorf("%s: %q lacks %q", check.argv, out, check.want)
		}
	}
	if n := strings.Count(ns.Run("ip", "-o", "-4", "addr", "show", "dev", "d0"), "inet "); n != 1 {
		t.Errorf("%d IPv4 addresses on d0 after two runs, want 1", n)
	}
	apply(Config{Address: netip.MustParsePrefix("10.9.8.7/24"), Gateway: netip.MustParseAddr("172.31.0.1")})
	if out := ns.Run("ip", "route", "show", "default"); !strings.Contains(out, "default via 172.31.0.1 dev d0 onlink") {
		t.Errorf("route with a gateway outside the subnet: %q", out)
	}
	// Without an address only loopback is touched.
	if nic := apply(Config{}); nic != nil {
		t.Errorf("a NIC was configured without an address: %+v", nic)
	}
}
