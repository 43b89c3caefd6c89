package fledge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	securejoin "github.com/cyphar/filepath-securejoin"
	"golang.org/x/sys/unix"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/bootimage"
	"github.com/volantvm/volant/lib/buildinfo"
	"github.com/volantvm/volant/lib/fledge/ext4"
	"github.com/volantvm/volant/lib/fledge/ociimage"
	"github.com/volantvm/volant/lib/manifest"
)

// mountPoints are the directories kestrel mounts over or moves its mounts
// into when it switches to the root disk; images that lack them get them.
var mountPoints = []struct {
	Path string
	Mode fs.FileMode
}{{"/dev", 0o755}, {"/proc", 0o555}, {"/sys", 0o555}, {"/run", 0o755}, {"/tmp", 0o1777}}

// buildRootfs runs the oci_rootfs strategy.
func buildRootfs(ctx context.Context, c *Config, req Request) (*Result, error) {
	log := req.Logger
	st := steps{}
	image := c.imageRef()
	ref, err := ociimage.ParseReference(image)
	if err != nil {
		if apierr.Is(err, apierr.InvalidInput) {
			return nil, invalid(c.File, []Problem{{Field: "source.image", Message: err.Error()}})
		}
		return nil, err
	}
	defName, tag := ociimage.DefaultName(ref)
	name, version := c.names(defName, tag)
	if err := c.preflight(name, version); err != nil {
		return nil, err
	}
	kestrel, err := FindKestrel(c, req.Kestrel)
	if err != nil {
		return nil, err
	}
	entries, err := c.resolveMappings()
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if e.Dest == bootimage.KestrelPath {
			return nil, c.errReserved(e)
		}
	}
	policy := c.Source.SignaturePolicy
	if policy != "" && !filepath.IsAbs(policy) {
		policy = filepath.Join(c.Dir, policy)
	}
	auth := c.Source.AuthFile
	if auth != "" && !filepath.IsAbs(auth) {
		auth = filepath.Join(c.Dir, auth)
	}
	if auth == "" {
		auth = req.AuthFile
	}

	res := &Result{Name: name, Version: version, Kestrel: kestrel, StepsMS: st}
	var src *ociimage.Source
	err = st.time("resolve", func() error {
		var err error
		src, err = ociimage.Open(ctx, image, ociimage.Options{
			Insecure:   c.Source.Insecure,
			PolicyPath: policy,
			AuthFile:   auth,
			UserAgent:  "volant-fledge/" + buildinfo.Version,
			Timeouts:   req.Fetch,
			Logger:     log,
			Progress:   req.Progress,
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	defer src.Close()
	work, tmpfs, err := scratch(req.WorkDir, src.CompressedBytes)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	res.WorkDir, res.WorkTmpfs = work, tmpfs
	log.Debug("unpacking", "work_dir", work, "tmpfs", tmpfs, "compressed_bytes", src.CompressedBytes)
	rootfs := filepath.Join(work, "rootfs")
	img := src.Image
	if err := st.time("fetch_unpack", func() error { return src.Unpack(ctx, rootfs) }); err != nil {
		return nil, err
	}
	res.Image, res.ImageDigest, res.SignaturePolicy = img.Ref, img.Digest, img.Policy
	log.Debug("image unpacked", "ref", img.Ref, "digest", img.Digest, "layers", img.Layers, "bytes", img.Bytes)

	epoch := req.Epoch
	if epoch <= 0 && img.Config.Created != nil && img.Config.Created.Unix() > 0 {
		epoch = img.Config.Created.Unix()
	}
	if epoch <= 0 {
		epoch = 1
	}

	// The workload is read from the image before anything is added to it.
	w, labels, err := imageWorkload(c.tomlWorkload(), img.Config.Config, rootfs)
	if err != nil {
		return nil, err
	}

	err = st.time("install", func() error {
		rw := &rootWriter{root: rootfs, epoch: time.Unix(epoch, 0), times: map[string]time.Time{}}
		if err := rw.file(bootimage.KestrelPath, kestrel, 0o755); err != nil {
			return fmt.Errorf("installing kestrel: %w", err)
		}
		for _, mp := range mountPoints {
			if err := rw.mountPoint(mp.Path, mp.Mode); err != nil {
				return fmt.Errorf("adding mount point %s: %w", mp.Path, err)
			}
		}
		for _, e := range entries {
			var err error
			switch e.Kind {
			case kindDir:
				_, err = rw.dir(e.Dest)
			case kindFile:
				err = rw.file(e.Dest, e.Src, e.Mode)
			case kindSymlink:
				err = rw.symlink(e.Dest, e.Target)
			}
			if err != nil {
				return fmt.Errorf("mapping %q to %s: %w", e.From, e.Dest, err)
			}
		}
		return rw.restore()
	})
	if err != nil {
		return nil, err
	}

	o, err := newOutput(req.OutputDir, name, ".img", req.key)
	if err != nil {
		return nil, err
	}
	defer o.discard()
	var free int64
	if c.Filesystem != nil && c.Filesystem.SizeBufferMB > 0 {
		free = int64(c.Filesystem.SizeBufferMB) << 20
	}
	label := name
	if len(label) > 16 {
		label = label[:16]
	}
	err = st.time("mkfs", func() error {
		s := req.Progress.Step("mkfs.ext4 "+filepath.Base(o.artifactPath()), -1)
		r, err := ext4.Make(ctx, rootfs, o.art.Name(), ext4.Options{
			FreeBytes: free,
			Label:     label,
			Seed:      img.InstanceDigest + "\x00" + name + "\x00" + version,
			Epoch:     epoch,
			Logger:    log,
		})
		s.Done(err)
		res.Filesystem = r
		return err
	})
	if err != nil {
		return nil, err
	}
	var sum string
	err = st.time("checksum", func() error {
		var err error
		if err := sameFile(o.art.File); err != nil {
			return err
		}
		sum, res.Bytes, err = hashFile(o.art.Name())
		return err
	})
	if err != nil {
		return nil, err
	}
	m := c.manifestFor(name, version, w, labels)
	m.Image, m.ImageDigest = img.Ref, img.Digest
	if p := agentPortFor(labels[ExposedPortsLabel], w.BaseURL); p != manifest.DefaultAgentPort &&
		(c.Network == nil || c.Network.AgentPort == 0) {
		if m.Network == nil {
			m.Network = &manifest.Network{}
		}
		m.Network.AgentPort = p
	}
	m.Rootfs = &manifest.Rootfs{URL: fileURL(o.artifactPath()), Checksum: "sha256:" + sum, Format: "raw", FSType: "ext4"}
	if err := o.commit(c, m); err != nil {
		return nil, err
	}
	res.Artifact, res.Manifest, res.SHA256 = o.artifactPath(), o.manifestPath(), sum
	return res, nil
}

// scratch makes the directory an image is unpacked in: inside dir when
// given; else on /dev/shm when it is a tmpfs with room to spare for the
// image (estimated from its compressed size) and keeps user xattrs, since
// unpacking thousands of files into memory is several times faster than
// onto a journaling filesystem and mkfs then reads them from memory; else
// in the system's temporary directory.
func scratch(dir string, compressed int64) (string, bool, error) {
	if dir == "" && compressed >= 0 && tmpfsFits("/dev/shm", compressed*5+64<<20) {
		if d, err := newWorkDir("/dev/shm"); err == nil {
			return d, true, nil
		}
	}
	d, err := newWorkDir(dir)
	if err != nil {
		return "", false, err
	}
	var fs unix.Statfs_t
	tmpfs := unix.Statfs(d, &fs) == nil && fs.Type == unix.TMPFS_MAGIC
	return d, tmpfs, nil
}

// tmpfsFits reports whether dir is a tmpfs with twice need free, need is
// at most a quarter of the available memory, and user xattrs can be set
// there (tmpfs has them since Linux 6.6).
func tmpfsFits(dir string, need int64) bool {
	var fs unix.Statfs_t
	if unix.Statfs(dir, &fs) != nil || fs.Type != unix.TMPFS_MAGIC {
		return false
	}
	if int64(fs.Bavail)*fs.Bsize < 2*need {
		return false
	}
	if avail := memAvailable(); avail <= 0 || need > avail/4 {
		return false
	}
	f, err := os.CreateTemp(dir, ".fledge-probe-*")
	if err != nil {
		return false
	}
	defer os.Remove(f.Name())
	defer f.Close()
	return unix.Fsetxattr(int(f.Fd()), "user.fledge-probe", []byte("1"), 0) == nil
}

// memAvailable is MemAvailable from /proc/meminfo in bytes, or -1.
func memAvailable() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				if kb, err := strconv.ParseInt(f[0], 10, 64); err == nil {
					return kb << 10
				}
			}
		}
	}
	return -1
}

