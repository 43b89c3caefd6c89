package jail

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// readAs reports whether uid can read path (a real open by a process
// running as uid).
func readAs(t *testing.T, path string, uid uint32) bool {
	t.Helper()
	cmd := exec.Command("cat", path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	return cmd.Run() == nil
}

// TestGrantRead: a 0600 root file becomes readable by the granted uids
// only, each undo takes away its own uid's access, and the last one leaves
// the file as it was (mode and no ACL).
func TestGrantRead(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to open files as other uids")
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755) // t.TempDir makes its parent 0700
	path := filepath.Join(dir, "volume.img")
	if err := os.WriteFile(path, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	const a, b, other = 1<<30 + 7, 1<<30 + 8, 1<<30 + 9
	if readAs(t, path, a) {
		t.Fatal("uid a reads a 0600 file before any grant")
	}
	undoA, err := GrantRead(path, a)
	if err != nil {
		t.Fatal(err)
	}
	undoB, err := GrantRead(path, b)
	if err != nil {
		t.Fatal(err)
	}
	if !readAs(t, path, a) || !readAs(t, path, b) {
		t.Fatal("a granted uid cannot read")
	}
	if readAs(t, path, other) {
		t.Fatal("a uid that was not granted reads")
	}
	if err := undoA(); err != nil {
		t.Fatal(err)
	}
	if readAs(t, path, a) || !readAs(t, path, b) {
		t.Fatal("undoing a's grant took the wrong access")
	}
	if err := undoB(); err != nil {
		t.Fatal(err)
	}
	if readAs(t, path, b) {
		t.Fatal("b still reads after its undo")
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %o after the last undo, want 600", st.Mode().Perm())
	}
	if n, err := syscall.Getxattr(path, aclXattr, make([]byte, 64)); err == nil {
		t.Fatalf("an ACL of %d bytes is left", n)
	}
}
