package agentchan

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// oneFile is a tar stream of one regular file.
func oneFile(t *testing.T, name string, data []byte) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: time.Now(), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf
}

// TestExtractReplacesFilesAtomically: a file the archive replaces is
// never seen missing, empty or cut short by a reader at the same time
// (a service account token refreshed in a running guest): each read has
// one whole version, old or new. No temporary file is left behind.
func TestExtractReplacesFilesAtomically(t *testing.T) {
	dir := t.TempDir()
	body := func(i int) []byte { return []byte(fmt.Sprintf("token-%d-%s.", i, strings.Repeat("x", 256<<10))) }
	if _, err := ExtractTar(oneFile(t, "token", body(0)), dir, ""); err != nil {
		t.Fatal(err)
	}
	whole := func(b []byte) bool {
		return bytes.HasPrefix(b, []byte("token-")) && bytes.HasSuffix(b, []byte(strings.Repeat("x", 256<<10)+"."))
	}
	var done atomic.Bool
	var reads, bad atomic.Int64
	var first sync.Once
	var firstBad string
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !done.Load() {
			b, err := os.ReadFile(filepath.Join(dir, "token"))
			reads.Add(1)
			if err != nil || !whole(b) {
				bad.Add(1)
				first.Do(func() { firstBad = fmt.Sprintf("%d bytes, err %v", len(b), err) })
			}
		}
	}()
	const n = 200
	for i := 1; i <= n; i++ {
		if _, err := ExtractTar(oneFile(t, "token", body(i)), dir, ""); err != nil {
			done.Store(true)
			wg.Wait()
			t.Fatal(err)
		}
	}
	done.Store(true)
	wg.Wait()
	if bad.Load() > 0 {
		t.Fatalf("%d of %d reads during %d replacements saw a partial token (the first: %s)", bad.Load(), reads.Load(), n, firstBad)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "token")); !bytes.HasPrefix(b, []byte(fmt.Sprintf("token-%d-", n))) {
		t.Fatalf("the last version is not there: %.20q", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("left in the directory: %v", names)
	}
	if fi, err := os.Stat(filepath.Join(dir, "token")); err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("mode: %v %v", fi, err)
	}
	t.Logf("%d reads during %d replacements", reads.Load(), n)
}

// TestExtractTarRefusesEscapes is `volar vms cp VM:PATH DIR` against an
// archive a guest might send: nothing it holds gets out of the host's
// destination directory, neither by name (.., absolute), by a symlink or
// hard link in the archive, nor by a symlink already in the destination.
func TestExtractTarRefusesEscapes(t *testing.T) {
	outside := t.TempDir()
	cases := map[string][]*tar.Header{
		"dotdot":          {{Name: "../escaped", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1}},
		"nested dotdot":   {{Name: "a/../../escaped", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1}},
		"absolute":        {{Name: filepath.Join(outside, "escaped"), Typeflag: tar.TypeReg, Mode: 0o644, Size: 1}},
		"symlink then in": {{Name: "d", Typeflag: tar.TypeSymlink, Linkname: outside}, {Name: "d/escaped", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1}},
		"relative link":   {{Name: "d", Typeflag: tar.TypeSymlink, Linkname: "../../../../../../" + outside}, {Name: "d/escaped", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1}},
		"hard link":       {{Name: "h", Typeflag: tar.TypeLink, Linkname: "../escaped-target"}},
		"existing link":   {{Name: "pre/escaped", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1}},
	}
	os.WriteFile(filepath.Join(outside, "escaped-target"), []byte("outside\n"), 0o644)
	for name, hs := range cases {
		t.Run(name, func(t *testing.T) {
			dest := filepath.Join(t.TempDir(), "dest")
			os.Mkdir(dest, 0o755)
			os.Symlink(outside, filepath.Join(dest, "pre")) // a guest's earlier copy left it
			var b bytes.Buffer
			tw := tar.NewWriter(&b)
			for _, h := range hs {
				tw.WriteHeader(h)
				if h.Size > 0 {
					tw.Write([]byte("x"))
				}
			}
			tw.Close()
			_, err := ExtractTar(&b, dest, "")
			if err == nil {
				t.Error("extracted without an error")
			}
			for _, p := range []string{filepath.Join(outside, "escaped"), filepath.Join(filepath.Dir(dest), "escaped")} {
				if _, err := os.Stat(p); err == nil {
					t.Errorf("%s was written", p)
					os.Remove(p)
				}
			}
			if b, _ := os.ReadFile(filepath.Join(outside, "escaped-target")); string(b) != "outside\n" {
				t.Errorf("the file outside changed: %q", b)
			}
		})
	}
}
