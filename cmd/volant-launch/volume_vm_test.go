package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestVMRunWithVolume: `volant-launch run --volume IMG:/www` attaches an
// ext4 image made by mkfs.ext4 -d (as a pipeline would), kestrel mounts it
// over the initramfs's /www before the workload starts, so httpd serves
// the volume's page; after the stop the image is clean (kestrel unmounted
// it before powering off).
func TestVMRunWithVolume(t *testing.T) {
	const name = "vmvol1"
	w := newWorld(t, name)
	if w.guest.kind != "kestrel" {
		t.Skip("volumes are mounted by kestrel; this tree has none")
	}
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "index.html"), []byte("hello from the volume\n"), 0o644)
	img := filepath.Join(w.dir, "www.img")
	if out, err := exec.Command("truncate", "-s", "32M", img).CombinedOutput(); err != nil {
		t.Fatalf("truncate: %v %s", err, out)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", src, img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	argv := w.launch(t, "argv", "--manifest", w.guest.manifest, "--kernel", w.kernelDir, "--name", name, "--vmm", "qemu", "--volume", img+":/www")
	if !strings.Contains(strings.Join(toStrings(argv["argv"]), " "), "serial=volant-vol0") || !strings.Contains(argv["cmdline"].(string), "volant.volumes=volant-vol0:/www") {
		t.Fatalf("argv does not attach the volume: %v", argv)
	}
	// The plugin carries the base modules only (as fledge builds it); the
	// disk modules come in a layer over it.
	var layers []string
	for _, l := range argv["initrd"].(map[string]any)["layers"].([]any) {
		layers = append(layers, l.(map[string]any)["what"].(string))
	}
	if strings.Join(layers, ",") != "plugin,modules" {
		t.Fatalf("initrd layers %v, want plugin,modules", layers)
	}

	cmd, _, errb := w.start(t, name, "--volume", img+":/www", "--stop-timeout", "20s")
	w.waitHealthy(t, 90*time.Second)
	body, err := w.get(":80/index.html", 5*time.Second)
	if err != nil || body != "hello from the volume\n" {
		log, _ := os.ReadFile(w.log)
		t.Fatalf("the workload served %q (%v), not the volume's page\nconsole:\n%s", body, err, log)
	}
	log, _ := os.ReadFile(w.log)
	if !strings.Contains(string(log), "volume mounted") {
		t.Errorf("kestrel did not say it mounted the volume:\n%s", log)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("volant-launch run: %v\n%s", err, errb)
	}
	out, err := exec.Command("dumpe2fs", "-h", img).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Filesystem state:         clean") {
		t.Errorf("the volume is not clean after the stop: %v\n%s", err, out)
	}
}

func toStrings(v any) []string {
	var out []string
	for _, x := range v.([]any) {
		out = append(out, x.(string))
	}
	return out
}
