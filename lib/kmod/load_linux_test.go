package kmod

import (
	"errors"
	"strings"
	"testing"
)

// A module compressed with xz or zstd is refused before any system call,
// with its name: the guest links no decoder for them.
func TestLoadRefusesCompressedModules(t *testing.T) {
	for _, file := range []string{"kernel/fs/ext4/ext4.ko.xz", "kernel/fs/ext4/ext4.ko.zst"} {
		dir := writeTree(t, map[string]string{"modules.dep": file + ":\n", file: "compressed bytes"})
		ix, err := LoadIndex(dir)
		if err != nil {
			t.Fatal(err)
		}
		steps, err := ix.Resolve("ext4")
		if err != nil {
			t.Fatal(err)
		}
		res, err := Load(ix, steps)
		if !errors.Is(err, ErrCompressed) || !strings.Contains(err.Error(), "ext4") || !strings.Contains(err.Error(), file) {
			t.Fatalf("%s: Load = %v, want ErrCompressed naming the module", file, err)
		}
		if len(res) != 1 || res[0].Error == "" || res[0].Loaded {
			t.Fatalf("%s: results %+v", file, res)
		}
	}
}
