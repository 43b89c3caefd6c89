package launch

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/bootargs"
	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/cli/clitest"
	"github.com/volantvm/volant/lib/initramfs"
	"github.com/volantvm/volant/lib/testutil/wait"
	"github.com/volantvm/volant/lib/vmm"
	"github.com/volantvm/volant/lib/vmm/cloudhypervisor"
	"github.com/volantvm/volant/lib/vmm/cloudhypervisor/chtest"
	"github.com/volantvm/volant/lib/vmm/qemu"
	"github.com/volantvm/volant/lib/vmm/supervise"
)

// The test binary is also the fake cloud-hypervisor, and with
// LAUNCH_HELPER_PLAN=<file> a supervisor running that plan (for the kill -9
// test).
func TestMain(m *testing.M) {
	if chtest.Impersonating() {
		os.Exit(chtest.Main(os.Args[1:]))
	}
	if plan := os.Getenv("LAUNCH_HELPER_PLAN"); plan != "" {
		os.Exit(helperRun(plan))
	}
	os.Exit(m.Run())
}

// kvmHost pretends the host has a KVM that runs stock kernels, so the Cloud
// Hypervisor backend is usable with the fake binary.
var kvmHost = fstest.MapFS{"dev/kvm": &fstest.MapFile{}}

type fixture struct {
	opts     Options
	kernel   string // an ELF file standing in for vmlinux
	plugin   string // an initramfs with modules for releaseTest
	manifest []byte
	dir      string
}

