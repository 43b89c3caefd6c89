package fledge

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
)

func parse(t *testing.T, body string) (*Config, error) {
	t.Helper()
	return Parse(filepath.Join(t.TempDir(), "fledge.toml"), []byte(body))
}

func TestParseValid(t *testing.T) {
	for name, body := range map[string]string{
		"oci minimal": `version = "1"
strategy = "oci_rootfs"
[source]
image = "nginx:alpine"`,
		"oci original format": `version = "1"
strategy = "oci_rootfs"
[agent]
source_strategy = "local"
path = "./kestrel"
[source]
image = "nginx:alpine"
[filesystem]
type = "ext4"
size_buffer_mb = 100
preallocate = false
[mappings]
"./local" = "/usr/bin/local"`,
		"initramfs full": `version = "1"
strategy = "initramfs"
[plugin]
name = "web"
version = "1.2.3"
[agent]
local = "/bin/busybox"
[source]
busybox = "/bin/busybox"
busybox_sha256 = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
[workload]
entrypoint = "/bin/httpd"
args = ["-f"]
base_url = "http://127.0.0.1:80"
env = { A = "1" }
[health_check]
endpoint = "/health"
[resources]
cpu_cores = 2
memory_mb = 256
[network]
mode = "bridged"
[actions.reload]
path = "/reload"
[labels]
team = "web"
[mappings]
"www" = "/srv/www"`,
		"init none": `version = "1"
strategy = "initramfs"
[init]
none = true
[mappings]
"init" = "/init"`,
	} {
		t.Run(name, func(t *testing.T) {
			c, err := parse(t, body)
			if err != nil {
				t.Fatal(err)
			}
			if c.Dir == "" || !filepath.IsAbs(c.File) {
				t.Fatalf("paths not set: %+v", c)
			}
		})
	}
}

func TestParseStringEntrypointWithArgs(t *testing.T) {
	c, err := parse(t, `version = "1"
strategy = "initramfs"
[workload]
entrypoint = "/usr/bin/app"
args = ["--port", "80"]`)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.tomlWorkload().Entrypoint, " "); got != "/usr/bin/app --port 80" {
		t.Fatalf("entrypoint %q", got)
	}
}

