package launch

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/bootargs"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/vmm"
)

// Volume is a disk image the VM mounts: attached after every other disk
// with the serial bootargs.VolumeSerial(i) (i its place in Spec.Volumes),
// named on the kernel command line (volant.volumes=), and mounted by
// kestrel at Path before the workload starts. volantd passes its volumes
// here; `volant-launch run --volume FILE:/data[:ro]` passes any image
// holding a filesystem kestrel can mount (ext4, xfs, btrfs, squashfs).
type Volume struct {
	// File is the image on the host.
	File string `json:"file"`
	// Format is raw (default) or qcow2.
	Format string `json:"format,omitempty"`
	// Path is where the guest mounts it.
	Path     string `json:"path"`
	ReadOnly bool   `json:"readonly,omitempty"`
}

// ParseVolumeFlag reads FILE:/PATH[:ro] (the --volume flag).
func ParseVolumeFlag(s string) (Volume, error) {
	v := Volume{}
	rest := s
	if r, ok := strings.CutSuffix(rest, ":ro"); ok {
		v.ReadOnly, rest = true, r
	} else if r, ok := strings.CutSuffix(rest, ":rw"); ok {
		rest = r
	}
	i := strings.LastIndex(rest, ":/")
	if i <= 0 {
		return v, apierr.New(apierr.Usage, "--volume %q: want FILE:/PATH[:ro]", s)
	}
	v.File, v.Path = rest[:i], rest[i+1:]
	return v, nil
}

// checkVolumes is Prepare's cheap check of the spec's volumes: each file
// exists and is a regular file, each path is one kestrel can mount on
// (bootargs.CheckMountPath), none twice, none where a manifest disk is
// mounted, and not more than bootargs.MaxVolumes.
func checkVolumes(vs []Volume, m *manifest.Manifest) error {
	if len(vs) > bootargs.MaxVolumes {
		return badInput("%d volumes; a VM takes at most %d", len(vs), bootargs.MaxVolumes).With("field", "volumes")
	}
	taken := map[string]string{}
	for _, d := range m.Disks {
		if d.Target != "" {
			taken[filepath.Clean("/"+d.Target)] = "the manifest's disk " + d.Name
		}
	}
	for i, v := range vs {
		field := fmt.Sprintf("volumes[%d]", i)
		if v.File == "" {
			return badInput("%s.file is required", field).With("field", field+".file")
		}
		st, err := os.Stat(v.File)
		switch {
		case errors.Is(err, os.ErrNotExist):
			return apierr.New(apierr.NotFound, "volume image %s does not exist", v.File).With("field", field+".file")
		case err != nil:
			return fmt.Errorf("volume image: %w", err)
		case !st.Mode().IsRegular():
			return badInput("volume image %s is not a regular file", v.File).With("field", field+".file")
		}
		switch v.Format {
		case "", "raw", "qcow2":
		default:
			return badInput("%s.format must be raw or qcow2, got %q", field, v.Format).With("field", field+".format")
		}
		if err := bootargs.CheckMountPath(v.Path); err != nil {
			return badInput("%s: %v", field, err).With("field", field+".path")
		}
		if what, ok := taken[v.Path]; ok {
			return badInput("%s: %s is where %s is mounted already", field, v.Path, what).With("field", field+".path")
		}
		taken[v.Path] = field
	}
	return nil
}

// volumeDisks are the volumes as disks, in order, with their serials.
func volumeDisks(vs []Volume) []vmm.Disk {
	var out []vmm.Disk
	for i, v := range vs {
		out = append(out, vmm.Disk{Path: v.File, Format: v.Format, ReadOnly: v.ReadOnly, Serial: bootargs.VolumeSerial(i)})
	}
	return out
}

// volumeArgs are the volumes as the kernel command line names them.
func volumeArgs(vs []Volume) []bootargs.Volume {
	var out []bootargs.Volume
	for i, v := range vs {
		out = append(out, bootargs.Volume{Serial: bootargs.VolumeSerial(i), Path: v.Path, ReadOnly: v.ReadOnly})
	}
	return out
}
