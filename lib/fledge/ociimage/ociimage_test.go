package ociimage

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/fetch"
	"github.com/volantvm/volant/lib/testutil/imagetest"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

func TestParseReference(t *testing.T) {
	// dir: resolves its parent directory's symlinks, so it must exist.
	tmp, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ in, want string }{
		{"nginx:alpine", "docker://docker.io/library/nginx:alpine"},
		{"docker://nginx", "docker://docker.io/library/nginx:latest"},
		{"localhost:5000/app:1", "docker://localhost:5000/app:1"},
		{"127.0.0.1:5000/team/app:2", "docker://127.0.0.1:5000/team/app:2"},
		{"oci:/tmp/layout:v1", "oci:/tmp/layout:v1"},
		{"docker-archive:/tmp/a.tar", "docker-archive:/tmp/a.tar"},
		{"dir:" + tmp + "/Some-Image", "dir:" + tmp + "/Some-Image"},
	} {
		ref, err := ParseReference(tc.in)
		if err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		if got := Canonical(ref); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.in, got, tc.want)
		}
	}
	for _, bad := range []string{"", "  ", "docker://UPPER/Case", "nosuchtransport://x", "tarball:/tmp/x.tar", "containers-storage:nginx"} {
		if _, err := ParseReference(bad); !apierr.Is(err, apierr.InvalidInput) {
			t.Errorf("%q: want INVALID_INPUT, got %v", bad, err)
		}
	}
}

func TestDefaultName(t *testing.T) {
	tmp := t.TempDir()
	os.Mkdir(filepath.Join(tmp, "web-app"), 0o755)
	for _, tc := range []struct{ in, name, tag string }{
		{"nginx:alpine", "nginx", "alpine"},
		{"ghcr.io/acme/my.app:1.2", "my-app", "1.2"},
		{"oci:" + tmp + "/web-app:v3", "web-app", "v3"},
		{"oci-archive:" + tmp + "/caddy.tar", "caddy", ""},
		{"dir:" + tmp + "/My-Image", "my-image", ""},
	} {
		ref, err := ParseReference(tc.in)
		if err != nil {
			t.Fatal(err)
		}
		name, tag := DefaultName(ref)
		if name != tc.name || tag != tc.tag {
			t.Errorf("%s: got %q %q, want %q %q", tc.in, name, tag, tc.name, tc.tag)
		}
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		netnstest.SkipOrFail(t, "unpacking images keeps owners only as root")
	}
}

func layout(t *testing.T, img imagetest.Image) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	if _, err := imagetest.WriteLayout(dir, "v1", img); err != nil {
		t.Fatal(err)
	}
	return dir
}

