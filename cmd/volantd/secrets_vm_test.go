package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/signing"
	"github.com/volantvm/volant/lib/testutil/guesttest"
)

// TestVMSecrets boots a real guest (QEMU TCG) from a signed plugin under
// --require-signed whose manifest names the secrets it needs, created by
// volar with --secret-env (from a file) and --secret-file (a create short
// of one is SECRET_MISSING). The workload serves the sha256 of the variable and of the
// file it finds, which match the secrets; the secrets' values appear
// nowhere else the test can look: the hypervisor's argv (its kernel
// command line with it), every process's argv on the host, the serial
// log, the VM's spec, volantd's answers and its event log; nor in any file
// of the data directory (the state database with it, where they are
// sealed) or of the VM's run directory, and a local user other than root
// can open none of those files. After a stop and a restart of volantd,
// the VM starts again with its inputs from the sealed row.
func TestVMSecrets(t *testing.T) {
	h := newQEMUHost(t)
	volar := guesttest.Command(t, "volar")
	data := filepath.Join(h.dir, "data")

	// A signed plugin whose workload proves what it received.
	key := filepath.Join(h.dir, "key")
	kp, err := signing.WriteKeyPair(key)
	if err != nil {
		t.Fatal(err)
	}
	trusted := filepath.Join(h.dir, "trusted")
	os.MkdirAll(trusted, 0o755)
	os.WriteFile(filepath.Join(trusted, "ci.pub"), kp.Public, 0o644)
	p := secretsPlugin("sec")
	p.SignKey = key
	res := p.build(t, filepath.Join(data, "plugins", "sec"), h.k.ModulesDir, h.kestrel)
	m, _ := os.ReadFile(res.Manifest)
	sig, _ := os.ReadFile(res.Signature)

	flags := []string{"--start-timeout", "240s", "--trusted-keys", trusted, "--require-signed"}
	d := h.daemon(t, flags...)
	ctx := context.Background()
	if _, err := d.c.InstallPlugin(ctx, m, client.InstallOptions{Signature: sig}); err != nil {
		t.Fatal(err)
	}

	token, fileSecret := newSecret(), newSecret()
	secrets := secretForms(token, fileSecret)
	tokFile, secFile := filepath.Join(h.dir, "token"), filepath.Join(h.dir, "secret")
	os.WriteFile(tokFile, []byte(token+"\n"), 0o600)
	os.WriteFile(secFile, []byte(fileSecret), 0o600)
	// The manifest names the secrets (on the kernel command line: names
	// only); a create without one of them is refused before anything runs.
	var stderr strings.Builder
	cmd := exec.Command(volar, "-H", d.sock, "-o", "json", "vms", "create", "s1", "--plugin", "sec", "--secret-env", "TOKEN=@"+tokFile)
	cmd.Stderr = &stderr
	if out, err := cmd.Output(); err == nil || cmd.ProcessState.ExitCode() != 1 || // volar's status for an API error
		!strings.Contains(stderr.String(), `"code":"SECRET_MISSING"`) || !strings.Contains(stderr.String(), `"missing_files":["/etc/app/secret"]`) {
		t.Fatalf("a create without the file secret: exit %d %v %s %s", cmd.ProcessState.ExitCode(), err, out, stderr.String())
	}
	if strings.Contains(stderr.String(), token) {
		t.Fatal("the refusal holds the secret")
	}
	cmd = exec.Command(volar, "-H", d.sock, "-o", "json", "vms", "create", "s1", "--plugin", "sec",
		"--secret-env", "TOKEN=@"+tokFile, "--secret-file", "/etc/app/secret="+secFile, "--wait", "--timeout", "300s")
	created, err := cmd.Output()
	if err != nil {
		t.Fatalf("volar vms create: %v %s", err, created)
	}
	var v api.VM
	if err := json.Unmarshal(created, &v); err != nil || v.State != api.VMRunning || v.IP == "" {
		t.Fatalf("created: %v %s", err, created)
	}

	received := func() {
		t.Helper()
		for file, want := range secretSums(token, fileSecret) {
			// Running means kestrel answers; the workload's server may
			// come a moment later.
			var got string
			var err error
			for t0 := time.Now(); time.Since(t0) < 120*time.Second; time.Sleep(500 * time.Millisecond) {
				if got, err = getIn(h.ns, "http://"+v.IP+"/"+file, 10*time.Second); err == nil {
					break
				}
			}
			if err != nil || strings.TrimSpace(got) != want {
				serial, _ := os.ReadFile(filepath.Join(data, "vms", "s1", "serial.log"))
				t.Logf("serial log:\n%s", tail(string(serial), 30))
				t.Fatalf("the workload's %s: %q %v, want %s", file, got, err, want)
			}
		}
	}
	received()

	// Where the values must not be.
	places := map[string][]byte{"volar's answer": created}
	qemus := nsPids(h.ns, "qemu-system-x86_64")
	if len(qemus) == 0 {
		t.Fatal("no qemu-system-x86_64 in the namespace")
	}
	argvs := addArgvs(places)
	for _, f := range []string{"serial.log", "spec.json"} {
		b, err := os.ReadFile(filepath.Join(data, "vms", "s1", f))
		if err != nil {
			t.Fatal(err)
		}
		places[f] = b
	}
	for _, p := range []string{"/api/v1/vms/s1", "/api/v1/vms", "/api/v1/plugins"} {
		b, err := rawGet(d.sock, p)
		if err != nil {
			t.Fatal(err)
		}
		places["GET "+p] = b
	}
	events, n := eventLog(t, d.c)
	if !strings.Contains(events, "vm.created") {
		t.Fatalf("events read: %d\n%s", n, events)
	}
	places["events"] = []byte(events)
	secretsNotIn(t, places, secrets)
	t.Logf("secrets checked absent from %d places (%d argvs, %d events)", len(places), argvs, n)
	if !strings.Contains(string(places["GET /api/v1/vms/s1"]), `"TOKEN"`) {
		t.Errorf("the VM's answer does not name its input TOKEN: %s", places["GET /api/v1/vms/s1"])
	}

	// At rest: the data directory (the state database and its WAL with
	// it) and the VM's run directory hold no secret; the one clear copy
	// is the run's inputs file, 0600 in a 0700 directory of the tmpfs.
	inputs := filepath.Join(h.dir, "inputs", "s1.json")
	for _, p := range []string{inputs, filepath.Dir(inputs)} {
		st, err := os.Stat(p)
		if err != nil || st.Mode().Perm()&0o077 != 0 {
			t.Fatalf("%s: %v %v", p, st, err)
		}
	}
	secretsAbsent(t, secrets, data, filepath.Join(h.dir, "run"))
	// A local user who is not root reads none of the running VM's files
	// (its serial and workload logs, spec, disks, run directory, clear
	// inputs, the launch log) nor the database or the key; only the
	// plugins' artifacts and the caches of what they hold (manifests,
	// module scans) and of the host's TSC frequency.
	othersLockedOut(t, h.dir, []string{data, filepath.Join(h.dir, "run"), filepath.Join(h.dir, "inputs")},
		func(p string) bool {
			return strings.HasPrefix(p, filepath.Join(data, "plugins")+"/") || strings.HasPrefix(p, filepath.Join(data, "cache")+"/")
		})

	// A stop removes the clear copy; volantd restarts; the VM starts
	// again with its inputs read from the sealed row.
	if _, err := d.c.StopVM(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(inputs); !os.IsNotExist(err) {
		t.Fatalf("the inputs in clear after a stop: %v", err)
	}
	secretsAbsent(t, secrets, data, filepath.Join(h.dir, "run"), filepath.Join(h.dir, "inputs"), d.log)
	d.cmd.Process.Signal(syscall.SIGTERM)
	<-d.done
	d = h.daemon(t, flags...)
	started, err := exec.Command(volar, "-H", d.sock, "-o", "json", "vms", "start", "s1", "--wait", "--timeout", "300s").CombinedOutput()
	if err != nil {
		t.Fatalf("volar vms start after a volantd restart: %v %s", err, started)
	}
	received()
	secretsAbsent(t, secrets, data, filepath.Join(h.dir, "run"), d.log)
	if _, err := d.c.DeleteVM(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(inputs); !os.IsNotExist(err) {
		t.Fatalf("the inputs in clear after a delete: %v", err)
	}
}

// othersLockedOut opens every regular file under dirs as uid and gid
// 65534 (a local user who is neither root nor in volantd's group) and
// fails when one opens that public does not allow. The control: the
// test's own 0700 directories, top and its parent, are made traversable
// for the check, so that only the files' and volantd's directories' modes
// decide, and at least one public file must open.
func othersLockedOut(t *testing.T, top string, dirs []string, public func(string) bool) {
	t.Helper()
	for _, d := range []string{filepath.Dir(top), top} {
		st, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		os.Chmod(d, st.Mode().Perm()|0o001)
		defer os.Chmod(d, st.Mode().Perm())
	}
	var files []string
	for _, dir := range dirs {
		filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
			if err == nil && e.Type().IsRegular() {
				files = append(files, p)
			}
			return nil
		})
	}
	cmd := exec.Command("/bin/sh", append([]string{"-c", `for f; do head -c1 "$f" >/dev/null 2>&1 && echo "$f"; done; exit 0`, "sh"}, files...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("reading as uid 65534: %v", err)
	}
	opened := map[string]bool{}
	for _, f := range strings.Fields(string(out)) {
		opened[f] = true
	}
	private, control := 0, 0
	for _, f := range files {
		switch {
		case !public(f):
			private++
			if opened[f] {
				t.Errorf("uid 65534 reads %s", f)
			}
		case opened[f]:
			control++
		}
	}
	if private == 0 || control == 0 {
		t.Fatalf("%d files, %d private, %d public ones opened: nothing to compare", len(files), private, control)
	}
	t.Logf("uid 65534 opened %d of %d files, all public; %d private ones refused", len(opened), len(files), private)
}

// secretsWorkload is secretsPlugin's workload: it writes the sha256 of
// the variable TOKEN it finds and of the file /etc/app/secret (never their
// values) to /www/env.txt and /www/file.txt, then serves /www as httpd.
const secretsWorkload = `["/bin/sh", "-c", "printf %s \"$TOKEN\" | sha256sum | cut -c1-64 > /www/env.txt; sha256sum /etc/app/secret | cut -c1-64 > /www/file.txt; exec /bin/busybox httpd -f -p 80 -h /www"]`

// secretsPlugin is a plugin whose manifest names two secrets, the variable
// TOKEN and the file /etc/app/secret, and whose workload (secretsWorkload)
// shows what it received.
func secretsPlugin(name string) guestPlugin {
	return guestPlugin{Name: name, Version: "1", Entrypoint: secretsWorkload, Files: map[string]string{"index.html": "ok\n"},
		SecretEnv: []string{"TOKEN"}, SecretFiles: []string{"/etc/app/secret"}}
}

// secretSums are what secretsWorkload writes, by file in /www, when it
// received token and file.
func secretSums(token, file string) map[string]string {
	sum := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
	return map[string]string{"env.txt": sum(token), "file.txt": sum(file)}
}

// newSecret is a fresh random value.
func newSecret() string {
	b := make([]byte, 16)
	rand.Read(b)
	return "s3cr3t-" + hex.EncodeToString(b)
}

// secretForms are the secrets as given and in base64, as JSON carries a
// file's data (api.InputFile): what a leak of them would look like.
func secretForms(secrets ...string) []string {
	out := append([]string{}, secrets...)
	for _, s := range secrets {
		out = append(out, base64.StdEncoding.EncodeToString([]byte(s)))
	}
	return out
}

// secretsNotIn fails for each place that holds one of secrets.
func secretsNotIn(t *testing.T, places map[string][]byte, secrets []string) {
	t.Helper()
	for where, b := range places {
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("a secret is in %s", where)
				break
			}
		}
	}
}