const releaseTest = "6.1.0-test"

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(dir, "vmlinux")
	copyFile(t, self, kernel)
	plugin := filepath.Join(dir, "plugin.cpio.gz")
	b := initramfs.New()
	b.File("/lib/modules/"+releaseTest+"/modules.dep", 0o644, []byte("kernel/x.ko:\n"))
	b.File("/bin/app", 0o755, []byte("#!/bin/sh\n"))
	if err := b.WriteFile(plugin, initramfs.Gzip); err != nil {
		t.Fatal(err)
	}
	return &fixture{
		dir:      dir,
		kernel:   kernel,
		plugin:   plugin,
		manifest: manifestJSON(t, plugin, ""),
		opts: Options{
			RunRoot:  filepath.Join(dir, "run"),
			StateDir: filepath.Join(dir, "state"),
			CacheDir: filepath.Join(dir, "cache"),
			HostRoot: kvmHost,
			Backends: []vmm.Backend{&cloudhypervisor.Backend{Binary: chtest.Binary(t), HostRoot: kvmHost}},
		},
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func sha(t *testing.T, p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// manifestJSON is an initramfs plugin manifest for the archive, with its
// real checksum unless sum is given.
func manifestJSON(t *testing.T, archive, sum string) []byte {
	if sum == "" {
		sum = sha(t, archive)
	}
	return []byte(fmt.Sprintf(`{"name":"web","version":"1.0.0","initramfs":{"url":%q,"checksum":"sha256:%s"},
		"workload":{"entrypoint":["/bin/app"],"base_url":"http://127.0.0.1:80"},"resources":{"cpu_cores":1,"memory_mb":128}}`, archive, sum))
}

func (f *fixture) spec() Spec {
	return Spec{Name: "web1", Manifest: f.manifest, Kernel: f.kernel}
}

func TestLeaseDecoding(t *testing.T) {
	for _, tc := range []struct {
		in     string
		ip     string
		prefix int
		vm     string
	}{
		{`{"vm":"web1","ip":"192.168.127.100","prefix":24,"gateway":"192.168.127.1","mac":"02:00:00:00:00:01","leased_at":"2026-01-01T00:00:00Z","extra":{"x":1}}`, "192.168.127.100", 24, "web1"},
		{`{"vm":"a","ip":"10.0.0.5/16"}`, "10.0.0.5", 16, "a"},
		{`{"vm":"a","ip":"10.0.0.5","prefix":"192.168.0.0/20"}`, "10.0.0.5", 20, "a"},
		{`{"name":"b","ip":"10.0.0.5","prefix":"/8"}`, "10.0.0.5", 8, "b"},
	} {
		var l Lease
		if err := json.Unmarshal([]byte(tc.in), &l); err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		if l.IP != tc.ip || l.Prefix != tc.prefix || l.VM != tc.vm {
			t.Fatalf("%s: got %+v", tc.in, l)
		}
	}
	var l Lease
	if err := json.Unmarshal([]byte(`{"ip":"1.2.3.4","prefix":true}`), &l); err == nil {
		t.Fatal("boolean prefix accepted")
	}
}

func TestChainedResultsDecodeThroughTheContract(t *testing.T) {
	// The piped result lands in its field; unknown fields of another
	// command's result do not break the strict decode of the request.
	var s Spec
	if err := decode(`{"version":"1","kind":"net.tap","tap":"vt-web1","bridge":"vbr0","lease":{"vm":"web1","ip":"192.168.127.100","prefix":24,"future":1}}`, &s); err != nil {
		t.Fatal(err)
	}
	if s.NetTap == nil || s.NetTap.Tap != "vt-web1" || s.NetTap.Lease.IP != "192.168.127.100" {
		t.Fatalf("%+v", s.NetTap)
	}
	if err := decode(`{"kind":"ipam.release","vm":"x"}`, &s); !apierr.Is(err, apierr.InvalidInput) || !strings.Contains(err.Error(), "ipam.lease") {
		t.Fatalf("a result of the wrong kind: %v", err)
	}
	if err := decode(`{"name":"x","manifest_pth":"m.json"}`, &s); !apierr.Is(err, apierr.InvalidInput) {
		t.Fatalf("a typo in the spec must be refused: %v", err)
	}
}

func TestDefaultNames(t *testing.T) {
	for _, vm := range []string{"web1", "a-very-long-vm-name-indeed", "a-very-long-vm-name-indeeD"} {
		n := DefaultTapName(vm)
		if len(n) > 15 || !strings.HasPrefix(n, "vt-") || n != DefaultTapName(vm) {
			t.Fatalf("%s -> %s", vm, n)
		}
	}
	if DefaultTapName("a-very-long-vm-name-indeed") == DefaultTapName("a-very-long-vm-name-indeeD") {
		t.Fatal("long names sharing a prefix collide")
	}
	mac := DefaultMAC("web1")
	if mac != DefaultMAC("web1") || mac == DefaultMAC("web2") {
		t.Fatal("MAC not stable or not distinct")
	}
	var first byte
	fmt.Sscanf(mac[:2], "%x", &first)
	if first&2 == 0 || first&1 != 0 {
		t.Fatalf("%s is not a locally administered unicast MAC", mac)
	}
}

func normalize(s, dir string) string { return strings.ReplaceAll(s, dir, "$TMP") }

func TestPreparePlan(t *testing.T) {
	f := newFixture(t)
	s := f.spec()
	s.NetTap = &NetTap{Tap: "vt-web1", Lease: &Lease{VM: "web1", IP: "192.168.127.100", Prefix: 24, Gateway: "192.168.127.1", MAC: "02:11:22:33:44:55"}}
	s.DNS = []string{"192.168.127.1"}
	s.APIHost, s.APIPort = "192.168.127.1", 8080
	p, err := Prepare(context.Background(), s, f.opts)
	if err != nil {
		t.Fatal(err)
	}
	if p.VMM != cloudhypervisor.Name || p.Accel != vmm.AccelKVM {
		t.Fatalf("vmm %s accel %s", p.VMM, p.Accel)
	}
	if p.Initrd == nil || p.Initrd.Path != f.plugin || len(p.Initrd.Layers) != 1 {
		t.Fatalf("an initramfs with modules for the kernel needs no layering: %+v", p.Initrd)
	}
	if len(p.Artifacts) != 1 || !p.Artifacts[0].Verified {
		t.Fatalf("artifacts %+v", p.Artifacts)
	}
	a, err := bootargs.Parse(p.Cmdline)
	if err != nil {
		t.Fatal(err)
	}
	if a.VM != "web1" || a.IP.String() != "192.168.127.100/24" || a.Gateway.String() != "192.168.127.1" || a.APIPort != 8080 || a.Manifest == "" {
		t.Fatalf("cmdline %q parsed to %+v", p.Cmdline, a)
	}
	if strings.Contains(p.Cmdline, "tsc_early_khz") {
		t.Fatal("tsc_early_khz is for TCG microvm only")
	}
	argv := append([]string{filepath.Base(p.Argv[0])}, p.Argv[1:]...)
	for i := range argv {
		argv[i] = strings.Replace(argv[i], a.Manifest, "<manifest>", 1)
	}
	b, _ := json.MarshalIndent(struct {
		Argv []string `json:"argv"`
	}{argv}, "", "  ")
	clitest.Golden(t, "plan-cloud-hypervisor", normalize(string(b), f.dir)+"\n")
}

func TestChecksumMismatchStartsNothing(t *testing.T) {
	f := newFixture(t)
	s := f.spec()
	s.Manifest = manifestJSON(t, f.plugin, strings.Repeat("ab", 32))
	_, err := Prepare(context.Background(), s, f.opts)
	if !apierr.Is(err, apierr.ChecksumMismatch) {
		t.Fatalf("err = %v, want CHECKSUM_MISMATCH", err)
	}
	e := apierr.From(err)
	if e.Details["actual"] != "sha256:"+sha(t, f.plugin) || e.Details["path"] != f.plugin {
		t.Fatalf("details %v", e.Details)
	}
	if _, err := os.Stat(f.opts.RunRoot); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a refused VM left a run directory")
	}
}

func TestManifestMovesIntoTheInitrd(t *testing.T) {
	f := newFixture(t)
	s := f.spec()
	var m map[string]any
	json.Unmarshal(f.manifest, &m)
	labels := map[string]string{}
	for i := range 40 {
		// Random-looking values defeat gzip, as real secrets and hashes do.
		sum := sha256.Sum256([]byte(strconv.Itoa(i)))
		labels["label"+strconv.Itoa(i)] = hex.EncodeToString(sum[:])
	}
	m["labels"] = labels
	s.Manifest, _ = json.Marshal(m)
	p, err := Prepare(context.Background(), s, f.opts)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Manifest.InInitrd || !strings.Contains(p.Cmdline, "volant.manifest_file="+ManifestInVM) || strings.Contains(p.Cmdline, "volant.manifest=") {
		t.Fatalf("manifest not moved: in_initrd=%v cmdline %q", p.Manifest.InInitrd, p.Cmdline)
	}
	if len(p.Cmdline) > bootargs.MaxCmdline {
		t.Fatalf("cmdline %d bytes", len(p.Cmdline))
	}
	if p.Initrd.Path != filepath.Join(p.RunDir, InitrdName) || len(p.Initrd.Layers) != 2 || p.Initrd.Layers[1].What != "manifest" {
		t.Fatalf("initrd %+v", p.Initrd)
	}
	os.MkdirAll(p.RunDir, 0o700)
	if err := stageInitrd(p); err != nil {
		t.Fatal(err)
	}
	files := readInitrd(t, p.Initrd.Path)
	if _, ok := files["bin/app"]; !ok {
		t.Fatalf("plugin layer missing: %v", keys(files))
	}
	got := files[strings.TrimPrefix(ManifestInVM, "/")]
	if !bytes.Equal(got, p.manifestJSON) {
		t.Fatalf("manifest in the initrd %q, want %q", got, p.manifestJSON)
	}
	var back map[string]any
	if err := json.Unmarshal(got, &back); err != nil || back["name"] != "web" {
		t.Fatalf("manifest in the initrd is not the manifest: %v", err)
	}
}

func TestCmdlineTooLong(t *testing.T) {
	f := newFixture(t)
	s := f.spec()
	s.KernelArgs = []string{"x=" + strings.Repeat("y", bootargs.MaxCmdline)}
	_, err := Prepare(context.Background(), s, f.opts)
	if !apierr.Is(err, apierr.CmdlineTooLong) {
		t.Fatalf("err = %v", err)
	}
}

func TestPrepareRefusals(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name string
		mod  func(*Spec)
		code apierr.Code
		want string
	}{
		{"run dir too long", func(s *Spec) { s.RunDir = "/run/" + strings.Repeat("d", 110) }, apierr.InvalidInput, "unix sockets allow 107"},
		{"no name", func(s *Spec) { s.Name = "" }, apierr.Usage, "needs a name"},
		{"bad name", func(s *Spec) { s.Name = "../etc" }, apierr.InvalidInput, "invalid VM name"},
		{"no manifest", func(s *Spec) { s.Manifest = nil }, apierr.Usage, "manifest is required"},
		{"both manifests", func(s *Spec) { s.ManifestPath = "m.json" }, apierr.Usage, "not both"},
		{"unknown vmm", func(s *Spec) { s.VMM = "firecracker" }, apierr.InvalidInput, "unknown vmm"},
		{"tcg on ch", func(s *Spec) { s.Accel = vmm.AccelTCG }, apierr.NotSupported, "TCG"},
		{"lease for another vm", func(s *Spec) { s.Lease = &Lease{VM: "web2", IP: "10.0.0.2", Prefix: 24} }, apierr.InvalidInput, "web2"},
		{"lease prefix", func(s *Spec) { s.Lease = &Lease{VM: "web1", IP: "10.0.0.2"} }, apierr.InvalidInput, "prefix"},
		{"remote artifact", func(s *Spec) {
			s.Manifest = []byte(`{"name":"web","version":"1","initramfs":{"url":"https://example.com/i.cpio"},"workload":{"entrypoint":["/a"]}}`)
		}, apierr.NotSupported, "fetch it"},
		{"boot layer never for rootfs", func(s *Spec) {
			disk := filepath.Join(f.dir, "root.img")
			os.WriteFile(disk, []byte("ext4"), 0o644)
			s.Manifest = []byte(fmt.Sprintf(`{"name":"web","version":"1","rootfs":{"url":%q},"workload":{"entrypoint":["/a"]}}`, disk))
			s.BootLayer = "never"
		}, apierr.InvalidInput, "rootfs plugin"},
		// Network settings for a VM without a NIC were ignored without a word.
		{"mac without a nic", func(s *Spec) { s.MAC = "02:00:00:00:00:01" }, apierr.InvalidInput, "no network"},
		{"dns without a nic", func(s *Spec) { s.DNS = []string{"10.0.0.1"} }, apierr.InvalidInput, "no network"},
		{"mac with network mode none", func(s *Spec) {
			s.Manifest = []byte(strings.Replace(string(f.manifest), `"resources"`, `"network":{"mode":"none"},"resources"`, 1))
			s.MAC = "02:00:00:00:00:01"
		}, apierr.InvalidInput, "network mode none"},
		{"bzImage on ch", func(s *Spec) {
			bz := filepath.Join(f.dir, "bzImage")
			os.WriteFile(bz, []byte("MZ not an elf"), 0o644)
			s.Kernel = bz
		}, apierr.NotSupported, "bzImage"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := f.spec()
			tc.mod(&s)
			_, err := Prepare(context.Background(), s, f.opts)
			if !apierr.Is(err, tc.code) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %s mentioning %q", err, tc.code, tc.want)
			}
		})
	}
}

