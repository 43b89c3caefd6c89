package main

import (
	"encoding/json"
	"net"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/cli/clitest"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// A result of `volant-ipam lease`, as tap add receives it on stdin. Fields
// tap add does not read (prefix, gateway, leased_at, anything newer) pass
// through untouched.
const leaseWeb1 = `{"version":"1","kind":"ipam.lease","vm":"web1","ip":"192.168.127.100","prefix":24,"gateway":"192.168.127.1","mac":"52:54:00:6a:10:01","leased_at":"2026-11-28T10:00:00Z"}`

type contractCase struct {
	name  string
	stdin string
	args  []string
	code  int
}

// check runs one case and compares stdout (success) or the error object
// (failure) with testdata/<name>[.err].golden.
func (tc contractCase) check(t *testing.T, r clitest.Result) {
	t.Helper()
	if r.Code != tc.code {
		t.Fatalf("%s: exit %d, want %d; stdout %s stderr %s", tc.name, r.Code, tc.code, r.Stdout, r.Stderr)
	}
	if tc.code == 0 {
		if r.Stderr != "" {
			t.Fatalf("%s: stderr must be empty on success: %s", tc.name, r.Stderr)
		}
		var v map[string]any
		if err := json.Unmarshal([]byte(r.Stdout), &v); err != nil || v["version"] != "1" {
			t.Fatalf("%s: stdout is not one result object: %q", tc.name, r.Stdout)
		}
		clitest.Golden(t, tc.name, r.Stdout)
		return
	}
	if r.Stdout != "" {
		t.Fatalf("%s: stdout must be empty on failure: %s", tc.name, r.Stdout)
	}
	var e apierr.Error
	if err := json.Unmarshal([]byte(r.Stderr), &e); err != nil || e.Code == "" {
		t.Fatalf("%s: stderr is not an error object: %q", tc.name, r.Stderr)
	}
	clitest.Golden(t, tc.name+".err", r.Stderr)
}

// Cases that fail before touching the network, or touch nothing.
func TestContract(t *testing.T) {
	for _, tc := range []contractCase{
		{"tap-name", "", []string{"tap", "name", "web1"}, 0},
		{"tap-name-hashed", "", []string{"tap", "name", "my-deployment-12"}, 0},
		{"no-verb", "", nil, 2},
		{"no-tap-verb", "", []string{"tap"}, 2},
		{"bad-flag", "", []string{"setup", "--nat=maybe"}, 2},
		{"setup-bad-cidr", "", []string{"setup", "--cidr", "192.168.127.1/33"}, 3},
		{"setup-cidr-network", "", []string{"setup", "--cidr", "192.168.127.0/24"}, 3},
		{"setup-bridge-too-long", "", []string{"setup", "--bridge", "bridge-name-too-long"}, 3},
		{"setup-uplink-without-nat", "", []string{"setup", "--uplink", "eth0"}, 3},
		{"setup-unknown-field", `{"bridge":"vbr0","nta":true}`, []string{"setup"}, 3},
		{"tap-add-name-too-long", "", []string{"tap", "add", "--name", "vt-name-too-long"}, 3},
		{"tap-add-nothing", "", []string{"tap", "add"}, 3},
		{"tap-add-bad-mac", "", []string{"tap", "add", "--vm", "web1", "--mac", "01:00:5e:00:00:01"}, 3},
		{"tap-add-bad-owner", "", []string{"tap", "add", "--vm", "web1", "--owner", "no-such-user-xyz"}, 3},
		{"tap-add-wrong-kind", `{"version":"1","kind":"manifest.validate","valid":true}`, []string{"tap", "add"}, 3},
		{"tap-add-lease-bad-type", `{"kind":"ipam.lease","vm":7}`, []string{"tap", "add"}, 3},
		{"tap-name-bad-vm", "", []string{"tap", "name", "web 1"}, 3},
		{"port-add-bad-spec", "", []string{"port", "add", "--vm", "web1", "--backend", "192.168.127.100", "-p", "8080"}, 3},
		{"port-add-no-owner", "", []string{"port", "add", "-p", "8080:80"}, 3},
		{"port-add-two-owners", "", []string{"port", "add", "--vm", "web1", "--deployment", "svc", "-p", "8080:80"}, 3},
		{"port-add-bad-backend", "", []string{"port", "add", "--vm", "web1", "--backend", "::1", "-p", "8080:80"}, 3},
		{"port-gc-no-keep", "", []string{"port", "gc"}, 2},
		{"port-gc-bad-keep", "", []string{"port", "gc", "--keep", "web1"}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.check(t, clitest.Run(t, run, tc.stdin, nil, tc.args...))
		})
	}
}

