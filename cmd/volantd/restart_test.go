package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/hostnet"
	"github.com/volantvm/volant/lib/initramfs"
	"github.com/volantvm/volant/lib/ipam"
	"github.com/volantvm/volant/lib/store"
	"github.com/volantvm/volant/lib/testutil/kvmtest"
	"github.com/volantvm/volant/lib/testutil/netnstest"
	"github.com/volantvm/volant/lib/vmm/cloudhypervisor/chtest"
)

// fakeHost is a network namespace in which volantd runs real volant-launch
// processes whose hypervisor is the fake Cloud Hypervisor (this test
// binary), with real taps on a real bridge.
type fakeHost struct {
	ns       *netnstest.NS
	dir      string
	kernel   string
	manifest []byte
	artifact string // the plugin's initramfs, which manifest names
	// bin, when set, holds the volantd, cloud-hypervisor and volant-launch
	// to run (default: bins, where volantd is this test binary).
	bin string
}

func newFakeHost(t testing.TB) *fakeHost {
	t.Helper()
	ns := netnstest.New(t)
	dir := t.TempDir()
	h := &fakeHost{ns: ns, dir: dir, kernel: filepath.Join(dir, "vmlinux")}
	// Any ELF file is a "vmlinux" to the fake; the plugin's archive carries
	// modules for some release, so no boot image is layered under it.
	self, _ := os.Executable()
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.kernel, data, 0o644); err != nil {
		t.Fatal(err)
	}
	b := initramfs.New()
	b.File("/lib/modules/6.1.0-test/modules.dep", 0o644, []byte("kernel/x.ko:\n"))
	b.File("/bin/app", 0o755, []byte("#!/bin/sh\n"))
	art := filepath.Join(dir, "app.cpio.gz")
	h.artifact = art
	if err := b.WriteFile(art, initramfs.Gzip); err != nil {
		t.Fatal(err)
	}
	sum, _ := os.ReadFile(art)
	s := sha256.Sum256(sum)
	h.manifest = []byte(fmt.Sprintf(`{"name":"app","version":"1.0.0","initramfs":{"url":%q,"checksum":"sha256:%s"},
		"workload":{"entrypoint":["/bin/app"],"base_url":"http://127.0.0.1:80"},"resources":{"cpu_cores":1,"memory_mb":128}}`,
		art, hex.EncodeToString(s[:])))
	return h
}

// start runs volantd inside the namespace. The fake Cloud Hypervisor counts
// as usable only with a KVM that runs stock kernels, which this host may not
// have (none, or PVM-only): volantd runs with a stand-in /dev/kvm and an
// empty /sys/module in a mount namespace of its own (kvmtest), the same on
// every host; the host is untouched.
func (h *fakeHost) start(t testing.TB, extra ...string) *volantdProc {
	t.Helper()
	kvm, files := kvmtest.Wrap(t)
	wrap := append([]string{"ip", "netns", "exec", h.ns.Name}, kvm...)
	// The fake guests never become healthy, so boots are not admitted a
	// few at a time (--max-booting -1): each would hold its slot until
	// the start timeout (unless extra sets --max-booting).
	// The plugin's artifact is in h.dir, which volantd is told to allow.
	args := []string{"--vmm", "cloud-hypervisor", "--kernel", h.kernel, "--health-interval", "1s", "--stop-timeout", "2s",
		"--artifact-dir", h.dir}
	if !slices.Contains(extra, "--max-booting") {
		args = append(args, "--max-booting", "-1")
	}
	args = append(args, extra...)
	if h.bin != "" {
		return startDaemonFrom(t, h.bin, h.dir, wrap, files, nil, args...)
	}
	return startDaemonFiles(t, h.dir, wrap, files, nil, args...)
}

// procs maps the pids of the namespace's processes to their program names.
func (h *fakeHost) procs() map[int]string {
	out := map[int]string{}
	for _, pid := range h.ns.Pids() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || len(b) == 0 {
			continue
		}
		st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if i := strings.LastIndexByte(string(st), ')'); i > 0 && i+2 < len(st) && (st[i+2] == 'Z' || st[i+2] == 'X') {
			continue // exited, not reaped yet
		}
		argv0 := strings.SplitN(string(b), "\x00", 2)[0]
		out[pid] = filepath.Base(argv0)
	}
	return out
}

func (h *fakeHost) pidsOf(name string) []int {
	var out []int
	for pid, n := range h.procs() {
		if n == name {
			out = append(out, pid)
		}
	}
	sort.Ints(out)
	return out
}

