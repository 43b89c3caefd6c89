package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/client"
)

// webPlugin builds an initramfs plugin with fledge: kestrel as PID 1 with
// the guest kernel's modules, busybox httpd as the workload, a health check
// on its index page, built into out (a directory volantd takes artifacts
// from). It returns the manifest fledge wrote.
func webPlugin(t testing.TB, out, modulesDir, kestrel string) []byte {
	t.Helper()
	return webPluginProbed(t, out, modulesDir, kestrel, 500)
}

// webPluginProbed is webPlugin with kestrel's health check every intervalMS.
func webPluginProbed(t testing.TB, out, modulesDir, kestrel string, intervalMS int) []byte {
	t.Helper()
	return webPluginRunning(t, out, modulesDir, kestrel, intervalMS, httpdWWW)
}

// webPluginRunning is webPluginProbed whose workload is entrypoint (a TOML
// array), which must end up serving /www on port 80 as httpd does.
func webPluginRunning(t testing.TB, out, modulesDir, kestrel string, intervalMS int, entrypoint string) []byte {
	t.Helper()
	return guestPlugin{Name: "web", Entrypoint: entrypoint, Health: "/index.html", IntervalMS: intervalMS,
		Files: map[string]string{"index.html": "hello from volant\n"}}.manifest(t, out, modulesDir, kestrel)
}

