// Package ociimage fetches a container image and unpacks its root
// filesystem into a directory, in-process: github.com/containers/image/v5
// reads the image from any of its transports (docker://, oci:,
// oci-archive:, docker-archive:, dir:, …) and github.com/opencontainers/umoci
// applies each layer, whiteouts included.
//
// Layers are streamed from the source straight into the directory: nothing
// is copied into an intermediate OCI layout first, Docker-format images need
// no conversion, and each layer is read once. Every layer's compressed
// digest and uncompressed DiffID are verified while it streams (a mismatch
// fails the unpack; the caller discards the directory), and the manifest and
// config are verified by containers/image against their digests.
//
// Owners, device nodes and extended attributes are restored only when the
// process runs as root (umoci's rootful mode); Unpack refuses otherwise.
//
// Signatures: Options.PolicyPath names a containers-policy.json(5) file to
// enforce; without it the host's policy.json applies when there is one (as
// for skopeo and podman), else a policy built in code that accepts any
// image (digests are verified all the same).
package ociimage

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"time"

	_ "github.com/containers/image/v5/directory" // registers dir:
	"github.com/containers/image/v5/docker"
	_ "github.com/containers/image/v5/docker/archive" // registers docker-archive:
	"github.com/containers/image/v5/image"
	"github.com/containers/image/v5/manifest"
	_ "github.com/containers/image/v5/oci/archive" // registers oci-archive:
	_ "github.com/containers/image/v5/oci/layout"  // registers oci:
	"github.com/containers/image/v5/pkg/blobinfocache/none"
	"github.com/containers/image/v5/pkg/compression"
	"github.com/containers/image/v5/signature"
	"github.com/containers/image/v5/transports"
	"github.com/containers/image/v5/types"
	"github.com/docker/distribution/registry/api/errcode"
	v2 "github.com/docker/distribution/registry/api/v2"
	"github.com/opencontainers/go-digest"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/opencontainers/umoci/oci/layer"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/fetch"
	"github.com/volantvm/volant/lib/fledge/progress"
)

// Options tune a fetch.
type Options struct {
	// Insecure allows plain HTTP and unverified TLS for registries
	// (docker://), e.g. a registry on localhost.
	Insecure bool
	// PolicyPath is a containers-policy.json file; "" accepts any image.
	PolicyPath string
	// AuthFile is a registry credentials file (auth.json); "" uses the
	// usual locations ($REGISTRY_AUTH_FILE, ~/.docker/config.json, …).
	AuthFile string
	// Arch and OS choose from a multi-platform image; defaults linux and
	// the running architecture.
	Arch, OS string
	// UserAgent is sent to registries.
	UserAgent string
	// Timeouts: a registry that stops answering fails the fetch with
	// TIMEOUT instead of hanging it. Resolving (a few small requests for
	// the manifest and config) may take twice the connect plus header
	// timeouts; each layer, StallTimeout without a byte. Zero values are
	// lib/fetch's defaults; MaxBytes and UserAgent are not used here.
	Timeouts fetch.Options
	Logger   *slog.Logger
	Progress progress.Reporter
}

// Image is what was unpacked.
type Image struct {
	// Ref is the canonical transport:reference (docker://docker.io/library/nginx:alpine).
	Ref string `json:"ref"`
	// Digest is the manifest digest the reference resolved to (the
	// manifest list's when the image has one).
	Digest string `json:"digest"`
	// InstanceDigest is the digest of the platform's manifest.
	InstanceDigest string `json:"instance_digest"`
	// Policy is where the signature policy that accepted it came from.
	Policy string `json:"policy"`
	// Config is the image configuration.
	Config ispec.Image `json:"-"`
	// Layers is the number of layers applied; Bytes their compressed size.
	Layers int   `json:"layers"`
	Bytes  int64 `json:"bytes"`
}

// Canonical is the transport:reference form of ref, with docker
// references fully qualified (docker://docker.io/library/nginx:alpine).
func Canonical(ref types.ImageReference) string {
	if ref.Transport().Name() == "docker" {
		if dr := ref.DockerReference(); dr != nil {
			return "docker://" + dr.String()
		}
	}
	return transports.ImageName(ref)
}