// checkSample verifies what imagetest.Sample unpacks to.
func checkSample(t *testing.T, root string) {
	t.Helper()
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil {
			t.Fatalf("reading %s: %v", p, err)
		}
		return string(b)
	}
	gone := func(p string) {
		if _, err := os.Lstat(filepath.Join(root, p)); !os.IsNotExist(err) {
			t.Errorf("%s should have been removed by a whiteout (err %v)", p, err)
		}
	}
	if got := read("app/config.txt"); got != "v2\n" {
		t.Errorf("config.txt = %q, want the upper layer's", got)
	}
	gone("data/old.txt")
	gone("data/.wh.old.txt")
	gone("opt/old/a")
	gone("opt/old/b")
	gone("opt/old/.wh..wh..opq")
	if read("data/keep.txt") != "keep\n" || read("data/new.txt") != "new\n" || read("opt/old/c") != "c\n" {
		t.Error("files beside the whiteouts are wrong")
	}
	if l, err := os.Readlink(filepath.Join(root, "bin/app")); err != nil || l != "/usr/bin/app" {
		t.Errorf("symlink bin/app -> %q, %v", l, err)
	}
	if l, err := os.Readlink(filepath.Join(root, "app/current")); err != nil || l != "config.txt" {
		t.Errorf("symlink app/current -> %q, %v", l, err)
	}
	var a, b syscall.Stat_t
	if err := syscall.Stat(filepath.Join(root, "usr/bin/app"), &a); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(filepath.Join(root, "usr/bin/app-link"), &b); err != nil {
		t.Fatal(err)
	}
	if a.Ino != b.Ino || a.Nlink != 2 {
		t.Errorf("hard link lost: inodes %d %d, nlink %d", a.Ino, b.Ino, a.Nlink)
	}
	if a.Mode&0o777 != 0o755 {
		t.Errorf("usr/bin/app mode %o", a.Mode&0o777)
	}
	var c syscall.Stat_t
	if err := syscall.Lstat(filepath.Join(root, "app/config.txt"), &c); err != nil {
		t.Fatal(err)
	}
	if c.Uid != 1000 || c.Gid != 1001 || c.Mode&0o777 != 0o640 {
		t.Errorf("app/config.txt owner %d:%d mode %o", c.Uid, c.Gid, c.Mode&0o777)
	}
	var d syscall.Stat_t
	if err := syscall.Lstat(filepath.Join(root, "app/null"), &d); err != nil {
		t.Fatal(err)
	}
	if d.Mode&syscall.S_IFMT != syscall.S_IFCHR || unix.Major(d.Rdev) != 1 || unix.Minor(d.Rdev) != 3 {
		t.Errorf("device node app/null: mode %o rdev %d", d.Mode, d.Rdev)
	}
	x := make([]byte, 16)
	n, err := unix.Lgetxattr(filepath.Join(root, "usr/bin/app"), "user.fledge", x)
	if err != nil || string(x[:n]) != "yes" {
		t.Errorf("xattr user.fledge = %q, %v", x[:n], err)
	}
}

