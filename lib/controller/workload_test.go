package controller_test

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/store"
	"github.com/volantvm/volant/lib/testutil/wait"

	_ "github.com/mattn/go-sqlite3"
)

// TestCreateVMWorkload: a VM's command, args, env, workdir and restart
// change the manifest it boots (with Docker's and Kubernetes' meaning of
// command and args), its labels select it, and its inputs are sealed in
// the database and in clear only in a file of the run's (0600, in a 0700
// directory apart from the data directory) that the launch spec names,
// from a start until a stop: never in the spec's manifest, the data
// directory, the database in clear or an answer.
func TestCreateVMWorkload(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controller()
	art, sum := localArtifact(f.dir, "app.img", "app")
	labels, _ := json.Marshal(manifest.CommandLabels([]string{"/bin/app"}, []string{"--serve"}))
	m := fmt.Sprintf(`{"name":"app","version":"1","initramfs":{"url":%q,"checksum":"sha256:%s"},
		"workload":{"entrypoint":["/bin/app","--serve"],"env":{"A":"1","B":"2"}},"labels":%s}`, art, sum, labels)
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
	if spec.InputsFile != c.InputsPath("pod-1") || !strings.HasPrefix(spec.InputsFile, f.run+"/") {
		t.Fatalf("inputs file %q, want %q in %s", spec.InputsFile, c.InputsPath("pod-1"), f.run)
	}
	checkMode(t, spec.InputsFile, 0o600)
	checkMode(t, f.run, 0o700)
	checkMode(t, c.SecretsKeyPath(), 0o600)
	var in api.Inputs
	raw, _ := os.ReadFile(spec.InputsFile)
	if err := json.Unmarshal(raw, &in); err != nil || in.Env["TOKEN"] != secret || string(in.Files[0].Data) != secret || in.Dirs[0] != "/cache" {
		t.Fatalf("inputs %+v %v", in, err)
	}
	// Sealed in the database; in clear nowhere in the data directory.
	if n := sealedRows(t, f, "pod-1"); n != 1 {
		t.Fatalf("%d sealed inputs rows for pod-1", n)
	}
	noSecretIn(t, f.dir, secret)

	// Stopped: the clear copy goes; started: it comes back from the
	// sealed row, the same.
	if _, err := c.StopVM(f.ctx, "pod-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(spec.InputsFile); !os.IsNotExist(err) {
		t.Fatalf("inputs in clear after a stop: %v", err)
	}
	if _, err := c.StartVM(f.ctx, "pod-1"); err != nil {
		t.Fatal(err)
	}
	if again, err := os.ReadFile(spec.InputsFile); err != nil || string(again) != string(raw) {
		t.Fatalf("inputs after a start: %q %v", again, err)
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
	if n := sealedRows(t, f, "pod-1"); n != 0 {
		t.Fatalf("%d sealed inputs rows left after delete", n)
	}
}

func checkMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != want {
		t.Fatalf("%s: %v %v, want mode %#o", path, st, err, want)
	}
}