// ParseReference parses an image reference with its transport. A reference
// without a known transport prefix (nginx:alpine, localhost:5000/app:1)
// means docker://.
func ParseReference(s string) (types.ImageReference, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, apierr.New(apierr.InvalidInput, "image reference is empty")
	}
	name := s
	if transportOf(s) == nil {
		if prefix, _, ok := strings.Cut(s, ":"); ok && unlinked[prefix] {
			return nil, apierr.New(apierr.InvalidInput, "image transport %s: is not supported by fledge", prefix).
				With("hint", "use docker://REPO:TAG, oci:DIR[:TAG], oci-archive:FILE, docker-archive:FILE or dir:DIR (skopeo copy converts)")
		}
		name = "docker://" + s
	}
	ref, err := ParseImageName(name)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, apierr.Wrap(apierr.NotFound, err, "image "+s+" not found")
		}
		return nil, apierr.Wrap(apierr.InvalidInput, err, "parsing image reference "+s).
			With("hint", "use docker://REPO:TAG, oci:DIR[:TAG], oci-archive:FILE, docker-archive:FILE, dir:DIR or a plain REPO:TAG")
	}
	return ref, nil
}

// unlinked are containers/image transports fledge does not link (they
// would pull in a container engine's storage or daemon): named as such
// instead of being parsed as a docker reference.
var unlinked = map[string]bool{"containers-storage": true, "docker-daemon": true, "ostree": true, "sif": true, "tarball": true}

// transportOf is the transport named by the prefix of s, or nil.
func transportOf(s string) types.ImageTransport {
	name, _, ok := strings.Cut(s, ":")
	if !ok {
		return nil
	}
	return transports.Get(name)
}

// ParseImageName parses TRANSPORT:REFERENCE for the transports fledge
// links: docker, docker-archive, oci, oci-archive and dir. (Not alltransports:
// it would link containers/storage and its cgo graph drivers, which need
// build tags to compile.)
func ParseImageName(s string) (types.ImageReference, error) {
	t := transportOf(s)
	if t == nil {
		return nil, fmt.Errorf("unknown transport in %q (want docker://, docker-archive:, oci:, oci-archive: or dir:)", s)
	}
	_, rest, _ := strings.Cut(s, ":")
	return t.ParseReference(rest)
}

var nameClean = regexp.MustCompile(`[^a-z0-9_-]+`)

// DefaultName suggests a plugin name and version for an image: the last
// path component of its repository (or layout directory) and its tag.
func DefaultName(ref types.ImageReference) (name, tag string) {
	if dr := ref.DockerReference(); dr != nil {
		name = path.Base(dr.Name())
		if t, ok := dr.(interface{ Tag() string }); ok {
			tag = t.Tag()
		}
	} else {
		within := ref.StringWithinTransport()
		file, t, _ := strings.Cut(within, ":")
		name = strings.TrimSuffix(path.Base(file), path.Ext(file))
		tag = t
	}
	name = strings.Trim(nameClean.ReplaceAllString(strings.ToLower(name), "-"), "-_")
	if len(name) > 63 {
		name = name[:63]
	}
	return name, tag
}

// timeouts are o.Timeouts with lib/fetch's defaults for zero values.
func (o *Options) timeouts() fetch.Options {
	t := o.Timeouts
	if t.ConnectTimeout <= 0 {
		t.ConnectTimeout = fetch.DefaultConnectTimeout
	}
	if t.HeaderTimeout <= 0 {
		t.HeaderTimeout = fetch.DefaultHeaderTimeout
	}
	if t.StallTimeout <= 0 {
		t.StallTimeout = fetch.DefaultStallTimeout
	}
	return t
}

func (o *Options) sys() *types.SystemContext {
	sys := &types.SystemContext{
		OSChoice:           o.OS,
		ArchitectureChoice: o.Arch,
		AuthFilePath:       o.AuthFile,
		DockerRegistryUserAgent: func() string {
			if o.UserAgent != "" {
				return o.UserAgent
			}
			return "volant-fledge"
		}(),
	}
	if sys.OSChoice == "" {
		sys.OSChoice = "linux"
	}
	if sys.ArchitectureChoice == "" {
		sys.ArchitectureChoice = runtime.GOARCH
	}
	if o.Insecure {
		sys.DockerInsecureSkipTLSVerify = types.OptionalBoolTrue
		sys.OCIInsecureSkipTLSVerify = true
		sys.DockerDaemonInsecureSkipTLSVerify = true
	}
	return sys
}

// BuiltinPolicy names the policy used when neither PolicyPath nor a
// host policy.json exists: accept any image (digests are still verified).
const BuiltinPolicy = "built-in: accept any image"

