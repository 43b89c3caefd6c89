package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/bootimage"
	"github.com/volantvm/volant/lib/initramfs"
	"github.com/volantvm/volant/lib/kernel"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/testutil/netnstest"
	"github.com/volantvm/volant/lib/vmm/supervise"
	"github.com/volantvm/volant/lib/vmm/vmmtest"
)

// vmGuest is what a test VM boots: an initramfs plugin and how to reach
// its workload.
type vmGuest struct {
	kind     string // "kestrel" or "testinit"
	manifest string // path
	probe    string // URL path on the guest IP, e.g. ":8080/healthz"
}

// hasKestrel reports whether a kestrel can be had: built from this
// checkout (cmd/kestrel) or given as $VOLANT_KESTREL.
func hasKestrel() bool {
	if p := os.Getenv("VOLANT_KESTREL"); p != "" && fileExists(p) {
		return true
	}
	root, err := guesttest.ModuleRoot()
	if err != nil {
		return false
	}
	_, err = os.Stat(filepath.Join(root, "cmd", "kestrel"))
	return err == nil
}

// newGuest builds the plugin: kestrel + modules + busybox httpd as the
// workload when kestrel is in the tree, else the test init (which answers
// /healthz itself and powers off on the ACPI button) + modules.
func newGuest(t testing.TB, k *kernel.Kernel) vmGuest {
	t.Helper()
	dir := t.TempDir()
	b := initramfs.New()
	g := vmGuest{kind: "testinit", probe: ":8080/healthz"}
	pid1 := ""
	var modules []string // the test init loads bootimage.DefaultModules
	workload := `"workload":{"entrypoint":["/bin/app"]}`
	if hasKestrel() && os.Getenv("VOLANT_TEST_GUEST") != "testinit" {
		g.kind, g.probe = "kestrel", ":80/index.html"
		pid1 = guesttest.Kestrel(t)
		// As fledge builds it: the launcher layers what a VM needs more.
		modules = bootimage.BaseModules
		bb, err := exec.LookPath("busybox")
		if err != nil {
			netnstest.SkipOrFail(t, "busybox-static is needed for the workload")
		}
		b.CopyFile("/bin/busybox", bb, 0o755)
		b.File("/www/index.html", 0o644, []byte("hello from volant\n"))
		workload = `"workload":{"type":"http","entrypoint":["/bin/busybox","httpd","-f","-p","80","-h","/www"],"base_url":"http://127.0.0.1:80"},"health_check":{"endpoint":"/index.html","interval_ms":500}`
	} else {
		pid1 = vmmtest.TestInit(t)
		t.Log("no kestrel in this tree (cmd/kestrel) or $VOLANT_KESTREL: the guest's PID 1 is the test init")
	}
	if _, err := bootimage.Add(b, bootimage.Options{Kestrel: pid1, ModulesDir: k.ModulesDir, Modules: modules}); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(dir, "plugin.cpio.gz")
	if err := b.WriteFile(archive, initramfs.Gzip); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(archive)
	sum := sha256.Sum256(data)
	g.manifest = filepath.Join(dir, "manifest.json")
	m := fmt.Sprintf(`{"name":"vmtest","version":"1.0.0","initramfs":{"url":%q,"checksum":"sha256:%s"},%s}`, archive, hex.EncodeToString(sum[:]), workload)
	os.WriteFile(g.manifest, []byte(m), 0o644)
	return g
}

// vmWorld is a network namespace with bridge br0 (192.168.127.1/24) and
// one tap for the VM, plus scratch directories.
type vmWorld struct {
	ns               *netnstest.NS
	bin, kernelDir   string
	dir, runDir, log string
	env              []string
	guest            vmGuest
}

const guestIP = "192.168.127.100"

func newWorld(t testing.TB, name string) *vmWorld {
	t.Helper()
	k, _ := guesttest.Kernel(t)
	guesttest.QEMU(t)
	ns := netnstest.New(t)
	ns.Run("ip", "link", "add", "br0", "type", "bridge")
	ns.Run("ip", "addr", "add", "192.168.127.1/24", "dev", "br0")
	ns.Run("ip", "link", "set", "br0", "up")
	tap := launch.DefaultTapName(name)
	ns.Run("ip", "tuntap", "add", tap, "mode", "tap")
	ns.Run("ip", "link", "set", tap, "master", "br0")
	ns.Run("ip", "link", "set", tap, "up")
	dir := t.TempDir()
	w := &vmWorld{
		ns: ns, bin: guesttest.Command(t, "volant-launch"), kernelDir: k.Dir, dir: dir,
		runDir: filepath.Join(dir, "run", name), log: filepath.Join(dir, "serial.log"),
		guest: newGuest(t, k),
	}
	w.env = append(os.Environ(), "VOLANT_CACHE_DIR="+filepath.Join(dir, "cache"), "VOLANT_STATE_DIR="+filepath.Join(dir, "state"))
	return w
}

