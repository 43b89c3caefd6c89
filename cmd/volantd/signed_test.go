package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/store"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// TestSignedPluginsEndToEnd composes the real binaries the way an operator
// would: fledge keygen makes two key pairs, fledge build --sign signs a
// plugin with each, volantd runs with --trusted-keys (one of them) and
// --require-signed, and volar installs from the files fledge wrote (it
// sends <manifest>.minisig along). A plugin signed by the trusted key
// installs; the same manifest without its signature, with one byte
// changed, or signed by the other key is refused with its code and exit
// status. Then, with volantd stopped, the installed plugin's manifest is
// changed in the state database: the restarted volantd refuses to boot it.
func TestSignedPluginsEndToEnd(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		netnstest.SkipOrFail(t, "busybox-static is needed to build the plugin")
	}
	fledge, volar := guesttest.Command(t, "fledge"), guesttest.Command(t, "volar")
	dir := t.TempDir()
	run := func(wantCode int, name string, args ...string) []byte {
		t.Helper()
		cmd := exec.Command(name, args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != wantCode {
			t.Fatalf("%s %s: exit %d, want %d\nstdout %s\nstderr %s", filepath.Base(name), strings.Join(args, " "), code, wantCode, out, stderr.String())
		}
		if code != 0 {
			return stderr.Bytes()
		}
		return out
	}
	errCode := func(stderr []byte) (string, string) {
		lines := strings.Split(strings.TrimSpace(string(stderr)), "\n")
		var e apierr.Error
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &e); err != nil {
			t.Fatalf("not an error object: %s", stderr)
		}
		reason, _ := e.Details["reason"].(string)
		return string(e.Code), reason
	}

	// Keys: the CI's (trusted) and a stranger's.
	os.MkdirAll(filepath.Join(dir, "secret"), 0o700)
	var ci, stranger struct {
		KeyID      string `json:"key_id"`
		PrivateKey string `json:"private_key"`
		PublicKey  string `json:"public_key"`
	}
	json.Unmarshal(run(0, fledge, "keygen", "-o", filepath.Join(dir, "secret", "ci")), &ci)
	json.Unmarshal(run(0, fledge, "keygen", "-o", filepath.Join(dir, "secret", "stranger")), &stranger)
	if st, err := os.Stat(ci.PrivateKey); err != nil || st.Mode().Perm() != 0o600 || ci.KeyID == "" {
		t.Fatalf("private key %+v: %v %v", ci, st, err)
	}
	trusted := filepath.Join(dir, "trusted")
	os.MkdirAll(trusted, 0o755)
	pub, _ := os.ReadFile(ci.PublicKey)
	os.WriteFile(filepath.Join(trusted, "ci.pub"), pub, 0o644)

	// The plugin, built into volantd's plugins directory, signed by each.
	src := filepath.Join(dir, "src")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "index.html"), []byte("hi\n"), 0o644)
	os.WriteFile(filepath.Join(src, "fledge.toml"), []byte(`version = "1"
strategy = "initramfs"
[plugin]
name = "hello"
version = "0.1.0"
[agent]
local = "/bin/busybox"
[workload]
entrypoint = ["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/srv"]
base_url = "http://127.0.0.1:80"
[network]
mode = "none"
[mappings]
"index.html" = "/srv/index.html"
`), 0o644)
	data := filepath.Join(dir, "data")
	build := func(out, key string) string {
		var res struct {
			Manifest  string `json:"manifest"`
			Signature string `json:"signature"`
			KeyID     string `json:"key_id"`
		}
		json.Unmarshal(run(0, fledge, "build", "-q", "-c", filepath.Join(src, "fledge.toml"), "-o", out, "--sign", key), &res)
		if res.Signature != res.Manifest+".minisig" || res.KeyID == "" {
			t.Fatalf("build result: %+v", res)
		}
		return res.Manifest
	}
	signed := build(filepath.Join(data, "plugins", "hello"), ci.PrivateKey)
	byStranger := build(filepath.Join(data, "plugins", "stranger"), stranger.PrivateKey)
	body, _ := os.ReadFile(signed)
	sig, _ := os.ReadFile(signed + ".minisig")
	// The same manifest alone, and with one byte changed (its signature
	// next to it).
	unsigned := filepath.Join(dir, "unsigned.manifest.json")
	os.WriteFile(unsigned, body, 0o644)
	tampered := filepath.Join(dir, "tampered.manifest.json")
	i := bytes.Index(body, []byte(`"0.1.0"`))
	if i < 0 {
		t.Fatalf("no version in %s", body)
	}
	changed := append([]byte{}, body...)
	changed[i+5] = '1' // "0.1.1"
	os.WriteFile(tampered, changed, 0o644)
	os.WriteFile(tampered+".minisig", sig, 0o644)

	args := []string{"--no-network-setup", "--agent-listen", "off", "--trusted-keys", trusted, "--require-signed"}
	d := startDaemon(t, dir, nil, nil, args...)
	volarIn := func(code int, args ...string) []byte {
		return run(code, volar, append([]string{"-H", d.sock, "-o", "json"}, args...)...)
	}
	for _, tc := range []struct {
		name, manifest, code, reason string
		exit                         int
	}{
		{"unsigned", unsigned, "SIGNATURE_REQUIRED", "", 1},
		{"one byte changed", tampered, "SIGNATURE_INVALID", "mismatch", 1},
		{"an untrusted key", byStranger, "SIGNATURE_INVALID", "untrusted_key", 1},
	} {
		code, reason := errCode(volarIn(tc.exit, "plugins", "install", "--manifest", tc.manifest))
		if code != tc.code || reason != tc.reason {
			t.Errorf("%s: %s %q, want %s %q", tc.name, code, reason, tc.code, tc.reason)
		}
	}
	var p api.Plugin
	json.Unmarshal(volarIn(0, "plugins", "install", "--manifest", signed), &p)
	if p.Name != "hello" || p.Version != "0.1.0" || p.Signature == nil || !p.Signature.Verified || p.Signature.KeyID != ci.KeyID ||
		p.Signature.TrustedComment != "plugin:hello version:0.1.0 file:hello.manifest.json" {
		t.Fatalf("installed: %+v %+v", p, p.Signature)
	}
	ctx := context.Background()
	if ps, err := d.c.ListPlugins(ctx); err != nil || len(ps) != 1 {
		t.Fatalf("plugins after the refusals: %d %v", len(ps), err)
	}

	// Changed in the database while volantd is away: refused at boot.
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(15 * time.Second):
		t.Fatal("volantd did not stop")
	}
	st, err := store.Open(ctx, filepath.Join(data, "volant.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = st.Tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.Exec(`UPDATE plugins SET manifest = json_set(manifest, '$.workload.entrypoint', json('["/bin/sh","-c","echo owned"]')) WHERE name = 'hello'`)
		return err
	})
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	d = startDaemon(t, dir, nil, nil, args...)
	_, err = d.c.CreateVM(ctx, api.CreateVMRequest{Name: "v1", Plugin: "hello"})
	if !apierr.Is(err, apierr.SignatureInvalid) || apierr.From(err).Details["reason"] != "manifest_changed" {
		t.Fatalf("boot of a plugin changed after install: %v", err)
	}
	if _, err := d.c.VM(ctx, "v1"); !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("the refused VM is left: %v", err)
	}
}