// policy builds the signature policy: PolicyPath when set; else the host's
// containers policy (~/.config/containers/policy.json or
// /etc/containers/policy.json) when there is one, as skopeo and podman
// enforce it; else BuiltinPolicy. It returns the policy's source.
func (o *Options) policy(sys *types.SystemContext) (*signature.PolicyContext, string, error) {
	var (
		pol *signature.Policy
		src string
		err error
	)
	switch {
	case o.PolicyPath != "":
		src = o.PolicyPath
		pol, err = signature.NewPolicyFromFile(o.PolicyPath)
	case hostPolicyExists():
		src = "host policy.json"
		pol, err = signature.DefaultPolicy(sys)
	default:
		src = BuiltinPolicy
		pol = &signature.Policy{Default: signature.PolicyRequirements{signature.NewPRInsecureAcceptAnything()}}
	}
	if err != nil {
		return nil, src, apierr.Wrap(apierr.InvalidInput, err, "reading signature policy "+src)
	}
	pc, err := signature.NewPolicyContext(pol)
	return pc, src, err
}

func hostPolicyExists() bool {
	paths := []string{"/etc/containers/policy.json"}
	if home, err := os.UserHomeDir(); err == nil {
		paths = append(paths, filepath.Join(home, ".config/containers/policy.json"))
	}
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	return false
}

// Source is an image resolved for unpacking: its manifest and config have
// been read and verified and the signature policy has accepted it.
type Source struct {
	Image *Image
	// CompressedBytes is the sum of the layers' sizes as the manifest
	// gives them (-1 when some are unknown).
	CompressedBytes int64

	src    types.ImageSource
	layers []types.BlobInfo
	log    *slog.Logger
	prog   progress.Reporter
	idle   time.Duration
}

// Close releases the source.
func (s *Source) Close() error { return s.src.Close() }

// Unpack fetches ref and unpacks its root filesystem into rootfs (Open,
// then Source.Unpack).
func Unpack(ctx context.Context, ref, rootfs string, o Options) (*Image, error) {
	s, err := Open(ctx, ref, o)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	if err := s.Unpack(ctx, rootfs); err != nil {
		return nil, err
	}
	return s.Image, nil
}

// Open resolves ref: reads and verifies its manifest (choosing the
// platform's image from a list) and config, and applies the signature
// policy. Unpacking needs root, so Open refuses without it.
func Open(ctx context.Context, refStr string, o Options) (_ *Source, err error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	prog := progress.Or(o.Progress)
	if os.Geteuid() != 0 {
		return nil, apierr.New(apierr.PermissionDenied, "unpacking an image needs root to keep its file owners, device nodes and capabilities").
			With("hint", "run fledge as root (sudo)")
	}
	ref, err := ParseReference(refStr)
	if err != nil {
		return nil, err
	}
	sys := o.sys()
	pc, policySrc, err := o.policy(sys)
	if err != nil {
		return nil, err
	}
	defer pc.Destroy()

	st := prog.Step("resolve "+Canonical(ref), -1)
	defer func() { st.Done(err) }()
	to := o.timeouts()
	bound := 2 * (to.ConnectTimeout + to.HeaderTimeout)
	ctx, cancel := context.WithTimeoutCause(ctx, bound, errResolve)
	defer cancel()
	defer func() {
		if err != nil && errors.Is(context.Cause(ctx), errResolve) {
			err = apierr.New(apierr.Timeout, "%s did not answer within %s: %v", Canonical(ref), bound, err).
				With("hint", "is the registry up? (a registry that accepts connections but never answers)")
		}
	}()
	src, err := ref.NewImageSource(ctx, sys)
	if err != nil {
		return nil, sourceError(ref, err)
	}
	defer func() {
		if err != nil {
			src.Close()
		}
	}()
	top := image.UnparsedInstance(src, nil)
	topManifest, topType, err := top.Manifest(ctx)
	if err != nil {
		return nil, sourceError(ref, err)
	}
	topDigest, err := manifest.Digest(topManifest)
	if err != nil {
		return nil, fmt.Errorf("digesting manifest: %w", err)
	}
	if ok, err := pc.IsRunningImageAllowed(ctx, top); !ok || err != nil {
		return nil, apierr.Wrap(apierr.PermissionDenied, err, "signature policy rejects "+Canonical(ref)).With("policy", policySrc)
	}
	instance := top
	instanceDigest := topDigest
	if manifest.MIMETypeIsMultiImage(topType) {
		list, err := manifest.ListFromBlob(topManifest, topType)
		if err != nil {
			return nil, fmt.Errorf("parsing manifest list: %w", err)
		}
		d, err := list.ChooseInstance(sys)
		if err != nil {
			return nil, apierr.Wrap(apierr.NotFound, err, fmt.Sprintf("%s has no image for %s/%s", Canonical(ref), sys.OSChoice, sys.ArchitectureChoice))
		}
		instance = image.UnparsedInstance(src, &d)
		instanceDigest = d
	}
	img, err := image.FromUnparsedImage(ctx, sys, instance)
	if err != nil {
		return nil, fmt.Errorf("reading image %s: %w", Canonical(ref), err)
	}
	switch mt := img.ConfigInfo().MediaType; mt {
	case "", ispec.MediaTypeImageConfig, manifest.DockerV2Schema2ConfigMediaType:
	default:
		return nil, apierr.New(apierr.InvalidInput, "%s is not a container image (its config is %s)", Canonical(ref), mt)
	}
	cfg, err := img.OCIConfig(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading image config: %w", err)
	}
	if cfg.OS != "" && cfg.OS != sys.OSChoice || cfg.Architecture != "" && cfg.Architecture != sys.ArchitectureChoice {
		return nil, apierr.New(apierr.InvalidInput, "%s is a %s/%s image; guests run %s/%s", Canonical(ref), cfg.OS, cfg.Architecture, sys.OSChoice, sys.ArchitectureChoice)
	}
	s := &Source{
		Image:  &Image{Ref: Canonical(ref), Digest: topDigest.String(), InstanceDigest: instanceDigest.String(), Policy: policySrc, Config: *cfg},
		src:    src,
		layers: img.LayerInfos(),
		log:    log,
		prog:   prog,
		idle:   to.StallTimeout,
	}
	for _, l := range s.layers {
		if l.Size < 0 {
			s.CompressedBytes = -1
			break
		}
		s.CompressedBytes += l.Size
	}
	return s, nil
}

