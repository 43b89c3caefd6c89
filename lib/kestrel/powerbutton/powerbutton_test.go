package powerbutton

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

func TestHasKeyPower(t *testing.T) {
	for caps, want := range map[string]bool{
		// ACPI "Power Button" device as sysfs prints it: KEY_POWER is bit
		// 116, i.e. bit 52 of the second word from the right.
		"10000000000000 0\n": true,
		// A keyboard-like bitmap with many words and the power bit set.
		"0 0 0 0 0 0 10000000000000 0": true,
		"ffffffff 0":                   false,
		"0":                            false,
		"":                             false,
		"zz 0":                         false,
		"10000000000000 zz":            false,
		// Bit 52 of the rightmost word is key 52 (KEY_DOT), not KEY_POWER.
		"0 10000000000000": false,
		// A word wider than 64 bits is not an unsigned long.
		"110000000000000000 0": false,
	} {
		if got := HasKeyPower(caps); got != want {
			t.Errorf("HasKeyPower(%q) = %v", caps, got)
		}
	}
}

func event(typ, code uint16, value int32) []byte {
	b := make([]byte, eventSize)
	binary.LittleEndian.PutUint16(b[16:], typ)
	binary.LittleEndian.PutUint16(b[18:], code)
	binary.LittleEndian.PutUint32(b[20:], uint32(value))
	return b
}

func TestIsPress(t *testing.T) {
	if !IsPress(event(evKey, keyPower, 1)) {
		t.Fatal("press not recognized")
	}
	for _, ev := range [][]byte{event(evKey, keyPower, 0), event(0, 0, 0), event(evKey, 30, 1), event(evKey, keyPower, 1)[:10]} {
		if IsPress(ev) {
			t.Errorf("%v taken for a press", ev)
		}
	}
}

func TestDevices(t *testing.T) {
	sys := t.TempDir()
	for name, caps := range map[string]string{"event0": "3 0\n", "event1": "10000000000000 0\n"} {
		d := filepath.Join(sys, "class/input", name, "device/capabilities")
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "key"), []byte(caps), 0o644)
	}
	got := Devices(sys, "/dev")
	if len(got) != 1 || got[0] != "/dev/input/event1" {
		t.Fatalf("%v", got)
	}
}
