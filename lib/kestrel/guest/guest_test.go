package guest

import (
	"errors"
	"testing"
	"time"
)

func TestClaimRefusesOutsideAGuest(t *testing.T) {
	m, err := Claim()
	if m != nil || !errors.Is(err, ErrNotGuest) {
		t.Fatalf("Claim() = %v, %v; a test process must never own the machine", m, err)
	}
}

func TestForgedMachinePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("a Machine literal was accepted")
		}
	}()
	var m Machine
	m.Check()
}

func TestHostIsInInitPIDNamespace(t *testing.T) {
	// The constant must match what this kernel uses, or Claim would refuse
	// in every guest. Test processes normally run in the initial namespace;
	// skip when this one does not.
	ino, err := pidNamespaceInode()
	if err != nil {
		t.Fatal(err)
	}
	if ino != InitPIDNamespaceInode {
		t.Skipf("test runs in a child PID namespace (inode %d)", ino)
	}
}

func TestInitRecord(t *testing.T) {
	for _, c := range []struct {
		rec  string
		want time.Duration
		ok   bool
	}{
		{"6,312,1043215,-;Run /init as init process\n", 1043215 * time.Microsecond, true},
		{"6,313,2000000,-;Run /sbin/init as init process\n", 2 * time.Second, true},
		{"6,311,1040000,-;Freeing unused kernel image (initmem) memory: 2912K\n", 0, false},
		{"6,300,bad,-;Run /init as init process\n", 0, false},
		{"no separator", 0, false},
	} {
		got, ok := initRecord(c.rec)
		if got != c.want || ok != c.ok {
			t.Errorf("initRecord(%q) = %v, %v; want %v, %v", c.rec, got, ok, c.want, c.ok)
		}
	}
}