// Unpack applies the image's layers to rootfs, which must be an empty or
// missing directory. On error rootfs is left in an undefined state for the
// caller to remove.
func (s *Source) Unpack(ctx context.Context, rootfs string) error {
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return fmt.Errorf("creating rootfs: %w", err)
	}
	if err := os.Chmod(rootfs, 0o755); err != nil {
		return fmt.Errorf("creating rootfs: %w", err)
	}
	out := s.Image
	layers := s.layers
	diffIDs := out.Config.RootFS.DiffIDs
	checkDiffIDs := len(diffIDs) == len(layers)
	if !checkDiffIDs {
		s.log.Warn("image config lists a different number of layers than the manifest; DiffIDs not verified", "layers", len(layers), "diff_ids", len(diffIDs))
	}
	opts := &layer.UnpackOptions{OnDiskFormat: layer.DirRootfs{}}
	for i, li := range layers {
		var want digest.Digest
		if checkDiffIDs {
			want = diffIDs[i]
		}
		name := fmt.Sprintf("layer %d/%d %s", i+1, len(layers), short(li.Digest))
		n, err := unpackLayer(ctx, s.src, li, want, rootfs, opts, s.prog.Step(name, li.Size), s.idle)
		if err != nil {
			return fmt.Errorf("%s of %s: %w", name, out.Ref, err)
		}
		out.Bytes += n
		out.Layers++
		s.log.Debug("layer unpacked", "digest", li.Digest, "bytes", n)
	}
	return nil
}

// errResolve and errIdle are the causes of a fetch given up for a
// registry that stopped answering.
var (
	errResolve = errors.New("resolve timeout")
	errIdle    = errors.New("idle timeout")
)

