package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"unicode"

	"github.com/google/renameio/v2"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/buildinfo"
	"github.com/volantvm/volant/lib/fetch"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/names"
)

// DefaultMaxArtifactBytes bounds one plugin artifact unless
// Config.MaxArtifactBytes says otherwise.
const DefaultMaxArtifactBytes = 64 << 30

// partialDirName is where downloads in progress live:
// <plugins>/.partial/.<file><random>, renameio pending files destined for
// <plugins>/<plugin>/<file>. Everything in it is a download that no
// install placed (yet).
const partialDirName = ".partial"

// legacyPartialSuffix marks the previous version's downloads in progress:
// <plugins>/.<plugin>.<file>.partial-<random>.
const legacyPartialSuffix = ".partial-"

// staged is a downloaded artifact waiting in its pending file until its
// install wins; only then is it renamed to its final path.
type staged struct {
	f   *renameio.PendingFile
	dst string
}

// pluginsDir is where fetched artifacts live (<data>/plugins/<name>/) and
// the first directory local artifacts may come from.
func (c *Controller) pluginsDir() string { return filepath.Join(c.cfg.DataDir, "plugins") }

func (c *Controller) pluginDir(name string) string { return filepath.Join(c.pluginsDir(), name) }

// pluginVersionDir is where one version's fetched artifacts live:
// <data>/plugins/<name>/@<version>/, so versions installed side by side
// keep their own files of the same name. Every version a manifest may
// carry (names.ValidVersion) is a plain file name; one installed before
// that rule that breaks it is spelled by its digest, as it was then, so
// that removing it finds its files. (Installs before versions put their
// files in <data>/plugins/<name>/ itself; their manifests say so.)
func (c *Controller) pluginVersionDir(name, version string) string {
	dir := version
	if !names.ValidVersion(version) {
		sum := sha256.Sum256([]byte(version))
		dir = hex.EncodeToString(sum[:])[:16]
	}
	return filepath.Join(c.pluginDir(name), "@"+dir)
}

