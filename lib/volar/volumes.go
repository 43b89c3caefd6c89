package volar

import (
	"context"
	"strings"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/volume"
)

// --- volumes ---

// ParseVolumeMount reads the -v flag of `vms create`: NAME:/PATH[:ro].
func ParseVolumeMount(s string) (api.VolumeMount, error) {
	bad := func() (api.VolumeMount, error) {
		return api.VolumeMount{}, usage("-v data:/data, or -v data:/data:ro for read-only", "-v %q: want NAME:/PATH[:ro]", s)
	}
	name, rest, ok := strings.Cut(s, ":")
	if !ok || name == "" || !strings.HasPrefix(rest, "/") {
		return bad()
	}
	m := api.VolumeMount{Volume: name, Path: rest}
	if p, mode, ok := strings.Cut(rest, ":"); ok {
		switch mode {
		case "ro":
			m.ReadOnly = true
		case "rw":
		default:
			return bad()
		}
		m.Path = p
	}
	if err := checkName("volume", name); err != nil {
		return api.VolumeMount{}, err
	}
	return m, nil
}

// ParseVolumeTemplate reads --volume-template NAME:SIZE:/PATH.
func ParseVolumeTemplate(s string) (api.VolumeTemplate, error) {
	f := strings.SplitN(s, ":", 3)
	if len(f) != 3 || f[0] == "" || f[1] == "" || !strings.HasPrefix(f[2], "/") {
		return api.VolumeTemplate{}, usage("--volume-template data:1GiB:/data", "--volume-template %q: want NAME:SIZE:/PATH", s)
	}
	if err := checkName("volume template", f[0]); err != nil {
		return api.VolumeTemplate{}, err
	}
	size, err := parseSizeFlag("--volume-template", f[1])
	if err != nil {
		return api.VolumeTemplate{}, err
	}
	return api.VolumeTemplate{Name: f[0], Size: size, Path: f[2]}, nil
}

// parseSizeFlag reads a size flag, as a usage error when it is not a size.
func parseSizeFlag(flag, s string) (string, error) {
	if s == "" {
		return "", usage(flag+" 1GiB (or 512MiB, 10G, ...)", "%s is required", flag)
	}
	if _, err := volume.ParseSize(s); err != nil {
		e := apierr.From(err)
		return "", &apierr.Error{Code: apierr.Usage, Message: flag + ": " + e.Message, Details: e.Details, Err: err}
	}
	return s, nil
}

// ListVolumes is `volar volumes list`.
func (s *Session) ListVolumes(ctx context.Context) error {
	vs, err := s.Client.ListVolumes(ctx)
	if err != nil {
		return err
	}
	return s.Out.VolumeList(vs)
}

// CreateVolume is `volar volumes create NAME --size SIZE [--fs ext4]`.
func (s *Session) CreateVolume(ctx context.Context, name, size, fs string) error {
	if err := checkName("volume", name); err != nil {
		return err
	}
	size, err := parseSizeFlag("--size", size)
	if err != nil {
		return err
	}
	if err := volume.CheckFS(fs); err != nil {
		return usage("--fs "+strings.Join(volume.Filesystems(), " or "), "--fs: %s", apierr.From(err).Message)
	}
	v, err := s.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: name, Size: size, FS: fs})
	if err != nil {
		return err
	}
	return s.Out.VolumeAction(v, "created")
}

// ShowVolume is `volar volumes show NAME`.
func (s *Session) ShowVolume(ctx context.Context, name string) error {
	v, err := s.Client.Volume(ctx, name)
	if err != nil {
		return err
	}
	return s.Out.Volume(v)
}

// ResizeVolume is `volar volumes resize NAME --size SIZE`.
func (s *Session) ResizeVolume(ctx context.Context, name, size string) error {
	size, err := parseSizeFlag("--size", size)
	if err != nil {
		return err
	}
	v, err := s.Client.ResizeVolume(ctx, name, api.ResizeVolumeRequest{Size: size})
	if err != nil {
		return err
	}
	return s.Out.VolumeAction(v, "resized")
}

// DeleteVolume is `volar volumes delete NAME`.
func (s *Session) DeleteVolume(ctx context.Context, name string) error {
	v, err := s.Client.DeleteVolume(ctx, name)
	if err != nil {
		return err
	}
	return s.Out.VolumeAction(v, "deleted")
}

func attachedTo(v *api.Volume) string {
	var out []string
	for _, a := range v.Attachments {
		s := a.VM + ":" + a.Path
		if a.ReadOnly {
			s += ":ro"
		}
		if a.Holding {
			s += " (holding)"
		}
		out = append(out, s)
	}
	return strings.Join(out, ", ")
}

// VolumeList prints volumes.
func (o *Output) VolumeList(vs []api.Volume) error {
	if vs == nil {
		vs = []api.Volume{}
	}
	switch {
	case o.Quiet:
		for _, v := range vs {
			if err := o.names(v.Name); err != nil {
				return err
			}
		}
		return nil
	case o.Format == JSON:
		return o.JSONValue(vs)
	}
	rows := make([][]string, 0, len(vs))
	for i := range vs {
		v := &vs[i]
		var vms []string
		for _, a := range v.Attachments {
			vms = append(vms, a.VM)
		}
		rows = append(rows, []string{v.Name, v.Size, volume.FormatSize(v.AllocatedBytes), v.FS, string(v.State),
			strings.Join(vms, ","), Age(o.now(), v.CreatedAt)})
	}
	return o.table([]string{"NAME", "SIZE", "USED", "FS", "STATE", "VMS", "AGE"}, rows)
}

// Volume prints one volume in full ("volumes show").
func (o *Output) Volume(v *api.Volume) error {
	switch {
	case o.Quiet:
		return o.names(v.Name)
	case o.Format == JSON:
		return o.JSONValue(v)
	}
	return o.fields([][2]string{
		{"Name", v.Name},
		{"Size", v.Size},
		{"Allocated", volume.FormatSize(v.AllocatedBytes)},
		{"Filesystem", v.FS},
		{"Format", v.Format},
		{"State", string(v.State)},
		{"Deployment", v.Deployment},
		{"Attached to", attachedTo(v)},
		{"Error", v.Error},
		{"Path", v.Path},
		{"Created", o.timestamp(v.CreatedAt)},
		{"Updated", o.timestamp(v.UpdatedAt)},
	})
}

// VolumeAction prints the answer of create, resize or delete.
func (o *Output) VolumeAction(v *api.Volume, verb string) error {
	switch {
	case o.Quiet:
		return o.names(v.Name)
	case o.Format == JSON:
		return o.JSONValue(v)
	}
	if verb == "deleted" {
		return o.line("Volume %s deleted", v.Name)
	}
	return o.line("Volume %s %s: %s %s", v.Name, verb, v.Size, v.FS)
}
