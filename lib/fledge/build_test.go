package fledge

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/kernel"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/testutil/ext4test"
	"github.com/volantvm/volant/lib/testutil/imagetest"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// standIn is a static binary standing in for kestrel where only its
// presence matters.
const standIn = "/bin/busybox"

func needBusybox(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(standIn); err != nil {
		netnstest.SkipOrFail(t, "busybox-static not installed: %v", err)
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		netnstest.SkipOrFail(t, "oci_rootfs builds need root")
	}
}

// project writes a build context: fledge.toml and files (path -> content;
// a path ending in "*" is made executable).
func project(t *testing.T, toml string, files map[string]string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "proj")
	for p, body := range files {
		mode := os.FileMode(0o644)
		if strings.HasSuffix(p, "*") {
			p, mode = strings.TrimSuffix(p, "*"), 0o755
		}
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "fledge.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func build(t *testing.T, dir string, mod func(*Request)) (*Result, string, error) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	req := Request{Config: filepath.Join(dir, "fledge.toml"), OutputDir: out}
	if mod != nil {
		mod(&req)
	}
	res, err := Build(context.Background(), req)
	return res, out, err
}

func sha(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil))
}

// cpioList lists a gzip'd newc archive with cpio -tv.
func cpioList(t *testing.T, p string) string {
	t.Helper()
	if _, err := exec.LookPath("cpio"); err != nil {
		netnstest.SkipOrFail(t, "cpio not installed")
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cpio", "-itv", "--quiet")
	cmd.Stdin = zr
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("cpio -t: %v: %s", err, errb.String())
	}
	return out.String()
}

// entryLine finds the cpio -tv line for a path.
func entryLine(list, p string) string {
	for _, l := range strings.Split(list, "\n") {
		f := strings.Fields(l)
		for i, w := range f {
			if w == p && i >= 8 {
				return l
			}
		}
	}
	return ""
}

func readManifest(t *testing.T, p string) *manifest.Manifest {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Parse(b)
	if err != nil {
		t.Fatalf("manifest %s does not validate: %v", p, err)
	}
	return m
}

