package main

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/testutil/ext4test"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// TestVMExecRootfs runs exec and cp in a rootfs plugin's guest: kestrel
// boots from the launcher's boot image, switches root to the plugin's
// ext4 disk and serves the agent channel from there. Commands run from the
// disk (its root is /dev/vda, ext4), statuses come back, a file copied in
// lands on the disk (read back with debugfs from the VM's image after a
// graceful stop) and comes back out with its checksum and mode.
func TestVMExecRootfs(t *testing.T) {
	const name = "rootfsexec1"
	kestrel := kestrelOrSkip(t)
	w := newWorld(t, name)
	bb, err := exec.LookPath("busybox")
	if err != nil {
		netnstest.SkipOrFail(t, "busybox-static is needed for the workload")
	}
	for _, tool := range []string{"mkfs.ext4", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			netnstest.SkipOrFail(t, "%s (e2fsprogs) is needed", tool)
		}
	}
	tree := filepath.Join(w.dir, "tree")
	for _, d := range []string{"bin", "srv", "tmp"} {
		os.MkdirAll(filepath.Join(tree, d), 0o755)
	}
	data, _ := os.ReadFile(bb)
	os.WriteFile(filepath.Join(tree, "bin", "busybox"), data, 0o755)
	for _, a := range []string{"sh", "cat", "grep", "sha256sum", "sleep", "true"} {
		os.Symlink("busybox", filepath.Join(tree, "bin", a))
	}
	os.WriteFile(filepath.Join(tree, "srv", "on-disk.txt"), []byte("from the plugin's disk\n"), 0o644)
	img := filepath.Join(w.dir, "root.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-d", tree, img, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	w.guest.manifest = filepath.Join(w.dir, "rootfs.json")
	os.WriteFile(w.guest.manifest, []byte(fmt.Sprintf(`{"name":"disk","version":"1","rootfs":{"url":%q,"checksum":"sha256:%s","format":"ext4"},"workload":{"entrypoint":["/bin/busybox","sleep","1000000"]}}`,
		img, sha256File(t, img))), 0o644)
	run, _, runErr := w.start(t, name, "--kestrel", kestrel)
	w.waitAgent(t, runErr)

	// The command runs on the disk: its root is /dev/vda, ext4.
	if res := w.execGuest(t, "sh", "-c", "grep ' / ' /proc/mounts; cat /srv/on-disk.txt; exit 3"); res.ExitCode != 3 ||
		!strings.Contains(res.Stdout, "/dev/vda / ext4") || !strings.Contains(res.Stdout, "from the plugin's disk\n") {
		t.Fatalf("exec in the rootfs guest: %+v", res)
	}
	if out, _, code := w.launchRaw(t, "line\n", "exec", "-i", "--dir", w.runDir, "--", "cat"); out != "line\n" || code != 0 {
		t.Errorf("exec -i cat: %q %d", out, code)
	}

	// cp in, onto the disk, and back out.
	blob := make([]byte, 4<<20)
	rand.Read(blob)
	src := filepath.Join(w.dir, "blob")
	os.WriteFile(src, blob, 0o640)
	os.Chmod(src, 0o640)
	sum := sha256.Sum256(blob)
	want := hex.EncodeToString(sum[:])
	if out, stderr, code := w.launchRaw(t, "", "cp", "--dir", w.runDir, src, ":/srv/"); code != 0 || !strings.Contains(out, `"direction":"in"`) {
		t.Fatalf("cp in: %d %s %s", code, out, stderr)
	}
	if res := w.execGuest(t, "sha256sum", "/srv/blob"); !strings.HasPrefix(res.Stdout, want) {
		t.Fatalf("the guest's checksum of the copy: %+v, want %s", res, want)
	}
	back := filepath.Join(w.dir, "back")
	if _, stderr, code := w.launchRaw(t, "", "cp", "--dir", w.runDir, ":/srv/blob", back); code != 0 {
		t.Fatalf("cp out: %d %s", code, stderr)
	}
	if got, _ := os.ReadFile(back); sha256.Sum256(got) != sum {
		t.Fatal("the file came back with another checksum")
	}
	if st, err := os.Stat(back); err != nil || st.Mode().Perm() != 0o640 {
		t.Errorf("the copy's mode: %v %v, want 0640", st.Mode(), err)
	}

	// The copy is on the VM's disk: after a graceful stop its image holds it.
	run.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- run.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v\n%s", err, runErr)
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("the VM did not stop:\n%s", runErr)
	}
	vmCopy := filepath.Join(w.dir, "state", "vms", name, "disks", "rootfs.img")
	onDisk := ext4test.Cat(t, vmCopy, "/srv/blob")
	if sha256.Sum256(onDisk) != sum {
		t.Fatalf("the VM's disk holds %d bytes at /srv/blob, not the file copied in", len(onDisk))
	}
}
