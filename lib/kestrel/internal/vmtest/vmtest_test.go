package vmtest

import "testing"

// TestParseJIT reads the "info jit" text of QEMU 7.2.
func TestParseJIT(t *testing.T) {
	text := "Translation buffer state:\r\ngen code size       57048179/67103744\r\nTB count            103619\r\n" +
		"TB avg target size  19 max=1758 bytes\r\n\r\nStatistics:\r\nTB flush count      2\r\nTB invalidate count 3759\r\n"
	j, err := parseJIT(text)
	if err != nil {
		t.Fatal(err)
	}
	if j != (JIT{CodeBytes: 57048179, CacheBytes: 67103744, Flushes: 2}) {
		t.Fatalf("parseJIT = %+v", j)
	}
	if _, err := parseJIT("Translation buffer state:\r\n"); err == nil {
		t.Fatal("a text without the figures was accepted")
	}
}
