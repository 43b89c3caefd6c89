package kestrel_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/kestrel/internal/vmtest"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/selfsigned"
	"github.com/volantvm/volant/lib/testutil/guesttest"
)

// TestVMHTTPSWorkload boots kestrel, built as it ships (without net/http's
// HTTP/2: lib/kestrel/kestrelbuild), with a workload that serves only
// HTTPS through Go's server, which offers HTTP/2 too. kestrel's https
// paths must work, over HTTP/1.1: the health check (an https:// base URL,
// the guest's CA file trusting the workload's certificate) turns healthy,
// and the proxy fetches a page from the workload.
func TestVMHTTPSWorkload(t *testing.T) {
	k, vmlinux := guesttest.Kernel(t)
	n := vmtest.NewNet(t)
	pair, err := selfsigned.New([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	m := &manifest.Manifest{
		Name: "tls", Version: "1", Initramfs: &manifest.Artifact{URL: "/unused.cpio"},
		Workload: manifest.Workload{
			Entrypoint: []string{"/bin/httpsd"},
			BaseURL:    "https://127.0.0.1:8443",
		},
		HealthCheck: &manifest.HealthCheck{Endpoint: "/healthz", IntervalMS: 500, TimeoutMS: 10_000, Retries: 2},
	}
	im := vmtest.BootImage(t, k)
	if err := im.B.CopyFile("/bin/httpsd", guesttest.StaticInit(t, "lib/kestrel/testdata/httpsd"), 0o755); err != nil {
		t.Fatal(err)
	}
	im.File("/etc/httpsd/cert.pem", 0o644, string(pair.Cert))
	im.File("/etc/httpsd/key.pem", 0o600, string(pair.Key))
	// The certificate is its own CA; Go's client on Linux reads this file.
	im.File("/etc/ssl/certs/ca-certificates.crt", 0o644, string(pair.Cert))
	initrd := im.Write()

	ip := netip.MustParseAddr("192.168.127.103")
	vm := vmtest.Boot(t, n, vmlinux, vmtest.Config{
		Name: "vm-tls", Initrd: initrd, IP: ip, MAC: "02:00:00:00:00:67",
		Cmdline: "volant.vm=vm-tls volant.ip=192.168.127.103/24 volant.gw=192.168.127.1 volant.manifest=" + encode(t, m),
	})
	vm.WaitConsole("kestrel: agent ready", bootTimeout)
	g := &guest{t: t, client: n.Client(20 * time.Second), base: "http://" + ip.String() + ":8080"}
	g.waitStatus("healthy over https", 90*time.Second, func(s agentapi.Status) bool { return s.Health.State == agentapi.HealthHealthy })
	// The proxy's client and the health check's each spoke HTTP/1.1 to a
	// server that offers HTTP/2 too.
	if body := g.mustGet("/v1/page"); body != "HTTP/1.1 over TLS\n" {
		t.Fatalf("through kestrel's proxy: %q", body)
	}
	logs := g.mustGet("/v1/logs")
	if !strings.Contains(logs, "httpsd: GET /healthz HTTP/1.1") || strings.Contains(logs, "HTTP/2") {
		t.Fatalf("the workload's log of kestrel's health probes:\n%s", logs)
	}
}