func TestNameAndNetworkFromLease(t *testing.T) {
	f := newFixture(t)
	s := f.spec()
	s.Name = ""
	s.Lease = &Lease{VM: "web7", IP: "192.168.127.107", Prefix: 24, Gateway: "192.168.127.1", MAC: "02:00:00:00:00:07"}
	p, err := Prepare(context.Background(), s, f.opts)
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "web7" || p.Network.Tap != DefaultTapName("web7") || p.Network.MAC != "02:00:00:00:00:07" {
		t.Fatalf("%+v %+v", p.Name, p.Network)
	}
	if !strings.Contains(strings.Join(p.Notes, "\n"), "no tap named") {
		t.Fatalf("the default tap must be noted: %v", p.Notes)
	}
}

func TestScanModules(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, c initramfs.Compression, files ...string) string {
		b := initramfs.New()
		for _, f := range files {
			b.File(f, 0o644, []byte("x"))
		}
		p := filepath.Join(dir, name)
		if err := b.WriteFile(p, c); err != nil {
			t.Fatal(err)
		}
		return p
	}
	plain := write("plain.cpio", initramfs.None, "/lib/modules/6.1.0-a/modules.dep", "/bin/x")
	gz := write("gz.cpio.gz", initramfs.Gzip, "/bin/x", "/lib/modules/6.1.0-b/modules.dep", "/lib/modules/6.1.0-b/kernel/y.ko",
		"/lib/modules/6.1.0-b/kernel/a/z.ko.xz", "/lib/modules/6.1.0-b/modules.alias", "/lib/modules/6.1.0-c/kernel/w.ko")
	none := write("none.cpio", initramfs.None, "/init", "/lib/modules/README")
	// Two archives concatenated, padded like stageInitrd does.
	cat := filepath.Join(dir, "cat.cpio")
	a, _ := os.ReadFile(none)
	b, _ := os.ReadFile(plain)
	os.WriteFile(cat, append(append(a, 0, 0, 0, 0), b...), 0o644)
	for _, tc := range []struct {
		path string
		want map[string][]string
	}{
		{plain, map[string][]string{"6.1.0-a": {}}},
		// Module files of releases with an index, sorted; no index, no release.
		{gz, map[string][]string{"6.1.0-b": {"kernel/a/z.ko.xz", "kernel/y.ko"}}},
		{none, map[string][]string{}},
		{cat, map[string][]string{"6.1.0-a": {}}},
	} {
		got, err := ScanModules(tc.path)
		if err != nil {
			t.Fatalf("%s: %v", tc.path, err)
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Fatalf("%s: %v, want %v", tc.path, got, tc.want)
		}
	}
	junk := filepath.Join(dir, "junk")
	os.WriteFile(junk, []byte("definitely not an archive"), 0o644)
	if _, err := ScanModules(junk); err == nil {
		t.Fatal("junk accepted as an initramfs")
	}
}

