package boot

import (
	"os"
	"path/filepath"
	"testing"
)

// TestPanicReboots: kernel.panic 0 (the kernel's default) becomes -1, so
// that kestrel dying ends the VM; a panic= on the kernel command line is
// the command line's choice, panic=0 included, and then the setting is
// not even read.
func TestPanicReboots(t *testing.T) {
	for _, tc := range []struct {
		name, cmdline, before, after string
	}{
		{"default", "console=ttyS0 quiet", "0\n", "-1\n"},
		{"already set", "console=ttyS0", "5\n", "5\n"},
		{"chosen 0", "console=ttyS0 panic=0 quiet", "0\n", "0\n"},
		{"chosen -1, not read", "panic=-1", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "panic")
			if tc.before != "" {
				if err := os.WriteFile(p, []byte(tc.before), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := panicReboots(p, tc.cmdline); err != nil && tc.before != "" {
				t.Fatal(err)
			}
			got, err := os.ReadFile(p)
			if tc.before == "" {
				if err == nil {
					t.Fatalf("wrote %q", got)
				}
				return
			}
			if string(got) != tc.after {
				t.Fatalf("kernel.panic %q, want %q", got, tc.after)
			}
		})
	}
}
