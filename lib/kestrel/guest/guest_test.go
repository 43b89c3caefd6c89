package guest

import (
	"errors"
	"testing"
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
