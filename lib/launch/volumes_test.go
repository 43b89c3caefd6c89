package launch

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/bootargs"
	"github.com/volantvm/volant/lib/vmm"
)

func TestPrepareVolumes(t *testing.T) {
	f := newFixture(t)
	a, b := filepath.Join(f.dir, "a.img"), filepath.Join(f.dir, "b,c.img")
	os.WriteFile(a, nil, 0o600)
	os.WriteFile(b, nil, 0o600)
	s := f.spec()
	s.Disks = []vmm.Disk{{Path: a, ReadOnly: true}}
	s.Volumes = []Volume{{File: a, Path: "/data"}, {File: b, Format: "qcow2", Path: "/srv/ref", ReadOnly: true}}
	p, err := Prepare(context.Background(), s, f.opts)
	if err != nil {
		t.Fatal(err)
	}
	want := []vmm.Disk{{Path: a, ReadOnly: true}, {Path: a, Serial: "volant-vol0"}, {Path: b, Format: "qcow2", ReadOnly: true, Serial: "volant-vol1"}}
	if !reflect.DeepEqual(p.Config.Disks, want) {
		t.Errorf("disks %+v", p.Config.Disks)
	}
	args, err := bootargs.Parse(p.Cmdline)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(args.Volumes, []bootargs.Volume{{Serial: "volant-vol0", Path: "/data"}, {Serial: "volant-vol1", Path: "/srv/ref", ReadOnly: true}}) {
		t.Errorf("the command line names %+v", args.Volumes)
	}
	joined := strings.Join(p.Argv, " ")
	if !strings.Contains(joined, `path="`+b+`",readonly=on,image_type=qcow2,backing_files=on,serial=volant-vol1`) {
		t.Errorf("argv lacks the second volume: %s", joined)
	}
}

func TestPrepareVolumeRefusals(t *testing.T) {
	f := newFixture(t)
	img := filepath.Join(f.dir, "v.img")
	os.WriteFile(img, nil, 0o600)
	for _, tc := range []struct {
		name string
		vs   []Volume
		code apierr.Code
		want string
	}{
		{"missing file", []Volume{{File: filepath.Join(f.dir, "nope.img"), Path: "/d"}}, apierr.NotFound, "does not exist"},
		{"directory", []Volume{{File: f.dir, Path: "/d"}}, apierr.InvalidInput, "not a regular file"},
		{"relative path", []Volume{{File: img, Path: "d"}}, apierr.InvalidInput, "not absolute"},
		{"two at one path", []Volume{{File: img, Path: "/d"}, {File: img, Path: "/d"}}, apierr.InvalidInput, "mounted already"},
		{"format", []Volume{{File: img, Path: "/d", Format: "vmdk"}}, apierr.InvalidInput, "raw or qcow2"},
		{"no file", []Volume{{Path: "/d"}}, apierr.InvalidInput, "file is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := f.spec()
			s.Volumes = tc.vs
			_, err := Prepare(context.Background(), s, f.opts)
			if !apierr.Is(err, tc.code) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %s mentioning %q", err, tc.code, tc.want)
			}
		})
	}
}

func TestParseVolumeFlag(t *testing.T) {
	for in, want := range map[string]Volume{
		"data.img:/data":       {File: "data.img", Path: "/data"},
		"/v/a:b.img:/srv/x:ro": {File: "/v/a:b.img", Path: "/srv/x", ReadOnly: true},
		"/v/data.img:/data:rw": {File: "/v/data.img", Path: "/data"},
	} {
		got, err := ParseVolumeFlag(in)
		if err != nil || got != want {
			t.Errorf("%q: %+v %v", in, got, err)
		}
	}
	for _, bad := range []string{"data.img", ":/data", "data.img:data"} {
		if _, err := ParseVolumeFlag(bad); !apierr.Is(err, apierr.Usage) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}
