// Package kernel finds the guest kernel Volant boots and prepares it.
//
// A kernel directory (default /var/lib/volant/kernel, made by
// `make kernel`, i.e. scripts/fetch-kernel.sh from Debian's
// linux-image-amd64) holds:
//
//	release              the kernel release, e.g. 6.1.0-56-amd64
//	vmlinuz              the distribution's compressed bzImage
//	vmlinux              the uncompressed ELF kernel, extracted once from vmlinuz
//	config               the kernel's build configuration
//	modules/<release>/   its modules, with modules.dep, modules.alias, modules.softdep
//
// Booting the uncompressed vmlinux through its PVH entry point skips the
// in-guest decompression, which costs about 5 s under software emulation
// (TCG) and measurable time even under KVM. Vmlinux extracts it on first use
// with the xz/gzip/zstd command-line tools (Go's xz package cannot read the
// kernel's BCJ-filtered payload) and caches it by atomic rename.
package kernel

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/google/renameio/v2"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/layout"
)

// DefaultDir is where Volant keeps its guest kernel (lib/layout).
const DefaultDir = layout.DefaultKernelDir

// Kernel is a guest kernel directory.
type Kernel struct {
	Dir        string `json:"dir"`
	Release    string `json:"release"`
	Vmlinuz    string `json:"vmlinuz"`
	ModulesDir string `json:"modules_dir"`
}

// Open checks a kernel directory. A missing directory or file is NOT_FOUND
// with a hint on how to fetch the kernel.
func Open(dir string) (*Kernel, error) {
	if dir == "" {
		dir = DefaultDir
	}
	rel, err := os.ReadFile(filepath.Join(dir, "release"))
	if err != nil {
		return nil, missing(dir, err)
	}
	k := &Kernel{
		Dir:     dir,
		Release: strings.TrimSpace(string(rel)),
		Vmlinuz: filepath.Join(dir, "vmlinuz"),
	}
	k.ModulesDir = filepath.Join(dir, "modules", k.Release)
	for _, p := range []string{k.Vmlinuz, filepath.Join(k.ModulesDir, "modules.dep")} {
		if _, err := os.Stat(p); err != nil {
			return nil, missing(dir, err)
		}
	}
	return k, nil
}

func missing(dir string, err error) error {
	return apierr.Wrap(apierr.NotFound, err, "guest kernel in "+dir+" is missing or incomplete").
		With("dir", dir).
		With("hint", "run `make kernel` (scripts/fetch-kernel.sh) to unpack Debian's linux-image-amd64 there, or set VOLANT_KERNEL_DIR")
}

// VmlinuxPath is where the uncompressed kernel is cached.
func (k *Kernel) VmlinuxPath() string { return filepath.Join(k.Dir, "vmlinux") }

// Vmlinux returns the uncompressed kernel, extracting it first if needed.
func (k *Kernel) Vmlinux(ctx context.Context) (string, error) {
	out := k.VmlinuxPath()
	if isELF(out) {
		return out, nil
	}
	if err := ExtractVmlinux(ctx, k.Vmlinuz, out); err != nil {
		return "", err
	}
	return out, nil
}

func isELF(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// compressors maps a payload's magic bytes to a decompressing command.
var compressors = []struct {
	magic []byte
	cmd   []string
}{
	{[]byte{0xfd, '7', 'z', 'X', 'Z', 0x00}, []string{"xz", "-dc"}},
	{[]byte{0x28, 0xb5, 0x2f, 0xfd}, []string{"zstd", "-dc"}},
	{[]byte{0x1f, 0x8b, 0x08}, []string{"gzip", "-dc"}},
}

// ExtractVmlinux finds the compressed payload in a bzImage and decompresses
// it to out (written to a temporary file and renamed). It tries each
// occurrence of each known magic until one yields an ELF image.
func ExtractVmlinux(ctx context.Context, bzImage, out string) error {
	data, err := os.ReadFile(bzImage)
	if err != nil {
		return fmt.Errorf("reading %s: %w", bzImage, err)
	}
	var tried []string
	for _, c := range compressors {
		if _, err := exec.LookPath(c.cmd[0]); err != nil {
			tried = append(tried, c.cmd[0]+" not installed")
			continue
		}
		for off := 0; ; {
			i := bytes.Index(data[off:], c.magic)
			if i < 0 {
				break
			}
			off += i
			ok, err := tryExtract(ctx, c.cmd, data[off:], out)
			if err != nil {
				return err
			}
			if ok {
				return nil
			}
			tried = append(tried, fmt.Sprintf("%s at offset %d", c.cmd[0], off))
			off++
		}
	}
	return apierr.New(apierr.Unavailable, "could not extract vmlinux from %s (tried: %s)", bzImage, strings.Join(tried, ", ")).
		With("hint", "install xz-utils (Debian kernels are xz-compressed)")
}

func tryExtract(ctx context.Context, argv []string, payload []byte, out string) (bool, error) {
	f, err := renameio.NewPendingFile(out, renameio.WithTempDir(filepath.Dir(out)), renameio.WithStaticPermissions(0o644))
	if err != nil {
		return false, fmt.Errorf("extracting vmlinux: %w", err)
	}
	defer f.Cleanup()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin = bytes.NewReader(payload)
	cmd.Stdout = f.File
	// Trailing garbage after the stream makes the tools exit non-zero even
	// though the output is complete; the ELF check below decides.
	_ = cmd.Run()
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	if !isELF(f.Name()) {
		return false, nil
	}
	if err := f.CloseAtomicallyReplace(); err != nil {
		return false, fmt.Errorf("extracting vmlinux: %w", err)
	}
	return true, nil
}

// HostTSCkHz returns the host's TSC frequency in kHz. Under TCG the guest
// sees the host's TSC, and a microvm guest without a PIT or HPET cannot
// calibrate it, so the launcher passes tsc_early_khz=. It reads
// /sys/devices/system/cpu/cpu0/tsc_freq_khz where the kernel offers it, else
// the "cpu MHz" of /proc/cpuinfo.
func HostTSCkHz() (int, error) {
	if b, err := os.ReadFile("/sys/devices/system/cpu/cpu0/tsc_freq_khz"); err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && v > 0 {
			return v, nil
		}
	}
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0, fmt.Errorf("reading TSC frequency: %w", err)
	}
	defer f.Close()
	return parseCPUInfoMHz(f)
}

func parseCPUInfoMHz(r io.Reader) (int, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(k) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || mhz <= 0 {
			return 0, fmt.Errorf("bad cpu MHz in /proc/cpuinfo: %q", v)
		}
		return int(mhz*1000 + 0.5), nil
	}
	return 0, fmt.Errorf("no cpu MHz in /proc/cpuinfo")
}