// ArtifactDirs returns the directories local artifacts may come from:
// <data>/plugins and Config.ArtifactDirs, absolute and cleaned.
func (c *Controller) ArtifactDirs() []string {
	var out []string
	seen := map[string]bool{}
	for _, d := range append([]string{c.pluginsDir()}, c.cfg.ArtifactDirs...) {
		if a, err := filepath.Abs(d); err == nil && !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}

// stageArtifacts makes every artifact of m a verified file: local ones
// must be regular files inside an allowed directory (openArtifact);
// remote ones are downloaded to private temporary files, returned for the
// caller to rename into place once its install wins. Each is hashed and
// compared with its checksum (CHECKSUM_MISMATCH); artifacts without a
// checksum get the one computed, so later boots verify against what was
// installed. The URLs in m are rewritten to the files' final paths. On an
// error the temporary files are gone.
func (c *Controller) stageArtifacts(ctx context.Context, m *manifest.Manifest) (_ []staged, err error) {
	type art struct {
		field string
		url   *string
		sum   *string
	}
	var arts []art
	if m.Initramfs != nil {
		arts = append(arts, art{"initramfs", &m.Initramfs.URL, &m.Initramfs.Checksum})
	}
	if m.Rootfs != nil {
		arts = append(arts, art{"rootfs", &m.Rootfs.URL, &m.Rootfs.Checksum})
	}
	for i := range m.Disks {
		arts = append(arts, art{fmt.Sprintf("disks[%d]", i), &m.Disks[i].Source, &m.Disks[i].Checksum})
	}
	var out []staged
	defer func() {
		if err != nil {
			removeStaged(out)
			out = nil
		}
	}()
	dsts := map[string]bool{}
	for _, a := range arts {
		if p, ok := manifest.LocalPath(*a.url); ok {
			sum, err := c.hashLocal(ctx, m.Name, a.field, p)
			if err != nil {
				return out, err
			}
			if err := compareSum(m.Name, a.field, p, *a.sum, sum); err != nil {
				return out, err
			}
			*a.url, *a.sum = filepath.Clean(p), "sha256:"+sum
			continue
		}
		s, sum, err := c.download(ctx, m.Name, m.Version, a.field, *a.url, *a.sum)
		if err != nil {
			return out, err
		}
		out = append(out, s)
		if dsts[s.dst] {
			return out, apierr.New(apierr.InvalidManifest, "plugin %s: two artifacts would be fetched to the same file %s", m.Name, filepath.Base(s.dst)).
				With("errors", []manifest.Problem{{Field: a.field, Message: "same file name as another artifact's URL"}})
		}
		dsts[s.dst] = true
		*a.url, *a.sum = s.dst, "sha256:"+sum
	}
	return out, nil
}

// place renames downloads to their final paths; the install that calls it
// has won (its transaction holds the write lock).
func (c *Controller) place(s []staged) error {
	for _, a := range s {
		if err := os.MkdirAll(filepath.Dir(a.dst), 0o755); err != nil {
			return err
		}
		if err := a.f.CloseAtomicallyReplace(); err != nil {
			return err
		}
	}
	return nil
}

// removeStaged removes the downloads that were not placed (all of them
// when the install lost or failed; none after place).
func removeStaged(s []staged) {
	for _, a := range s {
		_ = a.f.Cleanup()
	}
}

// refuseLocal is the one answer for a local artifact outside the allowed
// directories, whatever is or is not at that path.
func (c *Controller) refuseLocal(plugin, field string) error {
	dirs := c.ArtifactDirs()
	return apierr.New(apierr.PermissionDenied,
		"plugin %s: %s: volantd takes local artifacts only from %s; copy the file there, allow its directory (volantd --artifact-dir), or give an http(s) URL",
		plugin, field, strings.Join(dirs, ", ")).
		With("field", field).With("allowed_dirs", dirs)
}

// openArtifact opens a local artifact: it must be inside one of
// ArtifactDirs (symlinks are followed only while they stay inside it) and
// be a regular file no larger than the cap. Nothing outside the
// directories is looked at, so the answer there tells nothing about it.
func (c *Controller) openArtifact(plugin, field, p string) (*os.File, error) {
	if !filepath.IsAbs(p) {
		return nil, c.refuseLocal(plugin, field)
	}
	p = filepath.Clean(p)
	for _, d := range c.ArtifactDirs() {
		rel, err := filepath.Rel(d, p)
		if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
			continue
		}
		root, err := os.OpenRoot(d)
		if err != nil {
			continue // not there (yet): nothing inside it either
		}
		f, err := openRegular(root, rel)
		root.Close()
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil, apierr.New(apierr.InvalidManifest, "plugin %s: %s %s does not exist", plugin, field, p).
				With("errors", []manifest.Problem{{Field: field, Message: "no such file: " + p}})
		case errors.Is(err, errNotRegular):
			return nil, apierr.New(apierr.InvalidManifest, "plugin %s: %s %s is not a regular file", plugin, field, p).
				With("errors", []manifest.Problem{{Field: field, Message: "not a regular file: " + p}})
		case err != nil:
			// Escapes the directory through a symlink, or cannot be read.
			return nil, c.refuseLocal(plugin, field)
		}
		return f, nil
	}
	return nil, c.refuseLocal(plugin, field)
}

var errNotRegular = errors.New("not a regular file")

// openRegular opens name in root without blocking on a FIFO or opening a
// device: the file is looked at before it is opened, and again after.
func openRegular(root *os.Root, name string) (*os.File, error) {
	st, err := root.Stat(name)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, errNotRegular
	}
	f, err := root.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}
	if st, err = f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		if err == nil {
			err = errNotRegular
		}
		return nil, err
	}
	return f, nil
}

func (c *Controller) maxArtifactBytes() int64 {
	if c.cfg.MaxArtifactBytes > 0 {
		return c.cfg.MaxArtifactBytes
	}
	return DefaultMaxArtifactBytes
}

func (c *Controller) artifactTooLarge(plugin, field, loc string) error {
	return apierr.New(apierr.TooLarge, "plugin %s: %s %s is larger than %d bytes", plugin, field, loc, c.maxArtifactBytes()).
		With("field", field).With("limit_bytes", c.maxArtifactBytes())
}

