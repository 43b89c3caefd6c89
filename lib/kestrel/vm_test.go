package kestrel_test

import (
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/kestrel/boot"
	"github.com/volantvm/volant/lib/kestrel/internal/vmtest"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/vmm/supervise"
)

const bootTimeout = 90 * time.Second

type guest struct {
	t      testing.TB
	client *http.Client
	base   string
}

func (g *guest) get(path string) (int, string, error) {
	resp, err := g.client.Get(g.base + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func (g *guest) mustGet(path string) string {
	g.t.Helper()
	code, body, err := g.get(path)
	if err != nil || code != 200 {
		g.t.Fatalf("GET %s: %d %v %s", path, code, err, body)
	}
	return body
}

func (g *guest) status() agentapi.Status {
	g.t.Helper()
	var st agentapi.Status
	if err := json.Unmarshal([]byte(g.mustGet("/healthz")), &st); err != nil {
		g.t.Fatal(err)
	}
	return st
}

func (g *guest) waitStatus(what string, timeout time.Duration, cond func(agentapi.Status) bool) agentapi.Status {
	g.t.Helper()
	deadline := time.Now().Add(timeout)
	var last agentapi.Status
	for time.Now().Before(deadline) {
		code, body, err := g.get("/healthz")
		if err == nil && code == 200 && json.Unmarshal([]byte(body), &last) == nil && cond(last) {
			return last
		}
		time.Sleep(100 * time.Millisecond)
	}
	g.t.Fatalf("waiting for %s: last status %+v", what, last)
	return last
}

// dataDisk makes an ext4 data disk with one file and no kestrel on it.
func dataDisk(t testing.TB, content string) string {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "hello.txt"), []byte(content), 0o644)
	return vmtest.Ext4(t, dir, "data")
}