// leftovers lists what a failed build left in out.
func leftovers(t *testing.T, out string) []string {
	t.Helper()
	ents, err := os.ReadDir(out)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

const webToml = `version = "1"
strategy = "initramfs"

[plugin]
name = "web"
version = "1.0.0"

[agent]
local = "/bin/busybox"

[workload]
entrypoint = ["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/srv/www"]
base_url = "http://127.0.0.1:80"
env = { GREETING = "hi" }

[health_check]
endpoint = "/"

[resources]
memory_mb = 256

[mappings]
"www" = "/srv/www"
"tools/tool" = "/usr/local/bin/tool"
"conf/app.conf" = "/etc/app/app.conf"
`

var webFiles = map[string]string{
	"www/index.html": "hello from fledge\n",
	"www/sub/run*":   "#!/bin/sh\necho run\n",
	"tools/tool":     "#!/bin/sh\necho tool\n",
	"conf/app.conf":  "key=value\n",
}

func TestBuildInitramfs(t *testing.T) {
	needBusybox(t)
	dir := project(t, webToml, webFiles)
	res, out, err := build(t, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Name != "web" || res.Version != "1.0.0" || res.Strategy != StrategyInitramfs || res.Init != InitKestrel {
		t.Fatalf("result %+v", res)
	}
	if res.Artifact != filepath.Join(out, "web.cpio.gz") || res.Manifest != filepath.Join(out, "web.manifest.json") {
		t.Fatalf("paths %s %s", res.Artifact, res.Manifest)
	}
	if got := sha(t, res.Artifact); got != res.SHA256 {
		t.Fatalf("reported sha256 %s, file has %s", res.SHA256, got)
	}
	if st, _ := os.Stat(res.Artifact); st.Size() != res.Bytes {
		t.Fatalf("reported %d bytes, file has %d", res.Bytes, st.Size())
	}
	if names := leftovers(t, out); len(names) != 2 {
		t.Fatalf("output directory holds %v", names)
	}

	m := readManifest(t, res.Manifest)
	if m.Initramfs == nil || m.Initramfs.URL != "file://"+res.Artifact || m.Initramfs.Checksum != "sha256:"+res.SHA256 {
		t.Fatalf("manifest artifact %+v", m.Initramfs)
	}
	if m.Workload.BaseURL != "http://127.0.0.1:80" || m.Workload.Env["GREETING"] != "hi" || m.Resources.MemoryMB != 256 || m.HealthCheck == nil {
		t.Fatalf("manifest workload %+v resources %+v", m.Workload, m.Resources)
	}

	list := cpioList(t, res.Artifact)
	for p, want := range map[string]string{
		"init":                "lrwxrwxrwx",
		"bin/kestrel":         "-rwxr-xr-x",
		"bin/busybox":         "-rwxr-xr-x",
		"bin/sh":              "lrwxrwxrwx",
		"srv/www/index.html":  "-rw-r--r--",
		"srv/www/sub/run":     "-rwxr-xr-x",
		"usr/local/bin/tool":  "-rwxr-xr-x",
		"etc/app/app.conf":    "-rw-r--r--",
		"dev/console":         "crw-------",
		"tmp":                 "drwxrwxrwt",
		"srv/www/sub":         "drwxr-xr-x",
		"usr/local/bin":       "drwxr-xr-x",
		"usr/bin/wget":        "lrwxrwxrwx",
		"sbin/ifconfig":       "lrwxrwxrwx",
		"etc/app":             "drwxr-xr-x",
		"srv":                 "drwxr-xr-x",
		"usr/local":           "drwxr-xr-x",
		"srv/www":             "drwxr-xr-x",
		"bin":                 "drwxr-xr-x",
		"usr/bin/[":           "lrwxrwxrwx",
		"sbin/init":           "lrwxrwxrwx",
		"usr/sbin/httpd":      "lrwxrwxrwx",
		"usr/bin/env":         "lrwxrwxrwx",
		"bin/ls":              "lrwxrwxrwx",
		"etc":                 "drwxr-xr-x",
		"lib":                 "drwxr-xr-x",
		"proc":                "dr-xr-xr-x",
		"root":                "drwx------",
		"var/log":             "drwxr-xr-x",
		"usr/sbin":            "drwxr-xr-x",
		"usr":                 "drwxr-xr-x",
		"sys":                 "dr-xr-xr-x",
		"run":                 "drwxr-xr-x",
		"mnt":                 "drwxr-xr-x",
		"var":                 "drwxr-xr-x",
		"sbin":                "drwxr-xr-x",
		"dev":                 "drwxr-xr-x",
		"usr/bin":             "drwxr-xr-x",
		"bin/mount":           "lrwxrwxrwx",
		"usr/bin/tail":        "lrwxrwxrwx",
		"bin/busybox-missing": "",
	} {
		l := entryLine(list, p)
		if want == "" {
			if l != "" {
				t.Errorf("%s should not be in the archive: %s", p, l)
			}
			continue
		}
		if !strings.HasPrefix(l, want) {
			t.Errorf("%s: got %q, want mode %s", p, l, want)
		}
		if !strings.Contains(l, " root ") {
			t.Errorf("%s not owned by root: %q", p, l)
		}
	}
	if l := entryLine(list, "init"); !strings.HasSuffix(l, "-> /bin/kestrel") {
		t.Errorf("init: %s", l)
	}
	if l := entryLine(list, "bin/sh"); !strings.HasSuffix(l, "-> /bin/busybox") {
		t.Errorf("bin/sh: %s", l)
	}
	if res.Applets < 100 {
		t.Errorf("only %d busybox applets", res.Applets)
	}
}

// fledge.toml's [console] shell becomes the manifest's console.shell (a
// shell kestrel runs on the serial console), and a shell the manifest
// would refuse fails the build before anything is built.
func TestBuildConsoleShell(t *testing.T) {
	needBusybox(t)
	res, out, err := build(t, project(t, webToml+"\n[console]\nshell = \"/bin/sh\"\n", webFiles), nil)
	if err != nil {
		t.Fatal(err)
	}
	if m := readManifest(t, res.Manifest); m.Console == nil || m.Console.Shell != "/bin/sh" {
		t.Fatalf("manifest console %+v, want shell /bin/sh", m.Console)
	}
	if names := leftovers(t, out); len(names) != 2 {
		t.Fatalf("output directory holds %v", names)
	}
	// Without the table the console stays output only.
	res, _, err = build(t, project(t, webToml, webFiles), nil)
	if err != nil {
		t.Fatal(err)
	}
	if m := readManifest(t, res.Manifest); m.Console != nil {
		t.Fatalf("manifest console %+v without [console]", m.Console)
	}
	_, out, err = build(t, project(t, webToml+"\n[console]\nshell = \"sh\"\n", webFiles), nil)
	if !apierr.Is(err, apierr.InvalidInput) || !slices.ContainsFunc(Problems(err), func(p Problem) bool { return p.Field == "console.shell" }) {
		t.Fatalf("a relative shell: %v, want INVALID_INPUT on console.shell", err)
	}
	if names := leftovers(t, out); len(names) != 0 {
		t.Fatalf("a refused build left %v", names)
	}
}

func TestBuildInitramfsIsReproducible(t *testing.T) {
	needBusybox(t)
	dir := project(t, webToml, webFiles)
	one, _, err := build(t, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Touch every source: times must not leak into the archive.
	later := time.Now().Add(time.Hour)
	filepath.Walk(dir, func(p string, _ os.FileInfo, _ error) error { return os.Chtimes(p, later, later) })
	two, _, err := build(t, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if one.SHA256 != two.SHA256 || sha(t, one.Artifact) != sha(t, two.Artifact) {
		t.Fatalf("two builds differ: %s vs %s", one.SHA256, two.SHA256)
	}
	// And the archive does depend on the content.
	os.WriteFile(filepath.Join(dir, "www/index.html"), []byte("changed\n"), 0o644)
	three, _, err := build(t, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if three.SHA256 == one.SHA256 {
		t.Fatal("changed content, same archive")
	}
}

func guestKernel(t *testing.T) *kernel.Kernel {
	t.Helper()
	k, err := kernel.Open(os.Getenv("VOLANT_KERNEL_DIR"))
	if err != nil {
		netnstest.SkipOrFail(t, "guest kernel: %v", err)
	}
	return k
}

func TestBuildInitramfsWithKernelModules(t *testing.T) {
	needBusybox(t)
	k := guestKernel(t)
	dir := project(t, webToml, webFiles)
	mod := func(r *Request) { r.KernelModules = k.ModulesDir }
	one, _, err := build(t, dir, mod)
	if err != nil {
		t.Fatal(err)
	}
	two, _, err := build(t, dir, mod)
	if err != nil {
		t.Fatal(err)
	}
	if one.SHA256 != two.SHA256 {
		t.Fatalf("not reproducible: %s vs %s", one.SHA256, two.SHA256)
	}
	if one.KernelRelease != k.Release || len(one.Modules) < 8 {
		t.Fatalf("release %q modules %v", one.KernelRelease, one.Modules)
	}
	list := cpioList(t, one.Artifact)
	for _, want := range []string{"lib/modules/" + k.Release + "/modules.dep", "virtio_net.ko", "virtio_console.ko", "evdev.ko"} {
		if !strings.Contains(list, want) {
			t.Errorf("%s missing from the archive", want)
		}
	}
	// The disk and vsock modules are volant-launch's to layer over the
	// plugin, for a VM that needs them.
	for _, unwanted := range []string{"ext4.ko", "jbd2.ko", "virtio_blk.ko", "vsock.ko"} {
		if strings.Contains(list, "/"+unwanted) {
			t.Errorf("%s in the archive of a plugin without disks", unwanted)
		}
	}
	// A directory without modules.dep is a clear error.
	_, out, err := build(t, dir, func(r *Request) { r.KernelModules = t.TempDir() })
	if !apierr.Is(err, apierr.NotFound) || !strings.Contains(err.Error(), "modules.dep") {
		t.Fatalf("want NOT_FOUND naming modules.dep, got %v", err)
	}
	if l := leftovers(t, out); len(l) != 0 {
		t.Fatalf("failed build left %v", l)
	}
}

func TestBuildInitramfsInitModes(t *testing.T) {
	needBusybox(t)
	custom := project(t, `version = "1"
strategy = "initramfs"
[plugin]
name = "custom"
[init]
path = "my-init"
`, map[string]string{"my-init*": "#!/bin/sh\nexec /bin/sh\n"})
	res, _, err := build(t, custom, nil)
	if err != nil {
		t.Fatal(err)
	}
	list := cpioList(t, res.Artifact)
	if l := entryLine(list, "init"); !strings.HasPrefix(l, "-rwxr-xr-x") {
		t.Errorf("custom init: %q", l)
	}
	if entryLine(list, "bin/kestrel") != "" || res.Kestrel != "" || res.Init != InitCustom {
		t.Errorf("custom init mode still installed kestrel")
	}
	if m := readManifest(t, res.Manifest); m.Workload.Entrypoint[0] != "/init" {
		t.Errorf("default entrypoint %v", m.Workload.Entrypoint)
	}

	none := `version = "1"
strategy = "initramfs"
[plugin]
name = "none"
[init]
none = true
[mappings]
`
	_, out, err := build(t, project(t, none, nil), nil)
	if !apierr.Is(err, apierr.InvalidInput) || !strings.Contains(err.Error(), "/init") {
		t.Fatalf("init none without /init: %v", err)
	}
	if l := leftovers(t, out); len(l) != 0 {
		t.Fatalf("failed build left %v", l)
	}
	res, _, err = build(t, project(t, none+`"my-init" = "/init"`+"\n", map[string]string{"my-init*": "#!/bin/sh\n"}), nil)
	if err != nil {
		t.Fatal(err)
	}
	if l := entryLine(cpioList(t, res.Artifact), "init"); !strings.HasPrefix(l, "-rwxr-xr-x") {
		t.Errorf("mapped init: %q", l)
	}
}

func TestBuildFailuresLeaveNothing(t *testing.T) {
	needBusybox(t)
	for _, tc := range []struct {
		name  string
		toml  string
		files map[string]string
		code  apierr.Code
		msg   string
	}{
		{"kestrel missing", strings.Replace(webToml, `local = "/bin/busybox"`, `local = "./nope"`, 1), webFiles, apierr.NotFound, "does not exist"},
		{"kestrel dynamic", strings.Replace(webToml, `local = "/bin/busybox"`, `local = "/bin/ls"`, 1), webFiles, apierr.InvalidInput, "dynamically linked"},
		{"mapping over kestrel", webToml + `"conf/app.conf2" = "/init"` + "\n", map[string]string{"www/index.html": "x", "tools/tool": "x", "conf/app.conf": "x", "conf/app.conf2": "x"}, apierr.InvalidInput, "kestrel's"},
		{"mapping outside", webToml + `"../outside" = "/etc/x"` + "\n", webFiles, apierr.InvalidInput, "outside the build context"},
		{"mapping missing", webToml, map[string]string{"www/index.html": "x"}, apierr.InvalidInput, "does not exist"},
		{"busybox checksum", strings.Replace(webToml, "[workload]", "[source]\nbusybox_sha256 = \""+strings.Repeat("ab", 32)+"\"\n\n[workload]", 1), webFiles, apierr.ChecksumMismatch, "busybox_sha256"},
		{"invalid manifest", strings.Replace(webToml, `memory_mb = 256`, `memory_mb = 16`, 1), webFiles, apierr.InvalidInput, "resources.memory_mb"},
		{"http without base_url", strings.Replace(webToml, `base_url = "http://127.0.0.1:80"`, `type = "http"`, 1), webFiles, apierr.InvalidInput, "base_url"},
		{"oci image missing", `version = "1"
strategy = "oci_rootfs"
[agent]
local = "/bin/busybox"
[source]
image = "oci:./no-layout:v1"
`, nil, apierr.NotFound, "proj/no-layout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := project(t, tc.toml, tc.files)
			os.WriteFile(filepath.Join(filepath.Dir(dir), "outside"), []byte("secret"), 0o644)
			_, out, err := build(t, dir, nil)
			if !apierr.Is(err, tc.code) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("want %s containing %q, got %v", tc.code, tc.msg, err)
			}
			if l := leftovers(t, out); len(l) != 0 {
				t.Fatalf("failed build left %v", l)
			}
		})
	}
}

func TestBuildCanceledLeavesNothing(t *testing.T) {
	needBusybox(t)
	dir := project(t, webToml, webFiles)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	out := filepath.Join(t.TempDir(), "out")
	_, err := Build(ctx, Request{Config: filepath.Join(dir, "fledge.toml"), OutputDir: out})
	if !apierr.Is(apierr.From(err), apierr.Canceled) {
		t.Fatalf("want CANCELED, got %v", err)
	}
	if l := leftovers(t, out); len(l) != 0 {
		t.Fatalf("canceled build left %v", l)
	}
}

func TestBootInitramfs(t *testing.T) {
	needBusybox(t)
	k := guestKernel(t)
	out := t.TempDir()
	one, err := BootInitramfs(context.Background(), BootRequest{Kestrel: standIn, ModulesDir: k.ModulesDir, Output: filepath.Join(out, "a.cpio.gz")})
	if err != nil {
		t.Fatal(err)
	}
	two, err := BootInitramfs(context.Background(), BootRequest{Kestrel: standIn, ModulesDir: k.ModulesDir, Output: filepath.Join(out, "b.cpio.gz")})
	if err != nil {
		t.Fatal(err)
	}
	if one.SHA256 != two.SHA256 || sha(t, one.Artifact) != one.SHA256 {
		t.Fatalf("not reproducible: %s %s", one.SHA256, two.SHA256)
	}
	list := cpioList(t, one.Artifact)
	for _, want := range []string{"init", "bin/kestrel", "dev/console", "lib/modules/" + k.Release + "/modules.dep"} {
		if entryLine(list, want) == "" {
			t.Errorf("%s missing:\n%s", want, list)
		}
	}
	sort.Strings(one.Modules)
	for _, m := range []string{"virtio_blk", "virtio_net", "ext4", "virtio_mmio"} {
		if i := sort.SearchStrings(one.Modules, m); i >= len(one.Modules) || one.Modules[i] != m {
			t.Errorf("module %s not included: %v", m, one.Modules)
		}
	}
	if entryLine(list, "bin/busybox") != "" {
		t.Error("the boot initramfs carries busybox")
	}
	_, err = BootInitramfs(context.Background(), BootRequest{Kestrel: standIn, ModulesDir: t.TempDir(), Output: filepath.Join(out, "c.cpio.gz")})
	if !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("want NOT_FOUND, got %v", err)
	}
	if _, err := os.Stat(filepath.Join(out, "c.cpio.gz")); !os.IsNotExist(err) {
		t.Fatal("failed boot initramfs left a file")
	}
}

// --- oci_rootfs ---

func sampleLayout(t *testing.T, compression string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	if _, err := imagetest.WriteLayout(dir, "v1", imagetest.Sample(compression)); err != nil {
		t.Fatal(err)
	}
	return dir
}

func rootfsToml(image string) string {
	return `version = "1"
strategy = "oci_rootfs"

[agent]
local = "/bin/busybox"

[source]
image = "` + image + `"
insecure = true

[workload]
env = { EXTRA = "1" }

[resources]
memory_mb = 256

[mappings]
"conf/app.yaml" = "/etc/app/app.yaml"
"tools/helper" = "/usr/local/bin/helper"
"www" = "/app/www"
`
}

var rootfsFiles = map[string]string{
	"conf/app.yaml":  "a: 1\n",
	"tools/helper":   "#!/bin/sh\n",
	"www/index.html": "<h1>hi</h1>\n",
}

func needE2fs(t *testing.T) {
	t.Helper()
	ext4test.Require(t)
}

// checkRootfsImage checks an image built from imagetest.Sample with
// rootfsToml's mappings.
func checkRootfsImage(t *testing.T, img string) {
	t.Helper()
	ext4test.Fsck(t, img)
	has := func(dir string, want, not []string) {
		t.Helper()
		ls := ext4test.Debugfs(t, img, "ls -l "+dir)
		for _, w := range want {
			if !strings.Contains(ls, " "+w+"\n") && !strings.HasSuffix(strings.TrimSpace(ls), " "+w) {
				t.Errorf("%s/%s missing:\n%s", dir, w, ls)
			}
		}
		for _, n := range not {
			if strings.Contains(ls, " "+n+"\n") {
				t.Errorf("%s/%s should be gone (whiteout):\n%s", dir, n, ls)
			}
		}
	}
	has("/data", []string{"keep.txt", "new.txt"}, []string{"old.txt", ".wh.old.txt"})
	has("/opt/old", []string{"c"}, []string{"a", "b", ".wh..wh..opq"})
	has("/", []string{"proc", "sys", "dev", "run", "tmp", "srv", "app"}, nil)
	stat := func(p string) string { return ext4test.Debugfs(t, img, "stat "+p) }
	for p, want := range map[string][]string{
		"/bin/kestrel":          {"Mode:  0755", "User:     0   Group:     0", "regular"},
		"/etc/app/app.yaml":     {"Mode:  0644", "User:     0   Group:     0"},
		"/usr/local/bin/helper": {"Mode:  0755"},
		"/app/www/index.html":   {"Mode:  0644"},
		"/app/config.txt":       {"Mode:  0640", "User:  1000   Group:  1001"},
		"/app/null":             {"character special", "Device major/minor number: 01:03"},
		"/usr/bin/app":          {"Links: 2"},
		"/bin/app":              {"symlink", `Fast link dest: "/usr/bin/app"`},
		"/tmp":                  {"Mode:  01777", "directory"},
	} {
		s := stat(p)
		for _, w := range want {
			if !strings.Contains(s, w) {
				t.Errorf("%s: %q not in\n%s", p, w, s)
			}
		}
	}
	if cat := ext4test.Debugfs(t, img, "cat /app/config.txt"); !strings.Contains(cat, "v2") {
		t.Errorf("config.txt is not the upper layer's: %q", cat)
	}
	if x := ext4test.Debugfs(t, img, "ea_list /usr/bin/app"); !strings.Contains(x, "user.fledge") {
		t.Errorf("xattr lost: %s", x)
	}
}

func TestBuildRootfsFromOCILayout(t *testing.T) {
	requireRoot(t)
	needE2fs(t)
	layout := sampleLayout(t, "")
	dir := project(t, rootfsToml("oci:"+layout+":v1"), rootfsFiles)
	res, out, err := build(t, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("result: %+v filesystem %+v", res, res.Filesystem)
	if res.Name != "layout" || res.Version != "v1" || res.Artifact != filepath.Join(out, "layout.img") {
		t.Fatalf("result %+v", res)
	}
	if sha(t, res.Artifact) != res.SHA256 {
		t.Fatal("reported sha256 is not the file's")
	}
	checkRootfsImage(t, res.Artifact)

	m := readManifest(t, res.Manifest)
	if m.Rootfs == nil || m.Rootfs.URL != "file://"+res.Artifact || m.Rootfs.Checksum != "sha256:"+res.SHA256 || m.Rootfs.FSType != "ext4" || m.Rootfs.Format != "raw" {
		t.Fatalf("manifest rootfs %+v", m.Rootfs)
	}
	w := m.Workload
	if strings.Join(w.Entrypoint, " ") != "/usr/bin/app --serve" || w.Workdir != "/app" || w.User != "1000:1001" ||
		w.Env["APP_MODE"] != "test" || w.Env["EXTRA"] != "1" || w.Env["PATH"] != "/usr/bin:/bin" ||
		w.BaseURL != "http://127.0.0.1:8080" || w.Type != "http" {
		t.Fatalf("workload from the image config: %+v", w)
	}
	if m.Labels[ExposedPortsLabel] != "53/udp,8080/tcp,9090/tcp" ||
		m.Labels[EntrypointLabel] != `["/usr/bin/app"]` || m.Labels[CmdLabel] != `["--serve"]` {
		t.Fatalf("labels %v", m.Labels)
	}
	// Kubernetes' args replace the image's Cmd, keeping its Entrypoint.
	if got := w.ResolveCommand(m.Labels, nil, []string{"--check"}); strings.Join(got, " ") != "/usr/bin/app --check" {
		t.Fatalf("args over the image's Cmd: %q", got)
	}
	// The image serves on 8080, so kestrel's API takes the next free port.
	if m.AgentPort() != 8081 {
		t.Fatalf("agent port %d, want 8081 beside a workload on 8080", m.AgentPort())
	}
	if m.Image != res.Image || !strings.HasPrefix(m.ImageDigest, "sha256:") || m.Resources.MemoryMB != 256 {
		t.Fatalf("manifest image %q %q resources %+v", m.Image, m.ImageDigest, m.Resources)
	}
	if fs := res.Filesystem; fs == nil || fs.FreeBytes < 7<<20 || fs.SizeBytes > 32<<20 {
		t.Fatalf("filesystem %+v", fs)
	}

	// Reproducible: a second build (other output, sources touched) gives
	// the same bytes.
	later := time.Now().Add(time.Hour)
	filepath.Walk(dir, func(p string, _ os.FileInfo, _ error) error { return os.Chtimes(p, later, later) })
	time.Sleep(1100 * time.Millisecond)
	two, _, err := build(t, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if two.SHA256 != res.SHA256 {
		t.Fatalf("not reproducible: %s vs %s", res.SHA256, two.SHA256)
	}
}

func TestBuildRootfsTomlOverridesImage(t *testing.T) {
	requireRoot(t)
	needE2fs(t)
	layout := sampleLayout(t, "gzip")
	toml := rootfsToml("oci:"+layout+":v1") + `
[plugin]
name = "app"
version = "2.0"
`
	toml = strings.Replace(toml, `env = { EXTRA = "1" }`, `env = { APP_MODE = "prod" }
entrypoint = ["/bin/app", "--once"]
user = "0:0"
workdir = "/srv"
type = "exec"`, 1)
	toml = strings.Replace(toml, "[resources]", "[filesystem]\nsize_buffer_mb = 40\n\n[resources]", 1)
	res, _, err := build(t, project(t, toml, rootfsFiles), nil)
	if err != nil {
		t.Fatal(err)
	}
	m := readManifest(t, res.Manifest)
	w := m.Workload
	if res.Name != "app" || m.Version != "2.0" || strings.Join(w.Entrypoint, " ") != "/bin/app --once" ||
		w.User != "0:0" || w.Workdir != "/srv" || w.Env["APP_MODE"] != "prod" || w.BaseURL != "" || w.Type != "exec" {
		t.Fatalf("toml did not override the image: %+v", w)
	}
	if res.Filesystem.FreeBytes < 36<<20 {
		t.Fatalf("size_buffer_mb = 40 gave %d free bytes", res.Filesystem.FreeBytes)
	}
}

func TestBuildRootfsFromRegistry(t *testing.T) {
	requireRoot(t)
	needE2fs(t)
	addr := imagetest.Registry(t, netnstest.SkipOrFail)
	layout := sampleLayout(t, "gzip")
	if err := imagetest.Copy(context.Background(), "oci:"+layout+":v1", "docker://"+addr+"/acme/sample:1.5", true); err != nil {
		t.Fatal(err)
	}
	res, _, err := build(t, project(t, rootfsToml(addr+"/acme/sample:1.5"), rootfsFiles), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Name != "sample" || res.Version != "1.5" || res.Image != "docker://"+addr+"/acme/sample:1.5" {
		t.Fatalf("result %+v", res)
	}
	checkRootfsImage(t, res.Artifact)
}

func TestBuildRootfsRefusesMappingOverKestrel(t *testing.T) {
	requireRoot(t)
	layout := sampleLayout(t, "")
	toml := rootfsToml("oci:"+layout+":v1") + `"conf/app.yaml2" = "/bin/kestrel"` + "\n"
	files := map[string]string{"conf/app.yaml2": "x"}
	for k, v := range rootfsFiles {
		files[k] = v
	}
	_, out, err := build(t, project(t, toml, files), nil)
	if !apierr.Is(err, apierr.InvalidInput) || !strings.Contains(err.Error(), "kestrel") {
		t.Fatalf("want INVALID_INPUT, got %v", err)
	}
	if l := leftovers(t, out); len(l) != 0 {
		t.Fatalf("failed build left %v", l)
	}
}

// The example projects under examples/fledge parse, and the initramfs ones
// build.
func TestExamples(t *testing.T) {
	files, _ := filepath.Glob("../../examples/fledge/*/fledge.toml")
	if len(files) < 3 {
		t.Fatalf("examples not found: %v", files)
	}
	for _, f := range files {
		c, err := Load(f)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if c.Strategy != StrategyInitramfs {
			continue
		}
		needBusybox(t)
		out := t.TempDir()
		res, err := Build(context.Background(), Request{Config: f, OutputDir: out, Kestrel: standIn})
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		readManifest(t, res.Manifest)
	}
}
