package fledge

import (
	"archive/tar"
	"context"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	ispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/volantvm/volant/lib/bootargs"
	"github.com/volantvm/volant/lib/kernel"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/testutil/imagetest"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// TestVMInitramfsPluginServesHTTP builds an initramfs plugin with fledge
// (kestrel from this checkout as /init, busybox httpd as the workload, the
// guest kernel's modules), boots it under QEMU with its manifest on the
// kernel command line, and fetches a mapped page over a tap on a bridge in
// a network namespace of the test's own.
func TestVMInitramfsPluginServesHTTP(t *testing.T) {
	k, vmlinux := guesttest.Kernel(t)
	needBusybox(t)
	netnstest.Require(t, "curl")
	kestrel := guesttest.Kestrel(t)

	toml := strings.Replace(webToml, "[agent]\nlocal = \"/bin/busybox\"\n", "", 1)
	toml = strings.Replace(toml, "[health_check]", "restart = \"always\"\n\n[health_check]", 1)
	dir := project(t, toml, webFiles)
	res, _, err := build(t, dir, func(r *Request) {
		r.Kestrel = kestrel
		r.KernelModules = k.ModulesDir
	})
	if err != nil {
		t.Fatal(err)
	}
	m := readManifest(t, res.Manifest)
	t.Logf("plugin %s: %d bytes, %d entries, %d modules", res.Artifact, res.Bytes, res.Entries, len(res.Modules))

	q := bootGuest(t, vmlinux, m, []string{"-initrd", res.Artifact})
	body := q.get(t, "/index.html")
	if body != "hello from fledge\n" {
		t.Fatalf("body %q, want the mapped index.html", body)
	}
	// "/" serves the directory's index.html: the workload keeps serving.
	if got := q.get(t, "/"); got != body {
		t.Fatalf("GET /: %q", got)
	}
}

// TestVMRootfsPluginServesHTTP builds a rootfs plugin from an OCI image
// (static busybox, httpd as the image's entrypoint running as a user named
// in the image) and the boot initramfs, boots them under QEMU (kestrel
// stage 1 mounts the disk and runs /bin/kestrel from it) and fetches a page.
// The image serves on 8080, kestrel's default port, so the manifest must
// move kestrel's API to 8081 or the workload could not listen.
func TestVMRootfsPluginServesHTTP(t *testing.T) {
	k, vmlinux := guesttest.Kernel(t)
	needBusybox(t)
	requireRoot(t)
	needE2fs(t)
	netnstest.Require(t, "curl")
	kestrel := guesttest.Kestrel(t)

	bb, err := os.ReadFile(standIn)
	if err != nil {
		t.Fatal(err)
	}
	img := imagetest.Image{
		Config: ispec.ImageConfig{
			Entrypoint:   []string{"/bin/busybox", "httpd", "-f", "-p", "8080"},
			Cmd:          []string{"-h", "/srv/www"},
			User:         "www",
			WorkingDir:   "/srv",
			ExposedPorts: map[string]struct{}{"8080/tcp": {}},
		},
		Layers: []imagetest.Layer{{Files: []imagetest.File{
			{Path: "bin/", Type: tar.TypeDir, Mode: 0o755},
			{Path: "bin/busybox", Mode: 0o755, Body: string(bb)},
			{Path: "bin/sh", Type: tar.TypeSymlink, Link: "busybox"},
			{Path: "etc/", Type: tar.TypeDir, Mode: 0o755},
			{Path: "etc/passwd", Mode: 0o644, Body: "root:x:0:0::/root:/bin/sh\nwww:x:33:33::/srv:/bin/sh\n"},
			{Path: "etc/group", Mode: 0o644, Body: "root:x:0:\nwww:x:33:\n"},
			{Path: "srv/", Type: tar.TypeDir, Mode: 0o755},
			{Path: "srv/www/", Type: tar.TypeDir, Mode: 0o755},
			{Path: "srv/www/index.html", Mode: 0o644, Body: "from the image\n"},
		}}, {Compression: "zstd", Files: []imagetest.File{
			{Path: "srv/www/index.html", Mode: 0o644, Body: "from the upper layer\n"},
		}}},
	}
	layout := filepath.Join(t.TempDir(), "layout")
	if _, err := imagetest.WriteLayout(layout, "1.0", img); err != nil {
		t.Fatal(err)
	}
	dir := project(t, `version = "1"
strategy = "oci_rootfs"
[plugin]
name = "bbweb"
[source]
image = "oci:`+layout+`:1.0"
[mappings]
"extra.html" = "/srv/www/extra.html"
`, map[string]string{"extra.html": "mapped\n"})
	res, _, err := build(t, dir, func(r *Request) { r.Kestrel = kestrel })
	if err != nil {
		t.Fatal(err)
	}
	m := readManifest(t, res.Manifest)
	if m.Workload.User != "33:33" || m.Workload.BaseURL != "http://127.0.0.1:8080" || m.AgentPort() != 8081 {
		t.Fatalf("workload %+v, agent port %d", m.Workload, m.AgentPort())
	}
	boot, err := BootInitramfs(context.Background(), BootRequest{Kestrel: kestrel, ModulesDir: k.ModulesDir, Output: filepath.Join(t.TempDir(), "boot.cpio.gz")})
	if err != nil {
		t.Fatal(err)
	}
	// The guest writes to its disk: boot a copy.
	disk := filepath.Join(t.TempDir(), "disk.img")
	if out, err := exec.Command("cp", "--sparse=always", res.Artifact, disk).CombinedOutput(); err != nil {
		t.Fatalf("copying the disk: %v %s", err, out)
	}
	q := bootGuest(t, vmlinux, m, []string{"-initrd", boot.Artifact,
		"-drive", "file=" + disk + ",if=none,id=d0,format=raw", "-device", "virtio-blk-device,drive=d0"})
	if body := q.get(t, "/index.html"); body != "from the upper layer\n" {
		t.Fatalf("index.html %q", body)
	}
	if body := q.get(t, "/extra.html"); body != "mapped\n" {
		t.Fatalf("extra.html %q", body)
	}
}

const (
	vmBridgeIP = "10.231.7.1"
	vmGuestIP  = "10.231.7.2"
	vmMAC      = "52:54:00:f1:ed:02"
)

type guest struct {
	ns      *netnstest.NS
	base    string // http://guest:port of the workload
	ctx     context.Context
	exited  chan error
	console func() string
	start   time.Time
}

// bootGuest boots vmlinux with the manifest's boot arguments and extra
// QEMU arguments (initrd, disks) on a tap bridged in a fresh network
// namespace; the guest gets vmGuestIP. Everything stops when the test ends.
func bootGuest(t *testing.T, vmlinux string, m *manifest.Manifest, extra []string) *guest {
	t.Helper()
	qemu := guesttest.QEMU(t)
	ns := netnstest.New(t)
	for _, c := range [][]string{
		{"ip", "link", "add", "br0", "type", "bridge"},
		{"ip", "addr", "add", vmBridgeIP + "/24", "dev", "br0"},
		{"ip", "link", "set", "br0", "up"},
		{"ip", "tuntap", "add", "dev", "tap0", "mode", "tap"},
		{"ip", "link", "set", "tap0", "master", "br0"},
		{"ip", "link", "set", "tap0", "up"},
		// A permanent neighbour entry spares the first request an ARP wait.
		{"ip", "neigh", "replace", vmGuestIP, "lladdr", vmMAC, "nud", "permanent", "dev", "br0"},
	} {
		ns.Run(c[0], c[1:]...)
	}
	args, err := m.BootArgs()
	if err != nil {
		t.Fatal(err)
	}
	args.VM = "fledge-vm"
	args.IP = netip.MustParsePrefix(vmGuestIP + "/24")
	args.Gateway = netip.MustParseAddr(vmBridgeIP)
	khz, err := kernel.HostTSCkHz()
	if err != nil {
		t.Fatal(err)
	}
	cmdline := "console=ttyS0 panic=-1 tsc_early_khz=" + strconv.Itoa(khz) +
		" tsc=reliable no_timer_check 8250.nr_uarts=1 mitigations=off random.trust_cpu=on cryptomgr.notests " + args.String()
	if len(cmdline) > bootargs.MaxCmdline {
		t.Fatalf("command line is %d bytes", len(cmdline))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	t.Cleanup(cancel)
	serial := filepath.Join(t.TempDir(), "serial.log")
	qargs := append([]string{"netns", "exec", ns.Name, qemu,
		"-M", "microvm,pit=on,pic=on,rtc=on", "-accel", "tcg", "-cpu", "qemu64,+arat",
		"-m", "128", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", vmlinux, "-serial", "file:" + serial,
		"-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
		"-device", "virtio-net-device,netdev=n0,mac=" + vmMAC,
		"-append", cmdline}, extra...)
	q := exec.CommandContext(ctx, "ip", qargs...)
	logf, err := os.Create(filepath.Join(t.TempDir(), "qemu.log"))
	if err != nil {
		t.Fatal(err)
	}
	q.Stdout, q.Stderr = logf, logf
	u, err := url.Parse(m.Workload.BaseURL)
	if err != nil || u.Port() == "" {
		t.Fatalf("manifest base_url %q has no port", m.Workload.BaseURL)
	}
	g := &guest{ns: ns, base: "http://" + vmGuestIP + ":" + u.Port(), ctx: ctx, exited: make(chan error, 1), start: time.Now()}
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { g.exited <- q.Wait() }()
	t.Cleanup(func() {
		_ = q.Process.Kill()
		err := <-g.exited
		g.exited <- err
	})
	g.console = func() string {
		b, _ := os.ReadFile(serial)
		l, _ := os.ReadFile(logf.Name())
		return string(b) + string(l)
	}
	return g
}

// get waits for HTTP 200 from the guest's base_url port and returns the body.
func (g *guest) get(t *testing.T, path string) string {
	t.Helper()
	url := g.base + path
	for {
		got, err := g.ns.Output("curl", "-s", "-m", "2", "-w", "\n%{http_code}", url)
		if err == nil && strings.HasSuffix(got, "\n200") {
			t.Logf("HTTP 200 from %s %.1fs after launch", url, time.Since(g.start).Seconds())
			return strings.TrimSuffix(got, "\n200")
		}
		select {
		case err := <-g.exited:
			g.exited <- err
			t.Fatalf("qemu exited (%v) before %s answered; console:\n%s", err, url, g.console())
		case <-g.ctx.Done():
			t.Fatalf("no HTTP 200 from %s within the timeout (last: %q, %v); console:\n%s", url, got, err, g.console())
		case <-time.After(250 * time.Millisecond):
		}
	}
}