// sealedRows counts a VM's rows in vm_inputs.
func sealedRows(t *testing.T, f *fixture, vm string) int {
	t.Helper()
	var n int
	err := f.st.Read(f.ctx, func(tx *sql.Tx) error {
		return tx.QueryRow(`SELECT count(*) FROM vm_inputs WHERE vm = ?`, vm).Scan(&n)
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// noSecretIn fails when any file under dir (the database and its WAL
// with them) holds secret.
func noSecretIn(t *testing.T, dir, secret string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		n++
		if bytes.Contains(b, []byte(secret)) {
			t.Errorf("%s holds the secret", p)
		}
		return nil
	})
	if err != nil || n == 0 {
		t.Fatalf("walking %s: %v (%d files)", dir, err, n)
	}
}

// TestInputsSealedAcrossRestart: a VM's inputs come back from the sealed
// row after a restart, when its clear copy is gone (a host reboot empties
// /run); a stale clear copy of a VM that does not run is removed; a
// changed sealed row or another key refuses the start (DATA_CORRUPT)
// instead of handing the guest something else.
func TestInputsSealedAcrossRestart(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controller()
	f.plugin(c, "app")
	secret := "s3cr3t-restart"
	in := &api.Inputs{Env: map[string]string{"TOKEN": secret}}
	if _, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "a", Plugin: "app", Inputs: in}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "b", Plugin: "app", Inputs: in}); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(c.InputsPath("a"))
	if _, err := c.StopVM(f.ctx, "b"); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(c.InputsPath("b"), want, 0o600) // left by a crash mid-stop
	os.RemoveAll(f.run)                          // the host rebooted
	f.rt.Kill("a", nil)
	c2, _ := f.controller()
	if err := wait.For(5*time.Second, func() bool {
		v, err := c2.VM(f.ctx, "a")
		return err == nil && v.State == api.VMCrashed
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.StartVM(f.ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(c2.InputsPath("a")); err != nil || string(got) != string(want) {
		t.Fatalf("inputs after a restart: %q %v", got, err)
	}
	os.WriteFile(c.InputsPath("b"), want, 0o600)
	c3, _ := f.controller()
	if _, err := os.Stat(c3.InputsPath("b")); !os.IsNotExist(err) {
		t.Fatalf("a stopped VM's inputs in clear after a restart: %v", err)
	}
	noSecretIn(t, f.dir, secret)

	// A changed byte: the start is refused.
	if _, err := c3.StopVM(f.ctx, "a"); err != nil {
		t.Fatal(err)
	}
	err := f.st.Tx(f.ctx, func(tx *sql.Tx) error {
		var b []byte
		if err := tx.QueryRow(`SELECT sealed FROM vm_inputs WHERE vm = 'a'`).Scan(&b); err != nil {
			return err
		}
		b[len(b)/2] ^= 1
		_, err := tx.Exec(`UPDATE vm_inputs SET sealed = ? WHERE vm = 'a'`, b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c3.StartVM(f.ctx, "a"); !apierr.Is(err, apierr.DataCorrupt) {
		t.Fatalf("a start with changed inputs: %v", err)
	}
	// Another key: refused too, naming the key.
	os.Remove(c3.SecretsKeyPath())
	c4, _ := f.controller()
	if _, err := c4.StartVM(f.ctx, "b"); !apierr.Is(err, apierr.DataCorrupt) || !strings.Contains(err.Error(), "key") {
		t.Fatalf("a start under another key: %v", err)
	}
}

// TestLegacyInputsSealed: a database from before schema 9, whose VM's
// inputs an earlier volantd kept in clear in <data>/vms/<name>/inputs.json,
// is migrated, and the next volantd seals the inputs into it and removes
// the file; the VM starts with the same inputs.
func TestLegacyInputsSealed(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controller()
	f.plugin(c, "app")
	secret := "s3cr3t-legacy"
	in := &api.Inputs{Env: map[string]string{"TOKEN": secret}, Files: []api.InputFile{{Path: "/etc/k", Mode: 0o400, Data: []byte(secret)}}}
	if _, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "old", Plugin: "app", Inputs: in}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StopVM(f.ctx, "old"); err != nil {
		t.Fatal(err)
	}
	f.st.Close()
	// Make it the database and data directory a schema-8 volantd left.
	path := filepath.Join(f.dir, "volant.db")
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`DROP TABLE deployment_inputs`, `DROP TABLE vm_inputs`, `PRAGMA user_version = 8`} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	os.Remove(filepath.Join(f.dir, "secrets.key"))
	legacy := filepath.Join(f.dir, "vms", "old", "inputs.json")
	b, _ := json.Marshal(in)
	os.WriteFile(legacy, b, 0o600)

	st, err := store.Open(f.ctx, path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f.st = st
	c2, rep := f.controller()
	if strings.Join(rep.SealedInputs, ",") != "old" {
		t.Fatalf("sealed: %v", rep.SealedInputs)
	}
	if _, err := os.Stat(legacy); !os.IsNotExist(err) {
		t.Fatalf("the clear inputs file is still there: %v", err)
	}
	if n := sealedRows(t, f, "old"); n != 1 {
		t.Fatalf("%d sealed rows", n)
	}
	noSecretIn(t, f.dir, secret)
	if _, err := c2.StartVM(f.ctx, "old"); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(c2.InputsPath("old"))
	var gin api.Inputs
	if err := json.Unmarshal(got, &gin); err != nil || gin.Env["TOKEN"] != secret || string(gin.Files[0].Data) != secret {
		t.Fatalf("inputs after the migration: %s %v", got, err)
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
		{"long file", api.CreateVMRequest{Inputs: &api.Inputs{Files: []api.InputFile{{Path: "/" + strings.Repeat("x", manifest.MaxGuestPath)}}}}, apierr.InvalidInput},
		{"long dir", api.CreateVMRequest{Inputs: &api.Inputs{Dirs: []string{"/" + strings.Repeat("x", manifest.MaxGuestPath)}}}, apierr.InvalidInput},
		{"tab in file", api.CreateVMRequest{Inputs: &api.Inputs{Files: []api.InputFile{{Path: "/etc/a\tb"}}}}, apierr.InvalidInput},
		{"newline in dir", api.CreateVMRequest{Inputs: &api.Inputs{Dirs: []string{"/srv/a\nb"}}}, apierr.InvalidInput},
		{"newline in workdir", api.CreateVMRequest{Workload: &api.WorkloadOverride{Workdir: "/srv\n"}}, apierr.InvalidInput},
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

// TestPluginSecretsRequired: a plugin whose manifest names secrets gets a
// VM only from a create request whose inputs give them all; a request
// short of one is SECRET_MISSING, naming what is missing (never a value),
// and leaves nothing behind. A deployment must give them as well: its
// replicas get them, each sealed in a row of its own; a rolling update to
// such a plugin from a deployment without them is refused.
func TestPluginSecretsRequired(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controller()
	art, sum := localArtifact(f.dir, "db.img", "db")
	m := fmt.Sprintf(`{"name":"db","version":"1","initramfs":{"url":%q,"checksum":"sha256:%s"},"workload":{"entrypoint":["/db"]},
		"secrets":{"env":["DB_PASSWORD"],"files":["/etc/db/tls.key"]}}`, art, sum)
	p, err := c.InstallPlugin(f.ctx, []byte(m), false)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(p); !strings.Contains(string(b), `"secrets":{"env":["DB_PASSWORD"],"files":["/etc/db/tls.key"]}`) {
		t.Fatalf("the plugin's answer does not name its secrets: %s", b)
	}
	f.plugin(c, "plain")

	secret := "pw-s3cr3t"
	for _, tc := range []struct {
		in                *api.Inputs
		wantEnv, wantFile string
	}{
		{nil, "DB_PASSWORD", "/etc/db/tls.key"},
		{&api.Inputs{Env: map[string]string{"DB_PASSWORD": secret}}, "", "/etc/db/tls.key"},
		{&api.Inputs{Env: map[string]string{"OTHER": secret}, Files: []api.InputFile{{Path: "/etc/db/tls.key", Data: []byte(secret)}}}, "DB_PASSWORD", ""},
	} {
		_, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "db1", Plugin: "db", Inputs: tc.in})
		var e *apierr.Error
		if !errors.As(err, &e) || e.Code != apierr.SecretMissing {
			t.Fatalf("inputs %+v: %v, want SECRET_MISSING", tc.in, err)
		}
		b, _ := json.Marshal(e)
		if strings.Contains(string(b), secret) {
			t.Fatalf("the error holds a value: %s", b)
		}
		gotEnv, _ := json.Marshal(e.Details["missing_env"])
		gotFile, _ := json.Marshal(e.Details["missing_files"])
		wantEnv, wantFile := "null", "null"
		if tc.wantEnv != "" {
			wantEnv = `["` + tc.wantEnv + `"]`
		}
		if tc.wantFile != "" {
			wantFile = `["` + tc.wantFile + `"]`
		}
		if string(gotEnv) != wantEnv || string(gotFile) != wantFile {
			t.Fatalf("inputs %+v: missing %s %s, want %s %s", tc.in, gotEnv, gotFile, wantEnv, wantFile)
		}
		if _, err := c.VM(f.ctx, "db1"); !apierr.Is(err, apierr.NotFound) {
			t.Fatalf("a refused create left a VM: %v", err)
		}
		if n := sealedRows(t, f, "db1"); n != 0 {
			t.Fatalf("a refused create left sealed inputs")
		}
	}
	ents, _ := os.ReadDir(f.run)
	if len(ents) != 0 {
		t.Fatalf("a refused create left inputs in clear: %v", ents)
	}

	// Given all, it is made.
	in := &api.Inputs{Env: map[string]string{"DB_PASSWORD": secret}, Files: []api.InputFile{{Path: "/etc/db/tls.key", Mode: 0o400, Data: []byte(secret)}}}
	if _, err := c.CreateVM(f.ctx, api.CreateVMRequest{Name: "db1", Plugin: "db", Inputs: in}); err != nil {
		t.Fatal(err)
	}

	// A deployment must give them too; its replicas get them, each
	// sealed in its own row; the deployment's answer names them.
	_, err = c.CreateDeployment(f.ctx, api.CreateDeploymentRequest{Name: "dbs", Plugin: "db", Replicas: 1,
		Inputs: &api.Inputs{Env: map[string]string{"DB_PASSWORD": secret}}})
	if !apierr.Is(err, apierr.SecretMissing) || !strings.Contains(err.Error(), "/etc/db/tls.key") {
		t.Fatalf("a deployment short of a secret: %v", err)
	}
	if _, err := c.Deployment(f.ctx, "dbs"); !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("a refused deployment was made: %v", err)
	}
	d, err := c.CreateDeployment(f.ctx, api.CreateDeploymentRequest{Name: "dbs", Plugin: "db", Replicas: 2, Inputs: in})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(d); strings.Contains(string(b), secret) || d.Inputs == nil || strings.Join(d.Inputs.Env, ",") != "DB_PASSWORD" {
		t.Fatalf("the deployment's answer: %s", b)
	}
	want, _ := json.Marshal(in)
	for _, r := range []string{"dbs-1", "dbs-2"} {
		// The clear file is written before the replica's row (with its
		// sealed inputs) commits: wait for both.
		if err := wait.For(10*time.Second, func() bool {
			got, err := os.ReadFile(c.InputsPath(r))
			return err == nil && string(got) == string(want) && sealedRows(t, f, r) == 1
		}); err != nil {
			t.Fatalf("replica %s's inputs: %v (%d sealed rows)", r, err, sealedRows(t, f, r))
		}
	}
	noSecretIn(t, f.dir, secret)
	if _, err := c.DeleteDeployment(f.ctx, "dbs"); err != nil {
		t.Fatal(err)
	}
	var left int
	f.st.Read(f.ctx, func(tx *sql.Tx) error {
		return tx.QueryRow(`SELECT count(*) FROM deployment_inputs`).Scan(&left)
	})
	if left != 0 {
		t.Fatalf("%d deployment inputs rows after the delete", left)
	}

	// An update to a plugin that names secrets the deployment lacks.
	if _, err := c.CreateDeployment(f.ctx, api.CreateDeploymentRequest{Name: "plains", Plugin: "plain", Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.UpdateDeployment(f.ctx, "plains", api.UpdateDeploymentRequest{Plugin: "db"}); !apierr.Is(err, apierr.SecretMissing) {
		t.Fatalf("an update to a plugin with secrets: %v", err)
	}
}