// run starts Run in the background and returns a function that waits for
// its result.
func startRun(t *testing.T, ctx context.Context, p *Plan, o Options) func() (*Result, error) {
	t.Helper()
	type ret struct {
		r   *Result
		err error
	}
	ch := make(chan ret, 1)
	go func() {
		r, err := Run(ctx, p, o, RunOptions{ReadyTimeout: 20 * time.Second})
		ch <- ret{r, err}
	}()
	return func() (*Result, error) {
		select {
		case r := <-ch:
			return r.r, r.err
		case <-time.After(60 * time.Second):
			t.Fatal("Run did not return")
			return nil, nil
		}
	}
}

func waitRunning(t *testing.T, runDir string, o Options) *Status {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		st, err := Inspect(context.Background(), runDir, o)
		if err == nil && st.Running && st.State == vmm.StateRunning {
			return st
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("VM in %s never reported running", runDir)
	return nil
}

func TestRunLifecycle(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	p, err := Prepare(ctx, f.spec(), f.opts)
	if err != nil {
		t.Fatal(err)
	}
	wait := startRun(t, ctx, p, f.opts)
	st := waitRunning(t, p.RunDir, f.opts)
	if st.Name != "web1" || st.VMM != cloudhypervisor.Name || !st.Supervisor.Alive || !st.Process.Alive || st.SerialLog != p.SerialLog {
		t.Fatalf("status %+v", st)
	}
	for _, name := range []string{VMMDirName + "/" + SocketName, PidFileName, PlanFileName} {
		if _, err := os.Stat(filepath.Join(p.RunDir, name)); err != nil {
			t.Errorf("run dir lacks %s: %v", name, err)
		}
	}
	// The fake Cloud Hypervisor runs jailed: the VM's uid, no_new_privs,
	// its sockets' directory its own, a cgroup with the plan's memory
	// limit; CH's own seccomp and Landlock are asked for.
	if st.Jail == nil || st.Jail.Insecure || st.Jail.UID == 0 || st.Jail.Cgroup == "" || st.Jail.MemoryLimitMB != 128+DefaultOverheadMB {
		t.Fatalf("jail %+v", st.Jail)
	}
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", st.Process.Pid))
	if u := fmt.Sprint(st.Jail.UID); !strings.Contains(string(status), "Uid:\t"+u+"\t"+u+"\t"+u+"\t"+u+"\n") || !strings.Contains(string(status), "NoNewPrivs:\t1") {
		t.Fatalf("the VMM's status:\n%s", status)
	}
	if fi, err := os.Stat(VMMDir(p.RunDir)); err != nil || fi.Sys().(*syscall.Stat_t).Uid != st.Jail.UID || fi.Mode().Perm() != 0o700 {
		t.Fatalf("the VMM's directory: %v %v", fi, err)
	}
	if !slices.Contains(p.Argv, "--landlock") || !slices.Contains(p.Argv, "--seccomp") {
		t.Fatalf("argv %q", p.Argv)
	}
	// The pid file's identity is the VMM's, verified by start time.
	if !st.Process.Identity.Alive() || st.Process.StartTime == 0 {
		t.Fatalf("vmm identity %+v", st.Process.Identity)
	}

	if st, err := Pause(ctx, p.RunDir, f.opts); err != nil || st.State != vmm.StatePaused {
		t.Fatalf("pause: %+v %v", st, err)
	}
	if st, err := Resume(ctx, p.RunDir, f.opts); err != nil || st.State != vmm.StateRunning {
		t.Fatalf("resume: %+v %v", st, err)
	}

	// A second run of the same VM is refused while the first holds the dir.
	if _, err := Run(ctx, p, f.opts, RunOptions{}); !apierr.Is(err, apierr.Conflict) {
		t.Fatalf("second run: %v, want CONFLICT", err)
	}

	rep, err := Stop(ctx, p.RunDir, 10*time.Second, f.opts)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Method != supervise.StoppedPowerButton {
		t.Fatalf("stopped by %s", rep.Method)
	}
	res, err := wait()
	if err != nil {
		t.Fatal(err)
	}
	if res.Ended != "poweroff" {
		t.Fatalf("result %+v", res)
	}
	if _, err := os.Stat(p.RunDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("run dir left behind after stop")
	}
	log, _ := os.ReadFile(p.SerialLog)
	if !strings.Contains(string(log), "booted") {
		t.Fatalf("serial log %q", log)
	}
	// Stop and status of a VM that is gone.
	if rep, err := Stop(ctx, p.RunDir, time.Second, f.opts); err != nil || rep.Method != "not_running" {
		t.Fatalf("second stop: %+v %v", rep, err)
	}
	if _, err := Inspect(ctx, p.RunDir, f.opts); !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("status after stop: %v", err)
	}
	if _, err := Pause(ctx, p.RunDir, f.opts); !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("pause after stop: %v", err)
	}
}

