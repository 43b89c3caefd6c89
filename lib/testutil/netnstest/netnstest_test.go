package netnstest

import (
	"net"
	"os/exec"
	"strings"
	"testing"
)

func TestNamespaceIsPrivateAndRemoved(t *testing.T) {
	var name string
	ok := t.Run("inner", func(t *testing.T) {
		ns := New(t)
		name = ns.Name
		// A link made inside does not appear outside.
		ns.Run("ip", "link", "add", "vtdummy0", "type", "bridge")
		if _, err := net.InterfaceByName("vtdummy0"); err == nil {
			t.Fatal("link leaked into the test's own namespace")
		}
		var seen bool
		if err := ns.Do(func() error {
			_, err := net.InterfaceByName("vtdummy0")
			seen = err == nil
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if !seen {
			t.Fatal("Do did not run inside the namespace")
		}
		// A process left running inside is killed by cleanup.
		sleeper := ns.Cmd("sleep", "600")
		if err := sleeper.Start(); err != nil {
			t.Fatal(err)
		}
		go sleeper.Wait() // reap it once cleanup kills it

	})
	if !ok || name == "" {
		return // skipped or failed inside
	}
	out, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(out), name) {
		t.Fatalf("namespace %q not removed: %s", name, out)
	}
}
