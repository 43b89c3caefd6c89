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
