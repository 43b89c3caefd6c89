package bootargs

import (
	"reflect"
	"strings"
	"testing"
)

func TestVolumesKey(t *testing.T) {
	a, err := Parse("quiet volant.volumes=volant-vol0:/data,volant-vol1:/srv/www-1:ro,volant-vol2:/x:rw")
	if err != nil {
		t.Fatal(err)
	}
	want := []Volume{{"volant-vol0", "/data", false}, {"volant-vol1", "/srv/www-1", true}, {"volant-vol2", "/x", false}}
	if !reflect.DeepEqual(a.Volumes, want) {
		t.Fatalf("got %+v", a.Volumes)
	}
	if f := (Args{Volumes: want}).String(); f != "volant.volumes=volant-vol0:/data,volant-vol1:/srv/www-1:ro,volant-vol2:/x" {
		t.Errorf("formatted %q", f)
	}
	for _, bad := range []string{
		"volant.volumes=", "volant.volumes=volant-vol0", "volant.volumes=vda:/data", "volant.volumes=volant-vol0:data",
		"volant.volumes=volant-vol0:/data:rx", "volant.volumes=volant-vol0:/data,volant-vol0:/other",
		"volant.volumes=volant-vol0:/data,volant-vol1:/data", "volant.volumes=volant-vol01:/data",
		"volant.volumes=volant-vol0:/proc/x", "volant.volumes=volant-vol0:/a/../b",
	} {
		if _, err := Parse(bad); err == nil || !strings.Contains(err.Error(), "volant.volumes") {
			t.Errorf("%q: %v, want an error naming volant.volumes", bad, err)
		}
	}
}

func TestCheckMountPath(t *testing.T) {
	for _, ok := range []string{"/data", "/var/lib/pg_data", "/srv/a.b+c@d-e", "/runner", "/devdata"} {
		if err := CheckMountPath(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "data", "/", "/data/", "/a//b", "/a/./b", "/with space", "/comma,x", "/colon:x",
		"/proc", "/sys/fs", "/dev/x", "/run", "/run/x", "/" + strings.Repeat("a", 200), "/tab\tx", "/ümlaut"} {
		if err := CheckMountPath(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if !IsVolumeSerial("volant-vol12") || IsVolumeSerial("volant-vol") || IsVolumeSerial("volant-vol-1") || IsVolumeSerial("disk0") {
		t.Error("IsVolumeSerial")
	}
	if VolumeSerial(15) != "volant-vol15" || len(VolumeSerial(MaxVolumes-1)) > 20 {
		t.Error("VolumeSerial")
	}
}