// localTransports name files or directories; relative paths in them
// resolve against fledge.toml's folder.
var localTransports = []string{"oci", "oci-archive", "docker-archive", "dir"}

// imageRef is [source] image with relative local paths made absolute.
func (c *Config) imageRef() string {
	s := strings.TrimSpace(c.Source.Image)
	for _, t := range localTransports {
		if within, ok := strings.CutPrefix(s, t+":"); ok && within != "" && !strings.HasPrefix(within, "/") {
			return t + ":" + filepath.Join(c.Dir, within)
		}
	}
	return s
}

// rootWriter adds files to an unpacked image without leaving it: guest
// paths resolve with the image's own symlinks, confined to its root
// (filepath-securejoin). What it writes is owned by root and stamped with
// epoch; directories it writes into get their modification time back.
type rootWriter struct {
	root  string
	epoch time.Time
	times map[string]time.Time // host dir -> mtime to restore
}

// remember records a directory's mtime before it is first changed.
func (w *rootWriter) remember(dir string) {
	if _, ok := w.times[dir]; ok {
		return
	}
	if st, err := os.Lstat(dir); err == nil {
		w.times[dir] = st.ModTime()
	}
}

func (w *rootWriter) restore() error {
	for dir, t := range w.times {
		if err := unix.Lutimes(dir, []unix.Timeval{unix.NsecToTimeval(t.UnixNano()), unix.NsecToTimeval(t.UnixNano())}); err != nil {
			return fmt.Errorf("restoring the time of %s: %w", dir, err)
		}
	}
	return nil
}

