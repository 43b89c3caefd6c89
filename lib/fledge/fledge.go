// Package fledge builds Volant plugins: a bootable artifact plus the plugin
// manifest that describes it, from a fledge.toml.
//
// Strategies:
//
//   - oci_rootfs: an OCI/Docker image (any containers/image transport) is
//     fetched and unpacked in-process (lib/fledge/ociimage: layers streamed,
//     digests and DiffIDs verified, whiteouts honoured), kestrel is installed
//     at /bin/kestrel, the mount points kestrel needs are added, mappings
//     are applied, and an ext4 image sized to the content plus a buffer is
//     made with mkfs.ext4 -d (lib/fledge/ext4). The image config's
//     Entrypoint, Cmd, Env, WorkingDir, User and ExposedPorts become the
//     manifest's workload unless fledge.toml overrides them. Needs root (to
//     keep the image's owners and device nodes); no loop mount.
//   - initramfs: the boot layout (lib/bootimage: FHS skeleton,
//     /dev/console, kestrel as /init, optionally the kernel modules every
//     guest needs, bootimage.BaseModules, with their index), busybox with
//     its applet links, mappings, written as a reproducible newc cpio +
//     gzip (lib/initramfs). No root needed.
//
// BootInitramfs writes the initrd rootfs plugins boot with: kestrel and the
// guest kernel's modules only.
//
// Outputs are reproducible: the same inputs give the same bytes (initramfs:
// sorted entries, zero times, root owners, deterministic gzip; ext4: see
// lib/fledge/ext4). Artifacts and manifests are written under temporary
// names, synced, and renamed into place only when the whole build
// succeeded, so a failed or interrupted build leaves nothing behind.
package fledge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"aead.dev/minisign"
	"github.com/google/renameio/v2"
	"github.com/opencontainers/go-digest"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/bootimage"
	"github.com/volantvm/volant/lib/fetch"
	"github.com/volantvm/volant/lib/fledge/ext4"
	"github.com/volantvm/volant/lib/fledge/progress"
	"github.com/volantvm/volant/lib/initramfs"
	"github.com/volantvm/volant/lib/layout"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/signing"
)

// Request is one build.
type Request struct {
	// Config is the path of fledge.toml.
	Config string `json:"config"`
	// OutputDir receives <name>.img or <name>.cpio.gz and
	// <name>.manifest.json; created if missing.
	OutputDir string `json:"output_dir"`
	// KernelModules is a /lib/modules/<release> directory (with
	// modules.dep) whose bootimage.BaseModules (virtio, network, console,
	// power button) and their dependencies go into an initramfs plugin;
	// volant-launch layers the disk and vsock modules over it for a VM
	// that needs them.
	KernelModules string `json:"kernel_modules,omitempty"`
	// Kestrel overrides where kestrel comes from.
	Kestrel string `json:"kestrel,omitempty"`
	// WorkDir is where an image is unpacked (in a temporary directory
	// removed afterwards); "" picks /dev/shm when the image fits in memory
	// comfortably, else the system's temporary directory.
	WorkDir string `json:"work_dir,omitempty"`
	// Epoch (Unix seconds) stamps times that are not taken from the
	// inputs (SOURCE_DATE_EPOCH); 0 uses the image's creation time, or 1.
	Epoch int64 `json:"epoch,omitempty"`
	// Fetch sets the timeouts of fledge's downloads ([source]
	// busybox_url) and of registry reads (a registry that stops
	// answering); zero values are lib/fetch's defaults.
	Fetch fetch.Options `json:"-"`
	// SignKey is a minisign private key file (fledge keygen, or minisign
	// -G): the manifest is signed with it, the signature written next to
	// it as <name>.manifest.json.minisig. SignPassword decrypts an
	// encrypted key. Without SignKey a signature left by an earlier build
	// is removed, since it would not match the new manifest.
	SignKey      string `json:"sign_key,omitempty"`
	SignPassword string `json:"-"`
	// AuthFile holds the registry credentials of an image whose [source]
	// names no auth_file (the fledge command: $REGISTRY_AUTH_FILE, which
	// containers/image does not read itself); "" leaves containers/image
	// to its usual places (~/.docker/config.json, …).
	AuthFile string `json:"-"`

	key *minisign.PrivateKey // SignKey, read before the build

	Logger   *slog.Logger      `json:"-"`
	Progress progress.Reporter `json:"-"`
}