// start runs `volant-launch run` inside the namespace with a piped lease.
func (w *vmWorld) start(t testing.TB, name string, extra ...string) (*exec.Cmd, *strings.Builder, *strings.Builder) {
	t.Helper()
	lease := fmt.Sprintf(`{"version":"1","kind":"ipam.lease","vm":%q,"ip":%q,"prefix":24,"gateway":"192.168.127.1","mac":"02:00:00:00:00:64"}`, name, guestIP)
	args := append([]string{"run", "--manifest", w.guest.manifest, "--kernel", w.kernelDir, "--run-dir", w.runDir, "--serial-log", w.log}, extra...)
	cmd := w.ns.Cmd(w.bin, args...)
	cmd.Env = w.env
	cmd.Stdin = strings.NewReader(lease)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd, &out, &errb
}

func (w *vmWorld) launch(t *testing.T, args ...string) map[string]any {
	t.Helper()
	return w.launchCmd(t, exec.Command(w.bin, args...))
}

// launchInNS is launch run inside the VM's network namespace, where its
// tap is.
func (w *vmWorld) launchInNS(t *testing.T, args ...string) map[string]any {
	t.Helper()
	return w.launchCmd(t, w.ns.Cmd(w.bin, args...))
}

func (w *vmWorld) launchCmd(t *testing.T, cmd *exec.Cmd) map[string]any {
	t.Helper()
	args := cmd.Args
	cmd.Env = w.env
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("volant-launch %v: %v %s", args, err, out)
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("volant-launch %v: %q", args, out)
	}
	return m
}

