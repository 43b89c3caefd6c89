package main

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/volantvm/volant/contrib/systemd"
	"github.com/volantvm/volant/lib/cli/clitest"
	"github.com/volantvm/volant/lib/kernel"
	"github.com/volantvm/volant/lib/testutil/netnstest"
	"github.com/volantvm/volant/lib/volar"
)

// kernelDirWithoutVmlinux makes a kernel directory that shares the real
// guest kernel's vmlinuz but has no vmlinux yet, so setup must extract it.
func kernelDirWithoutVmlinux(t *testing.T) (string, string) {
	t.Helper()
	k, err := kernel.Open(os.Getenv("VOLANT_KERNEL_DIR"))
	if err != nil {
		netnstest.SkipOrFail(t, "guest kernel: %v", err)
	}
	dir := filepath.Join(t.TempDir(), "kernel")
	mods := filepath.Join(dir, "modules", k.Release)
	if err := os.MkdirAll(mods, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "release"), []byte(k.Release+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(k.Vmlinuz, filepath.Join(dir, "vmlinuz")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mods, "modules.dep"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, k.Release
}

// TestSetupInNetns runs `volar setup` for real inside a network namespace
// of its own: dry run first (nothing changes), then setup (everything
// made), then again (nothing changes), and a host without a kernel (the
// rest is done, exit 1 with the hint).
func TestSetupInNetns(t *testing.T) {
	netnstest.Require(t, "nft")
	ns := netnstest.New(t)
	kdir, release := kernelDirWithoutVmlinux(t)
	root := t.TempDir()
	data, runRoot := filepath.Join(root, "lib", "volant"), filepath.Join(root, "run", "volant", "vms")
	args := []string{"setup", "--nat", "--data-dir", data, "--run-root", runRoot, "--kernel", kdir}
	in := func(args ...string) result {
		t.Helper()
		var r result
		if err := ns.Do(func() error { r = runVolar(t, "", nil, args...); return nil }); err != nil {
			t.Fatal(err)
		}
		return r
	}
	// Which hypervisor, where, and with what acceleration depends on the
	// machine.
	hv := regexp.MustCompile(`(?m)^(hypervisor\s+ok\s+).*$`)
	// Whether systemd runs here too.
	reSystemd := regexp.MustCompile(`(?m)^(systemd\s+\S+\s+).*$`)
	reSystemdHint := regexp.MustCompile(`(?m)^  systemd: .*\n`)
	hvJSON := regexp.MustCompile(`("detail": )"(qemu|cloud-hypervisor) \(.*"`)
	mask := func(s string) string {
		s = strings.ReplaceAll(s, kdir, "$KERNEL")
		s = strings.ReplaceAll(s, root, "$ROOT")
		s = reSystemd.ReplaceAllString(s, "${1}$$SYSTEMD")
		s = reSystemdHint.ReplaceAllString(s, "")
		s = strings.ReplaceAll(s, release, "$RELEASE")
		s = hvJSON.ReplaceAllString(s, `${1}"$$HYPERVISOR"`)
		return hv.ReplaceAllString(s, "${1}$$HYPERVISOR")
	}
	var all strings.Builder
	step := func(name string, r result, code int) result {
		t.Helper()
		if r.Code != code {
			t.Fatalf("%s: %s", name, r)
		}
		fmt.Fprintf(&all, "== %s\n%s\n", name, mask(r.String()))
		return r
	}
	bridgeExists := func() bool {
		_, err := ns.Output("ip", "link", "show", "vbr0")
		return err == nil
	}

	step("dry run on a fresh host", in(append(args, "--dry-run")...), 0)
	if bridgeExists() {
		t.Fatal("--dry-run created the bridge")
	}
	if _, err := os.Stat(data); err == nil {
		t.Fatal("--dry-run created the data directory")
	}
	if _, err := os.Stat(filepath.Join(kdir, "vmlinux")); err == nil {
		t.Fatal("--dry-run extracted vmlinux")
	}

	step("setup", in(args...), 0)
	if !bridgeExists() {
		t.Fatal("setup made no bridge")
	}
	if addr := ns.Run("ip", "-4", "-o", "addr", "show", "dev", "vbr0"); !strings.Contains(addr, "192.168.127.1/24") {
		t.Fatalf("bridge address: %s", addr)
	}
	if fwd := ns.Run("cat", "/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(fwd) != "1" {
		t.Fatalf("ip_forward = %s", fwd)
	}
	if nft := ns.Run("nft", "list", "table", "ip", "volant-vbr0"); !strings.Contains(nft, "masquerade") {
		t.Fatalf("NAT table: %s", nft)
	}
	for _, d := range []string{data, filepath.Join(data, "plugins"), filepath.Join(data, "vms"), filepath.Join(data, "cache"),
		filepath.Dir(runRoot), runRoot} {
		st, err := os.Stat(d)
		if err != nil || !st.IsDir() || st.Mode().Perm() != 0o755 {
			t.Fatalf("directory %s: %v %v", d, st.Mode(), err)
		}
	}
	if _, err := (&kernel.Kernel{Dir: kdir}).Vmlinux(t.Context()); err != nil {
		t.Fatalf("vmlinux: %v", err)
	}

	step("setup again", in(args...), 0)
	step("dry run after setup", in(append(args, "--dry-run")...), 0)
	j := step("setup again, JSON", in(append([]string{"-o", "json"}, args...)...), 0)
	var res volar.SetupResult
	if err := json.Unmarshal([]byte(j.Stdout), &res); err != nil {
		t.Fatal(err)
	}
	if res.Changed || !res.Ready || res.Network == nil || res.Network.Bridge != "vbr0" || res.Hypervisor == "" {
		t.Fatalf("JSON result: %+v", res)
	}
	q := step("setup again, quiet", in(append([]string{"-q"}, args...)...), 0)
	if q.Stdout != "" {
		t.Fatalf("quiet setup that changed nothing printed %q", q.Stdout)
	}

	// --systemd: the embedded units, written only when they differ.
	units := filepath.Join(root, "units")
	sd := append(append([]string{}, args...), "--systemd", "--systemd-dir", units)
	step("setup --systemd, dry run", in(append(sd, "--dry-run")...), 0)
	if _, err := os.Stat(units); err == nil {
		t.Fatal("--dry-run wrote units")
	}
	step("setup --systemd", in(sd...), 0)
	entries, _ := fs.ReadDir(systemd.Units, ".")
	if len(entries) != 3 {
		t.Fatalf("embedded units: %v", entries)
	}
	for _, e := range entries {
		want, _ := fs.ReadFile(systemd.Units, e.Name())
		got, err := os.ReadFile(filepath.Join(units, e.Name()))
		if err != nil || string(got) != string(want) {
			t.Fatalf("unit %s not installed as embedded: %v", e.Name(), err)
		}
	}
	os.WriteFile(filepath.Join(units, "volantd.service"), []byte("# edited\n"), 0o644)
	r0 := step("setup --systemd again, one unit edited", in(sd...), 0)
	if strings.Count(r0.Stdout, "unit        changed") != 1 {
		t.Fatalf("only the edited unit should change:\n%s", r0.Stdout)
	}

	// No kernel: directories and network are still done; the summary
	// says what is missing and how to get it; exit 1.
	noKernel := t.TempDir()
	r := step("setup without a kernel", in("setup", "--nat", "--data-dir", data, "--run-root", runRoot, "--kernel", noKernel), 1)
	if !strings.Contains(r.Stdout, "kernel      missing") || !strings.Contains(r.Stderr, "NOT_FOUND") ||
		!strings.Contains(r.Stdout, "make kernel") {
		t.Fatalf("missing kernel: %s", r)
	}
	clitest.Golden(t, "setup", strings.ReplaceAll(all.String(), noKernel, "$NOKERNEL"))
}