// Result describes a finished build.
type Result struct {
	Name       string `json:"name"`
	Version    string `json:"plugin_version"`
	Strategy   string `json:"strategy"`
	Artifact   string `json:"artifact"`
	Manifest   string `json:"manifest"`
	SHA256     string `json:"sha256"`
	Bytes      int64  `json:"bytes"`
	DurationMS int64  `json:"duration_ms"`
	// Image and ImageDigest name the source image (oci_rootfs).
	Image       string `json:"image,omitempty"`
	ImageDigest string `json:"image_digest,omitempty"`
	// SignaturePolicy is where the policy that accepted the image came from.
	SignaturePolicy string `json:"signature_policy,omitempty"`
	// StaleWorkDirs are work directories of killed builds this build
	// removed first.
	StaleWorkDirs []string `json:"stale_work_dirs_removed,omitempty"`
	// WorkDir is where the image was unpacked; WorkTmpfs says whether it
	// was in memory (oci_rootfs).
	WorkDir   string `json:"work_dir,omitempty"`
	WorkTmpfs bool   `json:"work_tmpfs,omitempty"`
	// Filesystem describes the ext4 image (oci_rootfs).
	Filesystem *ext4.Result `json:"filesystem,omitempty"`
	// Entries, Applets and Modules describe an initramfs.
	Entries       int      `json:"entries,omitempty"`
	Applets       int      `json:"busybox_applets,omitempty"`
	KernelRelease string   `json:"kernel_release,omitempty"`
	Modules       []string `json:"modules,omitempty"`
	Init          InitMode `json:"init,omitempty"`
	// Kestrel is the agent binary installed ("" when none).
	Kestrel string `json:"kestrel,omitempty"`
	// Signature is the manifest's minisign signature file and KeyID the
	// key that made it (with Request.SignKey).
	Signature string `json:"signature,omitempty"`
	KeyID     string `json:"key_id,omitempty"`
	// StepsMS times the build's steps.
	StepsMS map[string]int64 `json:"steps_ms"`
}

// Build runs the build fledge.toml describes.
func Build(ctx context.Context, req Request) (*Result, error) {
	cfgPath := req.Config
	if cfgPath == "" {
		cfgPath = "fledge.toml"
	}
	c, err := Load(cfgPath)
	if err != nil {
		return nil, err
	}
	return BuildConfig(ctx, c, req)
}

// ImageConfig is the build of an oci_rootfs plugin named name from image
// alone, as a fledge.toml with only [plugin] name and [source] would say:
// the image's config becomes the workload. volantd builds plugins from
// images with it (POST /api/v1/plugins {"image": …}). dir stands for the
// folder of a fledge.toml (relative paths in the result resolve there);
// authFile and insecure are [source] auth_file and insecure.
func ImageConfig(image, name, dir, authFile string, insecure bool) (*Config, error) {
	c := &Config{
		Version: "1", Strategy: StrategyOCIRootfs,
		Plugin: Plugin{Name: name},
		Source: Source{Image: image, AuthFile: authFile, Insecure: insecure},
		Dir:    dir, File: filepath.Join(dir, "fledge.toml"),
	}
	if probs := c.check(); len(probs) > 0 {
		return nil, invalid("image "+image, probs)
	}
	return c, nil
}

// BuildConfig runs the build c describes (Load's result, or ImageConfig's);
// req.Config is not read.
func BuildConfig(ctx context.Context, c *Config, req Request) (*Result, error) {
	start := time.Now()
	if req.Logger == nil {
		req.Logger = slog.New(slog.DiscardHandler)
	}
	req.Progress = progress.Or(req.Progress)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var err error
	if req.SignKey != "" {
		k, err := signing.ReadPrivateKey(req.SignKey, req.SignPassword)
		if err != nil {
			return nil, err
		}
		req.key = &k
	}
	out := req.OutputDir
	if out == "" {
		out = "out"
	}
	if out, err = filepath.Abs(out); err != nil {
		return nil, fmt.Errorf("resolving output directory: %w", err)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, fmt.Errorf("creating output directory: %w", err)
	}
	req.OutputDir = out
	stale := removeStaleWorkDirs(workParents(req.WorkDir), req.Logger)
	var res *Result
	switch c.Strategy {
	case StrategyOCIRootfs:
		if req.KernelModules != "" {
			return nil, apierr.New(apierr.Usage, "--kernel-modules applies to initramfs builds").
				With("hint", "rootfs plugins boot from the boot initramfs: fledge boot-initramfs --kernel-modules DIR")
		}
		res, err = buildRootfs(ctx, c, req)
	default:
		res, err = buildInitramfs(ctx, c, req)
	}
	if err != nil {
		return nil, err
	}
	res.Strategy = c.Strategy
	if req.key != nil {
		res.Signature, res.KeyID = res.Manifest+signing.SignatureSuffix, signing.KeyID(req.key.ID())
	}
	res.StaleWorkDirs = stale
	res.DurationMS = time.Since(start).Milliseconds()
	return res, nil
}