func TestRunStopsOnCancel(t *testing.T) {
	for _, tc := range []struct {
		guest   string
		timeout int
		want    string
	}{{"", 10000, supervise.StoppedPowerButton}, {"deaf", 300, supervise.StoppedHard}} {
		t.Run("guest="+tc.guest, func(t *testing.T) {
			t.Setenv("FAKE_CH_GUEST", tc.guest)
			f := newFixture(t)
			s := f.spec()
			s.StopTimeoutMS = tc.timeout
			p, err := Prepare(context.Background(), s, f.opts)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			wait := startRun(t, ctx, p, f.opts)
			waitRunning(t, p.RunDir, f.opts)
			cancel()
			res, err := wait()
			if err != nil {
				t.Fatal(err)
			}
			if res.Ended != "stopped" || res.StopMethod != tc.want {
				t.Fatalf("%+v", res)
			}
			if _, err := os.Stat(p.RunDir); !errors.Is(err, os.ErrNotExist) {
				t.Fatal("run dir left behind")
			}
		})
	}
}

func TestRunRefusesMissingTap(t *testing.T) {
	f := newFixture(t)
	s := f.spec()
	s.Tap = "vt-missing0"
	s.Lease = &Lease{VM: "web1", IP: "192.168.127.100", Prefix: 24}
	p, err := Prepare(context.Background(), s, f.opts)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Run(context.Background(), p, f.opts, RunOptions{})
	if !apierr.Is(err, apierr.NotFound) || !strings.Contains(err.Error(), "vt-missing0") {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(p.SerialLog); err == nil {
		t.Fatal("the VMM started although its tap is missing")
	}
	if _, err := os.Stat(p.RunDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("run dir left behind")
	}
}

func TestRunReportsEarlyVMMExit(t *testing.T) {
	f := newFixture(t)
	p, err := Prepare(context.Background(), f.spec(), f.opts)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(f.kernel) // the fake CH refuses a missing kernel, as CH does
	_, err = Run(context.Background(), p, f.opts, RunOptions{})
	if !apierr.Is(err, apierr.Unavailable) || !strings.Contains(err.Error(), "vmlinux") {
		t.Fatalf("err = %v", err)
	}
}

func TestStaleRunDir(t *testing.T) {
	f := newFixture(t)
	p, err := Prepare(context.Background(), f.spec(), f.opts)
	if err != nil {
		t.Fatal(err)
	}
	// What a run killed with SIGKILL leaves: a pid file naming processes
	// that are gone (a pid whose start time no longer matches).
	self, _ := supervise.Self()
	dead := self
	dead.StartTime++
	os.MkdirAll(p.RunDir, 0o700)
	supervise.WritePidFile(filepath.Join(p.RunDir, PidFileName), supervise.PidFile{Supervisor: dead, VMM: dead, Backend: p.VMM, Socket: p.Config.APISocket})
	st, err := Inspect(context.Background(), p.RunDir, f.opts)
	if err != nil || st.Running || st.State != StateStopped || st.Process.Alive {
		t.Fatalf("stale dir: %+v %v", st, err)
	}
	if _, err := Pause(context.Background(), p.RunDir, f.opts); !apierr.Is(err, apierr.Conflict) {
		t.Fatalf("pause of a dead VM: %v", err)
	}
	rep, err := Stop(context.Background(), p.RunDir, time.Second, f.opts)
	if err != nil || rep.Method != "not_running" {
		t.Fatalf("stop: %+v %v", rep, err)
	}
	if _, err := os.Stat(p.RunDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("stop left the stale run dir")
	}
}

// helperRun is the supervisor process of TestKilledSupervisorLeavesNoOrphan.
func helperRun(planFile string) int {
	b, err := os.ReadFile(planFile)
	if err != nil {
		return 1
	}
	var hp struct {
		Plan *Plan
		Opts struct{ RunRoot, StateDir, CacheDir, Binary string }
		Jail JailOptions
	}
	if err := json.Unmarshal(b, &hp); err != nil {
		return 1
	}
	o := Options{RunRoot: hp.Opts.RunRoot, StateDir: hp.Opts.StateDir, CacheDir: hp.Opts.CacheDir, HostRoot: kvmHost,
		Backends: []vmm.Backend{&cloudhypervisor.Backend{Binary: hp.Opts.Binary, HostRoot: kvmHost}}, Jail: hp.Jail}
	if _, err := Run(context.Background(), hp.Plan, o, RunOptions{}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func TestKilledSupervisorLeavesNoOrphan(t *testing.T) {
	f := newFixture(t)
	p, err := Prepare(context.Background(), f.spec(), f.opts)
	if err != nil {
		t.Fatal(err)
	}
	hp := map[string]any{"Plan": p, "Opts": map[string]string{"RunRoot": f.opts.RunRoot, "StateDir": f.opts.StateDir,
		"CacheDir": f.opts.CacheDir, "Binary": f.opts.Backends[0].(*cloudhypervisor.Backend).Binary}}
	b, _ := json.Marshal(hp)
	planFile := filepath.Join(f.dir, "helper.json")
	os.WriteFile(planFile, b, 0o644)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "LAUNCH_HELPER_PLAN="+planFile)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	st := waitRunning(t, p.RunDir, f.opts)
	if st.Supervisor.Pid != cmd.Process.Pid {
		t.Fatalf("supervisor pid %d, want %d", st.Supervisor.Pid, cmd.Process.Pid)
	}
	vmmID := st.Process.Identity
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for vmmID.Alive() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if vmmID.Alive() {
		syscall.Kill(vmmID.Pid, syscall.SIGKILL)
		t.Fatal("the VMM outlived its SIGKILLed supervisor")
	}
	// The run dir it left is stale; status says so and stop cleans it.
	st, err = Inspect(context.Background(), p.RunDir, f.opts)
	if err != nil || st.Running {
		t.Fatalf("after kill: %+v %v", st, err)
	}
	if _, err := Stop(context.Background(), p.RunDir, time.Second, f.opts); err != nil {
		t.Fatal(err)
	}
}

// readInitrd reads every file of a (possibly layered) newc initrd.
func readInitrd(t *testing.T, path string) map[string][]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	r := bufio.NewReader(bytes.NewReader(data))
	for {
		for {
			b, err := r.Peek(1)
			if err != nil {
				return out
			}
			if b[0] != 0 {
				break
			}
			r.Discard(1)
		}
		var src io.Reader = r
		if m, _ := r.Peek(2); m[0] == 0x1f && m[1] == 0x8b {
			zr, err := gzip.NewReader(r)
			if err != nil {
				t.Fatal(err)
			}
			zr.Multistream(false)
			src = zr
		}
		hdr := make([]byte, 110)
		off := 0
		for {
			if _, err := io.ReadFull(src, hdr); err != nil {
				t.Fatalf("cpio: %v", err)
			}
			off += 110
			size, _ := strconv.ParseInt(string(hdr[54:62]), 16, 64)
			nsize, _ := strconv.ParseInt(string(hdr[94:102]), 16, 64)
			name := make([]byte, nsize)
			io.ReadFull(src, name)
			off += int(nsize)
			io.CopyN(io.Discard, src, int64((4-off%4)%4))
			off += (4 - off%4) % 4
			n := strings.TrimRight(string(name), "\x00")
			if n == "TRAILER!!!" {
				if src != io.Reader(r) {
					io.Copy(io.Discard, src)
				}
				break
			}
			body := make([]byte, size)
			io.ReadFull(src, body)
			off += int(size)
			io.CopyN(io.Discard, src, int64((4-off%4)%4))
			off += (4 - off%4) % 4
			out[n] = body
		}
	}
}

func keys(m map[string][]byte) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	return k
}

