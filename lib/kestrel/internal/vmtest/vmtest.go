// Package vmtest boots real guests for kestrel's TestVM* tests: QEMU (TCG,
// microvm) with Debian's kernel, an initramfs holding our kestrel and the
// kernel modules (lib/bootimage), optional ext4 disks, and a NIC on a bridge
// inside a network namespace the test owns (lib/testutil/netnstest).
//
// It is the one place where kestrel's tests start QEMU. The command line
// comes from lib/vmm/qemu.Argv (the launcher's own builder); the minimal
// QMP client here can move to lib/vmm's QEMU control client once that
// lands.
package vmtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/bootimage"
	"github.com/volantvm/volant/lib/initramfs"
	"github.com/volantvm/volant/lib/kernel"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/testutil/netnstest"
	"github.com/volantvm/volant/lib/vmm"
	"github.com/volantvm/volant/lib/vmm/qemu"
	"github.com/volantvm/volant/lib/vmm/supervise"
)

// Bridge addressing inside the test's namespace (private addresses only
// exist there).
var (
	Gateway = netip.MustParseAddr("192.168.127.1")
	Subnet  = netip.MustParsePrefix("192.168.127.0/24")
)

// Net is a bridge in a fresh network namespace.
type Net struct {
	NS     *netnstest.NS
	Bridge string
	t      testing.TB
	taps   int
}

// NewNet creates the namespace and a bridge with Gateway/24.
func NewNet(t testing.TB) *Net {
	t.Helper()
	netnstest.Require(t, "qemu-system-x86_64")
	ns := netnstest.New(t)
	n := &Net{NS: ns, Bridge: "vtbr0", t: t}
	ns.Run("ip", "link", "add", n.Bridge, "type", "bridge")
	ns.Run("ip", "addr", "add", Gateway.String()+"/24", "dev", n.Bridge)
	ns.Run("ip", "link", "set", n.Bridge, "up")
	return n
}

// Tap adds a tap on the bridge for a guest with ip and mac, and a permanent
// neighbour entry so the first packet to the guest does not wait for ARP.
func (n *Net) Tap(ip netip.Addr, mac string) string {
	n.t.Helper()
	n.taps++
	tap := "vttap" + strconv.Itoa(n.taps)
	n.NS.Run("ip", "tuntap", "add", "dev", tap, "mode", "tap")
	n.NS.Run("ip", "link", "set", tap, "master", n.Bridge)
	n.NS.Run("ip", "link", "set", tap, "up")
	n.NS.Run("ip", "neigh", "replace", ip.String(), "lladdr", mac, "nud", "permanent", "dev", n.Bridge)
	return tap
}

// Dial connects from inside the namespace.
func (n *Net) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.NS.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Client is an HTTP client whose connections start inside the namespace.
func (n *Net) Client(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{Proxy: nil, DialContext: n.Dial, DisableKeepAlives: true}}
}

// PollClient is a Client for polling a booting guest: a connection attempt
// made before the guest's NIC was up would otherwise sit out TCP's 1 s SYN
// retransmission, adding up to a second to a measured boot time.
func (n *Net) PollClient() *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		return n.Dial(ctx, network, addr)
	}
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil, DialContext: dial, DisableKeepAlives: true}}
}

// Serve serves h on addr inside the namespace until the test ends.
func (n *Net) Serve(addr string, h http.Handler) {
	n.t.Helper()
	var ln net.Listener
	if err := n.NS.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		n.t.Fatalf("listening on %s in the test namespace: %v", addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	n.t.Cleanup(func() { srv.Close() })
}

// Image builds an initramfs.
type Image struct {
	B    *initramfs.Builder
	Info bootimage.Info
	t    testing.TB
}

// BootImage starts an initramfs with the boot layout: our kestrel as /init
// and the guest kernel's default modules.
func BootImage(t testing.TB, k *kernel.Kernel) *Image {
	t.Helper()
	return BootImageWith(t, k, guesttest.Kestrel(t))
}

// BootImageWith is BootImage with another kestrel binary (a benchmark's
// earlier build).
func BootImageWith(t testing.TB, k *kernel.Kernel, kestrel string) *Image {
	t.Helper()
	b := initramfs.New()
	info, err := bootimage.Add(b, bootimage.Options{Kestrel: kestrel, ModulesDir: k.ModulesDir})
	if err != nil {
		t.Fatal(err)
	}
	return &Image{B: b, Info: info, t: t}
}

// Busybox returns the host's static busybox.
func Busybox(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p
		}
	}
	netnstest.SkipOrFail(t, "busybox not installed (apt-get install busybox-static)")
	return ""
}