// steps times named steps.
type steps map[string]int64

func (s steps) time(name string, fn func() error) error {
	t := time.Now()
	err := fn()
	s[name] += time.Since(t).Milliseconds()
	return err
}

// output is an artifact and its manifest being written: both are
// renameio pending files (temporary names in the output directory), synced
// and renamed into place by commit; discard removes whatever is left.
type output struct {
	dir, name, ext string
	// art is the artifact: written through the file, or by a tool given
	// its Name() that writes in place (ext4.Make keeps the inode).
	art      *renameio.PendingFile
	manifest *renameio.PendingFile
	sig      *renameio.PendingFile
	key      *minisign.PrivateKey // signs the manifest when set
}

func newOutput(dir, name, ext string, key *minisign.PrivateKey) (*output, error) {
	o := &output{dir: dir, name: name, ext: ext, key: key}
	f, err := renameio.NewPendingFile(o.artifactPath(), renameio.WithTempDir(dir), renameio.WithStaticPermissions(0o644))
	if err != nil {
		return nil, fmt.Errorf("creating artifact: %w", err)
	}
	o.art = f
	return o, nil
}

func (o *output) artifactPath() string { return filepath.Join(o.dir, o.name+o.ext) }
func (o *output) manifestPath() string { return filepath.Join(o.dir, o.name+".manifest.json") }

