package launch

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/volantvm/volant/lib/manifest"
)

// encodeManifest gives what Encode gives, from the cache after the first
// time; a cache entry that does not decode to the manifest (damaged, or
// another manifest's) is not used; without a cache directory nothing is
// written.
func TestEncodeManifestRemembered(t *testing.T) {
	m, err := manifest.Parse([]byte(`{"name":"web","version":"1.0.0","initramfs":{"url":"/x.cpio.gz"},"workload":{"entrypoint":["/bin/app"]}}`))
	if err != nil {
		t.Fatal(err)
	}
	want, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	for i := range 2 {
		got, err := encodeManifest(m, cache)
		if err != nil || got != want {
			t.Fatalf("call %d: %q %v, want %q", i, got, err, want)
		}
	}
	ents, _ := filepath.Glob(filepath.Join(cache, "manifest", "*"))
	if len(ents) != 1 {
		t.Fatalf("cache entries %v, want one", ents)
	}
	other, _ := manifest.Parse([]byte(`{"name":"other","version":"1.0.0","initramfs":{"url":"/y.cpio.gz"},"workload":{"entrypoint":["/bin/app"]}}`))
	otherEnc, _ := other.Encode()
	for _, bad := range []string{"not base64!", otherEnc, want[:len(want)-4]} {
		os.WriteFile(ents[0], []byte(bad), 0o644)
		if got, err := encodeManifest(m, cache); err != nil || got != want {
			t.Fatalf("with %q cached: %q %v, want %q", bad, got, err, want)
		}
	}
	if b, _ := os.ReadFile(ents[0]); string(b) != want {
		t.Errorf("a bad entry was not replaced: %q", b)
	}
	if got, err := encodeManifest(m, ""); err != nil || got != want {
		t.Fatalf("without a cache: %q %v", got, err)
	}
}