func decode(s string, v any) error { return cli.DecodeRequest([]byte(s), v) }

func TestVerificationCache(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	p, err := Prepare(ctx, f.spec(), f.opts)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Artifacts[0].Verified || p.Artifacts[0].Cached {
		t.Fatalf("first launch must hash: %+v", p.Artifacts[0])
	}
	p, err = Prepare(ctx, f.spec(), f.opts)
	if err != nil || !p.Artifacts[0].Cached {
		t.Fatalf("an unchanged file is verified from the cache: %+v %v", p.Artifacts, err)
	}
	s := f.spec()
	s.Verify = VerifyAlways
	if p, err = Prepare(ctx, s, f.opts); err != nil || p.Artifacts[0].Cached {
		t.Fatalf("verify=always must hash: %+v %v", p.Artifacts, err)
	}
	// Tamper with the archive in place, same size, and put its mtime back:
	// the ctime still moves, so the cache does not vouch for it.
	st, _ := os.Stat(f.plugin)
	data, _ := os.ReadFile(f.plugin)
	data[len(data)-1] ^= 0xff
	os.WriteFile(f.plugin, data, 0o644)
	os.Chtimes(f.plugin, st.ModTime(), st.ModTime())
	if _, err := Prepare(ctx, f.spec(), f.opts); !apierr.Is(err, apierr.ChecksumMismatch) {
		t.Fatalf("a tampered file passed through the cache: %v", err)
	}
	s.Verify = "sometimes"
	if _, err := Prepare(ctx, s, f.opts); !apierr.Is(err, apierr.InvalidInput) {
		t.Fatalf("bad verify mode: %v", err)
	}
}