func (w *rootWriter) stamp(p string) error {
	if err := os.Lchown(p, 0, 0); err != nil {
		return err
	}
	tv := unix.NsecToTimeval(w.epoch.UnixNano())
	return unix.Lutimes(p, []unix.Timeval{tv, tv})
}

// dir makes sure guest directory g exists (creating missing parts with mode
// 0755) and returns its host path.
func (w *rootWriter) dir(g string) (string, error) {
	host, err := securejoin.SecureJoin(w.root, g)
	if err != nil {
		return "", err
	}
	rel, err := filepath.Rel(w.root, host)
	if err != nil {
		return "", err
	}
	cur := w.root
	if rel == "." {
		return cur, nil
	}
	for _, part := range strings.Split(rel, string(filepath.Separator)) {
		next := filepath.Join(cur, part)
		st, err := os.Lstat(next)
		switch {
		case err == nil && st.IsDir():
		case err == nil:
			return "", apierr.New(apierr.InvalidInput, "%s exists in the image and is not a directory", strings.TrimPrefix(next, w.root))
		case errors.Is(err, fs.ErrNotExist):
			w.remember(cur)
			if err := os.Mkdir(next, 0o755); err != nil {
				return "", err
			}
			if err := os.Chmod(next, 0o755); err != nil {
				return "", err
			}
			if err := w.stamp(next); err != nil {
				return "", err
			}
			w.times[next] = w.epoch
		default:
			return "", err
		}
		cur = next
	}
	return cur, nil
}

// place prepares the host path for guest path g: its parent exists and
// nothing but a directory is in the way (a file or symlink there is
// replaced).
func (w *rootWriter) place(g string) (string, error) {
	parent, err := w.dir(path.Dir(g))
	if err != nil {
		return "", err
	}
	host := filepath.Join(parent, path.Base(g))
	st, err := os.Lstat(host)
	switch {
	case err == nil && st.IsDir():
		return "", apierr.New(apierr.InvalidInput, "%s is a directory in the image", g)
	case err == nil:
		w.remember(parent)
		if err := os.Remove(host); err != nil {
			return "", err
		}
	case !errors.Is(err, fs.ErrNotExist):
		return "", err
	}
	w.remember(parent)
	return host, nil
}

func (w *rootWriter) file(g, src string, mode fs.FileMode) error {
	host, err := w.place(g)
	if err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(host, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Chmod(mode); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return w.stamp(host)
}

func (w *rootWriter) symlink(g, target string) error {
	host, err := w.place(g)
	if err != nil {
		return err
	}
	if err := os.Symlink(target, host); err != nil {
		return err
	}
	return w.stamp(host)
}

// mountPoint adds directory g with mode if the image lacks it. An image
// whose /tmp (or other) is a symlink keeps it.
func (w *rootWriter) mountPoint(g string, mode fs.FileMode) error {
	host := filepath.Join(w.root, g)
	if _, err := os.Lstat(host); err == nil {
		return nil
	}
	h, err := w.dir(g)
	if err != nil {
		return err
	}
	if err := os.Chmod(h, mode|modeBits(mode)); err != nil {
		return err
	}
	return w.stamp(h)
}

// modeBits maps Unix sticky/setgid/setuid bits to Go's mode flags.
func modeBits(m fs.FileMode) fs.FileMode {
	var out fs.FileMode
	if m&0o1000 != 0 {
		out |= fs.ModeSticky
	}
	if m&0o2000 != 0 {
		out |= fs.ModeSetgid
	}
	if m&0o4000 != 0 {
		out |= fs.ModeSetuid
	}
	return out
}