// hashLocal returns the sha256 of a local artifact (openArtifact's rules).
func (c *Controller) hashLocal(ctx context.Context, plugin, field, p string) (string, error) {
	f, err := c.openArtifact(plugin, field, p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("plugin %s: reading %s %s: %w", plugin, field, p, err)
	}
	if st.Size() > c.maxArtifactBytes() {
		return "", c.artifactTooLarge(plugin, field, p)
	}
	r := &ctxReader{ctx: ctx, r: io.LimitReader(f, c.maxArtifactBytes()+1)}
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return "", fmt.Errorf("plugin %s: hashing %s %s: %w", plugin, field, p, err)
	}
	if r.n > c.maxArtifactBytes() {
		return "", c.artifactTooLarge(plugin, field, p)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// ctxReader reads r until ctx ends (a hash of a large file stops at the
// next read after a cancel), counting what it read.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
	n   int64
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// maxFileName bounds the name of a downloaded file.
const maxFileName = 200

// download fetches a remote artifact into a pending file in
// <data>/plugins/.partial, synced (so placing it later costs no fsync
// inside the install's transaction), and verifies it. Its final path is
// <data>/plugins/<plugin>/@<version>/<file name of the URL, or the field>.
func (c *Controller) download(ctx context.Context, plugin, version, field, loc, want string) (staged, string, error) {
	u, err := url.Parse(loc)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return staged{}, "", apierr.New(apierr.InvalidManifest, "plugin %s: %s %q is neither a local path nor an http(s) URL", plugin, field, loc).
			With("errors", []manifest.Problem{{Field: field, Message: "unsupported location"}})
	}
	// The URL's last segment names the file, unless it cannot: "/", "."
	// or "..", a NUL or another control character (the file's path
	// becomes the manifest's URL, where validation refuses them), or
	// more than a file name holds once renameio's temporary name adds a
	// dot and a random number to it (NAME_MAX, 255).
	base := path.Base(u.Path)
	if base == "/" || base == "." || base == "" || base == ".." || strings.ContainsFunc(base, unicode.IsControl) || len(base) > maxFileName {
		base = strings.NewReplacer("[", "", "]", "").Replace(field)
	}
	dst := filepath.Join(c.pluginVersionDir(plugin, version), base)
	partial := filepath.Join(c.pluginsDir(), partialDirName)
	if err := os.MkdirAll(partial, 0o755); err != nil {
		return staged{}, "", err
	}
	f, err := renameio.NewPendingFile(dst, renameio.WithTempDir(partial), renameio.WithStaticPermissions(0o600))
	if err != nil {
		return staged{}, "", err
	}
	ok := false
	defer func() {
		if !ok {
			_ = f.Cleanup()
		}
	}()
	s := staged{f: f, dst: dst}
	h := sha256.New()
	_, err = fetch.Get(ctx, loc, io.MultiWriter(f, h), fetch.Options{
		MaxBytes: c.maxArtifactBytes(), StallTimeout: c.cfg.FetchStallTimeout, UserAgent: "volantd/" + buildinfo.String(),
	})
	if err != nil {
		return s, "", fmt.Errorf("plugin %s: %s: %w", plugin, field, err)
	}
	if err := f.Sync(); err != nil {
		return s, "", err
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if err := compareSum(plugin, field, loc, want, sum); err != nil {
		return s, "", err
	}
	ok = true
	return s, sum, nil
}

// legacyPartial is how earlier versions named a download in progress:
// <data>/plugins/<plugin>/.<file>.<random digits>.
var legacyPartial = regexp.MustCompile(`^\..+\.[0-9]+$`)

// cleanArtifacts removes what interrupted installs left: partial
// downloads (this version's, in .partial/, and earlier versions'), and
// the empty directories of plugins that are not installed. It runs at
// startup, before any install.
func (c *Controller) cleanArtifacts(installed map[string]bool) (removed []string) {
	entries, err := os.ReadDir(c.pluginsDir())
	if err != nil {
		return nil
	}
	for _, e := range entries {
		p := filepath.Join(c.pluginsDir(), e.Name())
		if !e.IsDir() {
			if strings.HasPrefix(e.Name(), ".") && strings.Contains(e.Name(), legacyPartialSuffix) && os.Remove(p) == nil {
				removed = append(removed, p)
			}
			continue
		}
		if e.Name() == partialDirName {
			sub, _ := os.ReadDir(p)
			for _, s := range sub {
				if s.Type().IsRegular() && os.Remove(filepath.Join(p, s.Name())) == nil {
					removed = append(removed, filepath.Join(p, s.Name()))
				}
			}
			continue
		}
		if !installed[e.Name()] {
			if os.Remove(p) == nil { // only when empty
				removed = append(removed, p)
			}
			continue
		}
		sub, _ := os.ReadDir(p)
		for _, s := range sub {
			if s.Type().IsRegular() && legacyPartial.MatchString(s.Name()) && os.Remove(filepath.Join(p, s.Name())) == nil {
				removed = append(removed, filepath.Join(p, s.Name()))
			}
		}
	}
	return removed
}
