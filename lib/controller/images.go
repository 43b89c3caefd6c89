package controller

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/fledge/fledgecmd"
	"github.com/volantvm/volant/lib/fledge/progress"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/names"
	"github.com/volantvm/volant/lib/store"
)

// ImageConfig configures the builds of plugins from container images.
// They run the fledge command (lib/fledge/fledgecmd), so the controller
// links none of the image libraries.
type ImageConfig struct {
	// Fledge is the fledge binary; "" finds it at each build next to the
	// running executable, then on PATH (fledgecmd.Find).
	Fledge string
	// MaxBuilds bounds the builds running at once (default
	// DefaultMaxBuilds); more wait for a slot.
	MaxBuilds int
	// AuthFile holds registry credentials (containers-auth.json(5)); ""
	// means the usual places: $REGISTRY_AUTH_FILE,
	// $XDG_RUNTIME_DIR/containers/auth.json, ~/.docker/config.json.
	AuthFile string
	// InsecureRegistries are registries (host or host:port) reached over
	// plain HTTP or unverified TLS.
	InsecureRegistries []string
	// WorkDir is where images are unpacked ("": fledge's choice, memory
	// when the image fits comfortably).
	WorkDir string
}

// DefaultMaxBuilds is ImageConfig.MaxBuilds's default: an unpack and an
// mkfs each keep a core busy.
const DefaultMaxBuilds = 2

func (c ImageConfig) maxBuilds() int {
	if c.MaxBuilds > 0 {
		return c.MaxBuilds
	}
	return DefaultMaxBuilds
}

// buildDirPrefix names the private directory a build writes its plugin
// into, inside the plugins directory; a build killed midway leaves one,
// which cleanBuilds removes at the next start (Reconcile).
const buildDirPrefix = ".build-"

// InstallImage builds a plugin from a container image with the fledge
// command (`fledge build --image`, oci_rootfs, run as a child process) and
// installs it, or answers
// the plugin already built from that image digest (built reports which).
// At most ImageConfig.MaxBuilds builds run at once; builds of one plugin
// name run one after the other, so concurrent requests for one image build
// it once. The build goes on when the caller goes away. Its steps are
// events (plugin.build.*).
//
// With Config.RequireSigned it is SIGNATURE_REQUIRED before anything is
// fetched: a plugin volantd builds carries no signature of its publisher.
func (c *Controller) InstallImage(ctx context.Context, req api.InstallImageRequest) (_ *api.Plugin, built bool, err error) {
	if c.cfg.RequireSigned {
		return nil, false, apierr.New(apierr.SignatureRequired, "volantd requires signed plugins (--require-signed); a plugin built from an image has no signature").
			With("hint", "build and sign it with `fledge build --sign KEY`, then install the signed manifest")
	}
	switch req.Pull {
	case "", api.PullAlways, api.PullIfNotPresent, api.PullNever:
	default:
		return nil, false, apierr.New(apierr.InvalidInput, "pull %q: use always, if-not-present or never", req.Pull).With("field", "pull")
	}
	if req.Name != "" {
		if err := names.Check("plugin name", req.Name); err != nil {
			return nil, false, err
		}
	}
	fl := c.fledge()
	// What the reference names, nothing fetched yet.
	info, err := fl.Inspect(ctx, fledgecmd.InspectRequest{Image: req.Image})
	if err != nil {
		return nil, false, err
	}
	if err := c.checkImageSource(info); err != nil {
		return nil, false, err
	}
	canonical := info.Image
	if req.Pull == api.PullIfNotPresent || req.Pull == api.PullNever {
		p, err := c.pluginFromImage(ctx, canonical, req.Name)
		if err != nil || p != nil {
			return p, false, err
		}
		if req.Pull == api.PullNever {
			return nil, false, apierr.New(apierr.NotFound, "no plugin is built from %s, and pull is never", canonical).
				With("image", canonical)
		}
	}
	insecure := req.Insecure || info.Registry != "" && slices.Contains(c.cfg.Images.InsecureRegistries, info.Registry)
	// The digest first (a manifest read): a plugin built from it is the
	// answer, whatever the tag points at now.
	resolved, err := fl.Inspect(ctx, fledgecmd.InspectRequest{Image: req.Image, Resolve: true, Insecure: insecure, AuthFile: c.cfg.Images.AuthFile})
	if err != nil {
		return nil, false, err
	}
	digest := resolved.Digest
	name := req.Name
	if name == "" {
		name = imagePluginName(info.Name, digest)
	}

	unlock, err := c.imageLocks.lock(ctx, name)
	if err != nil {
		return nil, false, err
	}
	defer unlock()
	exists := false
	switch p, err := c.Plugin(ctx, name); {
	case err == nil && p.ImageDigest == digest:
		return p, false, nil
	case err == nil && !req.Replace:
		return nil, false, apierr.New(apierr.Conflict, "plugin %s is installed already, built from %s", name, orWord(p.ImageDigest, "no image")).
			With("plugin", name).With("image_digest", p.ImageDigest).
			With("hint", "install with replace, or under another name")
	case err == nil:
		exists = true
	case !apierr.Is(err, apierr.NotFound):
		return nil, false, err
	}

	// The build outlives the request: another request for the same image
	// waits for it, and a finished build is worth keeping.
	bctx := context.WithoutCancel(ctx)
	select {
	case c.builds <- struct{}{}:
	case <-ctx.Done():
		return nil, false, apierr.From(context.Cause(ctx))
	}
	defer func() { <-c.builds }()
	p, err := c.buildImage(bctx, fl, name, canonical, digest, req.Image, insecure, exists)
	if err != nil {
		return nil, false, err
	}
	return p, true, nil
}