func TestValidName(t *testing.T) {
	// lib/names' rule: what volant-ipam and volantd accept, launch accepts.
	for s, ok := range map[string]bool{"web1": true, "web-1_a": true, "9": true, strings.Repeat("a", 63): true,
		"": false, "-a": false, "Web1": false, "a.b": false, "a/b": false, "a b": false, strings.Repeat("a", 64): false} {
		if ValidName(s) != ok {
			t.Errorf("ValidName(%q) = %v", s, !ok)
		}
	}
}

// Cloud Hypervisor serves its serial port on a socket but cannot also log
// it; Run relays it to the serial log and an attachable console socket.
func TestConsoleRelay(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	p, err := Prepare(ctx, f.spec(), f.opts)
	if err != nil {
		t.Fatal(err)
	}
	if p.SerialRelay == "" || p.Config.Serial.Socket != p.SerialRelay || p.Config.Serial.LogFile != "" {
		t.Fatalf("serial %+v relay %q", p.Config.Serial, p.SerialRelay)
	}
	wait := startRun(t, ctx, p, f.opts)
	waitRunning(t, p.RunDir, f.opts)
	// The boot line reached the log through the relay.
	if err := waitFor(func() bool { b, _ := os.ReadFile(p.SerialLog); return strings.Contains(string(b), "booted") }); err != nil {
		t.Fatal("the relay did not log the console")
	}
	c, err := net.Dial("unix", p.Console)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hello guest\n"))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, 64)
	n, err := io.ReadAtLeast(c, got, len("hello guest\n"))
	if err != nil || !strings.Contains(string(got[:n]), "hello guest") {
		t.Fatalf("console echo %q %v", got[:n], err)
	}
	// One client at a time.
	c2, err := net.Dial("unix", p.Console)
	if err != nil {
		t.Fatal(err)
	}
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	msg, _ := io.ReadAll(c2)
	c2.Close()
	if !strings.Contains(string(msg), "already attached") {
		t.Fatalf("second client: %q", msg)
	}
	if _, err := Stop(ctx, p.RunDir, 5*time.Second, f.opts); err != nil {
		t.Fatal(err)
	}
	if _, err := wait(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p.SerialLog); !strings.Contains(string(b), "hello guest") {
		t.Fatalf("the echoed input is not in the serial log: %q", b)
	}
}

func waitFor(cond func() bool) error { return wait.For(10*time.Second, cond) }

// bigArtifact is a sparse file of size bytes standing in for a large disk
// image, and a manifest that names it as a disk with a checksum it does
// not have: hashing it takes seconds, so a Prepare that answers at once
// did not hash it.
func bigArtifact(t *testing.T, f *fixture, size int64) []byte {
	t.Helper()
	p := filepath.Join(f.dir, "big.img")
	fh, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := fh.Truncate(size); err != nil {
		t.Fatal(err)
	}
	fh.Close()
	return []byte(fmt.Sprintf(`{"name":"web","version":"1.0.0","initramfs":{"url":%q,"checksum":"sha256:%s"},
		"disks":[{"name":"data","source":%q,"checksum":"sha256:%s"}],
		"workload":{"entrypoint":["/bin/app"]},"resources":{"cpu_cores":1,"memory_mb":128}}`, f.plugin, sha(t, f.plugin), p, strings.Repeat("0", 64)))
}

// prepareWithin runs Prepare and fails the test if it has not returned
// after d (a Prepare still hashing).
func prepareWithin(t *testing.T, ctx context.Context, d time.Duration, s Spec, o Options, why string) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { _, err := Prepare(ctx, s, o); done <- err }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatalf("Prepare still running after %v: %s", d, why)
		return nil
	}
}

// TestCheapChecksComeFirst: a spec with a cheap mistake is refused at once,
// before any artifact is hashed, whatever the artifacts' size.
func TestCheapChecksComeFirst(t *testing.T) {
	f := newFixture(t)
	// Hashing 64 GiB takes half a minute even at 2 GB/s.
	big := bigArtifact(t, f, 64<<30)
	const limit = 2 * time.Second
	for _, tc := range []struct {
		name string
		mod  func(*Spec)
		code apierr.Code
		want string
	}{
		{"disk mode typo", func(s *Spec) { s.DiskMode = "cpoy" }, apierr.InvalidInput, "disk_mode"},
		{"verify typo", func(s *Spec) { s.Verify = "sometimes" }, apierr.InvalidInput, "verify"},
		{"boot layer typo", func(s *Spec) { s.BootLayer = "maybe" }, apierr.InvalidInput, "boot_layer"},
		{"memory too big", func(s *Spec) { s.MemoryMB = 99999999999 }, apierr.InvalidInput, "memory_mb"},
		{"memory too small", func(s *Spec) { s.MemoryMB = 16 }, apierr.InvalidInput, "memory_mb"},
		{"cpus too many", func(s *Spec) { s.CPUs = 1000 }, apierr.InvalidInput, "cpus"},
		{"cpus negative", func(s *Spec) { s.CPUs = -1 }, apierr.InvalidInput, "cpus"},
		{"multicast mac", func(s *Spec) { s.Tap, s.MAC = "vt-web1", "01:00:5e:00:00:01" }, apierr.InvalidInput, "multicast"},
		{"malformed mac", func(s *Spec) { s.Tap, s.MAC = "vt-web1", "02:00:00" }, apierr.InvalidInput, "not a 6-byte MAC"},
		{"lease mac multicast", func(s *Spec) {
			s.Lease = &Lease{VM: "web1", IP: "10.0.0.2", Prefix: 24, MAC: "ff:ff:ff:ff:ff:ff"}
		}, apierr.InvalidInput, "multicast"},
		{"missing kernel", func(s *Spec) { s.Kernel = filepath.Join(f.dir, "no-vmlinux") }, apierr.NotFound, "kernel"},
		{"missing artifact", func(s *Spec) {
			s.Manifest = bytes.Replace(big, []byte(f.plugin), []byte(f.plugin+".gone"), 1)
		}, apierr.NotFound, "initramfs artifact"},
		{"run dir too long", func(s *Spec) { s.RunDir = "/run/" + strings.Repeat("d", 110) }, apierr.InvalidInput, "unix sockets allow 107"},
		{"tcg on ch", func(s *Spec) { s.Accel = vmm.AccelTCG }, apierr.NotSupported, "TCG"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := f.spec()
			s.Manifest = big
			tc.mod(&s)
			t0 := time.Now()
			err := prepareWithin(t, context.Background(), limit, s, f.opts, "it is hashing before checking")
			if apierr.CodeOf(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %s mentioning %q", err, tc.code, tc.want)
			}
			t.Logf("refused after %v", time.Since(t0).Round(time.Microsecond))
		})
	}
}

