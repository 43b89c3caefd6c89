package jail

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
)

func TestParseRange(t *testing.T) {
	for in, want := range map[string]Range{
		"1000-1999":    {First: 1000, Count: 1000},
		"1073741824+4": {First: 1 << 30, Count: 4},
		"5-5":          {First: 5, Count: 1},
	} {
		got, err := ParseRange(in)
		if err != nil || got != want {
			t.Errorf("%q: %+v %v, want %+v", in, got, err, want)
		}
		if in != "1073741824+4" && got.String() != in {
			t.Errorf("%q prints as %q", in, got.String())
		}
	}
	for _, in := range []string{"", "0-10", "10-5", "7", "a-b", "1+0", "4294967295+2", "-3"} {
		if _, err := ParseRange(in); !apierr.Is(err, apierr.Usage) {
			t.Errorf("%q: %v, want USAGE", in, err)
		}
	}
}

// Each VM gets a uid of its own, the same one again when it is free, and
// none once the range is used up; a release frees it.
func TestAllocateUID(t *testing.T) {
	dir := t.TempDir()
	r := Range{First: 1<<30 + 100, Count: 3}
	a, relA, err := AllocateUID(dir, r, "web1")
	if err != nil {
		t.Fatal(err)
	}
	b, relB, err := AllocateUID(dir, r, "web2")
	if err != nil {
		t.Fatal(err)
	}
	c, relC, err := AllocateUID(dir, r, "web3")
	if err != nil {
		t.Fatal(err)
	}
	if a == b || b == c || a == c {
		t.Fatalf("uids %d %d %d are not distinct", a, b, c)
	}
	for _, u := range []uint32{a, b, c} {
		if u < r.First || u >= r.First+r.Count {
			t.Fatalf("uid %d outside %s", u, r)
		}
	}
	if _, _, err := AllocateUID(dir, r, "web4"); !apierr.Is(err, Failed) {
		t.Fatalf("a fourth VM in a range of 3: %v", err)
	}
	holder, _ := os.ReadFile(filepath.Join(dir, strconv.FormatUint(uint64(a), 10)))
	if strings.TrimSpace(string(holder)) != "web1" {
		t.Fatalf("the lock file says %q", holder)
	}
	relA()
	again, relAgain, err := AllocateUID(dir, r, "web1")
	if err != nil || again != a {
		t.Fatalf("web1 again: %d %v, want %d", again, err, a)
	}
	relAgain()
	relB()
	relC()
}

func TestSpecCheck(t *testing.T) {
	ok := Spec{UID: 1 << 30, GID: 1 << 30, Root: "/run/volant/vms/a/root", Binary: "/usr/bin/qemu-system-x86_64",
		Paths: []Path{{Path: "/run/volant/vms/a/vmm", Write: true}, {Path: "/var/lib/volant/kernel/vmlinux"}}}
	if err := ok.Check(); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*Spec){
		"root uid":       func(s *Spec) { s.UID = 0 },
		"root gid":       func(s *Spec) { s.GID = 0 },
		"relative root":  func(s *Spec) { s.Root = "root" },
		"unclean path":   func(s *Spec) { s.Paths = []Path{{Path: "/run/../etc"}} },
		"the whole host": func(s *Spec) { s.Paths = []Path{{Path: "/"}} },
		"root inside":    func(s *Spec) { s.Paths = []Path{{Path: "/run/volant/vms/a", Write: true}} },
	} {
		s := ok
		mod(&s)
		if err := s.Check(); !apierr.Is(err, apierr.InvalidInput) {
			t.Errorf("%s: %v, want INVALID_INPUT", name, err)
		}
	}
}
