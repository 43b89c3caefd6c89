package guesttest

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/volantvm/volant/lib/initramfs"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// DropbearEntrypoint runs the dropbear Dropbear adds as a workload: in the
// foreground, logging to stderr, public keys only, on port 22.
var DropbearEntrypoint = []string{"/usr/sbin/dropbear", "-F", "-E", "-s", "-p", "22", "-r", "/etc/dropbear/hostkey", "-P", "/tmp/dropbear.pid"}

// Dropbear adds Debian's dropbear SSH server (package dropbear-bin) to b,
// with its shared libraries and a fresh ed25519 host key, accepting root
// (home /root, shell /bin/sh, which b must provide) with the key it
// generates at dir/id for OpenSSH's client. It returns that key's path.
// Run it with DropbearEntrypoint.
func Dropbear(t testing.TB, b *initramfs.Builder, dir string) string {
	t.Helper()
	for _, p := range []string{"dropbear", "dropbearkey", "ssh", "ssh-keygen", "ldd"} {
		if _, err := exec.LookPath(p); err != nil {
			netnstest.SkipOrFail(t, "needs %s (scripts/install-deps.sh: dropbear-bin, openssh-client)", p)
		}
	}
	dropbear, _ := exec.LookPath("dropbear")
	hostKey, id := filepath.Join(dir, "hostkey"), filepath.Join(dir, "id")
	for _, c := range [][]string{{"dropbearkey", "-t", "ed25519", "-f", hostKey}, {"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", id}} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", c[0], err, out)
		}
	}
	pub, err := os.ReadFile(id + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ldd", dropbear).Output()
	if err != nil {
		t.Fatalf("ldd %s: %v", dropbear, err)
	}
	for _, d := range []string{"/usr", "/usr/sbin", "/etc", "/etc/dropbear", "/lib", "/lib64", "/lib/x86_64-linux-gnu", "/tmp", "/var", "/var/run"} {
		b.Dir(d, 0o755)
	}
	b.Dir("/root", 0o700)
	b.Dir("/root/.ssh", 0o700)
	b.File("/root/.ssh/authorized_keys", 0o600, pub)
	b.File("/etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n"))
	b.File("/etc/group", 0o644, []byte("root:x:0:\n"))
	add := func(guest, host string, mode os.FileMode) {
		if err := b.CopyFile(guest, host, mode); err != nil {
			t.Fatal(err)
		}
	}
	add("/etc/dropbear/hostkey", hostKey, 0o600)
	add("/usr/sbin/dropbear", dropbear, 0o755)
	// The shared objects at the paths ldd names (the loader's included).
	for _, m := range regexp.MustCompile(`(?m)(/\S+) \(0x`).FindAllStringSubmatch(string(out), -1) {
		real, err := filepath.EvalSymlinks(m[1])
		if err != nil {
			t.Fatal(err)
		}
		add(m[1], real, 0o755)
	}
	return id
}

// SSHArgs are OpenSSH client arguments that log in to ip as root with key
// and run argv: no configuration file, no host key check, no prompts.
func SSHArgs(key, ip string, extra []string, argv ...string) []string {
	args := []string{"-F", "/dev/null", "-i", key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
		"-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"}
	args = append(args, extra...)
	return append(append(args, "root@"+ip), argv...)
}

// DropbearVersion is the installed dropbear-bin package's version.
func DropbearVersion() string {
	out, _ := exec.Command("dpkg-query", "-W", "-f", "${Version}", "dropbear-bin").Output()
	return string(out)
}