func orWord(s, word string) string {
	if s == "" {
		return word
	}
	return s
}

// fledge runs the configured fledge binary.
func (c *Controller) fledge() *fledgecmd.Cmd {
	return &fledgecmd.Cmd{Binary: c.cfg.Images.Fledge, Logger: c.log}
}

// imagePluginName is <repository>-<12 hex digits of the digest>; base is
// the name fledge suggests for the image.
func imagePluginName(base, digest string) string {
	if base == "" {
		base = "image"
	}
	hex := strings.TrimPrefix(digest, "sha256:")
	if len(hex) > 12 {
		hex = hex[:12]
	}
	if len(base) > 63-1-len(hex) {
		base = strings.TrimRight(base[:63-1-len(hex)], "-_")
	}
	return base + "-" + hex
}

// checkImageSource refuses images read from host paths (oci:, dir:,
// archives) outside the directories local artifacts may come from: the
// same rule as a manifest's local artifacts.
func (c *Controller) checkImageSource(info *fledgecmd.ImageInfo) error {
	if info.Transport == "docker" {
		return nil
	}
	p := info.Path
	if p == "" || !filepath.IsAbs(p) {
		return apierr.New(apierr.Internal, "fledge named no host path for %s", info.Image)
	}
	if abs, err := filepath.EvalSymlinks(p); err == nil {
		p = abs
	}
	for _, d := range c.ArtifactDirs() {
		if rel, err := filepath.Rel(d, p); err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
			return nil
		}
	}
	return apierr.New(apierr.PermissionDenied, "volantd reads images from host paths only inside %s; push the image to a registry, or copy it there",
		strings.Join(c.ArtifactDirs(), ", ")).With("allowed_dirs", c.ArtifactDirs())
}

// pluginFromImage is the newest installed plugin built from the image
// reference canonical (named name, when given), or nil.
func (c *Controller) pluginFromImage(ctx context.Context, canonical, name string) (*api.Plugin, error) {
	ps, err := c.ListPlugins(ctx)
	if err != nil {
		return nil, err
	}
	var best *api.Plugin
	for i := range ps {
		p := &ps[i]
		if p.Image != canonical || (name != "" && p.Name != name) || !p.Enabled {
			continue
		}
		if best == nil || p.UpdatedAt.After(best.UpdatedAt) {
			best = p
		}
	}
	return best, nil
}

