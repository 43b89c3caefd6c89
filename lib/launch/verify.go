package launch

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/kernel"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/vmm/supervise"
)

// Verification modes of Spec.Verify.
const (
	// VerifyCached hashes an artifact unless this host already verified
	// this very file version: same device, inode, size, mtime and ctime.
	// Any write through the file system changes mtime and ctime (and
	// restoring mtime with utimes changes ctime), so a modified file is
	// always hashed again; only a clock set back by root could hide a
	// change from it.
	VerifyCached = "cached"
	// VerifyAlways hashes every artifact on every launch.
	VerifyAlways = "always"
)

// fileVersion identifies one version of a file's content on this host.
type fileVersion struct {
	Dev   uint64 `json:"dev"`
	Ino   uint64 `json:"ino"`
	Size  int64  `json:"size"`
	Mtime int64  `json:"mtime_ns"`
	Ctime int64  `json:"ctime_ns"`
}

type verifiedEntry struct {
	fileVersion
	SHA256 string `json:"sha256"`
}

func versionOf(f *os.File) (fileVersion, error) {
	st, err := f.Stat()
	if err != nil {
		return fileVersion{}, err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return fileVersion{}, fmt.Errorf("no stat data for %s", f.Name())
	}
	return fileVersion{
		Dev: uint64(sys.Dev), Ino: sys.Ino, Size: st.Size(),
		Mtime: sys.Mtim.Nano(), Ctime: sys.Ctim.Nano(),
	}, nil
}

// verify checks the artifact against its expected sha256: from the cache
// of verified file versions when mode allows, else by hashing it (and then
// recording the version). A mismatch is CHECKSUM_MISMATCH.
func verify(ctx context.Context, a *Artifact, cacheDir, mode string) error {
	f, err := os.Open(a.Path)
	if err != nil {
		return fmt.Errorf("%s artifact: %w", a.Role, err)
	}
	defer f.Close()
	if a.SHA256 == "" {
		return nil
	}
	want := strings.ToLower(a.SHA256)
	ver, verr := versionOf(f)
	key := sha256.Sum256([]byte(a.Path))
	entry := filepath.Join(cacheDir, "verified", hex.EncodeToString(key[:16])+".json")
	if mode != VerifyAlways && verr == nil {
		var e verifiedEntry
		if b, err := os.ReadFile(entry); err == nil && json.Unmarshal(b, &e) == nil && e.fileVersion == ver && e.SHA256 == want {
			a.SHA256, a.Verified, a.Cached = want, true, true
			return nil
		}
	}
	h := sha256.New()
	if _, err := io.Copy(h, ctxReader{ctx, f}); err != nil {
		return fmt.Errorf("hashing %s: %w", a.Path, err)
	}
	got := hex.EncodeToString(h.Sum(nil))
	if got != want {
		return apierr.New(apierr.ChecksumMismatch, "%s %s has sha256 %s, but the manifest says %s; refusing to boot it", a.Role, a.Path, got, want).
			With("path", a.Path).With("role", a.Role).With("expected", "sha256:"+want).With("actual", "sha256:"+got)
	}
	a.SHA256, a.Verified = got, true
	// Record the version only if it did not change while being hashed.
	if after, err := versionOf(f); verr == nil && err == nil && after == ver {
		if b, err := json.Marshal(verifiedEntry{ver, got}); err == nil && os.MkdirAll(filepath.Dir(entry), 0o700) == nil {
			_ = supervise.WriteFileAtomic(entry, b, 0o600) // a cache: losing it costs a rehash
		}
	}
	return nil
}

// ctxReader reads r until ctx ends: a hash of a large file stops at the
// next read after a cancel.
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

// tscCache is where the cmdline phase remembers the host's TSC rate: the
// cache directory, or nowhere for a dry run (volant-launch argv), which
// leaves the cache as it found it, refused or not.
func (r *prep) tscCache() string {
	if r.dry {
		return ""
	}
	return r.o.CacheDir
}

// warnHostTSC warns a dry run whose command line carries this host's TSC
// rate (tsc_early_khz, for a TCG microvm): under TCG the guest's TSC runs
// at its host's rate, so the line is right only on a host like this one.
func (r *prep) warnHostTSC() {
	if !r.dry {
		return
	}
	for _, w := range strings.Fields(r.p.Cmdline) {
		if strings.HasPrefix(w, "tsc_early_khz=") {
			r.warn("the kernel command line carries this host's TSC rate (%s): under TCG the guest's TSC runs at its host's rate, so on another host run argv there, or the guest's clock drifts", w)
			return
		}
	}
}

// hostTSCkHz is kernel.HostTSCkHz, remembered for the boot under cacheDir
// (none: read each time): where the kernel offers no tsc_freq_khz it
// parses /proc/cpuinfo, whose read can take milliseconds (it samples every
// CPU's frequency).
func hostTSCkHz(cacheDir string) (int, error) {
	if cacheDir == "" {
		return kernel.HostTSCkHz()
	}
	boot := bootID()
	p := filepath.Join(cacheDir, "tsc_khz")
	if b, err := os.ReadFile(p); err == nil && boot != "" {
		if id, v, ok := strings.Cut(strings.TrimSpace(string(b)), " "); ok && id == boot {
			if khz, err := strconv.Atoi(v); err == nil && khz > 0 {
				return khz, nil
			}
		}
	}
	khz, err := kernel.HostTSCkHz()
	if err != nil {
		return 0, err
	}
	if boot != "" && os.MkdirAll(cacheDir, 0o755) == nil {
		_ = supervise.WriteFileAtomic(p, []byte(boot+" "+strconv.Itoa(khz)+"\n"), 0o644)
	}
	return khz, nil
}

func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// encodeManifest is m.Encode, remembered under cacheDir (none: encoded
// each time) by the manifest's JSON and the Go release that compressed it,
// so a VM's start does not pay for gzip's compressor (most of a megabyte
// to allocate and zero, ~10 ms of page faults on a paravirtualized host)
// to encode the manifest its previous start encoded. A remembered encoding
// is used only if it decodes to this manifest's JSON.
func encodeManifest(m *manifest.Manifest, cacheDir string) (string, error) {
	if cacheDir == "" {
		return m.Encode()
	}
	js, err := m.JSON()
	if err != nil {
		return "", err
	}
	key := sha256.Sum256([]byte("manifest.Encode\x00" + runtime.Version() + "\x00" + string(js)))
	p := filepath.Join(cacheDir, "manifest", hex.EncodeToString(key[:16]))
	if b, err := os.ReadFile(p); err == nil && decodesTo(string(b), js) {
		return string(b), nil
	}
	enc, err := m.Encode()
	if err != nil {
		return "", err
	}
	if os.MkdirAll(filepath.Dir(p), 0o755) == nil {
		_ = supervise.WriteRunFile(p, []byte(enc), 0o644) // a cache, checked on each read
	}
	return enc, nil
}

// decodesTo reports whether enc (base64url of gzip) holds exactly js.
func decodesTo(enc string, js []byte) bool {
	raw, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil {
		return false
	}
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		return false
	}
	got, err := io.ReadAll(io.LimitReader(zr, int64(len(js))+1))
	return err == nil && bytes.Equal(got, js)
}