func mustJSON(t testing.TB, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestVMInitramfs boots an initramfs plugin whose manifest is too big for
// the command line, so kestrel fetches it from a (fake) control plane; a
// data disk without kestrel is attached as /dev/vda and must not be taken
// for the root. Through kestrel's proxy on the guest IP the test reaches
// the workload (busybox httpd) and the data disk's file, sees health go
// healthy, crashes the workload through a manifest action, sees it
// restarted and healthy again (and every change reported), reads the log
// ring, then presses the ACPI power button and sees a clean shutdown.
func TestVMInitramfs(t *testing.T) {
	k, vmlinux := guesttest.Kernel(t)
	n := vmtest.NewNet(t)
	cp := &vmtest.Recorder{Manifests: map[string][]byte{}}
	n.Serve(vmtest.Gateway.String()+":9000", cp)

	m := &manifest.Manifest{
		Name: "web", Version: "1", Initramfs: &manifest.Artifact{URL: "/unused.cpio"},
		Disks: []manifest.Disk{{Name: "data", Source: "/unused.img", Target: "/srv/data"}},
		Workload: manifest.Workload{
			Entrypoint: []string{"/bin/httpd", "-f", "-vv", "-p", "80", "-h", "/srv"},
			BaseURL:    "http://127.0.0.1:80",
			Restart:    "on-failure",
		},
		HealthCheck: &manifest.HealthCheck{Endpoint: "/index.html", IntervalMS: 200, TimeoutMS: 1000, Retries: 1},
		Actions:     map[string]manifest.Action{"crash": {Method: "GET", Path: "/cgi-bin/crash"}},
	}
	cp.Manifests["web"] = mustJSON(t, m)

	im := vmtest.BootImage(t, k)
	im.AddBusybox("sh", "httpd", "killall", "cat")
	im.File("/srv/index.html", 0o644, "served from the initramfs\n")
	im.File("/srv/cgi-bin/crash", 0o755, "#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho crashing\nkillall -9 httpd\n")
	im.File("/srv/cgi-bin/resolv", 0o755, "#!/bin/sh\necho 'Content-Type: text/plain'\necho\ncat /etc/resolv.conf\n")
	initrd := im.Write()

	ip := netip.MustParseAddr("192.168.127.100")
	vm := vmtest.Boot(t, n, vmlinux, vmtest.Config{
		Name: "vm1", Initrd: initrd, Disks: []string{dataDisk(t, "from the data disk\n")},
		IP: ip, MAC: "02:00:00:00:00:64",
		Cmdline: "volant.vm=vm1 volant.plugin=web volant.ip=192.168.127.100/24 volant.gw=192.168.127.1 volant.dns=192.168.127.1 volant.api_host=192.168.127.1 volant.api_port=9000",
	})
	ready := vm.WaitConsole("kestrel: agent ready", bootTimeout)
	g := &guest{t: t, client: n.Client(10 * time.Second), base: "http://" + ip.String() + ":8080"}
	st := g.waitStatus("healthy", 60*time.Second, func(s agentapi.Status) bool { return s.Health.State == agentapi.HealthHealthy })
	con := vm.ConsoleText()
	if !strings.Contains(con, "disk carries no kestrel, so it is not the root: staying in the initramfs") {
		t.Fatalf("stage 1 did not probe and reject the data disk:\n%s", con)
	}
	if st.Boot != "initramfs" || st.VM != "vm1" || st.Plugin != "web" || st.Workload.State != agentapi.WorkloadRunning {
		t.Fatalf("status %+v", st)
	}
	if st.Memory == nil || st.Memory.AgentRSSKiB == 0 {
		t.Fatalf("no memory figures: %+v", st)
	}
	t.Logf("ready line after %s; kestrel RSS in the guest %d KiB; guest MemTotal %d KiB, available %d KiB",
		ready.Round(time.Millisecond), st.Memory.AgentRSSKiB, st.Memory.GuestTotalKiB, st.Memory.GuestAvailableKiB)

	if body := g.mustGet("/v1/index.html"); body != "served from the initramfs\n" {
		t.Fatalf("proxy: %q", body)
	}
	if body := g.mustGet("/v1/data/hello.txt"); body != "from the data disk\n" {
		t.Fatalf("data disk through the proxy: %q", body)
	}
	// kestrel wrote volant.dns into /etc/resolv.conf (renameio, in the guest).
	if body := g.mustGet("/v1/cgi-bin/resolv"); body != "# written by kestrel from volant.dns\nnameserver 192.168.127.1\n" {
		t.Fatalf("/etc/resolv.conf in the guest: %q", body)
	}

	// Crash the workload through the manifest action; on-failure restarts it.
	oldPID := st.Workload.PID
	resp, err := g.client.Post(g.base+"/v1/actions/crash", "text/plain", nil)
	if err == nil {
		resp.Body.Close()
	}
	st = g.waitStatus("restart", 60*time.Second, func(s agentapi.Status) bool {
		return s.Workload.Restarts >= 1 && s.Workload.PID != oldPID && s.Health.State == agentapi.HealthHealthy
	})
	if st.Workload.Signal != "SIGKILL" || st.Workload.ExitCode == nil || *st.Workload.ExitCode != -1 {
		t.Fatalf("the crash was not recorded: %+v", st.Workload)
	}
	if body := g.mustGet("/v1/index.html"); body != "served from the initramfs\n" {
		t.Fatalf("proxy after restart: %q", body)
	}

	// Every state change reached the control plane, in order.
	var seq []string
	for _, raw := range cp.Reports() {
		var s agentapi.Status
		json.Unmarshal(raw, &s)
		e := string(s.Workload.State) + "/" + string(s.Health.State)
		if len(seq) == 0 || seq[len(seq)-1] != e {
			seq = append(seq, e)
		}
	}
	// In order: healthy, the crash (restarting), unhealthy (while it
	// restarts, or while the new process starts: which depends on when
	// the probe lands), healthy again.
	next := 0
	for _, want := range []struct {
		what string
		ok   func(string) bool
	}{
		{"running/healthy", func(e string) bool { return e == "running/healthy" }},
		{"restarting/*", func(e string) bool { return strings.HasPrefix(e, "restarting/") }},
		{"*/unhealthy", func(e string) bool { return strings.HasSuffix(e, "/unhealthy") }},
		{"running/healthy", func(e string) bool { return e == "running/healthy" }},
	} {
		for next < len(seq) && !want.ok(seq[next]) {
			next++
		}
		if next == len(seq) {
			t.Fatalf("reports %q lack %s in order", strings.Join(seq, " "), want.what)
		}
	}

	logs := g.mustGet("/v1/logs")
	if !strings.Contains(logs, "url:/index.html") || !strings.Contains(logs, "url:/cgi-bin/crash") {
		t.Fatalf("log ring lacks the workload's output:\n%s", logs)
	}
	if !strings.Contains(vm.ConsoleText(), "url:/index.html") {
		t.Fatal("workload output did not reach the serial console")
	}

	t0 := time.Now()
	vm.PowerButton()
	if err := vm.Wait(30 * time.Second); err != nil {
		t.Fatalf("guest did not power off: %v\n%s", err, vm.ConsoleText())
	}
	t.Logf("power button to QEMU exit: %s", time.Since(t0).Round(time.Millisecond))
	con = vm.ConsoleText()
	for _, want := range []string{"shutting down reason=\"ACPI power button pressed\"", "stopping workload", "workload exited", "powering off"} {
		if !strings.Contains(con, want) {
			t.Fatalf("console lacks %q:\n%s", want, con)
		}
	}
	if strings.Contains(con, "FATAL") || strings.Contains(con, "Kernel panic") {
		t.Fatalf("unclean shutdown:\n%s", con)
	}
}

// rootDisk makes an ext4 root filesystem holding busybox (as the workload)
// and, when withKestrel, kestrel at /bin/kestrel as fledge installs it.
func rootDisk(t testing.TB, withKestrel bool, index string) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{"bin", "etc", "srv", "proc", "sys", "dev", "run", "tmp"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	copyFile(t, vmtest.Busybox(t), filepath.Join(dir, "bin/busybox"))
	for _, a := range []string{"sh", "httpd", "cat", "killall"} {
		os.Symlink("busybox", filepath.Join(dir, "bin", a))
	}
	if withKestrel {
		copyFile(t, guesttest.Kestrel(t), filepath.Join(dir, "bin/kestrel"))
	}
	os.WriteFile(filepath.Join(dir, "srv/index.html"), []byte(index), 0o644)
	return vmtest.Ext4(t, dir, "root")
}

func copyFile(t testing.TB, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// assertCleanExt4 checks that an image was unmounted (or remounted
// read-only) before the VM ended: state clean, no journal to replay.
func assertCleanExt4(t testing.TB, img string) {
	t.Helper()
	out, err := exec.Command("dumpe2fs", "-h", img).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs %s: %v\n%s", img, err, out)
	}
	s := string(out)
	if !strings.Contains(s, "Filesystem state:         clean") || strings.Contains(s, "needs_recovery") {
		t.Fatalf("%s was not left clean:\n%s", filepath.Base(img), s)
	}
}

func webManifest(rootfs bool) *manifest.Manifest {
	m := &manifest.Manifest{
		Name: "web", Version: "1",
		Workload: manifest.Workload{
			Entrypoint: []string{"/bin/httpd", "-f", "-vv", "-p", "80", "-h", "/srv"},
			BaseURL:    "http://127.0.0.1:80",
		},
		HealthCheck: &manifest.HealthCheck{Endpoint: "/index.html", IntervalMS: 200, TimeoutMS: 1000, Retries: 2},
	}
	if rootfs {
		m.Rootfs = &manifest.Rootfs{URL: "/unused.img", Format: "ext4"}
	} else {
		m.Initramfs = &manifest.Artifact{URL: "/unused.cpio"}
	}
	return m
}

// waitHTTP200 polls url from inside n's namespace until it answers 200,
// failing after bootTimeout from the VM's launch.
func waitHTTP200(t testing.TB, vm *vmtest.VM, n *vmtest.Net, url string) {
	t.Helper()
	client := n.PollClient()
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if vm.Since() > bootTimeout {
			t.Fatalf("%s: no HTTP 200 from %s within %s:\n%s", vm.Name, url, bootTimeout, vm.ConsoleText())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func encode(t testing.TB, m *manifest.Manifest) string {
	t.Helper()
	m.Normalize()
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	s, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestVMRootfs boots a rootfs plugin: the initramfs is the boot image alone
// (kestrel and modules, no workload); the root disk (ext4 on virtio-blk)
// holds kestrel, busybox and the site; a data disk is attached second.
// volant.boot is auto, so the manifest (on the command line) decides.
// Kestrel must pivot to the disk, re-execute its /bin/kestrel, mount the
// data disk, serve the workload from the disk, and on the power button
// leave both filesystems clean.
func TestVMRootfs(t *testing.T) {
	k, vmlinux := guesttest.Kernel(t)
	n := vmtest.NewNet(t)
	m := webManifest(true)
	m.Disks = []manifest.Disk{{Name: "data", Source: "/unused.img", Target: "/srv/data"}}
	root := rootDisk(t, true, "served from the root disk\n")
	data := dataDisk(t, "from the data disk\n")
	initrd := vmtest.BootImage(t, k).Write()

	ip := netip.MustParseAddr("192.168.127.101")
	vm := vmtest.Boot(t, n, vmlinux, vmtest.Config{
		Name: "vm2", Initrd: initrd, Disks: []string{root, data},
		IP: ip, MAC: "02:00:00:00:00:65",
		Cmdline: "volant.boot=auto volant.vm=vm2 volant.ip=192.168.127.101/24 volant.gw=192.168.127.1 volant.manifest=" + encode(t, m),
	})
	ready := vm.WaitConsole("kestrel: agent ready", bootTimeout)
	g := &guest{t: t, client: n.Client(10 * time.Second), base: "http://" + ip.String() + ":8080"}
	st := g.waitStatus("healthy", 60*time.Second, func(s agentapi.Status) bool { return s.Health.State == agentapi.HealthHealthy })
	t.Logf("agent ready after %s; kestrel from the disk: RSS %d KiB, guest MemAvailable %d of %d KiB",
		ready.Round(time.Millisecond), st.Memory.AgentRSSKiB, st.Memory.GuestAvailableKiB, st.Memory.GuestTotalKiB)
	con := vm.ConsoleText()
	for _, want := range []string{"switching root device=/dev/vda fstype=ext4 kestrel=/bin/kestrel", "kestrel: stage 2", "root=/dev/vda kestrel=/bin/kestrel", "data disk mounted disk=data device=/dev/vdb"} {
		if !strings.Contains(con, want) {
			t.Fatalf("console lacks %q:\n%s", want, con)
		}
	}
	if st.Boot != "rootfs" || st.Plugin != "web" {
		t.Fatalf("status %+v", st)
	}
	if body := g.mustGet("/v1/index.html"); body != "served from the root disk\n" {
		t.Fatalf("proxy: %q", body)
	}
	if body := g.mustGet("/v1/data/hello.txt"); body != "from the data disk\n" {
		t.Fatalf("data disk: %q", body)
	}
	vm.PowerButton()
	if err := vm.Wait(30 * time.Second); err != nil {
		t.Fatalf("guest did not power off: %v", err)
	}
	if !strings.Contains(vm.ConsoleText(), "powering off") {
		t.Fatal("no clean shutdown on the console")
	}
	assertCleanExt4(t, root)
	assertCleanExt4(t, data)
}

// TestVMRootfsCarryOver boots a root disk that has no kestrel of its own,
// with the manifest in the initramfs (volant.manifest_file=, as launchers
// do for manifests too long for the command line) and volant.boot=rootfs:
// stage 1 must carry its own binary into the new root.
func TestVMRootfsCarryOver(t *testing.T) {
	k, vmlinux := guesttest.Kernel(t)
	n := vmtest.NewNet(t)
	m := webManifest(true)
	encode(t, m) // normalize + validate
	root := rootDisk(t, false, "root disk without kestrel\n")
	im := vmtest.BootImage(t, k)
	im.File("/etc/volant/manifest.json", 0o644, string(mustJSON(t, m)))
	initrd := im.Write()
	ip := netip.MustParseAddr("192.168.127.102")
	vm := vmtest.Boot(t, n, vmlinux, vmtest.Config{
		Name: "vm3", Initrd: initrd, Disks: []string{root},
		IP: ip, MAC: "02:00:00:00:00:66",
		Cmdline: "volant.boot=rootfs volant.rootfs_fstype=ext4 volant.vm=vm3 volant.ip=192.168.127.102/24 volant.manifest_file=/etc/volant/manifest.json",
	})
	vm.WaitConsole("kestrel: agent ready", bootTimeout)
	if con := vm.ConsoleText(); !strings.Contains(con, "kestrel=initramfs") {
		t.Fatalf("kestrel was not carried over:\n%s", con)
	}
	g := &guest{t: t, client: n.Client(10 * time.Second), base: "http://" + ip.String() + ":8080"}
	st := g.waitStatus("healthy", 60*time.Second, func(s agentapi.Status) bool { return s.Health.State == agentapi.HealthHealthy })
	if st.Boot != "rootfs" {
		t.Fatalf("status %+v", st)
	}
	t.Logf("carried-over kestrel: RSS %d KiB, guest MemAvailable %d of %d KiB", st.Memory.AgentRSSKiB, st.Memory.GuestAvailableKiB, st.Memory.GuestTotalKiB)
	if body := g.mustGet("/v1/index.html"); body != "root disk without kestrel\n" {
		t.Fatalf("proxy: %q", body)
	}
	vm.PowerButton()
	if err := vm.Wait(30 * time.Second); err != nil {
		t.Fatalf("guest did not power off: %v", err)
	}
	assertCleanExt4(t, root)
}

// TestVMFatalPowersOff checks that kestrel never leaves a guest hung: a
// broken manifest, and a data disk attached where the root disk should be,
// each print why on the console and end the VM without any help.
func TestVMFatalPowersOff(t *testing.T) {
	k, vmlinux := guesttest.Kernel(t)
	n := vmtest.NewNet(t)
	initrd := vmtest.BootImage(t, k).Write()
	for _, tc := range []struct {
		name    string
		disks   []string
		cmdline string
		want    string
	}{
		{"bad manifest", nil, "volant.manifest=bm90LWd6aXA", "kestrel: FATAL: volant.manifest: encoded manifest is not gzip data"},
		{"data disk as root", []string{dataDisk(t, "data\n")}, "volant.manifest=" + encode(t, webManifest(true)),
			"kestrel: FATAL: refusing /dev/vda as the root filesystem: it carries neither kestrel nor the workload's entrypoint /bin/httpd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm := vmtest.Boot(t, n, vmlinux, vmtest.Config{Name: "fatal", Initrd: initrd, Disks: tc.disks, Cmdline: tc.cmdline})
			if err := vm.Wait(bootTimeout); err != nil {
				t.Fatalf("the guest did not end by itself: %v\n%s", err, vm.ConsoleText())
			}
			con := vm.ConsoleText()
			if !strings.Contains(con, tc.want) || !strings.Contains(con, "reboot: Power down") {
				t.Fatalf("console lacks %q and a power-off:\n%s", tc.want, con)
			}
		})
	}
}

// TestVMPowerButtonEarly boots the initramfs path with the manifest on the
// command line (where kestrel loads some modules, the power button's
// among them, only once the workload is up) and stops the guest the way
// launchers do (lib/vmm/supervise.Stop) the moment the workload first
// answers: the stop must not be lost (a press that comes before the
// button's driver is pressed again), and the guest powers off cleanly
// through the power button, not a hard stop; the late modules are loaded
// by then or not at all, never blocking the shutdown.
func TestVMPowerButtonEarly(t *testing.T) {
	k, vmlinux := guesttest.Kernel(t)
	n := vmtest.NewNet(t)
	im := vmtest.BootImage(t, k)
	im.AddBusybox("sh", "httpd")
	im.File("/srv/index.html", 0o644, "ok\n")
	ip := netip.MustParseAddr("192.168.127.120")
	mac := "02:00:00:00:00:78"
	vm := vmtest.Boot(t, n, vmlinux, vmtest.Config{Name: "early-off", Initrd: im.Write(), IP: ip, MAC: mac,
		Cmdline: "volant.vm=early volant.ip=" + ip.String() + "/24 volant.gw=192.168.127.1 volant.manifest=" + encode(t, webManifest(false))})
	waitHTTP200(t, vm, n, "http://"+ip.String()+":80/index.html")
	res := vm.Stop(30 * time.Second)
	if err := vm.Wait(time.Second); err != nil || res.Method != supervise.StoppedPowerButton {
		t.Fatalf("a stop as the workload came up did not power the guest off by its power button: %+v %v\n%s", res, err, vm.ConsoleText())
	}
	t.Logf("stopped in %s", res.Elapsed.Round(time.Millisecond))
	con := vm.ConsoleText()
	for _, want := range []string{`reason="ACPI power button pressed"`, "reboot: Power down"} {
		if !strings.Contains(con, want) {
			t.Fatalf("console lacks %q:\n%s", want, con)
		}
	}
	// The boot held back the power button's modules and the late ones.
	_, later, _ := strings.Cut(con, "kestrel: kernel modules loaded ")
	_, later, _ = strings.Cut(later, " later=")
	later, _, _ = strings.Cut(later, "\n")
	held := strings.Split(strings.TrimSpace(later), ",")
	for _, want := range []string{"button", "evdev", "virtio_blk", "virtio_console"} {
		if !slices.Contains(held, want) {
			t.Fatalf("the boot did not hold back %s (later=%s):\n%s", want, later, con)
		}
	}
	// The API began once the workload was healthy, and the button's
	// modules loaded (if before the stop) ButtonDelay after that.
	marks := consoleMarks(con)
	healthy, ok := consoleMark(con, "kestrel: workload is healthy")
	if !ok {
		t.Fatalf("no health line:\n%s", con)
	}
	if api, ok := marks["api"]; ok && api < healthy {
		t.Fatalf("the API listened at %.0f ms, before the workload was healthy at %.0f ms:\n%s", api, healthy, con)
	}
	if button, ok := marks["button"]; ok && button-healthy < float64(boot.ButtonDelay.Milliseconds()) {
		t.Fatalf("the button's modules loaded %.0f ms after the workload was healthy, want at least %s:\n%s", button-healthy, boot.ButtonDelay, con)
	}
}

// consoleMark is the guest uptime (ms) of the first console line holding s.
func consoleMark(console, s string) (float64, bool) {
	for _, line := range strings.Split(console, "\n") {
		if !strings.Contains(line, s) || !strings.HasPrefix(line, "[") {
			continue
		}
		end := strings.IndexByte(line, ']')
		if sec, err := strconv.ParseFloat(strings.TrimSpace(line[1:end]), 64); err == nil {
			return math.Round(sec * 1000), true
		}
	}
	return 0, false
}