// buildImage runs the build into a private directory, moves the image to
// <data>/plugins/<name>/<digest>.img and installs the manifest.
func (c *Controller) buildImage(ctx context.Context, fl *fledgecmd.Cmd, name, canonical, digest, image string, insecure, replace bool) (_ *api.Plugin, err error) {
	start := time.Now()
	c.buildEvent(ctx, api.EventPluginBuildStarted, name, map[string]any{"name": name, "image": canonical, "digest": digest})
	defer func() {
		if err != nil {
			c.buildEvent(ctx, api.EventPluginBuildFailed, name, map[string]any{"name": name, "image": canonical, "error": err.Error()})
		}
	}()
	if err := os.MkdirAll(c.pluginsDir(), 0o755); err != nil {
		return nil, err
	}
	out, err := os.MkdirTemp(c.pluginsDir(), buildDirPrefix+name+"-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(out)
	res, err := fl.Build(ctx, fledgecmd.BuildRequest{
		Image:     image,
		Name:      name,
		OutputDir: out,
		Kestrel:   c.cfg.Launch.Kestrel,
		WorkDir:   c.cfg.Images.WorkDir,
		Insecure:  insecure,
		AuthFile:  c.cfg.Images.AuthFile,
		Progress:  &buildProgress{c: c, ctx: ctx, name: name, image: canonical},
	})
	if err != nil {
		return nil, fmt.Errorf("building plugin %s from %s: %w", name, canonical, err)
	}
	data, err := os.ReadFile(res.Manifest)
	if err != nil {
		return nil, err
	}
	m, err := manifest.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("the manifest fledge wrote: %w", err)
	}
	// Named by digest, so a replaced plugin's image stays whole until the
	// plugin is removed (VMs copy it when they start).
	hex := strings.TrimPrefix(res.ImageDigest, "sha256:")
	dst := filepath.Join(c.pluginDir(name), hex[:min(12, len(hex))]+".img")
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return nil, err
	}
	if err := os.Rename(res.Artifact, dst); err != nil {
		return nil, fmt.Errorf("placing the image of plugin %s: %w", name, err)
	}
	m.Rootfs.URL = dst
	js, err := m.JSON()
	if err != nil {
		return nil, err
	}
	p, err := c.InstallPlugin(ctx, js, replace)
	if err != nil {
		if !replace {
			os.Remove(dst)
		}
		return nil, err
	}
	c.buildEvent(ctx, api.EventPluginBuildFinished, name, map[string]any{"name": name, "image": canonical, "digest": res.ImageDigest,
		"duration_ms": time.Since(start).Milliseconds(), "bytes": res.Bytes})
	c.log.Info("plugin built from an image", "plugin", name, "image", canonical, "digest", res.ImageDigest, "duration", time.Since(start).Round(time.Millisecond))
	return p, nil
}

// buildEvent appends a build event in its own transaction; a build does
// not fail because its progress could not be recorded.
func (c *Controller) buildEvent(ctx context.Context, typ, name string, data map[string]any) {
	err := c.st.Tx(ctx, func(tx *sql.Tx) error {
		_, err := store.AppendEvent(ctx, tx, typ, name, data)
		return err
	})
	if err != nil {
		c.log.Warn("recording a build event", "plugin", name, "type", typ, "err", err)
		return
	}
	c.notify()
}

// buildProgress turns fledge's steps into plugin.build.progress events:
// one when a step begins and one when it ends, not one per byte.
type buildProgress struct {
	c           *Controller
	ctx         context.Context
	name, image string
}

func (b *buildProgress) Step(name string, total int64) progress.Step {
	d := map[string]any{"name": b.name, "image": b.image, "step": name}
	if total >= 0 {
		d["total_bytes"] = total
	}
	b.c.buildEvent(b.ctx, api.EventPluginBuildProgress, b.name, d)
	return &buildStep{b: b, name: name}
}

type buildStep struct {
	b    *buildProgress
	name string
	mu   sync.Mutex
	n    int64
}

func (s *buildStep) Add(n int64) {
	s.mu.Lock()
	s.n += n
	s.mu.Unlock()
}

func (s *buildStep) Done(err error) {
	s.mu.Lock()
	n := s.n
	s.mu.Unlock()
	d := map[string]any{"name": s.b.name, "image": s.b.image, "step": s.name, "done": true, "bytes": n}
	if err != nil {
		d["error"] = err.Error()
	}
	s.b.c.buildEvent(s.b.ctx, api.EventPluginBuildProgress, s.b.name, d)
}

// cleanBuilds removes the private directories of builds a killed daemon
// left in the plugins directory.
func (c *Controller) cleanBuilds() (removed []string) {
	entries, err := os.ReadDir(c.pluginsDir())
	if err != nil {
		return nil
	}
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), buildDirPrefix) {
			p := filepath.Join(c.pluginsDir(), e.Name())
			if err := os.RemoveAll(p); err == nil {
				removed = append(removed, p)
			} else if !errors.Is(err, os.ErrNotExist) {
				c.log.Warn("removing a killed build's directory", "dir", p, "err", err)
			}
		}
	}
	return removed
}