func (h *fakeHost) taps(t *testing.T) []hostnet.Tap {
	t.Helper()
	var taps []hostnet.Tap
	if err := h.ns.Do(func() error {
		var err error
		taps, err = (&hostnet.Host{}).ListTaps(context.Background())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return taps
}

// createThenKill starts n creates on d1 and kills it with SIGKILL once
// some VMs run and the rest are somewhere in their steps. It returns how
// many creates the kill cut off (at least one).
func createThenKill(t *testing.T, d1 *volantdProc, n int) int {
	t.Helper()
	ctx := context.Background()
	var wg sync.WaitGroup
	var mu sync.Mutex
	results := make([]error, n)
	returned := 0
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := d1.c.CreateVM(ctx, api.CreateVMRequest{Name: fmt.Sprintf("vm%02d", i), Plugin: "app"})
			mu.Lock()
			results[i] = err
			returned++
			mu.Unlock()
		}()
	}
	// Kill once some VMs run and the rest are somewhere in their steps.
	// If none comes up, say why: the creates' own errors and the VMs'.
	whyNone := func(err error) string {
		var b strings.Builder
		fmt.Fprintf(&b, "listing VMs: %v", err)
		mu.Lock()
		for i, e := range results {
			if e != nil {
				fmt.Fprintf(&b, "\n  create vm%02d: %v", i, e)
			}
		}
		mu.Unlock()
		vms, _ := d1.c.ListVMs(ctx, api.VMFilter{})
		for _, v := range vms {
			fmt.Fprintf(&b, "\n  %s: %s step=%q pid=%d error=%q", v.Name, v.State, v.Step, v.PID, v.Error)
		}
		return b.String()
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		vms, err := d1.c.ListVMs(ctx, api.VMFilter{})
		running := 0
		for _, v := range vms {
			if v.PID != 0 {
				running++
			}
		}
		if err == nil && running >= 3 {
			t.Logf("killing volantd with %d VMs recorded, %d with a hypervisor", len(vms), running)
			break
		}
		mu.Lock()
		all := returned == n
		mu.Unlock()
		if all {
			t.Fatalf("every create returned before 3 VMs ran: %s", whyNone(err))
		}
		if time.Now().After(deadline) {
			t.Fatalf("no VM came up in 60 s: %s", whyNone(err))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := d1.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	<-d1.done
	failed := 0
	for _, err := range results {
		if err != nil {
			failed++
		}
	}
	t.Logf("%d of %d creates were cut off by the kill", failed, n)
	if failed == 0 {
		t.Fatal("every create finished before the kill; the test proves nothing")
	}
	return failed
}

// TestKillDuringCreatesThenRestart: volantd is killed with SIGKILL while 20
// creates are in flight. After a restart there are no leaked leases, no
// orphan hypervisors, no duplicate addresses, no orphan taps, and every VM
// whose run is alive is adopted; interrupted creates are finished.
func TestKillDuringCreatesThenRestart(t *testing.T) {
	kvmtest.Require(t)
	h := newFakeHost(t)
	d1 := h.start(t)
	ctx := context.Background()
	if _, err := d1.c.InstallPlugin(ctx, h.manifest, client.InstallOptions{}); err != nil {
		t.Fatal(err)
	}

	const n = 20
	failed := createThenKill(t, d1, n)

	d2 := h.start(t)
	vms, err := d2.c.ListVMs(ctx, api.VMFilter{})
	if err != nil {
		t.Fatal(err)
	}
	check := func(phase string, vms []api.VM) {
		t.Helper()
		st, err := store.Open(ctx, filepath.Join(h.dir, "data", "volant.db"), store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		leases, err := ipam.List(ctx, st)
		st.Close()
		if err != nil {
			t.Fatal(err)
		}
		byName := map[string]api.VM{}
		ips := map[string]string{}
		for _, v := range vms {
			byName[v.Name] = v
			if v.IP != "" {
				if other, dup := ips[v.IP]; dup {
					t.Fatalf("%s: %s and %s share %s", phase, other, v.Name, v.IP)
				}
				ips[v.IP] = v.Name
			}
		}
		// 0 leaked leases: every lease is a VM's, with that VM's address.
		for _, l := range leases {
			v, ok := byName[l.VM]
			if !ok {
				t.Errorf("%s: leaked lease %s → %s", phase, l.IP, l.VM)
			} else if v.IP != l.IP.String() {
				t.Errorf("%s: %s has %s but its lease says %s", phase, v.Name, v.IP, l.IP)
			}
		}
		if len(leases) != len(ips) {
			t.Errorf("%s: %d leases for %d VMs with an address", phase, len(leases), len(ips))
		}
		// 0 orphan hypervisors: every fake cloud-hypervisor is a VM's, and
		// every VM that should run has one (adopted).
		chs := h.pidsOf(chtest.Name)
		owned := map[int]string{}
		for _, v := range vms {
			if v.State == api.VMStarting || v.State == api.VMRunning {
				if v.PID == 0 {
					t.Errorf("%s: %s is %s without a hypervisor", phase, v.Name, v.State)
				}
				owned[v.PID] = v.Name
			}
		}
		for _, pid := range chs {
			if _, ok := owned[pid]; !ok {
				t.Errorf("%s: orphan hypervisor pid %d (%v)", phase, pid, h.procs())
			}
		}
		if len(chs) != len(owned) {
			t.Errorf("%s: %d hypervisors for %d running VMs", phase, len(chs), len(owned))
		}
		if launches := h.pidsOf("volant-launch"); len(launches) != len(chs) {
			t.Errorf("%s: %d volant-launch processes for %d hypervisors", phase, len(launches), len(chs))
		}
		// 0 orphan taps.
		for _, tap := range h.taps(t) {
			if _, ok := byName[tap.VM]; !ok {
				t.Errorf("%s: orphan tap %s of %s", phase, tap.Name, tap.VM)
			} else if tap.IP != byName[tap.VM].IP {
				t.Errorf("%s: tap %s has %s, VM %s", phase, tap.Name, tap.IP, byName[tap.VM].IP)
			}
		}
	}
	check("after restart", vms)
	adopted, resumed := 0, 0
	for _, v := range vms {
		if v.State != api.VMStarting && v.State != api.VMRunning {
			t.Errorf("%s is %s after the restart (%s)", v.Name, v.State, v.Error)
		}
		if v.Step != "" {
			t.Errorf("%s still has step %s", v.Name, v.Step)
		}
	}
	evs, err := d2.c.Events(ctx, api.EventOptions{FromStart: true})
	if err != nil {
		t.Fatal(err)
	}
	last, _ := d2.c.Health(ctx)
	for {
		ev, err := evs.Next()
		if err != nil {
			t.Fatal(err)
		}
		switch ev.Type {
		case api.EventVMAdopted:
			adopted++
		case api.EventVMStarted:
			resumed++
		}
		if ev.ID >= last.LastEventID {
			break
		}
	}
	evs.Close()
	t.Logf("%d VMs after the restart: %d adopted, %d vm.started events in all", len(vms), adopted, resumed)
	if adopted == 0 {
		t.Fatal("no VM was adopted")
	}
	if len(vms) < n-failed {
		t.Fatalf("%d VMs, but %d creates succeeded", len(vms), n-failed)
	}

	// A VM whose hypervisor dies is seen crashed by the new daemon.
	victim := vms[0]
	syscall.Kill(victim.PID, syscall.SIGKILL)
	v, err := waitState(ctx, d2.c, victim.Name, api.VMCrashed, 30*time.Second)
	if err != nil {
		t.Fatalf("after killing its hypervisor: %+v %v", v, err)
	}

	// Everything deletes cleanly.
	for _, v := range vms {
		if _, err := d2.c.DeleteVM(ctx, v.Name); err != nil {
			t.Fatalf("delete %s: %v", v.Name, err)
		}
	}
	vms, _ = d2.c.ListVMs(ctx, api.VMFilter{})
	check("after deleting all", vms)
	if len(vms) != 0 || len(h.pidsOf(chtest.Name)) != 0 || len(h.taps(t)) != 0 {
		t.Fatalf("left: %d VMs, hypervisors %v, taps %v", len(vms), h.pidsOf(chtest.Name), h.taps(t))
	}
}

func waitState(ctx context.Context, c *client.Client, name string, state api.VMState, timeout time.Duration) (*api.VM, error) {
	deadline := time.Now().Add(timeout)
	for {
		v, err := c.VM(ctx, name)
		if err == nil && v.State == state {
			return v, nil
		}
		if time.Now().After(deadline) {
			return v, apierr.New(apierr.Timeout, "%s not %s", name, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var _ = netip.Addr{}
var _ = strconv.Itoa
