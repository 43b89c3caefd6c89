package bootargs

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	a := Args{
		Manifest: "H4sIAAAAAAAC_6tWKkktLlGyUlAqSa0oUcrPS1WqBQBmGXZzFQAAAA",
		Plugin:   "nginx", Runtime: "nginx", VM: "web-1",
		IP:      netip.MustParsePrefix("192.168.127.100/24"),
		Gateway: netip.MustParseAddr("192.168.127.1"),
		DNS:     []netip.Addr{netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("8.8.8.8")},
		APIHost: "192.168.127.1", APIPort: 7070, AgentPort: 9090,
		Boot: BootRootfs, RootfsDevice: "/dev/vda", RootfsFSType: "ext4",
		Modules: []string{"virtio_console", "button"}, Debug: true,
		ConsoleShell: "/bin/sh",
		Volumes:      []Volume{{Serial: "volant-vol0", Path: "/data"}, {Serial: "volant-vol1", Path: "/srv/static", ReadOnly: true}},
	}
	line := "console=ttyS0 quiet " + a.String() + " panic=-1"
	got, err := Parse(line)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, a) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, a)
	}
	if !strings.HasSuffix(a.String(), "volant.manifest="+a.Manifest) {
		t.Fatal("manifest must be the last key")
	}
}

func TestKernelIPForm(t *testing.T) {
	got, err := Parse("ip=10.0.0.5::10.0.0.1:255.255.255.0:box1:eth0:off")
	if err != nil {
		t.Fatal(err)
	}
	if got.IP != netip.MustParsePrefix("10.0.0.5/24") || got.Gateway != netip.MustParseAddr("10.0.0.1") || got.VM != "box1" {
		t.Fatalf("got %+v", got)
	}
	// volant.* keys win over ip=, in either order.
	got, err = Parse("volant.ip=10.0.0.9/16 ip=10.0.0.5::10.0.0.1:255.255.255.0")
	if err != nil || got.IP != netip.MustParsePrefix("10.0.0.9/16") {
		t.Fatalf("got %+v, %v", got, err)
	}
	got, err = Parse("ip=10.0.0.5::10.0.0.1:255.255.255.0 volant.ip=10.0.0.9/16")
	if err != nil || got.IP != netip.MustParsePrefix("10.0.0.9/16") {
		t.Fatalf("got %+v, %v", got, err)
	}
}

func TestMalformedValuesAreAllReported(t *testing.T) {
	_, err := Parse("volant.ip=300.1.1.1/24 volant.api_port=0 volant.boot=disk volant.dns=1.1.1.1,x ip=1.2.3.4::1.2.3.1:255.0.255.0 volant.console_shell=sh")
	if err == nil {
		t.Fatal("want errors")
	}
	for _, k := range []string{"volant.ip", "volant.api_port", "volant.boot", "volant.dns", "ip=", "volant.console_shell"} {
		if !strings.Contains(err.Error(), k) {
			t.Errorf("error does not mention %s: %v", k, err)
		}
	}
}

func TestSplitQuotes(t *testing.T) {
	got := Split(`console=ttyS0  foo="a b" "x y"=z  `)
	want := []string{"console=ttyS0", "foo=a b", "x y=z"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q want %q", got, want)
	}
}

func TestConsoleShell(t *testing.T) {
	for in, want := range map[string]string{
		"":                             "",
		"volant.console_shell=/bin/sh": "/bin/sh",
		"volant.console_shell=off":     ConsoleShellOff,
		"volant.console_shell=/bin/sh volant.console_shell=off": ConsoleShellOff, // the last word wins (a create request's kernel_args come last)
	} {
		got, err := Parse(in)
		if err != nil || got.ConsoleShell != want {
			t.Errorf("%q: got %q, %v; want %q", in, got.ConsoleShell, err, want)
		}
	}
	for _, bad := range []string{"volant.console_shell=", "volant.console_shell=bin/sh", "volant.console_shell=/bin/\x1bsh"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