// AddBusybox puts busybox at /bin/busybox with applet links in /bin.
func (im *Image) AddBusybox(applets ...string) {
	im.t.Helper()
	if err := im.B.CopyFile("/bin/busybox", Busybox(im.t), 0o755); err != nil {
		im.t.Fatal(err)
	}
	for _, a := range applets {
		if err := im.B.Symlink("/bin/"+a, "busybox"); err != nil {
			im.t.Fatal(err)
		}
	}
}

// File adds a file.
func (im *Image) File(p string, mode os.FileMode, data string) {
	im.t.Helper()
	if err := im.B.File(p, mode, []byte(data)); err != nil {
		im.t.Fatal(err)
	}
}

// Write writes the archive (uncompressed: no decompression under TCG).
func (im *Image) Write() string {
	im.t.Helper()
	p := filepath.Join(im.t.TempDir(), "initrd.cpio")
	f, err := os.Create(p)
	if err != nil {
		im.t.Fatal(err)
	}
	defer f.Close()
	if err := im.B.WriteTo(f, initramfs.None); err != nil {
		im.t.Fatal(err)
	}
	return p
}

// Ext4 makes an ext4 image from dir with mkfs.ext4 -d, sized to the
// content plus slack.
func Ext4(t testing.TB, dir, label string) string {
	t.Helper()
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		netnstest.SkipOrFail(t, "mkfs.ext4 not installed (apt-get install e2fsprogs)")
	}
	var size int64
	filepath.Walk(dir, func(_ string, info os.FileInfo, err error) error {
		if err == nil {
			size += info.Size() + 4096
		}
		return nil
	})
	mb := size/(1<<20)*12/10 + 16
	img := filepath.Join(t.TempDir(), label+".ext4")
	out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", label, "-d", dir, img, strconv.FormatInt(mb, 10)+"M").CombinedOutput()
	if err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	return img
}

// Config is one VM.
type Config struct {
	Name   string
	Initrd string
	Disks  []string
	// IP and MAC give the guest a NIC on the bridge (IP only goes on the
	// command line if Cmdline does not set volant.ip itself).
	IP  netip.Addr
	MAC string
	// Cmdline is appended to the console and timer settings.
	Cmdline  string
	MemoryMB int
	// Agent gives the guest the agent channel: a virtio-serial port whose
	// host side is the unix socket VM.AgentSocket.
	Agent bool
}

// VM is a running guest.
type VM struct {
	Name    string
	Console string // the serial log file
	// AgentSocket is the host side of the agent channel (Config.Agent).
	AgentSocket string
	qmp         string
	cmd         *exec.Cmd
	done        chan struct{}
	err         error
	t           testing.TB
	started     time.Time
}

// BaseCmdline is the kernel command line every test guest gets before its
// own settings: serial console, timer settings that avoid TSC calibration
// stalls under TCG, and panic=-1 so a dead init ends the VM.
func BaseCmdline(t testing.TB) string {
	khz, err := kernel.HostTSCkHz()
	if err != nil {
		t.Fatal(err)
	}
	return "console=ttyS0 quiet panic=-1 tsc_early_khz=" + strconv.Itoa(khz) +
		" tsc=reliable no_timer_check 8250.nr_uarts=1 mitigations=off random.trust_cpu=on cryptomgr.notests"
}

