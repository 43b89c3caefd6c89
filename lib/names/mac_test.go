package names_test

import (
	"fmt"
	"regexp"
	"testing"

	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/names"
)

func TestMAC(t *testing.T) {
	re := regexp.MustCompile(`^02(:[0-9a-f]{2}){5}$`)
	seen := map[string]string{}
	for i := range 2000 {
		vm := fmt.Sprintf("vm-%d", i)
		m := names.MAC(vm, 0)
		if !re.MatchString(m) {
			t.Fatalf("MAC(%s) = %s", vm, m)
		}
		if m != names.MAC(vm, 0) {
			t.Fatal("not deterministic")
		}
		if o, ok := seen[m]; ok {
			t.Fatalf("%s and %s share %s", o, vm, m)
		}
		seen[m] = vm
		if names.MAC(vm, 1) == m {
			t.Fatalf("attempt 1 of %s repeats attempt 0", vm)
		}
	}
	// The documented derivation (README), computed with coreutils:
	// printf %s web1 | sha256sum → 659a7fb2af...; printf %s web1/1 | sha256sum → 961cdd068d...
	if got := names.MAC("web1", 0); got != "02:65:9a:7f:b2:af" {
		t.Fatalf("MAC(web1, 0) = %s", got)
	}
	if got := names.MAC("web1", 1); got != "02:96:1c:dd:06:8d" {
		t.Fatalf("MAC(web1, 1) = %s", got)
	}
}

// A VM gets the same MAC from volant-launch's default as from its lease
// (issue 14: they used to differ).
func TestLaunchDefaultIsTheLeaseMAC(t *testing.T) {
	for _, vm := range []string{"web1", "my-deployment-12", "a"} {
		if got, want := launch.DefaultMAC(vm), names.MAC(vm, 0); got != want {
			t.Errorf("launch.DefaultMAC(%s) = %s, the lease MAC is %s", vm, got, want)
		}
	}
}
