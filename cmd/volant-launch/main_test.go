package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/cli/clitest"
	"github.com/volantvm/volant/lib/initramfs"
)

// contractEnv is a scratch world: kernel (an ELF stand-in), a plugin
// initramfs with modules for no particular release, a manifest, and
// directories for the run root, state and cache.
type contractEnv struct {
	dir, manifest, badManifest string
	env                        map[string]string
}

func newContractEnv(t *testing.T) *contractEnv {
	t.Helper()
	dir := t.TempDir()
	self, _ := os.Executable()
	b, _ := os.ReadFile(self)
	os.WriteFile(filepath.Join(dir, "vmlinux"), b, 0o644)
	plugin := filepath.Join(dir, "web.cpio.gz")
	ib := initramfs.New()
	ib.File("/lib/modules/6.1.0-test/modules.dep", 0o644, []byte("\n"))
	ib.File("/bin/app", 0o755, []byte("app"))
	if err := ib.WriteFile(plugin, initramfs.Gzip); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(plugin)
	sum := sha256.Sum256(data)
	m := func(checksum string) string {
		p := filepath.Join(dir, "m-"+checksum[:4]+".json")
		os.WriteFile(p, []byte(fmt.Sprintf(`{"name":"web","version":"1.0.0","initramfs":{"url":%q,"checksum":"sha256:%s"},"workload":{"entrypoint":["/bin/app"]}}`, plugin, checksum)), 0o644)
		return p
	}
	return &contractEnv{
		dir:         dir,
		manifest:    m(hex.EncodeToString(sum[:])),
		badManifest: m(strings.Repeat("0", 64)),
		env: map[string]string{
			"VOLANT_RUN_ROOT":  filepath.Join(dir, "run"),
			"VOLANT_STATE_DIR": filepath.Join(dir, "state"),
			"VOLANT_CACHE_DIR": filepath.Join(dir, "cache"),
		},
	}
}

var (
	tscRE     = regexp.MustCompile(`tsc_early_khz=\d+`)
	encodedRE = regexp.MustCompile(`volant\.manifest=[A-Za-z0-9_-]+`)
)

// normalize removes what differs between runs and hosts: temp dirs, the
// host's TSC rate, the encoded manifest (it embeds temp paths).
func (c *contractEnv) normalize(s string) string {
	s = strings.ReplaceAll(s, c.dir, "$TMP")
	s = tscRE.ReplaceAllString(s, "tsc_early_khz=<host>")
	return encodedRE.ReplaceAllString(s, "volant.manifest=<encoded>")
}

