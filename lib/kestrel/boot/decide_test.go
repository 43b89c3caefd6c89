package boot

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/volantvm/volant/lib/bootargs"
	"github.com/volantvm/volant/lib/manifest"
)

func TestDecide(t *testing.T) {
	initrd := &manifest.Manifest{Name: "web", Initramfs: &manifest.Artifact{URL: "/x"}}
	rootfs := &manifest.Manifest{Name: "db", Rootfs: &manifest.Rootfs{URL: "/y", FSType: "xfs"}}
	for _, tc := range []struct {
		name   string
		args   bootargs.Args
		m      *manifest.Manifest
		mode   Mode
		dev    string
		fstype string
	}{
		{"explicit initramfs ignores a rootfs manifest", bootargs.Args{Boot: "initramfs"}, rootfs, ModeInitramfs, "", ""},
		{"explicit rootfs, default device", bootargs.Args{Boot: "rootfs"}, nil, ModeRootfs, "/dev/vda", ""},
		{"explicit rootfs, given device and fstype", bootargs.Args{Boot: "rootfs", RootfsDevice: "/dev/vdb", RootfsFSType: "ext4"}, rootfs, ModeRootfs, "/dev/vdb", "ext4"},
		{"auto: initramfs manifest never takes a disk", bootargs.Args{Boot: "auto", RootfsDevice: "/dev/vda"}, initrd, ModeInitramfs, "", ""},
		{"auto unset: initramfs manifest", bootargs.Args{}, initrd, ModeInitramfs, "", ""},
		{"auto: rootfs manifest, fstype from manifest", bootargs.Args{}, rootfs, ModeRootfs, "/dev/vda", "xfs"},
		{"auto without manifest probes", bootargs.Args{Boot: "auto"}, nil, ModeProbe, "/dev/vda", ""},
	} {
		p := Decide(tc.args, tc.m)
		if p.Mode != tc.mode || p.Device != tc.dev || p.FSType != tc.fstype || p.Why == "" {
			t.Errorf("%s: %+v", tc.name, p)
		}
	}
}

func mkfile(t *testing.T, root, p string, mode os.FileMode) {
	t.Helper()
	full := filepath.Join(root, p)
	os.MkdirAll(filepath.Dir(full), 0o755)
	if err := os.WriteFile(full, []byte("#!/bin/sh\n"), mode); err != nil {
		t.Fatal(err)
	}
}

func TestLooksLikeRoot(t *testing.T) {
	m := func(ep ...string) *manifest.Manifest {
		return &manifest.Manifest{Workload: manifest.Workload{Entrypoint: ep}}
	}
	data := t.TempDir() // a data disk: files, no kestrel, no programs
	mkfile(t, data, "/records/0001.json", 0o644)
	if ok, why := LooksLikeRoot(data, nil); ok || why == "" {
		t.Fatal("a data disk taken for a root without a manifest")
	}
	if ok, _ := LooksLikeRoot(data, m("/usr/sbin/nginx")); ok {
		t.Fatal("a data disk taken for nginx's root")
	}

	withKestrel := t.TempDir()
	mkfile(t, withKestrel, "/usr/local/bin/kestrel", 0o755)
	if ok, _ := LooksLikeRoot(withKestrel, nil); !ok || KestrelOn(withKestrel) != "/usr/local/bin/kestrel" {
		t.Fatal("kestrel marker not found")
	}
	nonExec := t.TempDir()
	mkfile(t, nonExec, "/bin/kestrel", 0o644)
	if KestrelOn(nonExec) != "" {
		t.Fatal("non-executable kestrel accepted")
	}

	// A merged-/usr image: /bin -> usr/bin, /usr/bin/busybox, /usr/bin/httpd -> busybox.
	merged := t.TempDir()
	mkfile(t, merged, "/usr/bin/busybox", 0o755)
	os.Symlink("usr/bin", filepath.Join(merged, "bin"))
	os.Symlink("/usr/bin/busybox", filepath.Join(merged, "usr/bin/httpd"))
	for _, ep := range []string{"/bin/httpd", "httpd", "/usr/bin/busybox", "busybox"} {
		if ok, why := LooksLikeRoot(merged, m(ep, "-f")); !ok {
			t.Errorf("entrypoint %s not found: %s", ep, why)
		}
	}
	if ok, _ := LooksLikeRoot(merged, m("/bin/missing")); ok {
		t.Error("missing entrypoint accepted")
	}
	// A link that escapes to the host's root must not count.
	escape := t.TempDir()
	os.MkdirAll(filepath.Join(escape, "bin"), 0o755)
	os.Symlink("../../../../../../bin/sh", filepath.Join(escape, "bin/sh"))
	if ok, _ := LooksLikeRoot(escape, m("/bin/sh")); ok {
		t.Error("entrypoint resolved outside the root")
	}
}
