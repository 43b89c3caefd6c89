package vmm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
)

func TestResolveAccel(t *testing.T) {
	normal := fstest.MapFS{"dev/kvm": {}, "sys/module/kvm_intel": {}}
	pvm := fstest.MapFS{"dev/kvm": {}, "sys/module/kvm_pvm": {}}
	none := fstest.MapFS{}
	for _, tc := range []struct {
		name   string
		want   Accel
		root   fstest.MapFS
		tcgOK  bool
		got    Accel
		err    bool
		reason string
	}{
		{"auto on a normal host is kvm", AccelAuto, normal, true, AccelKVM, false, ""},
		{"auto on pvm falls back", AccelAuto, pvm, true, AccelTCG, false, "kvm_pvm"},
		{"auto without kvm falls back", "", none, true, AccelTCG, false, "no /dev/kvm"},
		{"auto on pvm without tcg fails", AccelAuto, pvm, false, "", true, "kvm_pvm"},
		{"explicit kvm on pvm fails", AccelKVM, pvm, true, "", true, "kvm_pvm"},
		{"explicit tcg", AccelTCG, normal, true, AccelTCG, false, ""},
		{"tcg unsupported", AccelTCG, normal, false, "", true, ""},
		{"unknown", "hvf", normal, true, "", true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, reason, err := ResolveAccel(tc.want, tc.root, tc.tcgOK)
			if (err != nil) != tc.err || got != tc.got {
				t.Fatalf("got %q, %v", got, err)
			}
			if tc.reason != "" && !strings.Contains(reason, tc.reason) {
				t.Fatalf("reason %q lacks %q", reason, tc.reason)
			}
		})
	}
}

// The device check on real files: a regular file where the device should be
// (a broken stand-in) does not answer KVM_GET_API_VERSION, and a missing one
// is named. The host's own answer is only logged: tests never depend on the
// host's /dev/kvm (kvmtest's tests check a device that answers).
func TestKVMUsableAsksTheDevice(t *testing.T) {
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "dev"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "dev", "kvm"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if ok, why := KVMUsable(os.DirFS(root)); ok || !strings.Contains(why, "KVM_GET_API_VERSION") {
		t.Fatalf("an empty file as /dev/kvm: usable %v, %q", ok, why)
	}
	if ok, why := KVMUsable(os.DirFS(t.TempDir())); ok || !strings.Contains(why, "no /dev/kvm") {
		t.Fatalf("no /dev/kvm: usable %v, %q", ok, why)
	}
	ok, why := KVMUsable(os.DirFS("/"))
	if !ok && why == "" {
		t.Fatal("unusable KVM without a reason")
	}
	t.Logf("KVM usable on this host: %v %s", ok, why)
}
