package controller_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/manifest"
)

// TestCreateVMWorkload: a VM's command, args, env, workdir and restart
// change the manifest it boots (with Docker's and Kubernetes' meaning of
// command and args), its labels select it, and its inputs go to a file of
// its own (0600) that the launch spec names: never into the spec's
// manifest, the database or an answer.
func TestCreateVMWorkload(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controller()
	art := filepath.Join(f.dir, "plugins", "app.img")
	os.MkdirAll(filepath.Dir(art), 0o755)
	os.WriteFile(art, []byte("app"), 0o644)
	sum := sha256.Sum256([]byte("app"))
	labels, _ := json.Marshal(manifest.CommandLabels([]string{"/bin/app"}, []string{"--serve"}))
	m := fmt.Sprintf(`{"name":"app","version":"1","initramfs":{"url":%q,"checksum":"sha256:%s"},
		"workload":{"entrypoint":["/bin/app","--serve"],"env":{"A":"1","B":"2"}},"labels":%s}`, art, hex.EncodeToString(sum[:]), labels)
	if _, err := c.InstallPlugin(f.ctx, []byte(m), false); err != nil {
		t.Fatal(err)
	}
	secret := "s3cr3t-value"
	vm, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "pod-1", Plugin: "app",
		Workload: &api.WorkloadOverride{Args: []string{"--port", "90"}, Env: map[string]string{"B": "3"}, Workdir: "/srv", Restart: "always"},
		Labels:   map[string]string{"volant.dev/pod-uid": "1234", "app": "web"},
		Inputs: &api.Inputs{Env: map[string]string{"TOKEN": secret},
			Files: []api.InputFile{{Path: "/etc/secret/token", Mode: 0o400, Data: []byte(secret)}}, Dirs: []string{"/cache"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if vm.Labels["volant.dev/pod-uid"] != "1234" || vm.Workload == nil || strings.Join(vm.Workload.Args, " ") != "--port 90" ||
		vm.Inputs == nil || strings.Join(vm.Inputs.Env, ",") != "TOKEN" || strings.Join(vm.Inputs.Files, ",") != "/etc/secret/token" {
		t.Fatalf("answer %+v workload %+v inputs %+v", vm, vm.Workload, vm.Inputs)
	}
	b, _ := json.Marshal(vm)
	if strings.Contains(string(b), secret) {
		t.Fatalf("the answer holds the secret: %s", b)
	}

	var spec launch.Spec
	data, err := os.ReadFile(c.SpecPath("pod-1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), secret) {
		t.Fatal("the launch spec holds the secret")
	}
	got, err := manifest.Parse(spec.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	w := got.Workload
	if strings.Join(w.Entrypoint, " ") != "/bin/app --port 90" || w.Env["A"] != "1" || w.Env["B"] != "3" || w.Workdir != "/srv" || w.Restart != "always" {
		t.Fatalf("the VM's manifest workload %+v", w)
	}
	if spec.InputsFile != c.InputsPath("pod-1") {
		t.Fatalf("inputs file %q, want %q", spec.InputsFile, c.InputsPath("pod-1"))
	}
	st, err := os.Stat(spec.InputsFile)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("inputs file: %v %v", st, err)
	}
	var in api.Inputs
	raw, _ := os.ReadFile(spec.InputsFile)
	if err := json.Unmarshal(raw, &in); err != nil || in.Env["TOKEN"] != secret || string(in.Files[0].Data) != secret || in.Dirs[0] != "/cache" {
		t.Fatalf("inputs %+v %v", in, err)
	}
	// Nowhere in the database.
	db, _ := os.ReadFile(filepath.Join(f.dir, "volant.db"))
	wal, _ := os.ReadFile(filepath.Join(f.dir, "volant.db-wal"))
	if strings.Contains(string(db)+string(wal), secret) {
		t.Fatal("the database holds the secret")
	}

	// command replaces the image's Entrypoint and Cmd.
	if _, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "pod-2", Plugin: "app", Workload: &api.WorkloadOverride{Command: []string{"/bin/sh"}}}); err != nil {
		t.Fatal(err)
	}
	data, _ = os.ReadFile(c.SpecPath("pod-2"))
	var spec2 launch.Spec
	json.Unmarshal(data, &spec2)
	if got, _ := manifest.Parse(spec2.Manifest); strings.Join(got.Workload.Entrypoint, " ") != "/bin/sh" || spec2.InputsFile != "" {
		t.Fatalf("command: %+v inputs %q", got.Workload, spec2.InputsFile)
	}

	// Labels select.
	for _, tc := range []struct {
		label, want string
	}{{"app=web", "pod-1"}, {"volant.dev/pod-uid=1234", "pod-1"}, {"app=other", ""}, {"volant.dev/pod-uid=", ""}} {
		vms, err := c.ListVMs(f.ctx, api.VMFilter{Label: tc.label})
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, v := range vms {
			names = append(names, v.Name)
		}
		if strings.Join(names, ",") != tc.want {
			t.Errorf("label %s: %v, want %q", tc.label, names, tc.want)
		}
	}
	if _, err := c.ListVMs(f.ctx, api.VMFilter{Label: "novalue"}); !apierr.Is(err, apierr.InvalidInput) {
		t.Errorf("label without =: %v", err)
	}

	// Deleted: the inputs go with the VM.
	if _, err := c.DeleteVM(f.ctx, "pod-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.InputsPath("pod-1")); !os.IsNotExist(err) {
		t.Fatalf("inputs left after delete: %v", err)
	}
}

// TestCreateVMWorkloadRefusals: bad overrides, labels and inputs fail
// before anything is made.
func TestCreateVMWorkloadRefusals(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controller()
	f.plugin(c, "app")
	big := make([]byte, 1<<20+1)
	for _, tc := range []struct {
		name string
		req  api.CreateVMRequest
		code apierr.Code
	}{
		{"restart", api.CreateVMRequest{Workload: &api.WorkloadOverride{Restart: "sometimes"}}, apierr.InvalidInput},
		{"env name", api.CreateVMRequest{Workload: &api.WorkloadOverride{Env: map[string]string{"A=B": "x"}}}, apierr.InvalidInput},
		{"workdir", api.CreateVMRequest{Workload: &api.WorkloadOverride{Workdir: "srv"}}, apierr.InvalidInput},
		{"label key", api.CreateVMRequest{Labels: map[string]string{"bad key": "x"}}, apierr.InvalidInput},
		{"relative file", api.CreateVMRequest{Inputs: &api.Inputs{Files: []api.InputFile{{Path: "etc/x"}}}}, apierr.InvalidInput},
		{"dotdot file", api.CreateVMRequest{Inputs: &api.Inputs{Files: []api.InputFile{{Path: "/etc/../x"}}}}, apierr.InvalidInput},
		{"twice", api.CreateVMRequest{Inputs: &api.Inputs{Files: []api.InputFile{{Path: "/x"}}, Dirs: []string{"/x"}}}, apierr.InvalidInput},
		{"mode", api.CreateVMRequest{Inputs: &api.Inputs{Files: []api.InputFile{{Path: "/x", Mode: 0o170000}}}}, apierr.InvalidInput},
		{"too big", api.CreateVMRequest{Inputs: &api.Inputs{Files: []api.InputFile{{Path: "/x", Data: big}}}}, apierr.TooLarge},
		{"snapshot", api.CreateVMRequest{FromSnapshot: "snap", Workload: &api.WorkloadOverride{Args: []string{"x"}}}, apierr.InvalidInput},
	} {
		tc.req.Name, tc.req.Plugin = "bad", "app"
		if _, err := c.CreateVM(f.ctx, tc.req); !apierr.Is(err, tc.code) {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.code)
		}
	}
	if _, err := os.Stat(filepath.Join(f.dir, "vms", "bad")); !os.IsNotExist(err) {
		t.Fatalf("a refused create left %v", err)
	}
}