// TestVMControlPlane boots real guests (QEMU TCG, Debian's kernel, our
// kestrel; the plugin built by fledge) through volantd in a test-made network namespace: a VM becomes
// running once its health check passes and answers HTTP on its address; a
// deployment scales 1→3→1, and a replica whose hypervisor is killed is
// recreated.
func TestVMControlPlane(t *testing.T) {
	h := newQEMUHost(t)
	k, kestrel := h.k, h.kestrel
	d := h.daemon(t)
	ctx := context.Background()
	if _, err := d.c.InstallPlugin(ctx, webPlugin(t, filepath.Join(h.dir, "data", "plugins", "web"), k.ModulesDir, kestrel), client.InstallOptions{}); err != nil {
		t.Fatal(err)
	}

	// One VM: starting, then running once kestrel's health check passes.
	t0 := time.Now()
	vm, err := d.c.CreateVM(ctx, api.CreateVMRequest{Name: "web1", Plugin: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if vm.IP == "" || vm.PID == 0 {
		t.Fatalf("created %+v", vm)
	}
	t.Logf("create answered in %s: %s %s pid %d", time.Since(t0).Round(time.Millisecond), vm.State, vm.IP, vm.PID)
	vm, err = d.c.WaitVM(ctx, "web1", api.VMRunning, 120*time.Second)
	if err != nil {
		t.Fatalf("web1 never ran: %v", err)
	}
	t.Logf("web1 running %s after create (health %s, agent %s)", time.Since(t0).Round(time.Millisecond), vm.Health, vm.Agent.Agent)
	// Its hypervisor runs in its jail (lib/vmm/jail), as GET shows: a uid
	// of its own, which its process has, and a cgroup.
	if vm, err = d.c.VM(ctx, "web1"); err != nil || vm.Jail == nil || vm.Jail.Insecure || vm.Jail.UID == 0 || vm.Jail.Cgroup == "" {
		t.Fatalf("web1's jail: %+v %v", vm, err)
	}
	if st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", vm.PID)); !strings.Contains(string(st), fmt.Sprintf("Uid:\t%d\t", vm.Jail.UID)) {
		t.Fatalf("web1's hypervisor (pid %d) does not run as uid %d:\n%s", vm.PID, vm.Jail.UID, st)
	}
	body, err := fetch(h.fakeHost, "http://"+vm.IP+"/index.html")
	if err != nil || body != "hello from volant\n" {
		t.Fatalf("GET http://%s/index.html: %q %v", vm.IP, body, err)
	}
	// Through kestrel's proxy too.
	if body, err := fetch(h.fakeHost, "http://"+vm.IP+":8080/v1/index.html"); err != nil || body != "hello from volant\n" {
		t.Fatalf("through kestrel's proxy: %q %v", body, err)
	}
	rc, err := d.c.VMLogs(ctx, "web1", api.LogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	logs := readAll(rc)
	if !strings.Contains(logs, "kestrel") {
		t.Fatalf("the serial log does not show kestrel: %.2000s", logs)
	}
	// kestrel's reports arrived through the agent endpoint.
	evs := collectEvents(t, d.c, "vm.healthy")
	if len(evs) == 0 {
		t.Fatal("no vm.healthy event")
	}
	if _, err := d.c.DeleteVM(ctx, "web1"); err != nil {
		t.Fatal(err)
	}

	// A deployment, 1 → 3 → 1.
	if _, err := d.c.CreateDeployment(ctx, api.CreateDeploymentRequest{Name: "svc", Plugin: "web", Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	waitCurrent(t, d.c, "svc", 1, 150*time.Second)
	if _, err := d.c.ScaleDeployment(ctx, "svc", 3); err != nil {
		t.Fatal(err)
	}
	waitCurrent(t, d.c, "svc", 3, 240*time.Second)
	replicas, _ := d.c.ListVMs(ctx, api.VMFilter{Deployment: "svc"})
	for _, v := range replicas {
		if body, err := fetch(h.fakeHost, "http://"+v.IP+"/index.html"); err != nil || body != "hello from volant\n" {
			t.Fatalf("replica %s at %s: %q %v", v.Name, v.IP, body, err)
		}
	}

	// Kill a replica's hypervisor: it crashes and is recreated.
	victim, _ := d.c.VM(ctx, "svc-2")
	if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(180 * time.Second)
	for {
		v, err := d.c.VM(ctx, "svc-2")
		if err == nil && v.State == api.VMRunning && v.PID != victim.PID {
			t.Logf("svc-2 recreated: pid %d → %d, %s", victim.PID, v.PID, v.IP)
			if body, err := fetch(h.fakeHost, "http://"+v.IP+"/index.html"); err != nil || body != "hello from volant\n" {
				t.Fatalf("recreated replica: %q %v", body, err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("svc-2 was not recreated: %+v %v", v, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	crashes := collectEvents(t, d.c, "vm.crashed")
	if len(crashes) == 0 {
		t.Fatal("no vm.crashed event")
	}
	// The crash says why, in the run's own words: volant-launch recorded
	// its error in the VM's last-error.json, where volantd read it.
	var crash struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal(crashes[0].Data, &crash); err != nil || !strings.Contains(crash.Error, "qemu exited unexpectedly") {
		t.Fatalf("vm.crashed says %q (%v); want the run's error", crash.Error, err)
	}

	// Scale down: the highest indexes go, their addresses are freed.
	if _, err := d.c.ScaleDeployment(ctx, "svc", 1); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(90 * time.Second)
	for {
		dep, err := d.c.Deployment(ctx, "svc")
		if err == nil && strings.Join(dep.VMs, ",") == "svc-1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("scale down: %+v %v", dep, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	if qemus := h.pidsOf("qemu-system-x86_64"); len(qemus) != 1 {
		t.Fatalf("%d QEMU processes after scaling to 1: %v", len(qemus), h.procs())
	}
	if _, err := d.c.DeleteDeployment(ctx, "svc"); err != nil {
		t.Fatal(err)
	}
	if qemus := h.pidsOf("qemu-system-x86_64"); len(qemus) != 0 || len(h.taps(t)) != 0 {
		t.Fatalf("after deleting everything: qemu %v taps %v", qemus, h.taps(t))
	}
}

func waitCurrent(t *testing.T, c *client.Client, name string, n int, timeout time.Duration) {
	t.Helper()
	t0 := time.Now()
	for {
		d, err := c.Deployment(context.Background(), name)
		if err == nil && d.Current == n && len(d.VMs) == n {
			t.Logf("deployment %s: %d running after %s", name, n, time.Since(t0).Round(time.Millisecond))
			return
		}
		if time.Since(t0) > timeout {
			vms, _ := c.ListVMs(context.Background(), api.VMFilter{Deployment: name})
			t.Fatalf("deployment %s did not reach %d running: %+v %v\n%+v", name, n, d, err, vms)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// collectEvents returns the logged events of a type (all of them when
// typ is "").
func collectEvents(t *testing.T, c *client.Client, typ string) []api.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h, err := c.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Events(ctx, api.EventOptions{FromStart: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var out []api.Event
	for s.LastID() < h.LastEventID {
		ev, err := s.Next()
		if err != nil {
			t.Fatal(err)
		}
		if typ == "" || ev.Type == typ {
			out = append(out, ev)
		}
	}
	return out
}

func readAll(rc interface {
	Read([]byte) (int, error)
	Close() error
}) string {
	defer rc.Close()
	var sb strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := rc.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			return sb.String()
		}
	}
}
