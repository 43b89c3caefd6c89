package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/fledge"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// The real-VM tests' plugins: initramfs plugins built by fledge with
// kestrel as PID 1, the guest kernel's modules, and busybox for the
// workload, serving files from /www.

// guestPlugin describes one such plugin.
type guestPlugin struct {
	Name    string
	Version string // "1.0.0" when empty
	// Entrypoint is the workload, a TOML array; busybox httpd serving /www
	// on port 80 when empty.
	Entrypoint string
	// Health is the health check's endpoint, none when empty, checked
	// every IntervalMS (500 when zero).
	Health     string
	IntervalMS int
	// Restart is the workload's restart policy, kestrel's default when empty.
	Restart string
	// Files go to /www in the guest, by path relative to it; those under
	// cgi-bin/ are executable.
	Files map[string]string
	// SignKey signs the plugin (fledge build --sign).
	SignKey string
	// SecretEnv and SecretFiles are the secrets the manifest names (its
	// [secrets] table): a create must give them as inputs.
	SecretEnv, SecretFiles []string
	// Fledge, when set, is a fledge binary (another build's) that builds
	// the plugin instead of this tree's lib/fledge.
	Fledge string
}

// httpdWWW is busybox httpd serving /www on port 80.
const httpdWWW = `["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/www"]`

// build builds p into outDir (a directory volantd takes artifacts from)
// and returns what fledge made.
func (p guestPlugin) build(t testing.TB, outDir, modulesDir, kestrel string) *fledge.Result {
	t.Helper()
	if _, err := os.Stat("/bin/busybox"); err != nil {
		netnstest.SkipOrFail(t, "busybox-static is needed for the workload")
	}
	src := t.TempDir()
	if err := os.MkdirAll(filepath.Join(src, "www"), 0o755); err != nil {
		t.Fatal(err)
	}
	for rel, data := range p.Files {
		path := filepath.Join(src, "www", rel)
		mode := os.FileMode(0o644)
		if strings.HasPrefix(rel, "cgi-bin/") {
			mode = 0o755
		}
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
	}
	version, entrypoint, interval := p.Version, p.Entrypoint, p.IntervalMS
	if version == "" {
		version = "1.0.0"
	}
	if entrypoint == "" {
		entrypoint = httpdWWW
	}
	if interval == 0 {
		interval = 500
	}
	toml := "version = \"1\"\nstrategy = \"initramfs\"\n[plugin]\nname = " + strconv.Quote(p.Name) +
		"\nversion = " + strconv.Quote(version) + "\n[source]\nbusybox = \"/bin/busybox\"\n" +
		"[workload]\nentrypoint = " + entrypoint + "\nbase_url = \"http://127.0.0.1:80\"\n"
	if p.Restart != "" {
		toml += "restart = " + strconv.Quote(p.Restart) + "\n"
	}
	if p.Health != "" {
		toml += "[health_check]\nendpoint = " + strconv.Quote(p.Health) + "\ninterval_ms = " + strconv.Itoa(interval) + "\n"
	}
	if len(p.SecretEnv)+len(p.SecretFiles) > 0 {
		toml += "[secrets]\nenv = " + tomlStrings(p.SecretEnv) + "\nfiles = " + tomlStrings(p.SecretFiles) + "\n"
	}
	toml += "[resources]\ncpu_cores = 1\nmemory_mb = 128\n[mappings]\n\"www\" = \"/www\"\n"
	cfg := filepath.Join(src, "fledge.toml")
	if err := os.WriteFile(cfg, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	if p.Fledge != "" {
		out, err := exec.Command(p.Fledge, "build", "-q", "-c", cfg, "-o", outDir, "--kernel-modules", modulesDir, "--kestrel", kestrel).Output()
		var res fledge.Result
		if err == nil {
			err = json.Unmarshal(out, &res)
		}
		if err != nil {
			t.Fatalf("%s build of %s: %v %s", p.Fledge, p.Name, err, out)
		}
		return &res
	}
	res, err := fledge.Build(context.Background(), fledge.Request{Config: cfg, OutputDir: outDir,
		KernelModules: modulesDir, Kestrel: kestrel, SignKey: p.SignKey})
	if err != nil {
		t.Fatalf("fledge build of %s: %v", p.Name, err)
	}
	return res
}

// manifest builds p and returns the manifest fledge wrote.
func (p guestPlugin) manifest(t testing.TB, outDir, modulesDir, kestrel string) []byte {
	t.Helper()
	m, err := os.ReadFile(p.build(t, outDir, modulesDir, kestrel).Manifest)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// tomlString quotes s as a TOML basic string.
func tomlString(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// tomlStrings is ss as a TOML array of basic strings.
func tomlStrings(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = tomlString(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// httpIn GETs url from inside ns on a new connection, dialed on a thread
// switched into it, and returns the body; a status other than 200 is an
// error (with the body).
func httpIn(ns *netnstest.NS, url string, timeout time.Duration) (string, error) {
	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := ns.Do(func() error {
				var err error
				c, err = (&net.Dialer{Timeout: timeout}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}}
	resp, err := (&http.Client{Transport: tr, Timeout: timeout}).Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return string(b), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), err
}

// getIn is httpIn with the body trimmed of spaces.
func getIn(ns *netnstest.NS, url string, timeout time.Duration) (string, error) {
	b, err := httpIn(ns, url, timeout)
	return strings.TrimSpace(b), err
}

// fetch GETs url from inside the host's namespace.
func fetch(h *fakeHost, url string) (string, error) { return httpIn(h.ns, url, 10*time.Second) }

// get GETs http://ip/path from inside the namespace, giving a loaded
// machine's CGI time.
func get(h *fakeHost, ip, path string) (string, error) {
	return getIn(h.ns, "http://"+ip+path, 45*time.Second)
}