// addArgvs adds every host process's argv (its /proc/PID/cmdline, the
// hypervisors' with the guests' kernel command lines) to places, and
// returns how many.
func addArgvs(places map[string][]byte) int {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	n := 0
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil {
			places["argv "+p] = b
			n++
		}
	}
	return n
}

// eventLog is volantd's event log from its start, as the event stream
// sends it, one event a line, and how many events it holds.
func eventLog(t *testing.T, c *client.Client) (string, int) {
	t.Helper()
	var all strings.Builder
	evs := collectEvents(t, c, "")
	for _, e := range evs {
		fmt.Fprintf(&all, "%s %s %s\n", e.Type, e.ResourceID, e.Data)
	}
	return all.String(), len(evs)
}

// secretsAbsent fails when a file under one of dirs holds one of secrets.
func secretsAbsent(t *testing.T, secrets []string, dirs ...string) {
	t.Helper()
	n := 0
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
			if err != nil || !e.Type().IsRegular() {
				return nil // sockets, and what a run removes meanwhile
			}
			body, err := os.ReadFile(p)
			if err != nil {
				return nil
			}
			n++
			for _, s := range secrets {
				if bytes.Contains(body, []byte(s)) {
					t.Errorf("%s holds a secret", p)
					break
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if n < 3 {
		t.Fatalf("only %d files read under %v", n, dirs)
	}
	t.Logf("no secret in %d files under %v", n, dirs)
}
