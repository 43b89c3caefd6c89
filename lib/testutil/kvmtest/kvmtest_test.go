package kvmtest

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/vmm"
)

// probeEnv makes the test binary report what a process sees, instead of
// running tests.
const probeEnv = "KVMTEST_PROBE"

type probe struct {
	Usable    bool
	Why       string
	Modules   int
	DevNull   bool
	DevPtsDir bool
	Submounts []string
}

func TestMain(m *testing.M) {
	if os.Getenv(probeEnv) == "1" {
		var p probe
		p.Usable, p.Why = vmm.KVMUsable(os.DirFS("/"))
		ents, _ := os.ReadDir("/sys/module")
		p.Modules = len(ents)
		p.DevNull = os.WriteFile("/dev/null", []byte("x"), 0) == nil
		if st, err := os.Stat("/dev/pts"); err == nil && st.IsDir() {
			p.DevPtsDir = true
		}
		mi, _ := os.ReadFile("/proc/self/mountinfo")
		for _, l := range strings.Split(string(mi), "\n") {
			if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], "/dev/") {
				p.Submounts = append(p.Submounts, f[4])
			}
		}
		json.NewEncoder(os.Stdout).Encode(p)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runProbe(t *testing.T, c *exec.Cmd) probe {
	t.Helper()
	var out, errb bytes.Buffer
	c.Env = append(os.Environ(), probeEnv+"=1")
	c.Stdout, c.Stderr = &out, &errb
	if err := c.Run(); err != nil {
		t.Fatalf("%v: %v: %s", c.Args, err, errb.String())
	}
	var p probe
	if err := json.Unmarshal(out.Bytes(), &p); err != nil {
		t.Fatalf("probe said %q: %v", out.String(), err)
	}
	return p
}

// The stand-in is accepted by the production check, /dev still works
// (devices and submounts), /sys/module is empty, and the host's /dev/kvm —
// whatever this host has — is not what the command sees.
func TestStandInIsUsable(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	host, hostWhy := vmm.KVMUsable(os.DirFS("/"))
	t.Logf("this host: KVM usable %v %s", host, hostWhy)
	p := runProbe(t, Command(t, self))
	if !p.Usable {
		t.Fatalf("stand-in KVM refused: %s", p.Why)
	}
	if p.Modules != 0 {
		t.Errorf("/sys/module has %d entries inside the wrapper", p.Modules)
	}
	if !p.DevNull || !p.DevPtsDir {
		t.Errorf("/dev lost its devices or submounts: %+v", p)
	}
	if _, err := os.Stat("/dev/kvm"); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	// The host keeps what it had: nothing leaked out of the namespace.
	if after, _ := vmm.KVMUsable(os.DirFS("/")); after != host {
		t.Fatalf("host's KVM answer changed from %v to %v", host, after)
	}
}

// A host whose /dev/kvm is a broken stand-in (an empty regular file bound
// over it, as on a machine with a half-working KVM): the production check
// refuses it there, and Wrap still gives a usable one inside.
func TestStandInOverABrokenDevice(t *testing.T) {
	Require(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	broken := func(cmd ...string) *exec.Cmd {
		return exec.Command("unshare", append([]string{"-m", "sh", "-c", script(false), "kvmtest-broken", t.TempDir()}, cmd...)...)
	}
	p := runProbe(t, broken(self))
	if p.Usable || !strings.Contains(p.Why, "KVM_GET_API_VERSION") {
		t.Fatalf("an empty file as /dev/kvm counts as usable (%v, %q): the simulation is wrong", p.Usable, p.Why)
	}
	prefix, files := Wrap(t)
	c := broken(append(prefix, self)...)
	c.ExtraFiles = files
	p = runProbe(t, c)
	if !p.Usable {
		t.Fatalf("stand-in refused over a broken device: %s", p.Why)
	}
	if !p.DevNull {
		t.Fatalf("/dev lost its devices: %+v", p)
	}
}