// The whole life cycle through the command, in a namespace of its own:
// setup, idempotence, check, a tap from a lease, status, errors, teardown.
// Every output is deterministic (the bridge MAC is derived from its name,
// the tap's from the guest's), so each is compared with a golden file.
func TestContractInNamespace(t *testing.T) {
	netnstest.Require(t, "nft")
	ns := netnstest.New(t)
	ns.Run("ip", "link", "add", "other0", "type", "bridge")
	steps := []contractCase{
		{"setup", "", []string{"setup", "--nat"}, 0},
		{"setup-again", "", []string{"setup", "--nat"}, 0},
		{"setup-stdin-again", `{"version":"1","bridge":"vbr0","cidr":"192.168.127.1/24","nat":true}`, []string{"setup"}, 0},
		{"check", "", []string{"check", "--nat"}, 0},
		// Bug 6 of issue 14: a bare check checks what setup recorded (NAT).
		{"check-bare", "", []string{"check"}, 0},
		{"check-without-nat", "", []string{"check", "--no-nat"}, 5},
		{"setup-foreign-bridge", "", []string{"setup", "--bridge", "other0", "--cidr", "10.5.0.1/24"}, 5},
		{"tap-add-lease", leaseWeb1, []string{"tap", "add"}, 0},
		{"tap-add-lease-again", leaseWeb1, []string{"tap", "add"}, 0},
		{"tap-add-flags", "", []string{"tap", "add", "--vm", "my-deployment-12", "--mac", "52:54:00:6a:10:02", "--ip", "192.168.127.101", "--owner", "0", "--mtu", "1400"}, 0},
		{"tap-add-missing-bridge", "", []string{"tap", "add", "--vm", "web9", "--bridge", "nosuch0"}, 4},
		{"tap-add-ip-outside", "", []string{"tap", "add", "--vm", "web9", "--mac", "52:54:00:6a:10:09", "--ip", "10.0.0.9"}, 3},
		{"tap-add-taken", "", []string{"tap", "add", "--name", "vt-web1", "--vm", "web2"}, 5},
		{"tap-list", "", []string{"tap", "list"}, 0},
		{"status", "", []string{"status"}, 0},
		{"teardown-with-taps", "", []string{"teardown"}, 5},
		{"tap-del-from-result", "", nil, 0}, // stdin: tap-add-lease's output
		{"tap-del-again", "", []string{"tap", "del", "--vm", "web1"}, 0},
		{"tap-gc-no-keep", "", []string{"tap", "gc"}, 2}, // used to delete every idle tap
		{"tap-gc-dry-run", `["web1"]`, []string{"tap", "gc", "--dry-run"}, 0},
		{"tap-gc", `{"keep":["web1"]}`, []string{"tap", "gc"}, 0},
		{"teardown", "", []string{"teardown"}, 0},
		{"teardown-again", "", []string{"teardown"}, 0},
		{"status-after", "", []string{"status"}, 0},
	}
	var tapResult string
	for _, tc := range steps {
		if tc.name == "tap-del-from-result" {
			tc.stdin, tc.args = tapResult, []string{"tap", "del"}
		}
		var r clitest.Result
		if err := ns.Do(func() error { r = clitest.Run(t, run, tc.stdin, nil, tc.args...); return nil }); err != nil {
			t.Fatal(err)
		}
		tc.check(t, r)
		if tc.name == "tap-add-lease" {
			tapResult = r.Stdout
			// The lease is passed on whole, for volant-launch.
			var v struct {
				Lease map[string]any `json:"lease"`
				MAC   string         `json:"mac"`
			}
			if err := json.Unmarshal([]byte(r.Stdout), &v); err != nil || v.Lease["leased_at"] != "2026-11-28T10:00:00Z" || v.MAC != "52:54:00:6a:10:01" {
				t.Fatalf("lease not passed on: %s", r.Stdout)
			}
		}
	}
	if out := ns.Run("ip", "link", "show"); strings.Contains(out, "vbr0") || strings.Contains(out, "vt-") {
		t.Fatalf("left behind:\n%s", out)
	}
}

// Published ports through the command, in a namespace of its own: from a
// lease, more ports, a port another owner holds, a host listener's port,
// list, gc, del. Outputs are compared with golden files.
func TestPortVerbsInNamespace(t *testing.T) {
	netnstest.Require(t, "nft")
	ns := netnstest.New(t)
	ns.Run("ip", "link", "add", "vbr0", "type", "bridge")
	ns.Run("ip", "link", "set", "vbr0", "up")
	// A process that listens on 7000.
	var ln net.Listener
	if err := ns.Do(func() error { var err error; ln, err = net.Listen("tcp4", ":7000"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	steps := []contractCase{
		{"port-add-lease", leaseWeb1, []string{"port", "add", "-p", "8080:80"}, 0},
		{"port-add-lease-again", leaseWeb1, []string{"port", "add", "-p", "8080:80"}, 0},
		{"port-add-more", "", []string{"port", "add", "--vm", "web1", "-p", "127.0.0.1:8443:443", "-p", "5353:53/udp"}, 0},
		{"port-add-deployment", `{"deployment":"svc","backends":["192.168.127.101","192.168.127.102"],"ports":[{"host_port":9000,"guest_port":80}]}`, []string{"port", "add"}, 0},
		{"port-add-taken", "", []string{"port", "add", "--deployment", "svc", "-p", "8080:81"}, 5},
		{"port-add-listener", "", []string{"port", "add", "--vm", "web2", "--backend", "192.168.127.103", "-p", "7000:80"}, 5},
		{"port-list", "", []string{"port", "list"}, 0},
		{"port-gc-dry-run", `["vm:web1"]`, []string{"port", "gc", "--dry-run"}, 0},
		{"port-gc", "", []string{"port", "gc", "--keep", "vm:web1"}, 0},
		{"port-del-one", "", []string{"port", "del", "--vm", "web1", "-p", "5353:53/udp"}, 0},
		{"port-del-lease", leaseWeb1, []string{"port", "del"}, 0},
		{"port-del-again", "", []string{"port", "del", "--vm", "web1"}, 0},
		{"port-list-empty", "", []string{"port", "list"}, 0},
	}
	for _, tc := range steps {
		var r clitest.Result
		if err := ns.Do(func() error { r = clitest.Run(t, run, tc.stdin, nil, tc.args...); return nil }); err != nil {
			t.Fatal(err)
		}
		tc.check(t, r)
	}
	if out, err := ns.Output("nft", "list", "tables"); err != nil || strings.Contains(out, "volant") {
		t.Fatalf("tables left: %s %v", out, err)
	}
}