// get fetches http://guestIP<probe> from inside the namespace. The
// connection is made on the thread ns.Do switched into the namespace (an
// http.Client would dial from another goroutine, i.e. from the host's
// namespace), and the request is written on it by hand.
func (w *vmWorld) get(probe string, timeout time.Duration) (string, error) {
	hostport, path, _ := strings.Cut(strings.TrimPrefix(probe, ":"), "/")
	addr := net.JoinHostPort(guestIP, hostport)
	var body string
	err := w.ns.Do(func() error {
		c, err := net.DialTimeout("tcp", addr, timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		fmt.Fprintf(c, "GET /%s HTTP/1.0\r\nHost: %s\r\n\r\n", path, addr)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		if resp.StatusCode != 200 {
			return fmt.Errorf("HTTP %d: %s", resp.StatusCode, b)
		}
		return nil
	})
	return body, err
}

func (w *vmWorld) waitHealthy(t *testing.T, d time.Duration) time.Duration {
	t.Helper()
	t0 := time.Now()
	url := "http://" + guestIP + w.guest.probe
	var err error
	for time.Since(t0) < d {
		if _, err = w.get(w.guest.probe, time.Second); err == nil {
			return time.Since(t0)
		}
		time.Sleep(100 * time.Millisecond)
	}
	log, _ := os.ReadFile(w.log)
	t.Fatalf("workload never answered %s: %v\nconsole:\n%s", url, err, log)
	return 0
}

// TestVMRunPauseStop boots a VM with `volant-launch run` in a private
// network namespace, reaches its workload over the tap and bridge, shows
// it stop answering while paused and answer again after resume, then stops
// it with SIGTERM and checks the guest shut down cleanly in time and
// nothing is left behind.
func TestVMRunPauseStop(t *testing.T) {
	const name = "vmtest1"
	w := newWorld(t, name)
	cmd, out, errb := w.start(t, name, "--stop-timeout", "20s")
	took := w.waitHealthy(t, 90*time.Second)
	t.Logf("guest (%s) answered %s after %v", w.guest.kind, w.guest.probe, took.Round(time.Millisecond))

	st := w.launch(t, "status", "--dir", w.runDir)
	if st["running"] != true || st["state"] != "running" || st["vmm"] != "qemu" {
		t.Fatalf("status %v", st)
	}
	vmmPid := int(st["vmm_process"].(map[string]any)["pid"].(float64))

	// The guest answered HTTP through its tap: the tap's counters, seen
	// from the guest, show traffic both ways (read where the tap is).
	c := w.launchInNS(t, "counters", "--dir", w.runDir)
	tapc, _ := c["counters"].(map[string]any)["tap:"+launch.DefaultTapName(name)].(map[string]any)
	if c["vmm"] != "qemu" || tapc == nil || tapc["rx_bytes"].(float64) <= 0 || tapc["tx_bytes"].(float64) <= 0 || tapc["rx_frames"].(float64) <= 0 {
		t.Fatalf("counters: %v", c)
	}

	if st := w.launch(t, "pause", "--dir", w.runDir); st["state"] != "paused" {
		t.Fatalf("pause: %v", st)
	}
	if _, err := w.get(w.guest.probe, 2*time.Second); err == nil {
		t.Fatal("the workload answered while the VM was paused")
	} else {
		t.Logf("paused: %v", err)
	}
	if st := w.launch(t, "resume", "--dir", w.runDir); st["state"] != "running" {
		t.Fatalf("resume: %v", st)
	}
	if _, err := w.get(w.guest.probe, 10*time.Second); err != nil {
		t.Fatalf("the workload does not answer after resume: %v", err)
	}

	t0 := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("volant-launch run: %v\n%s", err, errb)
	}
	stopped := time.Since(t0)
	var res launch.Result
	if err := json.Unmarshal([]byte(out.String()), &res); err != nil {
		t.Fatalf("run result %q: %v", out, err)
	}
	if res.Ended != "stopped" || res.StopMethod != supervise.StoppedPowerButton {
		t.Fatalf("run ended %+v; stderr:\n%s", res, errb)
	}
	if stopped > 20*time.Second {
		t.Fatalf("graceful stop took %v, more than the 20s stop timeout", stopped)
	}
	t.Logf("graceful stop (power button) took %v", stopped.Round(time.Millisecond))
	log, _ := os.ReadFile(w.log)
	if !strings.Contains(string(log), "reboot: Power down") {
		t.Fatalf("no clean power-off on the console:\n%s", log)
	}
	if w.guest.kind == "testinit" && !strings.Contains(string(log), vmmtest.PowerOffLine) {
		t.Fatalf("the guest did not see the power button:\n%s", log)
	}
	if _, err := os.Stat(w.runDir); !os.IsNotExist(err) {
		t.Fatal("run dir left behind")
	}
	if p, err := os.FindProcess(vmmPid); err == nil && p.Signal(syscall.Signal(0)) == nil {
		if id, err := supervise.Of(vmmPid); err == nil && strings.Contains(readComm(vmmPid), "qemu") {
			t.Fatalf("QEMU %v still running", id)
		}
	}
}

func readComm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return string(b)
}

// TestVMKill9LeavesNoOrphan kills `volant-launch run` with SIGKILL and
// checks its QEMU dies with it; `stop` then cleans the stale run dir.
func TestVMKill9LeavesNoOrphan(t *testing.T) {
	const name = "vmtest2"
	w := newWorld(t, name)
	cmd, _, _ := w.start(t, name)
	deadline := time.Now().Add(60 * time.Second)
	var vmm supervise.Identity
	for time.Now().Before(deadline) {
		pf, err := supervise.ReadPidFile(filepath.Join(w.runDir, launch.PidFileName))
		if err == nil && pf.VMM.Pid != 0 {
			vmm = pf.VMM
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if vmm.Pid == 0 || !vmm.Alive() {
		t.Fatal("QEMU never started")
	}
	// `ip netns exec` execs volant-launch, so this is its pid.
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	for i := 0; i < 100 && vmm.Alive(); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if vmm.Alive() {
		syscall.Kill(vmm.Pid, syscall.SIGKILL)
		t.Fatalf("QEMU %v outlived its killed supervisor", vmm)
	}
	st := w.launch(t, "status", "--dir", w.runDir)
	if st["running"] != false {
		t.Fatalf("status after kill: %v", st)
	}
	rep := w.launch(t, "stop", "--dir", w.runDir)
	if rep["method"] != "not_running" {
		t.Fatalf("stop after kill: %v", rep)
	}
	if _, err := os.Stat(w.runDir); !os.IsNotExist(err) {
		t.Fatal("stop left the stale run dir")
	}
}

// TestVMStopFromAnotherProcess stops a running VM with `volant-launch stop`
// (the way volantd or an operator does) and checks run exits by itself.
func TestVMStopFromAnotherProcess(t *testing.T) {
	const name = "vmtest3"
	w := newWorld(t, name)
	// Be systemd: a notify socket that records what run reports.
	notifyPath := filepath.Join(w.dir, "notify.sock")
	nc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	notes := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := nc.Read(buf)
			if err != nil {
				close(notes)
				return
			}
			notes <- string(buf[:n])
		}
	}()
	w.env = append(w.env, "NOTIFY_SOCKET="+notifyPath)
	cmd, out, errb := w.start(t, name)
	select {
	case n := <-notes:
		if !strings.HasPrefix(n, "READY=1") {
			t.Fatalf("first notification %q, want READY=1", n)
		}
		if _, err := os.Stat(filepath.Join(launch.VMMDir(w.runDir), launch.SocketName)); err != nil {
			t.Fatal("READY=1 before the control socket exists")
		}
	case <-time.After(60 * time.Second):
		t.Fatal("run never notified READY=1")
	}
	w.waitHealthy(t, 90*time.Second)
	rep := w.launch(t, "stop", "--dir", w.runDir, "--timeout", "20s")
	if rep["method"] != supervise.StoppedPowerButton {
		t.Fatalf("stop: %v", rep)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v\n%s", err, errb)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("volant-launch run did not exit after its VM was stopped")
	}
	var res launch.Result
	json.Unmarshal([]byte(out.String()), &res)
	if res.Ended != "poweroff" {
		t.Fatalf("run result %q", out)
	}
	if _, err := os.Stat(w.runDir); !os.IsNotExist(err) {
		t.Fatal("run dir left behind")
	}
	sc := bufio.NewScanner(strings.NewReader(errb.String()))
	for sc.Scan() {
		if strings.Contains(sc.Text(), "level=ERROR") {
			t.Errorf("run logged an error: %s", sc.Text())
		}
	}
}