func TestContract(t *testing.T) {
	c := newContractEnv(t)
	kernel := filepath.Join(c.dir, "vmlinux")
	lease := `{"version":"1","kind":"ipam.lease","vm":"web1","ip":"192.168.127.100","prefix":24,"gateway":"192.168.127.1","mac":"02:00:00:00:00:64","leased_at":"2026-11-28T00:00:00Z"}`
	for _, tc := range []struct {
		name  string
		stdin string
		args  []string
		code  int
	}{
		{"argv-lease-pipeline", lease, []string{"argv", "--manifest", c.manifest, "--kernel", kernel, "--vmm", "qemu", "--accel", "tcg"}, 0},
		{"argv-flags-pc", "", []string{"argv", "--name", "w2", "--manifest", c.manifest, "--kernel", kernel, "--vmm", "qemu", "--accel", "tcg", "--machine", "pc", "--cpus", "2", "--memory", "256", "--kernel-arg", "loglevel=4"}, 0},
		{"argv-spec-stdin", `{"name":"w3","manifest_path":"` + c.manifest + `","kernel":"` + kernel + `","vmm":"qemu","accel":"tcg","tap":"vt-w3","dns":["1.1.1.1"]}`, []string{"argv"}, 0},
		{"argv-checksum-mismatch", "", []string{"argv", "--name", "w4", "--manifest", c.badManifest, "--kernel", kernel, "--vmm", "qemu", "--accel", "tcg"}, 8},
		{"run-checksum-mismatch", "", []string{"run", "--name", "w5", "--manifest", c.badManifest, "--kernel", kernel, "--vmm", "qemu", "--accel", "tcg"}, 8},
		{"argv-ch-unavailable", "", []string{"argv", "--name", "w6", "--manifest", c.manifest, "--kernel", kernel, "--vmm", "cloud-hypervisor"}, 0},
		{"run-ch-unavailable", "", []string{"run", "--name", "w6", "--manifest", c.manifest, "--kernel", kernel, "--vmm", "cloud-hypervisor"}, 9},
		{"argv-disk-mode-typo", "", []string{"argv", "--name", "w11", "--manifest", c.badManifest, "--kernel", kernel, "--vmm", "qemu", "--accel", "tcg", "--disk-mode", "cpoy"}, 3},
		{"argv-memory-too-big", "", []string{"argv", "--name", "w12", "--manifest", c.manifest, "--kernel", kernel, "--vmm", "qemu", "--accel", "tcg", "--memory", "99999999999"}, 3},
		{"argv-multicast-mac", "", []string{"argv", "--name", "w13", "--manifest", c.manifest, "--kernel", kernel, "--vmm", "qemu", "--accel", "tcg", "--tap", "vt-w13", "--mac", "03:00:00:00:00:01"}, 3},
		{"argv-no-kernel", "", []string{"argv", "--name", "w14", "--manifest", c.badManifest, "--kernel", filepath.Join(c.dir, "nope"), "--vmm", "qemu", "--accel", "tcg"}, 4},
		{"argv-no-manifest", "", []string{"argv", "--name", "w7"}, 2},
		{"argv-typo", `{"name":"w8","manifset_path":"x"}`, []string{"argv"}, 3},
		{"argv-wrong-kind", `{"kind":"ipam.release","vm":"w9"}`, []string{"argv"}, 3},
		{"argv-long-run-dir", "", []string{"argv", "--name", "w10", "--manifest", c.manifest, "--kernel", kernel, "--vmm", "qemu", "--accel", "tcg", "--run-dir", "/run/" + strings.Repeat("x", 100)}, 3},
		{"stop-not-running", "", []string{"stop", "--dir", filepath.Join(c.dir, "run", "nothing")}, 0},
		{"stop-not-running-run-dir", "", []string{"stop", "--run-dir", filepath.Join(c.dir, "run", "nothing")}, 0},
		{"status-not-found", "", []string{"status", "--name", "nothing"}, 4},
		{"pause-run-dir-not-found", "", []string{"pause", "--run-dir", filepath.Join(c.dir, "nowhere")}, 4},
		{"status-dir-and-run-dir", "", []string{"status", "--dir", filepath.Join(c.dir, "a"), "--run-dir", filepath.Join(c.dir, "b")}, 2},
		{"pause-not-found", "", []string{"pause", "--dir", filepath.Join(c.dir, "nowhere")}, 4},
		{"status-no-vm", "", []string{"status"}, 2},
		{"no-verb", "", nil, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := clitest.Run(t, run, tc.stdin, c.env, tc.args...)
			if r.Code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout %s\nstderr %s", r.Code, tc.code, r.Stdout, r.Stderr)
			}
			if tc.code == 0 {
				if r.Stderr != "" && tc.args[0] == "argv" {
					t.Fatalf("argv wrote to stderr: %s", r.Stderr)
				}
				var out map[string]any
				if err := json.Unmarshal([]byte(r.Stdout), &out); err != nil {
					t.Fatalf("stdout is not one JSON object: %q", r.Stdout)
				}
				delete(out, "notes")      // host-specific (the KVM fallback reason)
				delete(out, "elapsed_ms") // timing
				b, _ := json.MarshalIndent(out, "", "  ")
				clitest.Golden(t, tc.name, c.normalize(string(b))+"\n")
				return
			}
			if r.Stdout != "" {
				t.Fatalf("stdout must be empty on failure: %s", r.Stdout)
			}
			lines := strings.Split(strings.TrimSpace(r.Stderr), "\n")
			var e apierr.Error
			if err := json.Unmarshal([]byte(lines[len(lines)-1]), &e); err != nil {
				t.Fatalf("last stderr line is not an error object: %q", r.Stderr)
			}
			if e.Code == apierr.Unavailable {
				e.Message = "<host-specific>"
			}
			b, _ := json.MarshalIndent(e, "", "  ")
			clitest.Golden(t, tc.name+".err", c.normalize(string(b))+"\n")
		})
	}
	// A refused run started nothing: no run dir, no serial log, no disk
	// copies; its VM directory holds only the record of why it ended.
	if _, err := os.Stat(filepath.Join(c.dir, "run", "w5")); err == nil {
		t.Errorf("a run refused for its checksum left its run dir")
	}
	ents, _ := os.ReadDir(filepath.Join(c.dir, "state", "vms", "w5"))
	for _, e := range ents {
		if e.Name() != "last-error.json" {
			t.Errorf("a run refused for its checksum left %s", e.Name())
		}
	}
	var last struct {
		Error apierr.Error `json:"error"`
	}
	b, err := os.ReadFile(filepath.Join(c.dir, "state", "vms", "w5", "last-error.json"))
	if err != nil || json.Unmarshal(b, &last) != nil || last.Error.Code != apierr.ChecksumMismatch || last.Error.Details["role"] != "initramfs" {
		t.Errorf("the refused run's last error: %s (%v), want CHECKSUM_MISMATCH with its details", b, err)
	}
	// argv is a dry run: it records nothing.
	if _, err := os.Stat(filepath.Join(c.dir, "state", "vms", "w4")); err == nil {
		t.Errorf("argv wrote into the state directory")
	}
}

func TestBackends(t *testing.T) {
	r := clitest.Run(t, run, "", nil, "backends")
	if r.Code != 0 {
		t.Fatal(r.Stderr)
	}
	var out backendsResult
	if err := json.Unmarshal([]byte(r.Stdout), &out); err != nil {
		t.Fatal(err)
	}
	if len(out.Backends) != 2 || out.Backends[0].Name != "cloud-hypervisor" || out.Backends[1].Name != "qemu" {
		t.Fatalf("%+v", out.Backends)
	}
	for _, b := range out.Backends {
		if !b.Usable && b.Reason == "" {
			t.Errorf("%s is unusable without a reason", b.Name)
		}
		if b.Usable && (b.Binary == "" || b.Accel == "") {
			t.Errorf("%s is usable but names no binary or accel: %+v", b.Name, b)
		}
		if b.Usable && out.Default == "" {
			t.Errorf("a backend is usable but there is no default")
		}
	}
}
