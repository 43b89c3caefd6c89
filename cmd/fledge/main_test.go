package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/cli/clitest"

	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// normalize replaces what differs between runs and machines.
func normalize(s, tmp string) string {
	s = strings.ReplaceAll(s, tmp, "$TMP")
	if wd, err := os.Getwd(); err == nil {
		s = strings.ReplaceAll(s, wd, "$CWD")
	}
	for _, r := range []struct{ re, repl string }{
		{`"duration_ms":\d+`, `"duration_ms":0`},
		{`"steps_ms":\{[^}]*\}`, `"steps_ms":{}`},
		{`"sha256":"[0-9a-f]{64}"`, `"sha256":"<sha256>"`},
		{`"bytes":\d+`, `"bytes":0`},
		{`"busybox_applets":\d+`, `"busybox_applets":0`},
		{`"entries":\d+`, `"entries":0`},
		{`"build":"[^"]*"`, `"build":"<build>"`},
	} {
		s = regexp.MustCompile(r.re).ReplaceAllString(s, r.repl)
	}
	return s
}

func writeProject(t *testing.T, toml string, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for p, body := range files {
		os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, p), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "fledge.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

const okToml = `version = "1"
strategy = "initramfs"

[plugin]
name = "hello"
version = "0.1.0"

[agent]
local = "/bin/busybox"

[workload]
entrypoint = ["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/srv"]
base_url = "http://127.0.0.1:80"

[mappings]
"index.html" = "/srv/index.html"
`

func TestContract(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		netnstest.SkipOrFail(t, "busybox-static not installed")
	}
	ok := writeProject(t, okToml, map[string]string{"index.html": "hi\n"})
	bad := writeProject(t, `version = "1"
strategy = "initramfs"
image = "nginx"
[mappings]
"index.html" = "srv/index.html"
`, nil)
	escape := writeProject(t, strings.Replace(okToml, `"index.html"`, `"/etc/passwd"`, 1), nil)
	for _, tc := range []struct {
		name string
		args []string
		code int
		tmp  string
		out  string // an output directory that must stay empty on failure
	}{
		{"build-initramfs", []string{"build", "-c", filepath.Join(ok, "fledge.toml"), "-o", filepath.Join(ok, "out")}, 0, ok, ""},
		{"build-invalid", []string{"build", "-c", filepath.Join(bad, "fledge.toml"), "-o", filepath.Join(bad, "out")}, 3, bad, filepath.Join(bad, "out")},
		{"build-escape", []string{"build", "-c", filepath.Join(escape, "fledge.toml"), "-o", filepath.Join(escape, "out")}, 3, escape, filepath.Join(escape, "out")},
		{"build-missing-config", []string{"build", "-c", "nonexistent/fledge.toml"}, 4, "", ""},
		{"build-kernel-modules-missing", []string{"build", "-c", filepath.Join(ok, "fledge.toml"), "-o", filepath.Join(ok, "out2"), "--kernel-modules", "/nonexistent/modules"}, 4, ok, filepath.Join(ok, "out2")},
		{"boot-initramfs-missing-modules", []string{"boot-initramfs", "--kestrel", "/bin/busybox", "--kernel-modules", "/nonexistent/6.1.0-x", "-o", filepath.Join(ok, "boot/boot.cpio.gz")}, 4, ok, filepath.Join(ok, "boot")},
		{"extra-args", []string{"build", "extra"}, 2, "", ""},
		{"no-command", nil, 2, "", ""},
		{"version", []string{"version"}, 0, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := clitest.Run(t, run, "", map[string]string{"SOURCE_DATE_EPOCH": "1700000000"}, tc.args...)
			if r.Code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout %s\nstderr %s", r.Code, tc.code, r.Stdout, r.Stderr)
			}
			tmp := tc.tmp
			if tmp == "" {
				tmp = "\x00"
			}
			if tc.code == 0 {
				var res map[string]any
				if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
					t.Fatalf("stdout is not one JSON object: %v\n%s", err, r.Stdout)
				}
				clitest.Golden(t, tc.name, normalize(r.Stdout, tmp))
				return
			}
			if r.Stdout != "" {
				t.Fatalf("stdout must be empty on failure: %s", r.Stdout)
			}
			lines := strings.Split(strings.TrimSpace(r.Stderr), "\n")
			var e apierr.Error
			if err := json.Unmarshal([]byte(lines[len(lines)-1]), &e); err != nil {
				t.Fatalf("last stderr line is not an error object: %v\n%s", err, r.Stderr)
			}
			clitest.Golden(t, tc.name+".err", normalize(lines[len(lines)-1], tmp)+"\n")
			if tc.out != "" {
				if ents, _ := os.ReadDir(tc.out); len(ents) != 0 {
					t.Fatalf("failed build left files in out/: %v", ents)
				}
			}
		})
	}
}