func TestUnpackOCILayout(t *testing.T) {
	requireRoot(t)
	dir := layout(t, imagetest.Sample(""))
	root := filepath.Join(t.TempDir(), "rootfs")
	img, err := Unpack(context.Background(), "oci:"+dir+":v1", root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	checkSample(t, root)
	if img.Layers != 3 || img.Bytes == 0 || !strings.HasPrefix(img.Digest, "sha256:") {
		t.Fatalf("image %+v", img)
	}
	if got := img.Config.Config.Entrypoint; len(got) != 1 || got[0] != "/usr/bin/app" {
		t.Fatalf("config entrypoint %v", got)
	}
}

func TestUnpackRegistryAndDockerArchive(t *testing.T) {
	requireRoot(t)
	addr := imagetest.Registry(t, netnstest.SkipOrFail)
	// Docker's format has no zstd layers: use gzip throughout.
	dir := layout(t, imagetest.Sample("gzip"))
	ctx := context.Background()
	if err := imagetest.Copy(ctx, "oci:"+dir+":v1", "docker://"+addr+"/fledge/sample:v1", true); err != nil {
		t.Fatalf("pushing to the registry: %v", err)
	}
	root := filepath.Join(t.TempDir(), "rootfs")
	img, err := Unpack(ctx, addr+"/fledge/sample:v1", root, Options{Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	checkSample(t, root)
	if img.Ref != "docker://"+addr+"/fledge/sample:v1" {
		t.Fatalf("ref %s", img.Ref)
	}

	// Without insecure the plain-HTTP registry is refused with a hint.
	_, err = Unpack(ctx, addr+"/fledge/sample:v1", filepath.Join(t.TempDir(), "r"), Options{})
	if !apierr.Is(err, apierr.Unavailable) || !strings.Contains(apierr.From(err).Details["hint"].(string), "insecure") {
		t.Fatalf("want UNAVAILABLE with an insecure hint, got %v", err)
	}
	// A tag that does not exist.
	_, err = Unpack(ctx, addr+"/fledge/sample:nope", filepath.Join(t.TempDir(), "r"), Options{Insecure: true})
	if !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("want NOT_FOUND, got %v", err)
	}

	// Docker format, through a docker-archive.
	arch := filepath.Join(t.TempDir(), "sample.tar")
	if err := imagetest.Copy(ctx, "oci:"+dir+":v1", "docker-archive:"+arch+":fledge/sample:v1", false); err != nil {
		t.Fatal(err)
	}
	root2 := filepath.Join(t.TempDir(), "rootfs")
	if _, err := Unpack(ctx, "docker-archive:"+arch, root2, Options{}); err != nil {
		t.Fatal(err)
	}
	checkSample(t, root2)
}

func TestUnpackDetectsCorruptLayer(t *testing.T) {
	requireRoot(t)
	dir := layout(t, imagetest.Sample(""))
	// Flip a byte in the uncompressed (third) layer: same size, other digest.
	blobs, _ := filepath.Glob(filepath.Join(dir, "blobs/sha256/*"))
	corrupted := false
	for _, b := range blobs {
		data, _ := os.ReadFile(b)
		if i := strings.Index(string(data), "hello from fledge"); i >= 0 {
			data[i] = 'j'
			os.WriteFile(b, data, 0o644)
			corrupted = true
		}
	}
	if !corrupted {
		t.Fatal("layer not found")
	}
	_, err := Unpack(context.Background(), "oci:"+dir+":v1", filepath.Join(t.TempDir(), "rootfs"), Options{})
	if !apierr.Is(err, apierr.ChecksumMismatch) {
		t.Fatalf("want CHECKSUM_MISMATCH, got %v", err)
	}
}

func TestUnpackRefusesOtherArchitecture(t *testing.T) {
	requireRoot(t)
	img := imagetest.Sample("")
	img.Arch = "arm64"
	dir := layout(t, img)
	_, err := Unpack(context.Background(), "oci:"+dir+":v1", filepath.Join(t.TempDir(), "rootfs"), Options{})
	if !apierr.Is(err, apierr.InvalidInput) || !strings.Contains(err.Error(), "arm64") {
		t.Fatalf("want INVALID_INPUT naming arm64, got %v", err)
	}
}

func TestUnpackSignaturePolicy(t *testing.T) {
	requireRoot(t)
	dir := layout(t, imagetest.Sample(""))
	pol := filepath.Join(t.TempDir(), "policy.json")
	os.WriteFile(pol, []byte(`{"default":[{"type":"reject"}]}`), 0o644)
	_, err := Unpack(context.Background(), "oci:"+dir+":v1", filepath.Join(t.TempDir(), "rootfs"), Options{PolicyPath: pol})
	if !apierr.Is(err, apierr.PermissionDenied) {
		t.Fatalf("want PERMISSION_DENIED, got %v", err)
	}
}

func TestUnpackMissingLayout(t *testing.T) {
	requireRoot(t)
	_, err := Unpack(context.Background(), "oci:/nonexistent/layout:v1", filepath.Join(t.TempDir(), "rootfs"), Options{})
	if !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("want NOT_FOUND, got %v", err)
	}
}

// skopeo runs Debian's skopeo: the images below are written by it, not by
// this project's code, so fledge reads what users' tools write.
func skopeo(t *testing.T, args ...string) string {
	t.Helper()
	bin, err := exec.LookPath("skopeo")
	if err != nil {
		netnstest.SkipOrFail(t, "skopeo not installed (scripts/install-deps.sh)")
	}
	out, err := exec.Command(bin, append([]string{"--insecure-policy"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("skopeo %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Every transport docs/fledge.md lists, each with an image skopeo wrote
// (gzip and zstd layers), in directories whose names have capitals.
func TestUnpackEveryTransportFromSkopeo(t *testing.T) {
	requireRoot(t)
	src := "oci:" + layout(t, imagetest.Sample("gzip")) + ":v1"
	addr := imagetest.Registry(t, netnstest.SkipOrFail)
	base := filepath.Join(t.TempDir(), "Images")
	if err := os.Mkdir(base, 0o755); err != nil {
		t.Fatal(err)
	}
	zstd := []string{"--dest-compress", "--dest-compress-format", "zstd"}
	for _, tc := range []struct {
		name string
		src  string   // what skopeo copies ("" = the sample layout)
		dest string   // where skopeo writes
		ref  string   // what fledge is given ("" = dest)
		opts []string // skopeo copy options
		zstd bool
	}{
		{name: "dir", dest: "dir:" + base + "/Dir-Image"},
		{name: "dir zstd", dest: "dir:" + base + "/Dir-Zstd", opts: zstd, zstd: true},
		{name: "oci", dest: "oci:" + base + "/OCI-Layout:v2"},
		{name: "oci zstd, tag omitted", dest: "oci:" + base + "/OCI-Zstd:v3", ref: "oci:" + base + "/OCI-Zstd", opts: zstd, zstd: true},
		{name: "oci-archive zstd", dest: "oci-archive:" + base + "/Image-Zstd.tar", opts: zstd, zstd: true},
		{name: "oci-archive", dest: "oci-archive:" + base + "/Image.tar"},
		{name: "docker-archive", dest: "docker-archive:" + base + "/Docker.tar:fledge/sample:v1"},
		{name: "docker registry v2s2", dest: "docker://" + addr + "/fledge/skopeo:v2s2", ref: addr + "/fledge/skopeo:v2s2",
			opts: []string{"--format", "v2s2", "--dest-tls-verify=false"}},
		// skopeo reuses the registry's gzip blobs rather than recompress:
		// push the zstd layout it wrote above.
		{name: "docker registry zstd", src: "oci:" + base + "/OCI-Zstd:v3", dest: "docker://" + addr + "/fledge/skopeo:zstd",
			ref: "docker://" + addr + "/fledge/skopeo:zstd", opts: []string{"--dest-tls-verify=false"}, zstd: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			from := src
			if tc.src != "" {
				from = tc.src
			}
			skopeo(t, append(append([]string{"copy", "-q"}, tc.opts...), from, tc.dest)...)
			if tc.zstd {
				raw := skopeo(t, "inspect", "--raw", "--tls-verify=false", tc.dest)
				if !strings.Contains(raw, "zstd") {
					t.Fatalf("skopeo wrote no zstd layer:\n%s", raw)
				}
			}
			ref := tc.ref
			if ref == "" {
				ref = strings.TrimSuffix(tc.dest, ":fledge/sample:v1")
			}
			root := filepath.Join(t.TempDir(), "rootfs")
			img, err := Unpack(context.Background(), ref, root, Options{Insecure: true})
			if err != nil {
				t.Fatalf("%s: %v", ref, err)
			}
			checkSample(t, root)
			if img.Layers != 3 {
				t.Fatalf("%d layers", img.Layers)
			}
		})
	}
}

// A registry that stops answering fails the fetch with TIMEOUT: one that
// never sends a response (while resolving), and one that stops half way
// through a layer.
func TestUnpackRegistryThatStopsAnswering(t *testing.T) {
	requireRoot(t)
	dir := layout(t, imagetest.Sample("gzip"))
	quick := Options{Insecure: true, Timeouts: fetch.Options{ConnectTimeout: 200 * time.Millisecond, HeaderTimeout: 200 * time.Millisecond, StallTimeout: 300 * time.Millisecond}}
	// The same registry that serves the image works.
	ok := imagetest.StallingRegistry(t, dir, "v1", imagetest.StallNever)
	if _, err := Unpack(context.Background(), ok+"/fledge/sample:v1", filepath.Join(t.TempDir(), "r"), quick); err != nil {
		t.Fatalf("a registry that answers: %v", err)
	}
	for _, stall := range []imagetest.Stall{imagetest.StallHeaders, imagetest.StallLayers} {
		addr := imagetest.StallingRegistry(t, dir, "v1", stall)
		t0 := time.Now()
		_, err := Unpack(context.Background(), addr+"/fledge/sample:v1", filepath.Join(t.TempDir(), "r"), quick)
		if !apierr.Is(err, apierr.Timeout) || time.Since(t0) > 10*time.Second {
			t.Errorf("stall %d: after %s: %v", stall, time.Since(t0), err)
		}
	}
}
