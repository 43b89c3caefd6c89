package access

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/volantvm/volant/lib/agentchan"
)

// An input file /etc/hostname names the host, as an init does at boot
// (a pod's name where the boot named the host after its VM); no such
// file leaves the name alone, and a name the kernel refuses fails the
// inputs, so the workload does not start under a wrong name.
func TestInputsHostname(t *testing.T) {
	var named []string
	in := NewInputs(t.TempDir())
	in.SetHostname = func(name string) error { named = append(named, name); return nil }
	err := in.apply(&agentchan.Inputs{Files: []agentchan.InputFile{
		{Path: "/etc/app.conf", Data: []byte("x\n")},
		{Path: "/etc/hostname", Data: []byte("web-7d9f-abcde\nignored\n")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(named, []string{"web-7d9f-abcde"}) {
		t.Fatalf("hostnames set: %q", named)
	}
	if b, _ := os.ReadFile(filepath.Join(in.Root, "etc", "hostname")); string(b) != "web-7d9f-abcde\nignored\n" {
		t.Fatalf("/etc/hostname holds %q", b)
	}

	named = nil
	in = NewInputs(t.TempDir())
	in.SetHostname = func(name string) error { named = append(named, name); return nil }
	if err := in.apply(&agentchan.Inputs{Files: []agentchan.InputFile{{Path: "/etc/hosts", Data: []byte("127.0.0.1 x\n")}}}); err != nil || named != nil {
		t.Fatalf("without /etc/hostname: %v, named %q", err, named)
	}

	in = NewInputs(t.TempDir())
	in.SetHostname = func(string) error { return errors.New("invalid argument") }
	if err := in.apply(&agentchan.Inputs{Files: []agentchan.InputFile{{Path: "/etc/hostname", Data: []byte("x\n")}}}); err == nil {
		t.Fatal("a refused hostname was not an error")
	}
}

// Input files replace what is there whole (a temporary file beside it,
// synced, renamed over it), with their own mode past the umask, and a
// symlink at the path is replaced, never written through; no temporary
// file is left behind.
func TestInputsReplaceFiles(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	etc := filepath.Join(root, "etc")
	os.MkdirAll(etc, 0o755)
	os.WriteFile(filepath.Join(etc, "app.conf"), []byte("old\n"), 0o644)
	target := filepath.Join(outside, "target")
	os.WriteFile(target, []byte("outside\n"), 0o644)
	os.Symlink(target, filepath.Join(etc, "link"))
	in := NewInputs(root)
	err := in.apply(&agentchan.Inputs{Files: []agentchan.InputFile{
		{Path: "/etc/app.conf", Data: []byte("new\n"), Mode: 0o666},
		{Path: "/etc/link", Data: []byte("input\n")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(etc, "app.conf")); string(b) != "new\n" {
		t.Errorf("app.conf holds %q", b)
	}
	if st, err := os.Stat(filepath.Join(etc, "app.conf")); err != nil || st.Mode().Perm() != 0o666 {
		t.Errorf("app.conf: %v %v, want mode 0666 (the input's, past the umask)", st.Mode(), err)
	}
	if st, err := os.Lstat(filepath.Join(etc, "link")); err != nil || !st.Mode().IsRegular() {
		t.Errorf("the symlink at /etc/link was not replaced by a file: %v", err)
	}
	if b, _ := os.ReadFile(target); string(b) != "outside\n" {
		t.Errorf("the input was written through the symlink: %q", b)
	}
	ents, _ := os.ReadDir(etc)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"app.conf", "link"}) {
		t.Errorf("/etc holds %q", names)
	}
}