// Boot starts QEMU inside n's namespace. Cleanup powers it down if the test
// did not, then kills it.
func Boot(t testing.TB, n *Net, k string, cfg Config) *VM {
	t.Helper()
	qemuBin := guesttest.QEMU(t)
	dir, err := os.MkdirTemp("", "kestrel-vm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	vm := &VM{Name: cfg.Name, Console: filepath.Join(dir, "console.log"), qmp: filepath.Join(dir, "qmp.sock"), done: make(chan struct{}), t: t}
	mem := cfg.MemoryMB
	if mem == 0 {
		mem = 128
	}
	vc := vmm.Config{
		Name: cfg.Name, CPUs: 1, MemoryMB: mem, Kernel: k, Initramfs: cfg.Initrd,
		Cmdline:   BaseCmdline(t) + " " + cfg.Cmdline,
		APISocket: vm.qmp, Serial: vmm.Serial{LogFile: vm.Console}, Accel: vmm.AccelTCG,
	}
	for _, d := range cfg.Disks {
		vc.Disks = append(vc.Disks, vmm.Disk{Path: d})
	}
	if cfg.Agent {
		vm.AgentSocket = filepath.Join(dir, "agent.sock")
		vc.AgentSocket = vm.AgentSocket
	}
	if cfg.MAC != "" {
		vc.Nets = []vmm.Net{{Tap: n.Tap(cfg.IP, cfg.MAC), MAC: cfg.MAC}}
	}
	argv, err := qemu.Argv(qemuBin, vc)
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	vm.cmd = exec.Command("ip", append([]string{"netns", "exec", n.NS.Name}, argv...)...)
	vm.cmd.Stdout, vm.cmd.Stderr = &stderr, &stderr
	vm.started = time.Now()
	if err := vm.cmd.Start(); err != nil {
		t.Fatalf("starting qemu: %v", err)
	}
	go func() {
		vm.err = vm.cmd.Wait()
		if vm.err != nil {
			vm.err = fmt.Errorf("%w: %s", vm.err, strings.TrimSpace(stderr.String()))
		}
		close(vm.done)
	}()
	t.Cleanup(func() {
		select {
		case <-vm.done:
		default:
			_ = vm.qmpCommand("system_powerdown")
			select {
			case <-vm.done:
			case <-time.After(10 * time.Second):
				vm.cmd.Process.Kill()
				<-vm.done
			}
		}
		if t.Failed() || testing.Verbose() {
			t.Logf("console of %s:\n%s", vm.Name, vm.ConsoleText())
		}
	})
	return vm
}

// Since is the time since QEMU was launched.
func (vm *VM) Since() time.Duration { return time.Since(vm.started) }

// CPUTime is the CPU time QEMU has used so far (user and system, in 10 ms
// ticks). Under TCG the guest's work is QEMU's CPU time, so it measures a
// boot without the waits a busy host adds to the wall clock.
func (vm *VM) CPUTime() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", vm.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ is 100
}

// ConsoleText is the serial output so far.
func (vm *VM) ConsoleText() string {
	b, _ := os.ReadFile(vm.Console)
	return string(b)
}

