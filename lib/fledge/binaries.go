package fledge

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/renameio/v2"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/buildinfo"
	"github.com/volantvm/volant/lib/fetch"
	"github.com/volantvm/volant/lib/layout"
)

// FindKestrel locates the kestrel binary a build installs: override when
// set (fledge --kestrel), else [agent] local/path (relative to
// fledge.toml), else the kestrel lib/layout finds (next to the running
// executable, since fledge and kestrel are built and installed together,
// else on $PATH). The binary must be a static ELF executable: it runs as
// PID 1 before any library is reachable.
func FindKestrel(c *Config, override string) (string, error) {
	var cand, from string
	switch {
	case override != "":
		cand, from = override, "--kestrel"
	case c != nil && c.Agent != nil && (c.Agent.Local != "" || c.Agent.Path != ""):
		p := c.Agent.Local
		if p == "" {
			p = c.Agent.Path
		}
		if !filepath.IsAbs(p) {
			p = filepath.Join(c.Dir, p)
		}
		cand, from = p, "[agent] local"
	default:
		p, err := layout.FindBinary("kestrel", "")
		if err != nil {
			return "", apierr.Wrap(apierr.NotFound, err, "kestrel not found: not next to this executable and not on $PATH").
				With("hint", "run `make build` (it installs bin/kestrel beside bin/fledge), set [agent] local = \"PATH\" in fledge.toml, or pass --kestrel PATH")
		}
		cand, from = p, "next to this executable or $PATH"
	}
	if err := checkStatic(cand, "kestrel"); err != nil {
		return "", fmt.Errorf("kestrel from %s: %w", from, err)
	}
	return cand, nil
}

// checkStatic checks that p is a statically linked ELF executable.
func checkStatic(p, what string) error {
	st, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return apierr.Wrap(apierr.NotFound, err, what+" "+p+" does not exist")
		}
		return err
	}
	if !st.Mode().IsRegular() || st.Mode()&0o111 == 0 {
		return apierr.New(apierr.InvalidInput, "%s %s is not an executable file", what, p)
	}
	f, err := elf.Open(p)
	if err != nil {
		return apierr.Wrap(apierr.InvalidInput, err, what+" "+p+" is not an ELF executable")
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return apierr.New(apierr.InvalidInput, "%s %s is dynamically linked; the guest needs a static binary", what, p).
				With("hint", "build it with CGO_ENABLED=0 (Go) or -static (C)")
		}
	}
	return nil
}

// resolveBusybox returns the busybox binary of an initramfs build: [source]
// busybox (relative to fledge.toml), a busybox_url fetched into work, or
// /bin/busybox; checked against busybox_sha256 when given.
func resolveBusybox(ctx context.Context, c *Config, work string, fo fetch.Options) (string, error) {
	p := c.Source.Busybox
	switch {
	case c.Source.BusyboxURL != "":
		u, err := url.Parse(c.Source.BusyboxURL)
		if err != nil {
			return "", invalid(c.File, []Problem{{Field: "source.busybox_url", Message: err.Error()}})
		}
		switch u.Scheme {
		case "file":
			p = u.Path
		case "http", "https":
			p = filepath.Join(work, "busybox")
			if err := download(ctx, c.Source.BusyboxURL, p, fo); err != nil {
				return "", err
			}
		default:
			return "", invalid(c.File, []Problem{{Field: "source.busybox_url", Message: "must be an http://, https:// or file:// URL"}})
		}
	case p == "":
		p = DefaultBusybox
		if _, err := os.Stat(p); err != nil {
			return "", apierr.Wrap(apierr.NotFound, err, "busybox not found at "+DefaultBusybox).
				With("hint", "apt-get install busybox-static, or set [source] busybox = \"PATH\"")
		}
	case !filepath.IsAbs(p):
		p = filepath.Join(c.Dir, p)
	}
	if want := strings.TrimPrefix(c.Source.BusyboxSHA256, "sha256:"); want != "" {
		got, _, err := hashFile(p)
		if err != nil {
			return "", fmt.Errorf("busybox: %w", err)
		}
		if !strings.EqualFold(got, want) {
			return "", apierr.New(apierr.ChecksumMismatch, "busybox %s has sha256 %s; busybox_sha256 says %s", p, got, want).
				With("path", p)
		}
	}
	if err := checkStatic(p, "busybox"); err != nil {
		return "", err
	}
	return p, nil
}

// download fetches rawURL to dst (lib/fetch: connect, header and stall
// timeouts, so a server that stops answering fails the build), through a
// renameio pending file beside dst renamed into place once complete.
func download(ctx context.Context, rawURL, dst string, o fetch.Options) error {
	if o.UserAgent == "" {
		o.UserAgent = "volant-fledge/" + buildinfo.Version
	}
	f, err := renameio.NewPendingFile(dst, renameio.WithTempDir(filepath.Dir(dst)), renameio.WithStaticPermissions(0o755))
	if err != nil {
		return err
	}
	defer f.Cleanup()
	if _, err := fetch.Get(ctx, rawURL, f, o); err != nil {
		return err
	}
	return f.CloseAtomicallyReplace()
}