// commit checks the manifest, writes it, and renames both into place.
func (o *output) commit(c *Config, m *manifest.Manifest) error {
	m.Normalize()
	if err := m.Validate(); err != nil {
		return manifestError(c, err)
	}
	body, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding manifest: %w", err)
	}
	// The manifest must read back as it was written.
	if _, err := manifest.Parse(body); err != nil {
		return manifestError(c, err)
	}
	f, err := renameio.NewPendingFile(o.manifestPath(), renameio.WithTempDir(o.dir), renameio.WithStaticPermissions(0o644))
	if err != nil {
		return fmt.Errorf("writing manifest: %w", err)
	}
	o.manifest = f
	body = append(body, '\n')
	if _, err := f.Write(body); err != nil {
		return fmt.Errorf("writing manifest: %w", err)
	}
	sigPath := o.manifestPath() + signing.SignatureSuffix
	if o.key != nil {
		// The signature covers the file's bytes; the trusted comment
		// names what it signs (deterministic, as the outputs are).
		sig := signing.Sign(*o.key, body, fmt.Sprintf("plugin:%s version:%s file:%s", m.Name, m.Version, filepath.Base(o.manifestPath())))
		if o.sig, err = renameio.NewPendingFile(sigPath, renameio.WithTempDir(o.dir), renameio.WithStaticPermissions(0o644)); err != nil {
			return fmt.Errorf("writing signature: %w", err)
		}
		if _, err := o.sig.Write(sig); err != nil {
			return fmt.Errorf("writing signature: %w", err)
		}
	}
	// A signature of an earlier manifest goes first: a crash midway
	// leaves a manifest without one, never one with a signature that
	// belongs to another.
	if err := os.Remove(sigPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing the earlier signature: %w", err)
	}
	if err := o.art.CloseAtomicallyReplace(); err != nil {
		return fmt.Errorf("placing artifact: %w", err)
	}
	if err := o.manifest.CloseAtomicallyReplace(); err != nil {
		return fmt.Errorf("placing manifest: %w", err)
	}
	if o.sig != nil {
		if err := o.sig.CloseAtomicallyReplace(); err != nil {
			return fmt.Errorf("placing signature: %w", err)
		}
	}
	if d, err := os.Open(o.dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// sameFile checks that a tool which wrote a pending file by its name wrote
// into it, not into a new file under that name (which the rename would
// place unsynced).
func sameFile(f *os.File) error {
	a, err := f.Stat()
	if err != nil {
		return err
	}
	b, err := os.Stat(f.Name())
	if err != nil {
		return err
	}
	if !os.SameFile(a, b) {
		return fmt.Errorf("%s was replaced while being written", f.Name())
	}
	return nil
}

// discard removes the pending files (nothing once commit placed them).
func (o *output) discard() {
	for _, f := range []*renameio.PendingFile{o.art, o.manifest, o.sig} {
		if f != nil {
			_ = f.Cleanup()
		}
	}
}

// hashFile returns the sha256 (hex, go-digest) and size of p.
func hashFile(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	d := digest.SHA256.Digester()
	n, err := io.Copy(d.Hash(), f)
	if err != nil {
		return "", 0, err
	}
	return d.Digest().Encoded(), n, nil
}

// BootRequest asks for a boot initramfs.
type BootRequest struct {
	// Kestrel is the kestrel binary; "" finds it as FindKestrel does.
	Kestrel string `json:"kestrel,omitempty"`
	// ModulesDir is the guest kernel's /lib/modules/<release> directory.
	ModulesDir string `json:"kernel_modules"`
	// Modules overrides bootimage.DefaultModules.
	Modules []string `json:"modules,omitempty"`
	// Output is the file to write (atomically).
	Output string       `json:"output"`
	Logger *slog.Logger `json:"-"`
}

// BootResult describes a written boot initramfs.
type BootResult struct {
	Artifact      string   `json:"artifact"`
	SHA256        string   `json:"sha256"`
	Bytes         int64    `json:"bytes"`
	KernelRelease string   `json:"kernel_release"`
	Modules       []string `json:"modules"`
	Entries       int      `json:"entries"`
	Kestrel       string   `json:"kestrel"`
	DurationMS    int64    `json:"duration_ms"`
}

// BootInitramfs writes the initramfs rootfs plugins boot with under a
// distribution kernel: kestrel as /init and the kernel modules it needs to
// reach the root disk, with their index. Reproducible.
func BootInitramfs(ctx context.Context, req BootRequest) (*BootResult, error) {
	start := time.Now()
	if req.ModulesDir == "" {
		return nil, apierr.New(apierr.Usage, "the boot initramfs needs the guest kernel's modules directory").
			With("hint", "pass --kernel-modules "+filepath.Join(layout.DefaultKernelDir, "modules", "<release>"))
	}
	if req.Output == "" {
		return nil, apierr.New(apierr.Usage, "no output file given")
	}
	kestrel, err := FindKestrel(nil, req.Kestrel)
	if err != nil {
		return nil, err
	}
	out, err := filepath.Abs(req.Output)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return nil, fmt.Errorf("creating output directory: %w", err)
	}
	b := initramfs.New()
	info, err := bootimage.Add(b, bootimage.Options{Kestrel: kestrel, ModulesDir: req.ModulesDir, Modules: req.Modules})
	if err != nil {
		return nil, modulesError(req.ModulesDir, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := b.WriteFile(out, initramfs.Gzip); err != nil {
		return nil, fmt.Errorf("writing %s: %w", out, err)
	}
	sum, n, err := hashFile(out)
	if err != nil {
		return nil, err
	}
	res := &BootResult{Artifact: out, SHA256: sum, Bytes: n, KernelRelease: info.Release, Entries: b.Len(), Kestrel: kestrel}
	for _, s := range info.Modules {
		res.Modules = append(res.Modules, s.Name)
	}
	res.DurationMS = time.Since(start).Milliseconds()
	return res, nil
}

// modulesError classifies a failure to read a kernel modules directory.
func modulesError(dir string, err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return apierr.Wrap(apierr.NotFound, err, "kernel modules directory "+dir+" is missing or has no modules.dep").
			With("hint", "pass /lib/modules/<release> of the guest kernel, e.g. "+filepath.Join(layout.DefaultKernelDir, "modules", "<release>")+" (make kernel)")
	}
	return fmt.Errorf("adding kernel modules from %s: %w", dir, err)
}