func TestParseProblems(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		field      string // a problem on this field is expected
		msg        string // in its message
	}{
		{"no version", `strategy = "initramfs"`, "version", "required"},
		{"bad version", `version = "2"
strategy = "initramfs"`, "version", `must be "1"`},
		{"bad strategy", `version = "1"
strategy = "docker"`, "strategy", "oci_rootfs"},
		{"unknown key", `version = "1"
strategy = "initramfs"
[workload]
entrypiont = ["/x"]`, "workload.entrypiont", `did you mean "entrypoint"`},
		{"top-level name", `version = "1"
strategy = "initramfs"
name = "x"`, "name", "[plugin] name"},
		{"oci without image", `version = "1"
strategy = "oci_rootfs"`, "source.image", "required"},
		{"busybox on oci", `version = "1"
strategy = "oci_rootfs"
[source]
image = "x"
busybox = "/bin/busybox"`, "source.busybox", "initramfs builds only"},
		{"xfs", `version = "1"
strategy = "oci_rootfs"
[source]
image = "x"
[filesystem]
type = "xfs"`, "filesystem.type", "not supported"},
		{"negative buffer", `version = "1"
strategy = "oci_rootfs"
[source]
image = "x"
[filesystem]
size_buffer_mb = -1`, "filesystem.size_buffer_mb", "0 (automatic)"},
		{"relative dest", `version = "1"
strategy = "initramfs"
[mappings]
"a" = "usr/bin/a"`, `mappings."a"`, "absolute"},
		{"dotdot dest", `version = "1"
strategy = "initramfs"
[mappings]
"a" = "/usr/../etc/a"`, `mappings."a"`, ".."},
		{"root dest", `version = "1"
strategy = "initramfs"
[mappings]
"a" = "/"`, `mappings."a"`, "root directory"},
		{"NUL in dest", `version = "1"
strategy = "initramfs"
[mappings]
"a" = "/srv\u0000x"`, `mappings."a"`, "control character"},
		{"newline in dest", `version = "1"
strategy = "initramfs"
[mappings]
"a" = "/srv/a\nb"`, `mappings."a"`, "control character"},
		{"same dest twice", `version = "1"
strategy = "initramfs"
[mappings]
"a" = "/x"
"b" = "/x/"`, `mappings."b"`, "also the destination"},
		{"init both", `version = "1"
strategy = "initramfs"
[init]
path = "x"
none = true`, "init", "not both"},
		{"agent with custom init", `version = "1"
strategy = "initramfs"
[agent]
local = "k"
[init]
path = "x"`, "agent", "no agent"},
		{"release agent", `version = "1"
strategy = "initramfs"
[agent]
source_strategy = "release"
version = "latest"`, "agent.source_strategy", "not supported"},
		{"init on oci", `version = "1"
strategy = "oci_rootfs"
[source]
image = "x"
[init]
none = true`, "init", "initramfs builds only"},
		{"bad sha", `version = "1"
strategy = "initramfs"
[source]
busybox_sha256 = "abc"`, "source.busybox_sha256", "64 hex"},
		{"syntax", `version = "1`, "version", "line 1"},
		{"wrong type", `version = "1"
strategy = "initramfs"
[workload]
entrypoint = 3`, "workload.entrypoint", "string or an array"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(t, tc.body)
			if !apierr.Is(err, apierr.InvalidInput) {
				t.Fatalf("want INVALID_INPUT, got %v", err)
			}
			probs := Problems(err)
			for _, p := range probs {
				if p.Field == tc.field && strings.Contains(p.Message, tc.msg) {
					return
				}
			}
			t.Fatalf("no problem on %q containing %q in %v (%v)", tc.field, tc.msg, probs, err)
		})
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	_, err := parse(t, `version = "3"
strategy = "oci_rootfs"
[mappings]
"a" = "rel"`)
	if n := len(Problems(err)); n != 3 {
		t.Fatalf("want 3 problems (version, source.image, mapping), got %d: %v", n, err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "fledge.toml"))
	if !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("want NOT_FOUND, got %v", err)
	}
}

func TestFileMode(t *testing.T) {
	for _, tc := range []struct {
		dest string
		src  os.FileMode
		want os.FileMode
	}{
		{"/usr/bin/app", 0o644, 0o755},
		{"/bin/tool", 0o600, 0o755},
		{"/usr/local/sbin/daemon", 0o644, 0o755},
		{"/opt/app/bin/run", 0o644, 0o755},
		{"/usr/libexec/helper", 0o644, 0o755},
		{"/etc/app/config.yaml", 0o644, 0o644},
		{"/etc/app/secret", 0o600, 0o644},
		{"/srv/www/index.html", 0o664, 0o644},
		{"/opt/app/start.sh", 0o755, 0o755},
		{"/usr/lib/libx.so", 0o644, 0o644},
		{"/binaries/file", 0o644, 0o644},
	} {
		if got := FileMode(tc.dest, tc.src); got != tc.want {
			t.Errorf("FileMode(%s, %o) = %o, want %o", tc.dest, tc.src, got, tc.want)
		}
	}
}