func unpackLayer(ctx context.Context, src types.ImageSource, li types.BlobInfo, diffID digest.Digest, rootfs string, opts *layer.UnpackOptions, st progress.Step, idle time.Duration) (n int64, err error) {
	defer func() { st.Done(err) }()
	if err := li.Digest.Validate(); err != nil {
		return 0, fmt.Errorf("invalid layer digest: %w", err)
	}
	// The idle watchdog: every piece of the layer pushes it back.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	watchdog := time.AfterFunc(idle, func() { cancel(errIdle) })
	defer watchdog.Stop()
	defer func() {
		if err != nil && errors.Is(context.Cause(ctx), errIdle) {
			err = apierr.New(apierr.Timeout, "no data for %s after %d bytes of the layer: %v", idle, n, err)
		}
	}()
	rc, _, err := src.GetBlob(ctx, li, none.NoCache)
	if err != nil {
		return 0, fmt.Errorf("fetching: %w", err)
	}
	defer rc.Close()
	blobVerifier := li.Digest.Verifier()
	counted := &countingReader{r: progress.Reader(ctxReader{ctx, rc}, st), progress: func() { watchdog.Reset(idle) }}
	blob := io.TeeReader(counted, blobVerifier)
	tarStream, _, err := compression.AutoDecompress(blob)
	if err != nil {
		return counted.n, fmt.Errorf("decompressing: %w", err)
	}
	defer tarStream.Close()
	var tarReader io.Reader = tarStream
	differ := digest.SHA256.Digester()
	if diffID != "" {
		tarReader = io.TeeReader(tarStream, differ.Hash())
	}
	if err := layer.UnpackLayer(rootfs, tarReader, opts); err != nil {
		if ctx.Err() != nil {
			return counted.n, ctx.Err()
		}
		return counted.n, fmt.Errorf("unpacking: %w", err)
	}
	// Tar writers may pad past the end-of-archive marker and compressors
	// may leave trailing bytes; read both streams to the end so the
	// digests cover everything.
	if _, err := io.Copy(io.Discard, tarReader); err != nil {
		return counted.n, fmt.Errorf("reading layer: %w", err)
	}
	if _, err := io.Copy(io.Discard, blob); err != nil {
		return counted.n, fmt.Errorf("reading layer: %w", err)
	}
	if li.Size > 0 && counted.n != li.Size {
		return counted.n, apierr.New(apierr.ChecksumMismatch, "layer %s is %d bytes, the manifest says %d", li.Digest, counted.n, li.Size)
	}
	if !blobVerifier.Verified() {
		return counted.n, apierr.New(apierr.ChecksumMismatch, "layer content does not match its digest %s", li.Digest).
			With("digest", li.Digest.String())
	}
	if diffID != "" && differ.Digest() != diffID {
		return counted.n, apierr.New(apierr.ChecksumMismatch, "uncompressed layer is %s, the image config says %s", differ.Digest(), diffID).
			With("diff_id", diffID.String())
	}
	return counted.n, nil
}

func short(d digest.Digest) string {
	s := d.String()
	if i := strings.IndexByte(s, ':'); i >= 0 && len(s) > i+13 {
		return s[:i+13]
	}
	return s
}

type countingReader struct {
	r        io.Reader
	n        int64
	progress func() // called when bytes came
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if n > 0 && c.progress != nil {
		c.progress()
	}
	return n, err
}

// ctxReader stops a long copy when the context is canceled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// sourceError classifies a failure to open an image or read its manifest.
func sourceError(ref types.ImageReference, err error) error {
	name := Canonical(ref)
	var (
		coder   errcode.ErrorCoder
		unauth  docker.ErrUnauthorizedForCredentials
		certErr *tls.CertificateVerificationError
		unknown x509.UnknownAuthorityError
		host    x509.HostnameError
		dnsErr  *net.DNSError
	)
	if errors.As(err, &coder) {
		switch coder.ErrorCode() {
		case v2.ErrorCodeManifestUnknown, v2.ErrorCodeNameUnknown, v2.ErrorCodeBlobUnknown:
			return apierr.Wrap(apierr.NotFound, err, "image "+name+" not found")
		case errcode.ErrorCodeUnauthorized, errcode.ErrorCodeDenied:
			return apierr.Wrap(apierr.Unauthorized, err, "registry refused access to "+name).
				With("hint", "log in with `skopeo login`, or set [source] auth_file")
		}
	}
	switch {
	case errors.Is(err, os.ErrNotExist):
		return apierr.Wrap(apierr.NotFound, err, "image "+name+" not found")
	case errors.As(err, &unauth):
		return apierr.Wrap(apierr.Unauthorized, err, "registry refused access to "+name).
			With("hint", "log in with `skopeo login`, or set [source] auth_file")
	case errors.As(err, &certErr), errors.As(err, &unknown), errors.As(err, &host),
		// net/http reports a plain-HTTP answer to a TLS hello only as text.
		strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return apierr.Wrap(apierr.Unavailable, err, "cannot reach "+name+" over verified TLS").
			With("hint", "for a plain-HTTP or self-signed registry set [source] insecure = true")
	case errors.Is(err, syscall.ECONNREFUSED), errors.As(err, &dnsErr), errors.Is(err, os.ErrDeadlineExceeded):
		return apierr.Wrap(apierr.Unavailable, err, "cannot reach the registry of "+name)
	}
	return fmt.Errorf("opening %s: %w", name, err)
}
