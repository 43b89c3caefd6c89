package fledge

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"

	"github.com/volantvm/volant/lib/bootimage"
	"github.com/volantvm/volant/lib/initramfs"
	"github.com/volantvm/volant/lib/manifest"
)

// buildInitramfs runs the initramfs strategy.
func buildInitramfs(ctx context.Context, c *Config, req Request) (res *Result, err error) {
	log := req.Logger
	st := steps{}
	name, version := c.names(filepath.Base(c.Dir), "")
	if err := c.preflight(name, version); err != nil {
		return nil, err
	}
	mode := c.InitMode()
	res = &Result{Name: name, Version: version, Init: mode, StepsMS: st}

	var kestrel string
	if mode == InitKestrel {
		if kestrel, err = FindKestrel(c, req.Kestrel); err != nil {
			return nil, err
		}
		res.Kestrel = kestrel
	}
	var customInit string
	if mode == InitCustom {
		if customInit, err = c.contextFile("init.path", c.Init.Path); err != nil {
			return nil, err
		}
		if err := checkStatic(customInit, "[init] path"); err != nil {
			// A script is fine as /init if busybox provides its interpreter.
			if !isScript(customInit) {
				return nil, err
			}
		}
	}
	entries, err := c.resolveMappings()
	if err != nil {
		return nil, err
	}
	work, err := newWorkDir("")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	bb, err := resolveBusybox(ctx, c, work, req.Fetch)
	if err != nil {
		return nil, err
	}
	applets, err := busyboxApplets(bb)
	if err != nil {
		return nil, err
	}
	res.Applets = len(applets)

	b := initramfs.New()
	err = st.time("layout", func() error {
		info, err := bootimage.Add(b, bootimage.Options{Kestrel: kestrel, ModulesDir: req.KernelModules, Modules: bootimage.BaseModules})
		if err != nil {
			if req.KernelModules != "" {
				return modulesError(req.KernelModules, err)
			}
			return err
		}
		res.KernelRelease = info.Release
		for _, s := range info.Modules {
			res.Modules = append(res.Modules, s.Name)
		}
		if err := b.CopyFile("/bin/busybox", bb, 0o755); err != nil {
			return err
		}
		for _, a := range applets {
			if a == "/bin/busybox" || b.Has(a) {
				continue
			}
			if err := b.Symlink(a, "/bin/busybox"); err != nil {
				return err
			}
		}
		if mode == InitCustom {
			if err := b.CopyFile("/init", customInit, 0o755); err != nil {
				return err
			}
		}
		for _, e := range entries {
			if reserved(e.Dest, mode == InitKestrel) {
				return c.errReserved(e)
			}
			switch e.Kind {
			case kindDir:
				err = b.Dir(e.Dest, e.Mode)
			case kindFile:
				err = b.CopyFile(e.Dest, e.Src, e.Mode)
			case kindSymlink:
				err = b.Symlink(e.Dest, e.Target)
			}
			if err != nil {
				return fmt.Errorf("mapping %s: %w", e.From, err)
			}
		}
		if mode == InitNone && !b.Has("/init") {
			return invalid(c.File, []Problem{{Field: "init.none", Message: "with none = true a mapping must provide /init"}})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	res.Entries = b.Len()
	log.Debug("initramfs layout", "entries", res.Entries, "applets", len(applets), "modules", len(res.Modules))

	o, err := newOutput(req.OutputDir, name, ".cpio.gz", req.key)
	if err != nil {
		return nil, err
	}
	defer o.discard()
	var sum string
	err = st.time("write", func() error {
		s := req.Progress.Step("write initramfs "+filepath.Base(o.artifactPath()), -1)
		sum, res.Bytes, err = writeArchive(b, o.art, s)
		s.Done(err)
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	w := c.tomlWorkload()
	if len(w.Entrypoint) == 0 && mode != InitKestrel {
		w.Entrypoint = []string{"/init"}
	}
	m := c.manifestFor(name, version, w, nil)
	m.Initramfs = &manifest.Artifact{URL: fileURL(o.artifactPath()), Checksum: "sha256:" + sum}
	if err := o.commit(c, m); err != nil {
		return nil, err
	}
	res.Artifact, res.Manifest, res.SHA256 = o.artifactPath(), o.manifestPath(), sum
	return res, nil
}

// writeArchive writes b gzip-compressed to w, returning its sha256 (hex,
// go-digest) and size.
func writeArchive(b *initramfs.Builder, w io.Writer, s interface{ Add(int64) }) (string, int64, error) {
	d := digest.SHA256.Digester()
	cw := &countWriter{w: io.MultiWriter(w, d.Hash()), s: s}
	if err := b.WriteTo(cw, initramfs.Gzip); err != nil {
		return "", 0, fmt.Errorf("writing initramfs: %w", err)
	}
	return d.Digest().Encoded(), cw.n, nil
}

type countWriter struct {
	w io.Writer
	s interface{ Add(int64) }
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.s.Add(int64(n))
	return n, err
}

// isScript reports whether p starts with "#!".
func isScript(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	var b [2]byte
	n, _ := io.ReadFull(f, b[:])
	return n == 2 && b[0] == '#' && b[1] == '!'
}
