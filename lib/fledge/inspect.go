package fledge

import (
	"context"
	"path/filepath"
	"strings"

	"github.com/containers/image/v5/docker/reference"

	"github.com/volantvm/volant/lib/fledge/fledgecmd"
	"github.com/volantvm/volant/lib/fledge/ociimage"
)

// Inspect describes the image reference image (`fledge inspect`): its
// canonical form, transport, the host path or registry it is read from and
// the plugin name a build would give it, without fetching anything; with
// resolve also its digest, read from its manifest (ociimage.Open: needs
// root, and a registry request for docker://).
func Inspect(ctx context.Context, image string, resolve bool, o ociimage.Options) (*fledgecmd.ImageInfo, error) {
	ref, err := ociimage.ParseReference(image)
	if err != nil {
		return nil, err
	}
	info := &fledgecmd.ImageInfo{Image: ociimage.Canonical(ref), Transport: ref.Transport().Name()}
	info.Name, info.Tag = ociimage.DefaultName(ref)
	if dr := ref.DockerReference(); dr != nil && info.Transport == "docker" {
		info.Registry = reference.Domain(dr)
	} else {
		// dir:PATH; the others are PATH[:REFERENCE], split at the first
		// colon as containers/image splits them.
		p := ref.StringWithinTransport()
		if info.Transport != "dir" {
			p, _, _ = strings.Cut(p, ":")
		}
		if info.Path, err = filepath.Abs(p); err != nil {
			return nil, err
		}
	}
	if !resolve {
		return info, nil
	}
	src, err := ociimage.Open(ctx, image, o)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	info.Digest, info.InstanceDigest = src.Image.Digest, src.Image.InstanceDigest
	info.SignaturePolicy, info.CompressedBytes = src.Image.Policy, src.CompressedBytes
	return info, nil
}
