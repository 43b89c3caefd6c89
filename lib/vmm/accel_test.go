package vmm

import (
	"os"
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

// On the real host the device check runs; its answer must be explained.
func TestKVMUsableOnThisHost(t *testing.T) {
	ok, why := KVMUsable(os.DirFS("/"))
	if !ok && why == "" {
		t.Fatal("unusable KVM without a reason")
	}
	t.Logf("KVM usable here: %v %s", ok, why)
	if _, err := os.Stat("/dev/kvm"); err == nil && os.Geteuid() == 0 {
		if err := kvmAnswers(os.DirFS("/")); err != nil {
			t.Fatalf("root cannot ask /dev/kvm its API version: %v", err)
		}
	}
}