func TestMappingSourcesStayInContext(t *testing.T) {
	root := t.TempDir()
	ctx := filepath.Join(root, "ctx")
	outside := filepath.Join(root, "outside")
	os.MkdirAll(filepath.Join(ctx, "www/sub"), 0o755)
	os.MkdirAll(outside, 0o755)
	os.WriteFile(filepath.Join(outside, "secret"), []byte("s"), 0o600)
	os.WriteFile(filepath.Join(ctx, "www/index.html"), []byte("hi"), 0o600)
	os.WriteFile(filepath.Join(ctx, "www/sub/run"), []byte("#!/bin/sh"), 0o700)
	os.Symlink("../index.html", filepath.Join(ctx, "www/sub/link"))
	os.Symlink(filepath.Join(outside, "secret"), filepath.Join(ctx, "escape"))
	os.Symlink(outside, filepath.Join(ctx, "escapedir"))

	cfg := func(src string) *Config {
		return &Config{Dir: ctx, File: filepath.Join(ctx, "fledge.toml"), Mappings: map[string]string{src: "/dst"}}
	}
	for _, src := range []string{"../outside/secret", filepath.Join(outside, "secret"), "escape", "escapedir", "escapedir/secret", "www/../../outside/secret"} {
		_, err := cfg(src).resolveMappings()
		if !apierr.Is(err, apierr.InvalidInput) || !strings.Contains(err.Error(), "outside the build context") {
			t.Errorf("%s: want refusal, got %v", src, err)
		}
	}
	if _, err := cfg("nope").resolveMappings(); !apierr.Is(err, apierr.InvalidInput) || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing source: %v", err)
	}

	es, err := cfg("www").resolveMappings()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]entry{}
	for _, e := range es {
		got[e.Dest] = e
	}
	if e := got["/dst/index.html"]; e.Kind != kindFile || e.Mode != 0o644 {
		t.Errorf("index.html: %+v", e)
	}
	if e := got["/dst/sub/run"]; e.Kind != kindFile || e.Mode != 0o755 {
		t.Errorf("executable: %+v", e)
	}
	if e := got["/dst/sub/link"]; e.Kind != kindSymlink || e.Target != "../index.html" {
		t.Errorf("symlink inside a mapped directory: %+v", e)
	}
	if e := got["/dst/sub"]; e.Kind != kindDir {
		t.Errorf("dir: %+v", e)
	}
}

func TestResolveUser(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0::/root:/bin/sh\n# comment\nweb:x:101:102::/var/www:/sbin/nologin\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\nweb:x:102:\nstaff:x:50:\n"), 0o644)
	for _, tc := range []struct{ spec, want, errs string }{
		{"web", "101:102", ""},
		{"101", "101:102", ""},
		{"4242", "4242:0", ""},
		{"web:staff", "101:50", ""},
		{"1000:1000", "1000:1000", ""},
		{"root", "0:0", ""},
		{"nobody", "", "not in its /etc/passwd"},
		{"web:nogroup", "", "not in its /etc/group"},
	} {
		got, err := resolveUser(root, tc.spec)
		if tc.errs != "" {
			if err == nil || !strings.Contains(err.Error(), tc.errs) {
				t.Errorf("%s: want error %q, got %q, %v", tc.spec, tc.errs, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: got %q, %v; want %q", tc.spec, got, err, tc.want)
		}
	}
}

func TestScratchDir(t *testing.T) {
	given := t.TempDir()
	d, _, err := scratch(given, 1)
	if err != nil || filepath.Dir(d) != given {
		t.Fatalf("--work-dir not used: %s %v", d, err)
	}
	os.RemoveAll(d)
	// Far too big for memory: the system's temporary directory.
	d, _, err = scratch("", 1<<50)
	if err != nil || filepath.Dir(d) != filepath.Clean(os.TempDir()) {
		t.Fatalf("huge image unpacked in %s (%v)", d, err)
	}
	os.RemoveAll(d)
	// Unknown size: never tmpfs.
	d, _, err = scratch("", -1)
	if err != nil || strings.HasPrefix(d, "/dev/shm/") {
		t.Fatalf("unknown size unpacked in %s (%v)", d, err)
	}
	os.RemoveAll(d)
	if tmpfsFits("/dev/shm", 1<<20) {
		d, tmpfs, err := scratch("", 1<<20)
		if err != nil || !tmpfs || !strings.HasPrefix(d, "/dev/shm/fledge-") {
			t.Fatalf("small image not unpacked in /dev/shm: %s %v %v", d, tmpfs, err)
		}
		os.RemoveAll(d)
	}
}