// WaitConsole waits until the console shows s, failing the test after
// timeout or when QEMU exits first. It returns how long after launch.
func (vm *VM) WaitConsole(s string, timeout time.Duration) time.Duration {
	vm.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if strings.Contains(vm.ConsoleText(), s) {
			return time.Since(vm.started)
		}
		select {
		case <-vm.done:
			if strings.Contains(vm.ConsoleText(), s) {
				return time.Since(vm.started)
			}
			vm.t.Fatalf("%s exited (%v) before its console showed %q:\n%s", vm.Name, vm.err, s, vm.ConsoleText())
		default:
		}
		if time.Now().After(deadline) {
			vm.t.Fatalf("%s: console did not show %q within %s:\n%s", vm.Name, s, timeout, vm.ConsoleText())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Wait waits for QEMU to exit and returns its error (nil for exit 0).
func (vm *VM) Wait(timeout time.Duration) error {
	select {
	case <-vm.done:
		return vm.err
	case <-time.After(timeout):
		return fmt.Errorf("%s still running after %s", vm.Name, timeout)
	}
}

// PowerButton presses the ACPI power button (QMP system_powerdown).
func (vm *VM) PowerButton() {
	vm.t.Helper()
	if err := vm.qmpCommand("system_powerdown"); err != nil {
		vm.t.Fatalf("QMP system_powerdown: %v", err)
	}
}

// Stop stops the guest the way launchers do (lib/vmm/supervise.Stop: the
// power button, pressed again while the guest is up, then after grace a
// hard stop) and returns how QEMU ended.
func (vm *VM) Stop(grace time.Duration) supervise.StopResult {
	vm.t.Helper()
	res, err := supervise.Stop(context.Background(), vmTarget{vm}, func(ctx context.Context) (vmm.Control, error) {
		return (&qemu.Backend{}).Dial(ctx, vm.qmp)
	}, supervise.StopOptions{Grace: grace})
	if err != nil {
		vm.t.Fatalf("stopping %s: %v", vm.Name, err)
	}
	return res
}

// vmTarget is a VM as supervise.Stop's target.
type vmTarget struct{ vm *VM }

func (t vmTarget) WaitExit(ctx context.Context) error {
	select {
	case <-t.vm.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (t vmTarget) Kill() error { return t.vm.cmd.Process.Kill() }

// qmpCommand runs one QMP command: greeting, qmp_capabilities, command.
// Quit ends QEMU at once (QMP quit), for guests that ignore the power
// button, and waits for it to exit.
func (vm *VM) Quit() {
	vm.t.Helper()
	qerr := vm.qmpCommand("quit") // QEMU may close the socket before answering
	if err := vm.Wait(10 * time.Second); err != nil {
		vm.t.Fatalf("after QMP quit (%v): %v", qerr, err)
	}
}

func (vm *VM) qmpCommand(command string) error {
	c, err := net.DialTimeout("unix", vm.qmp, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	readReply := func() (map[string]json.RawMessage, error) {
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return nil, err
			}
			var msg map[string]json.RawMessage
			if err := json.Unmarshal(line, &msg); err != nil {
				return nil, fmt.Errorf("QMP: %q: %w", line, err)
			}
			if _, ev := msg["event"]; ev {
				continue
			}
			return msg, nil
		}
	}
	if _, err := readReply(); err != nil { // greeting
		return err
	}
	for _, cmd := range []string{"qmp_capabilities", command} {
		if _, err := fmt.Fprintf(c, `{"execute":%q}`+"\n", cmd); err != nil {
			return err
		}
		msg, err := readReply()
		if err != nil {
			return err
		}
		if e, ok := msg["error"]; ok {
			return fmt.Errorf("QMP %s: %s", cmd, e)
		}
	}
	return nil
}

// Recorder is a fake control plane: it serves manifests and records the
// agent reports it receives.
type Recorder struct {
	mu        sync.Mutex
	Manifests map[string][]byte
	reports   []json.RawMessage
}

// ServeHTTP implements http.Handler.
func (r *Recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	switch {
	case req.Method == http.MethodGet && strings.HasPrefix(req.URL.Path, "/api/v1/plugins/") && strings.HasSuffix(req.URL.Path, "/manifest"):
		name := strings.TrimSuffix(strings.TrimPrefix(req.URL.Path, "/api/v1/plugins/"), "/manifest")
		r.mu.Lock()
		m, ok := r.Manifests[name]
		r.mu.Unlock()
		if !ok {
			http.Error(w, `{"code":"NOT_FOUND"}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(m)
	case req.Method == http.MethodPost && strings.HasPrefix(req.URL.Path, "/api/v1/vms/") && strings.HasSuffix(req.URL.Path, "/agent"):
		var raw json.RawMessage
		if err := json.NewDecoder(req.Body).Decode(&raw); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		r.reports = append(r.reports, raw)
		r.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	default:
		http.NotFound(w, req)
	}
}

// Reports returns the reports received so far, decoded into v's type.
func (r *Recorder) Reports() []json.RawMessage {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]json.RawMessage(nil), r.reports...)
}

// Monitor runs a QEMU human monitor command (QMP human-monitor-command)
// and returns its text.
func (vm *VM) Monitor(command string) (string, error) {
	c, err := net.DialTimeout("unix", vm.qmp, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	if _, err := r.ReadBytes('\n'); err != nil { // greeting
		return "", err
	}
	args, _ := json.Marshal(map[string]string{"command-line": command})
	fmt.Fprintf(c, `{"execute":"qmp_capabilities"}`+"\n"+`{"execute":"human-monitor-command","arguments":%s}`+"\n", args)
	answers := 0
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return "", err
		}
		var msg struct {
			Return json.RawMessage `json:"return"`
			Error  json.RawMessage `json:"error"`
		}
		if err := json.Unmarshal(line, &msg); err != nil {
			return "", fmt.Errorf("QMP: %q: %w", line, err)
		}
		if msg.Error != nil {
			return "", fmt.Errorf("QMP: %s", msg.Error)
		}
		if msg.Return == nil {
			continue // an event
		}
		if answers++; answers == 2 {
			var text string
			err := json.Unmarshal(msg.Return, &text)
			return text, err
		}
	}
}

// JIT is what QEMU's translator did so far under TCG ("info jit"): the
// host code in its cache and how often the cache was flushed (each flush
// throws every translation away, so hot code is translated again).
type JIT struct {
	CodeBytes, CacheBytes int64
	Flushes               int
}

// JIT reads QEMU's translation statistics.
func (vm *VM) JIT() (JIT, error) {
	text, err := vm.Monitor("info jit")
	if err != nil {
		return JIT{}, err
	}
	return parseJIT(text)
}

func parseJIT(text string) (JIT, error) {
	var j JIT
	seen := 0
	for _, line := range strings.Split(text, "\n") {
		k, v, ok := strings.Cut(line, "  ")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch strings.TrimSpace(k) {
		case "gen code size":
			used, size, _ := strings.Cut(v, "/")
			u, err1 := strconv.ParseInt(used, 10, 64)
			s, err2 := strconv.ParseInt(size, 10, 64)
			if err1 != nil || err2 != nil {
				return j, fmt.Errorf("info jit: %q", line)
			}
			j.CodeBytes, j.CacheBytes = u, s
			seen++
		case "TB flush count":
			n, err := strconv.Atoi(v)
			if err != nil {
				return j, fmt.Errorf("info jit: %q", line)
			}
			j.Flushes = n
			seen++
		}
	}
	if seen != 2 {
		return j, fmt.Errorf("info jit: no code size or flush count in %q", text)
	}
	return j, nil
}
