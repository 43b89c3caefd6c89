package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/testutil/wait"
)

// TestVMDeploymentSecrets boots a deployment's replicas as real guests
// (QEMU TCG, Debian's kernel, kestrel as PID 1, busybox) through volantd in
// a network namespace of the test's own: 2 replicas of a plugin whose
// manifest names a variable and a file as secrets (secretsPlugin), created
// by volar with --secret-env and --secret-file. Each replica's workload
// finds both (read through the guest by exec); the values are nowhere else
// the test can look: any host process's argv (the hypervisors' with the
// kernel command line), the environment of the namespace's processes, the
// guests' /proc/cmdline, volar's answer, volantd's answers (the
// deployments, the VM list, each VM), the event log, volantd's log, and any
// file of the data directory (the state database, the serial, launch and
// workload logs) or of the run directories. Only each running replica's
// inputs file (0600) holds them. A scale-up to 3 gives the new replica the
// same inputs; deleting the deployment removes every inputs file.
func TestVMDeploymentSecrets(t *testing.T) {
	h := newQEMUHost(t)
	volar := guesttest.Command(t, "volar")
	data, run, inputs := filepath.Join(h.dir, "data"), filepath.Join(h.dir, "run"), filepath.Join(h.dir, "inputs")
	d := h.daemon(t)
	ctx := context.Background()
	p := secretsPlugin("dsec")
	p.Health = "/index.html" // running: the workload has written what it found
	if _, err := d.c.InstallPlugin(ctx, p.manifest(t, filepath.Join(data, "plugins", "dsec"), h.k.ModulesDir, h.kestrel), client.InstallOptions{}); err != nil {
		t.Fatal(err)
	}

	token, fileSecret := newSecret(), newSecret()
	secrets := secretForms(token, fileSecret)
	tokFile, secFile := filepath.Join(h.dir, "token"), filepath.Join(h.dir, "secret")
	os.WriteFile(tokFile, []byte(token+"\n"), 0o600)
	os.WriteFile(secFile, []byte(fileSecret), 0o600)
	t0 := time.Now()
	created, err := exec.Command(volar, "-H", d.sock, "-o", "json", "deployments", "create", "dsec", "--plugin", "dsec", "--replicas", "2",
		"--secret-env", "TOKEN=@"+tokFile, "--secret-file", "/etc/app/secret="+secFile).Output()
	if err != nil {
		t.Fatalf("volar deployments create: %v %s", err, created)
	}
	waitCurrent(t, d.c, "dsec", 2, 240*time.Second)

	// What each replica shows; the places where the values must not be
	// gather as the test goes.
	places := map[string][]byte{"volar's answer": created}
	want := secretSums(token, fileSecret)
	replica := func(name string) {
		t.Helper()
		var res *api.ExecResult
		var err error
		if wait.For(60*time.Second, func() bool {
			res, err = d.c.Exec(ctx, name, api.ExecRequest{Command: []string{"cat", "/www/env.txt", "/www/file.txt"}})
			return err == nil && res.ExitCode == 0
		}) != nil {
			t.Fatalf("%s: reading what the workload found: %+v %v", name, res, err)
		}
		if got := strings.Fields(res.Stdout); len(got) != 2 || got[0] != want["env.txt"] || got[1] != want["file.txt"] {
			serial, _ := os.ReadFile(filepath.Join(data, "vms", name, "serial.log"))
			t.Logf("%s's serial log:\n%s", name, tail(string(serial), 30))
			t.Fatalf("%s's workload found the sha256s %q, want env %s and file %s", name, got, want["env.txt"], want["file.txt"])
		}
		res, err = d.c.Exec(ctx, name, api.ExecRequest{Command: []string{"cat", "/proc/cmdline"}})
		if err != nil || res.ExitCode != 0 || !strings.Contains(res.Stdout, "console=") {
			t.Fatalf("%s's kernel command line: %+v %v", name, res, err)
		}
		places[name+"'s /proc/cmdline"] = []byte(res.Stdout)
		v, err := d.c.VM(ctx, name)
		if err != nil || v.Inputs == nil || !slices.Equal(v.Inputs.Env, []string{"TOKEN"}) || !slices.Equal(v.Inputs.Files, []string{"/etc/app/secret"}) {
			t.Fatalf("%s does not name its inputs: %+v %v", name, v, err)
		}
		argv, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", v.PID))
		if err != nil || !strings.Contains(string(argv), "-append\x00") {
			t.Fatalf("%s's hypervisor (pid %d): argv %q %v", name, v.PID, argv, err)
		}
		places[name+"'s hypervisor argv"] = argv
		for _, f := range []string{"serial.log", "launch.log", "spec.json"} {
			b, err := os.ReadFile(filepath.Join(data, "vms", name, f))
			if err != nil || len(b) == 0 {
				t.Fatalf("%s's %s: %d bytes, %v", name, f, len(b), err)
			}
			places[name+"'s "+f] = b
		}
		// Its inputs in clear, for its run only: the one place that holds
		// the values, in the forms the test looks for.
		in := filepath.Join(inputs, name+".json")
		b, err := os.ReadFile(in)
		st, serr := os.Stat(in)
		if err != nil || serr != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s's inputs file: %v %v %v", name, st, err, serr)
		}
		if s := string(b); !strings.Contains(s, token) || !strings.Contains(s, base64.StdEncoding.EncodeToString([]byte(fileSecret))) {
			t.Fatalf("%s's inputs file holds neither the variable as given nor the file in base64: the test looks for the wrong forms", name)
		}
	}
	// everywhere checks the places gathered so far and those of the moment.
	everywhere := func(dirs ...string) {
		t.Helper()
		all := map[string][]byte{}
		for k, v := range places {
			all[k] = v
		}
		argvs := addArgvs(all)
		for _, pid := range h.ns.Pids() {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid)); err == nil {
				all[fmt.Sprintf("environ of %d in the namespace", pid)] = b
			}
		}
		gets := []string{"/api/v1/deployments", "/api/v1/vms"}
		if _, err := d.c.Deployment(ctx, "dsec"); err == nil {
			gets = append(gets, "/api/v1/deployments/dsec")
		}
		vms, err := d.c.ListVMs(ctx, api.VMFilter{Deployment: "dsec"})
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vms {
			gets = append(gets, "/api/v1/vms/"+v.Name)
		}
		for _, p := range gets {
			b, err := rawGet(d.sock, p)
			if err != nil {
				t.Fatal(err)
			}
			all["GET "+p] = b
		}
		if b := all["GET /api/v1/deployments/dsec"]; b != nil && !strings.Contains(string(b), `"TOKEN"`) {
			t.Errorf("the deployment's answer does not name its input TOKEN: %s", b)
		}
		events, n := eventLog(t, d.c)
		all["events"] = []byte(events)
		log, err := os.ReadFile(d.log)
		if err != nil {
			t.Fatal(err)
		}
		all["volantd's log"] = log
		secretsNotIn(t, all, secrets)
		t.Logf("looked for the secrets in %d places (%d argvs, %d events, %d VMs' answers)", len(all), argvs, n, len(vms))
		secretsAbsent(t, secrets, append([]string{data, run}, dirs...)...)
	}
	for _, name := range []string{"dsec-1", "dsec-2"} {
		replica(name)
	}
	t.Logf("2 replicas received their secrets %s after the create", time.Since(t0).Round(time.Millisecond))
	everywhere()

	// A scale-up: the new replica gets the same inputs.
	t0 = time.Now()
	if _, err := d.c.ScaleDeployment(ctx, "dsec", 3); err != nil {
		t.Fatal(err)
	}
	waitCurrent(t, d.c, "dsec", 3, 180*time.Second)
	replica("dsec-3")
	t.Logf("the third replica received them %s after the scale-up", time.Since(t0).Round(time.Millisecond))
	everywhere()

	// Deleting the deployment removes every replica's inputs in clear.
	if _, err := d.c.DeleteDeployment(ctx, "dsec"); err != nil {
		t.Fatal(err)
	}
	left, err := os.ReadDir(inputs)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, e := range left {
		t.Errorf("the inputs in clear after deleting the deployment: %s", e.Name())
	}
	everywhere(inputs)
}