func TestBuildWritesWhatItReports(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		netnstest.SkipOrFail(t, "busybox-static not installed")
	}
	dir := writeProject(t, okToml, map[string]string{"index.html": "hi\n"})
	r := clitest.Run(t, run, "", nil, "build", "-c", filepath.Join(dir, "fledge.toml"), "-o", filepath.Join(dir, "out"))
	if r.Code != 0 {
		t.Fatalf("exit %d: %s", r.Code, r.Stderr)
	}
	var res struct {
		Kind     string `json:"kind"`
		Artifact string `json:"artifact"`
		Manifest string `json:"manifest"`
		Bytes    int64  `json:"bytes"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(res.Artifact)
	if err != nil || st.Size() != res.Bytes || res.Kind != "fledge.build" {
		t.Fatalf("artifact %s: %v, size %v vs %d", res.Artifact, err, st, res.Bytes)
	}
	if _, err := os.Stat(res.Manifest); err != nil {
		t.Fatal(err)
	}
	// Progress went to stderr as plain lines (stderr is not a terminal).
	if !strings.Contains(r.Stderr, "fledge: write initramfs hello.cpio.gz") {
		t.Fatalf("no progress on stderr: %q", r.Stderr)
	}
	q := clitest.Run(t, run, "", nil, "build", "-q", "-c", filepath.Join(dir, "fledge.toml"), "-o", filepath.Join(dir, "out"))
	if q.Code != 0 || q.Stderr != "" {
		t.Fatalf("-q: exit %d, stderr %q", q.Code, q.Stderr)
	}
}

// TestBuildSigned: keygen writes a key pair (the private key 0600) and
// never overwrites one; build --sign writes <manifest>.minisig, which the
// minisign tool itself verifies with the public key and which fails for
// the manifest changed by a byte; a build without --sign removes it.
func TestBuildSigned(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		netnstest.SkipOrFail(t, "busybox-static not installed")
	}
	ms, err := exec.LookPath("minisign")
	if err != nil {
		netnstest.SkipOrFail(t, "minisign not installed (scripts/install-deps.sh)")
	}
	dir := writeProject(t, okToml, map[string]string{"index.html": "hi\n"})
	key := filepath.Join(dir, "key")
	r := clitest.Run(t, run, "", nil, "keygen", "-o", key)
	var kg struct {
		Kind, KeyID, PrivateKey, PublicKey string
	}
	json.Unmarshal([]byte(strings.NewReplacer(`"key_id"`, `"KeyID"`, `"private_key"`, `"PrivateKey"`, `"public_key"`, `"PublicKey"`).Replace(r.Stdout)), &kg)
	if r.Code != 0 || kg.Kind != "fledge.keygen" || kg.PrivateKey != key || kg.PublicKey != key+".pub" || len(kg.KeyID) == 0 {
		t.Fatalf("keygen: %+v", r)
	}
	if st, err := os.Stat(key); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("private key mode: %v %v", st, err)
	}
	before, _ := os.ReadFile(key)
	if r := clitest.Run(t, run, "", nil, "keygen", "-o", key); r.Code != 5 || !strings.Contains(r.Stderr, `"code":"CONFLICT"`) {
		t.Fatalf("keygen over an existing key: %+v", r)
	}
	if after, _ := os.ReadFile(key); !bytes.Equal(before, after) {
		t.Fatal("keygen changed an existing key")
	}

	out := filepath.Join(dir, "out")
	r = clitest.Run(t, run, "", map[string]string{"SOURCE_DATE_EPOCH": "1700000000"}, "build", "-q", "-c", filepath.Join(dir, "fledge.toml"), "-o", out, "--sign", key)
	var res struct {
		Manifest  string `json:"manifest"`
		Signature string `json:"signature"`
		KeyID     string `json:"key_id"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil || r.Code != 0 || res.Signature != res.Manifest+".minisig" || res.KeyID != kg.KeyID {
		t.Fatalf("build --sign: %+v", r)
	}
	verify := func(manifest string) (string, error) {
		cmd := exec.Command(ms, "-V", "-m", manifest, "-x", res.Signature, "-p", key+".pub")
		b, err := cmd.CombinedOutput()
		return string(b), err
	}
	if out, err := verify(res.Manifest); err != nil || !strings.Contains(out, "plugin:hello version:0.1.0 file:hello.manifest.json") {
		t.Fatalf("minisign -V: %v\n%s", err, out)
	}
	body, _ := os.ReadFile(res.Manifest)
	changed := filepath.Join(dir, "changed.json")
	os.WriteFile(changed, bytes.Replace(body, []byte(`"0.1.0"`), []byte(`"0.1.1"`), 1), 0o644)
	if out, err := verify(changed); err == nil {
		t.Fatalf("minisign verified a changed manifest:\n%s", out)
	}
	// Deterministic: the same build signs to the same bytes.
	sig1, _ := os.ReadFile(res.Signature)
	clitest.Run(t, run, "", map[string]string{"SOURCE_DATE_EPOCH": "1700000000"}, "build", "-q", "-c", filepath.Join(dir, "fledge.toml"), "-o", out, "--sign", key)
	if sig2, _ := os.ReadFile(res.Signature); !bytes.Equal(sig1, sig2) {
		t.Fatal("two builds of the same inputs signed differently")
	}
	if r := clitest.Run(t, run, "", nil, "build", "-q", "-c", filepath.Join(dir, "fledge.toml"), "-o", out); r.Code != 0 {
		t.Fatal(r)
	}
	if _, err := os.Stat(res.Signature); !os.IsNotExist(err) {
		t.Fatalf("an unsigned build left the earlier signature: %v", err)
	}
	// A key that is not one: refused before building.
	if r := clitest.Run(t, run, "", nil, "build", "-q", "-c", filepath.Join(dir, "fledge.toml"), "-o", filepath.Join(dir, "out2"), "--sign", key+".pub"); r.Code != 3 {
		t.Fatalf("--sign with a public key: %+v", r)
	}
	if _, err := os.Stat(filepath.Join(dir, "out2", "hello.manifest.json")); !os.IsNotExist(err) {
		t.Fatal("a build with a bad key wrote a manifest")
	}
}