// TestCancelStopsHashing: cancelling Prepare's context (SIGINT in
// volant-launch) stops the artifact hashes at once.
func TestCancelStopsHashing(t *testing.T) {
	f := newFixture(t)
	s := f.spec()
	s.Manifest = bigArtifact(t, f, 64<<30)
	s.Verify = VerifyAlways
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	t0 := time.Now()
	err := prepareWithin(t, ctx, 5*time.Second, s, f.opts, "the hash ignores the cancel")
	if apierr.CodeOf(err) != apierr.Canceled || !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want CANCELED", err)
	}
	if took := time.Since(t0); took > 2*time.Second {
		t.Fatalf("Prepare took %v to return after a cancel at 300ms", took)
	}
}

// TestDryRunPlansForAnotherHost: argv's dry run plans a backend whose
// binary is missing here, with the reason as a warning; Prepare (run)
// refuses the same spec.
func TestDryRunPlansForAnotherHost(t *testing.T) {
	f := newFixture(t)
	o := f.opts
	o.Backends = []vmm.Backend{&cloudhypervisor.Backend{Binary: filepath.Join(f.dir, "no", "cloud-hypervisor"), HostRoot: fstest.MapFS{}}}
	s := f.spec()
	if _, err := Prepare(context.Background(), s, o); !apierr.Is(err, apierr.Unavailable) {
		t.Fatalf("Prepare with no usable backend: %v, want UNAVAILABLE", err)
	}
	p, err := DryRun(context.Background(), s, o)
	if err != nil {
		t.Fatal(err)
	}
	if p.VMM != cloudhypervisor.Name || p.Accel != vmm.AccelKVM || p.Argv[0] != filepath.Join(f.dir, "no", "cloud-hypervisor") {
		t.Fatalf("dry run planned %s/%s %q", p.VMM, p.Accel, p.Argv[0])
	}
	if len(p.Warnings) != 1 || !strings.Contains(p.Warnings[0], "not found") {
		t.Fatalf("warnings %q", p.Warnings)
	}
	// What is wrong with the spec itself is still an error.
	s.Accel = vmm.AccelTCG
	if _, err := DryRun(context.Background(), s, o); !apierr.Is(err, apierr.NotSupported) {
		t.Fatalf("TCG on Cloud Hypervisor in a dry run: %v", err)
	}
	s.Accel, s.DiskMode = "", "cpoy"
	if _, err := DryRun(context.Background(), s, o); !apierr.Is(err, apierr.InvalidInput) {
		t.Fatalf("a disk_mode typo in a dry run: %v", err)
	}
}

// TestDryRunWritesNoTSCCache: argv's dry run leaves the cache directory as
// it found it, refused or not: the host TSC rate a TCG microvm's command
// line carries is read, not remembered (it was written before a checksum
// mismatch was refused, and before any bad input the later phases refuse).
func TestDryRunWritesNoTSCCache(t *testing.T) {
	f := newFixture(t)
	o := f.opts
	o.Backends = []vmm.Backend{&qemu.Backend{Binary: filepath.Join(f.dir, "no", "qemu-system-x86_64")}}
	s := f.spec()
	s.VMM, s.Accel = qemu.Name, vmm.AccelTCG
	s.Manifest = manifestJSON(t, f.plugin, strings.Repeat("ab", 32))
	if _, err := DryRun(context.Background(), s, o); !apierr.Is(err, apierr.ChecksumMismatch) {
		t.Fatalf("a dry run with a wrong checksum: %v, want CHECKSUM_MISMATCH", err)
	}
	if ents, _ := os.ReadDir(o.CacheDir); len(ents) != 0 {
		t.Fatalf("a refused dry run wrote into the cache: %v", ents)
	}
	s.Manifest = f.manifest
	p, err := DryRun(context.Background(), s, o)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(p.Cmdline, "tsc_early_khz=") {
		t.Fatalf("a TCG microvm command line without the TSC rate: %s", p.Cmdline)
	}
	// The rate is this host's: a plan for another host says so.
	if !slices.ContainsFunc(p.Warnings, func(w string) bool { return strings.Contains(w, "this host's TSC rate") }) {
		t.Fatalf("warnings %q do not say the TSC rate is this host's", p.Warnings)
	}
	if _, err := os.Stat(filepath.Join(o.CacheDir, "tsc_khz")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a dry run remembered the TSC rate: %v", err)
	}
}