// kestrelOrSkip returns a kestrel binary; the tests that need kestrel's
// own behaviour (stage 1, manifest from the initrd) cannot use the test init.
func kestrelOrSkip(t *testing.T) string {
	t.Helper()
	if !hasKestrel() {
		t.Skip("needs kestrel (cmd/kestrel in the tree, or $VOLANT_KESTREL)")
	}
	return guesttest.Kestrel(t)
}

func sha256File(t *testing.T, p string) string {
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

func labels(n int) string {
	var b strings.Builder
	for i := range n {
		sum := sha256.Sum256([]byte{byte(i)})
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"l%d":%q`, i, hex.EncodeToString(sum[:]))
	}
	return b.String()
}

const httpdWorkload = `"workload":{"type":"http","entrypoint":["/bin/busybox","httpd","-f","-p","80","-h","/www"],"base_url":"http://127.0.0.1:80"}`

// TestVMLayeredInitrd boots a plugin archive that has neither kestrel nor
// modules, with a manifest too long for the kernel command line: the
// launcher layers the boot image (built from --kestrel and the kernel's
// modules) under it and the manifest over it, and kestrel finds everything.
func TestVMLayeredInitrd(t *testing.T) {
	const name = "vmtest4"
	kestrel := kestrelOrSkip(t)
	w := newWorld(t, name)
	bb, err := exec.LookPath("busybox")
	if err != nil {
		netnstest.SkipOrFail(t, "busybox-static is needed for the workload")
	}
	b := initramfs.New()
	b.CopyFile("/bin/busybox", bb, 0o755)
	b.File("/www/index.html", 0o644, []byte("layered\n"))
	archive := filepath.Join(w.dir, "bare.cpio.gz")
	if err := b.WriteFile(archive, initramfs.Gzip); err != nil {
		t.Fatal(err)
	}
	w.guest.manifest = filepath.Join(w.dir, "big.json")
	w.guest.probe = ":80/index.html"
	os.WriteFile(w.guest.manifest, []byte(fmt.Sprintf(`{"name":"bare","version":"1","initramfs":{"url":%q,"checksum":"sha256:%s"},%s,"labels":{%s}}`,
		archive, sha256File(t, archive), httpdWorkload, labels(40))), 0o644)

	cmd := exec.Command(w.bin, "argv", "--name", name, "--manifest", w.guest.manifest, "--kernel", w.kernelDir, "--kestrel", kestrel, "--run-dir", w.runDir, "--tap", launch.DefaultTapName(name))
	cmd.Env = w.env
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("argv: %v", err)
	}
	var av struct {
		Cmdline string             `json:"cmdline"`
		Initrd  *launch.InitrdPlan `json:"initrd"`
	}
	json.Unmarshal(out, &av)
	var layers []string
	for _, l := range av.Initrd.Layers {
		layers = append(layers, l.What)
	}
	if strings.Join(layers, ",") != "boot-image,plugin,manifest" || !strings.Contains(av.Cmdline, "volant.manifest_file=/etc/volant/manifest.json") {
		t.Fatalf("layers %v cmdline %q", layers, av.Cmdline)
	}

	// A clean power-off is asserted, not its speed: on a loaded host a
	// TCG guest takes far longer than the default 10 s to stop.
	run, res, errb := w.start(t, name, "--kestrel", kestrel, "--stop-timeout", "60s")
	w.waitHealthy(t, 90*time.Second)
	if body, err := w.get(":80/index.html", 5*time.Second); err != nil || body != "layered\n" {
		t.Fatalf("workload: %q %v", body, err)
	}
	run.Process.Signal(syscall.SIGTERM)
	if err := run.Wait(); err != nil {
		t.Fatalf("run: %v\n%s", err, errb)
	}
	if log, _ := os.ReadFile(w.log); !strings.Contains(string(log), "reboot: Power down") {
		t.Fatalf("no clean power-off (run result %s):\n%s", res, log)
	}
}

// TestVMRootfs boots a rootfs plugin: an ext4 image on virtio-blk holding
// only the workload, through the boot initramfs the launcher builds from
// --kestrel and the kernel's modules (kestrel stage 1 mounts /dev/vda and
// switches root). The guest boots the VM's own copy of the image; after a
// graceful stop that copy is clean and the plugin's image is unchanged.
func TestVMRootfs(t *testing.T) {
	const name = "vmtest5"
	kestrel := kestrelOrSkip(t)
	w := newWorld(t, name)
	bb, err := exec.LookPath("busybox")
	if err != nil {
		netnstest.SkipOrFail(t, "busybox-static is needed for the workload")
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		netnstest.SkipOrFail(t, "mkfs.ext4 (e2fsprogs) is needed")
	}
	tree := filepath.Join(w.dir, "tree")
	os.MkdirAll(filepath.Join(tree, "bin"), 0o755)
	os.MkdirAll(filepath.Join(tree, "www"), 0o755)
	data, _ := os.ReadFile(bb)
	os.WriteFile(filepath.Join(tree, "bin", "busybox"), data, 0o755)
	os.WriteFile(filepath.Join(tree, "www", "index.html"), []byte("from the disk\n"), 0o644)
	img := filepath.Join(w.dir, "root.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-d", tree, img, "32M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	w.guest.manifest = filepath.Join(w.dir, "rootfs.json")
	w.guest.probe = ":80/index.html"
	os.WriteFile(w.guest.manifest, []byte(fmt.Sprintf(`{"name":"disk","version":"1","rootfs":{"url":%q,"checksum":"sha256:%s","format":"ext4"},%s}`,
		img, sha256File(t, img), httpdWorkload)), 0o644)

	run, out, errb := w.start(t, name, "--kestrel", kestrel, "--stop-timeout", "60s")
	w.waitHealthy(t, 90*time.Second)
	if body, err := w.get(":80/index.html", 5*time.Second); err != nil || body != "from the disk\n" {
		t.Fatalf("workload: %q %v", body, err)
	}
	// The root disk was read: QEMU's block counters say so.
	c := w.launch(t, "counters", "--dir", w.runDir)
	var read float64
	for _, dev := range c["counters"].(map[string]any) {
		if kv, ok := dev.(map[string]any); ok {
			n, _ := kv["read_bytes"].(float64)
			read += n
		}
	}
	if read < 1<<20 {
		t.Fatalf("counters of a VM booted from its disk: %v", c)
	}
	run.Process.Signal(syscall.SIGTERM)
	if err := run.Wait(); err != nil {
		t.Fatalf("run: %v\n%s", err, errb)
	}
	var res launch.Result
	json.Unmarshal([]byte(out.String()), &res)
	if res.StopMethod != supervise.StoppedPowerButton {
		t.Fatalf("run result %q", out)
	}
	// The guest booted its own copy of the image; the plugin's stays pristine.
	vmCopy := filepath.Join(w.dir, "state", "vms", name, "disks", "rootfs.img")
	if out, err := exec.Command("e2fsck", "-fn", vmCopy).CombinedOutput(); err != nil {
		t.Fatalf("the VM's root file system is not clean after a graceful stop: %v\n%s", err, out)
	}
	if !strings.Contains(string(mustRead(t, w.guest.manifest)), sha256File(t, img)) {
		t.Fatal("the plugin's image changed: the guest must write to its own copy")
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}