// TestImageFlags: build --image takes no fledge.toml, and the image flags
// go with --image only; inspect prints the reference's description as
// its one JSON result.
func TestImageFlags(t *testing.T) {
	for _, args := range [][]string{
		{"build", "--image", "web:1", "-c", "fledge.toml"},
		{"build", "--name", "web"},
		{"build", "--insecure"},
		{"inspect"},
		{"inspect", "web:1", "web:2"},
	} {
		r := clitest.Run(t, run, "", nil, args...)
		if r.Code != 2 || !strings.Contains(r.Stderr, `"code":"USAGE"`) || r.Stdout != "" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, r.Code, r.Stdout, r.Stderr)
		}
	}
	r := clitest.Run(t, run, "", nil, "inspect", "--insecure", "localhost:5000/web:1")
	var info struct {
		Version, Kind, Image, Transport, Registry, Name, Tag, Digest string
	}
	if err := json.Unmarshal([]byte(r.Stdout), &info); err != nil || r.Code != 0 {
		t.Fatalf("inspect: %+v %v", r, err)
	}
	want := struct {
		Version, Kind, Image, Transport, Registry, Name, Tag, Digest string
	}{"1", "fledge.inspect", "docker://localhost:5000/web:1", "docker", "localhost:5000", "web", "1", ""}
	if info != want {
		t.Fatalf("inspect: %+v, want %+v", info, want)
	}
	if r := clitest.Run(t, run, "", nil, "inspect", "ostree:/x"); r.Code != 3 || !strings.Contains(r.Stderr, `"code":"INVALID_INPUT"`) {
		t.Fatalf("inspect of an unlinked transport: %+v", r)
	}
}
