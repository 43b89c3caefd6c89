package controller_test

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/manifest"
)

func manifestWith(name, field, loc string) []byte {
	art := map[string]any{"url": loc}
	m := map[string]any{"name": name, "version": "1", "workload": map[string]any{"entrypoint": []string{"/a"}}}
	switch field {
	case "disks":
		m["initramfs"] = map[string]any{"url": loc}
		m["disks"] = []any{map[string]any{"name": "data", "source": loc}}
	default:
		m[field] = art
	}
	b, _ := json.Marshal(m)
	return b
}

// installWithin installs and fails the test when the install does not
// answer within d (a hang is the bug some cases reproduce).
func installWithin(t *testing.T, c *controller.Controller, d time.Duration, data []byte) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := c.InstallPlugin(ctx, data, false)
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(d + 5*time.Second):
		t.Fatalf("install did not answer within %s after its context ended", d)
		return nil
	}
}

// TestArtifactsOutsideAllowedDirsAreRefused: a local artifact outside the
// directories volantd allows is refused with one error that says nothing
// about the file, whether it exists, is readable, is a device or a
// directory.
func TestArtifactsOutsideAllowedDirsAreRefused(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controller()
	plugins := filepath.Join(f.dir, "plugins")
	os.MkdirAll(plugins, 0o755)
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "real.img"), []byte("x"), 0o644)
	os.Symlink("/etc/shadow", filepath.Join(plugins, "shadow-link.img"))
	os.Symlink(filepath.Join(outside, "real.img"), filepath.Join(plugins, "out-link.img"))
	os.Symlink(filepath.Join(outside, "nothing.img"), filepath.Join(plugins, "out-dangling.img"))
	os.Symlink("../../", filepath.Join(plugins, "up"))
	before := f.pluginNames()
	var first string
	for _, loc := range []string{
		"/etc/shadow", "file:///etc/shadow", "/proc/self/environ", "/dev/zero", "/etc", "/etc/no-such-file",
		filepath.Join(outside, "real.img"), filepath.Join(outside, "nothing.img"), "file://" + filepath.Join(outside, "real.img"),
		plugins + "/../volant.db", plugins + "/../../" + filepath.Base(f.dir) + "/volant.db",
		filepath.Join(plugins, "shadow-link.img"), filepath.Join(plugins, "out-link.img"), filepath.Join(plugins, "out-dangling.img"),
		filepath.Join(plugins, "up", "etc", "shadow"),
	} {
		for _, field := range []string{"initramfs", "rootfs", "disks"} {
			err := installWithin(t, c, 10*time.Second, manifestWith("p", field, loc))
			if !apierr.Is(err, apierr.PermissionDenied) {
				t.Errorf("%s = %s: got %v (%s), want PERMISSION_DENIED", field, loc, err, apierr.CodeOf(err))
				continue
			}
			ae := apierr.From(err)
			msg := strings.NewReplacer("initramfs", "FIELD", "rootfs", "FIELD", "disks[0]", "FIELD").Replace(ae.Message)
			if first == "" {
				first = msg
				t.Logf("the refusal: %s %v", ae.Message, ae.Details)
			} else if msg != first {
				t.Errorf("%s = %s: the refusal differs:\n%s\n%s", field, loc, msg, first)
			}
			if strings.Contains(ae.Message, "sha256") || strings.Contains(fmt.Sprint(ae.Details), "sha256") {
				t.Errorf("the refusal tells a checksum: %s", ae.Message)
			}
		}
	}
	if after := f.pluginNames(); after != before {
		t.Fatalf("plugins changed: %q → %q", before, after)
	}
}

// TestAllowedArtifacts: the plugins directory and the configured directories
// are allowed, symlinks that stay inside them are followed.
func TestAllowedArtifacts(t *testing.T) {
	f := newFixture(t)
	extra := t.TempDir()
	c, _ := f.controllerWith(controller.Config{MaxBooting: -1, ArtifactDirs: []string{extra}})
	plugins := filepath.Join(f.dir, "plugins")
	os.MkdirAll(filepath.Join(plugins, "sub"), 0o755)
	write := func(p, s string) string {
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256([]byte(s))
		return "sha256:" + hex.EncodeToString(sum[:])
	}
	sumA := write(filepath.Join(plugins, "sub", "a.img"), "a")
	sumB := write(filepath.Join(extra, "b.img"), "b")
	os.Symlink("sub/a.img", filepath.Join(plugins, "link.img"))
	for i, tc := range []struct{ loc, sum string }{
		{filepath.Join(plugins, "sub", "a.img"), sumA},
		{"file://" + filepath.Join(plugins, "sub", "a.img"), sumA},
		{filepath.Join(plugins, "link.img"), sumA},
		{filepath.Join(extra, "b.img"), sumB},
	} {
		name := fmt.Sprintf("ok%d", i)
		p, err := c.InstallPlugin(f.ctx, manifestWith(name, "initramfs", tc.loc), false)
		if err != nil {
			t.Fatalf("%s: %v", tc.loc, err)
		}
		var m struct {
			Initramfs struct{ URL, Checksum string } `json:"initramfs"`
		}
		json.Unmarshal(p.Manifest, &m)
		if m.Initramfs.Checksum != tc.sum {
			t.Errorf("%s: checksum %s, want %s", tc.loc, m.Initramfs.Checksum, tc.sum)
		}
	}
	// Inside an allowed directory, a missing file is said to be missing.
	err := installWithin(t, c, 10*time.Second, manifestWith("gone", "initramfs", filepath.Join(extra, "gone.img")))
	if !apierr.Is(err, apierr.InvalidManifest) {
		t.Fatalf("missing file: got %v", err)
	}
}

// TestArtifactThatIsNotAFile: a FIFO, a device or a directory inside an
// allowed directory is refused at once with a 4xx code; no install hangs
// (a FIFO used to block an OS thread forever, /dev/zero to be hashed
// without end).
func TestArtifactThatIsNotAFile(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controller()
	plugins := filepath.Join(f.dir, "plugins")
	os.MkdirAll(filepath.Join(plugins, "adir"), 0o755)
	fifo := filepath.Join(plugins, "fifo.img")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	// Unblock a leaked open of the FIFO at the end (before the fix).
	t.Cleanup(func() {
		if w, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			w.Close()
		}
	})
	locs := []string{fifo, filepath.Join(plugins, "adir")}
	if os.Getuid() == 0 {
		zero := filepath.Join(plugins, "zero.img")
		if err := syscall.Mknod(zero, syscall.S_IFCHR|0o644, int(1<<8|5)); err != nil {
			t.Fatalf("mknod: %v", err)
		}
		locs = append(locs, zero)
	}
	for _, loc := range locs {
		t0 := time.Now()
		err := installWithin(t, c, 3*time.Second, manifestWith("p", "initramfs", loc))
		if !apierr.Is(err, apierr.InvalidManifest) {
			t.Errorf("%s: got %v (%s), want INVALID_MANIFEST", loc, err, apierr.CodeOf(err))
		} else if !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("%s: %v", loc, err)
		}
		if d := time.Since(t0); d > time.Second {
			t.Errorf("%s: took %s", loc, d)
		}
	}
}

// TestArtifactSizeCapAndContext: a local artifact larger than the cap is
// refused before it is read; hashing a large one stops when the request's
// context ends.
func TestArtifactSizeCapAndContext(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controllerWith(controller.Config{MaxBooting: -1, MaxArtifactBytes: 1 << 20})
	plugins := filepath.Join(f.dir, "plugins")
	os.MkdirAll(plugins, 0o755)
	big := filepath.Join(plugins, "big.img")
	if err := os.Truncate(big, 0); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	fh, _ := os.Create(big)
	fh.Truncate(2 << 20)
	fh.Close()
	if err := installWithin(t, c, 5*time.Second, manifestWith("big", "initramfs", big)); !apierr.Is(err, apierr.TooLarge) {
		t.Fatalf("over the cap: got %v", err)
	}

	// A sparse 64 GiB file takes minutes to hash; a canceled request
	// must not.
	c2, _ := f.controllerWith(controller.Config{MaxBooting: -1, MaxArtifactBytes: 1 << 40})
	huge := filepath.Join(plugins, "huge.img")
	fh, _ = os.Create(huge)
	fh.Truncate(64 << 30)
	fh.Close()
	t0 := time.Now()
	err := installWithin(t, c2, 300*time.Millisecond, manifestWith("huge", "initramfs", huge))
	if c := apierr.CodeOf(err); c != apierr.Timeout && c != apierr.Canceled {
		t.Fatalf("got %v (%s)", err, c)
	}
	if d := time.Since(t0); d > 3*time.Second {
		t.Fatalf("hashing went on for %s after the request ended", d)
	}
}

// artifactServer serves body at /rootfs.img, counting requests.
func artifactServer(t *testing.T, h http.HandlerFunc) string {
	ts := httptest.NewServer(h)
	t.Cleanup(func() { ts.CloseClientConnections(); ts.Close() })
	return ts.URL
}

// TestParallelHTTPInstallsOfOneArtifact: of 50 parallel installs of one
// plugin, one wins and 49 get CONFLICT, and the winner's file is intact:
// the losers never wrote where the winner's manifest points.
func TestParallelHTTPInstallsOfOneArtifact(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controller()
	body := []byte(strings.Repeat("rootfs!", 1<<15))
	sum := sha256.Sum256(body)
	var mu sync.Mutex
	served := 0
	url := artifactServer(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		served++
		n := served
		mu.Unlock()
		// Each answer differs in its last byte (the manifest carries no
		// checksum, so each install records what it got): a loser that
		// writes over the winner's file makes it differ from the record.
		b := append([]byte(nil), body...)
		b[len(b)-1] = byte(n)
		w.Write(b[:len(b)/2])
		w.(http.Flusher).Flush()
		time.Sleep(time.Duration(n%5) * 10 * time.Millisecond)
		w.Write(b[len(b)/2:])
	})
	_ = sum
	const n = 50
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = c.InstallPlugin(f.ctx, manifestWith("web", "initramfs", url+"/rootfs.img"), false)
		}()
	}
	wg.Wait()
	ok, conflict := 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case apierr.Is(err, apierr.Conflict):
			conflict++
		default:
			t.Errorf("unexpected: %v", err)
		}
	}
	if ok != 1 || conflict != n-1 {
		t.Fatalf("%d installed, %d conflicts", ok, conflict)
	}
	p, err := c.Plugin(f.ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Initramfs struct{ URL, Checksum string } `json:"initramfs"`
	}
	json.Unmarshal(p.Manifest, &m)
	data, err := os.ReadFile(m.Initramfs.URL)
	if err != nil {
		t.Fatal(err)
	}
	got := sha256.Sum256(data)
	if "sha256:"+hex.EncodeToString(got[:]) != m.Initramfs.Checksum {
		t.Fatalf("the installed file %s no longer has the recorded checksum %s", m.Initramfs.URL, m.Initramfs.Checksum)
	}
	if left := f.tempFiles(); len(left) > 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

// TestFailedHTTPInstallLeavesNothing: a checksum mismatch, a download that
// stalls and one larger than the cap fail with their codes and leave no
// data/plugins/<name>/ and no temporary file.
func TestFailedHTTPInstallLeavesNothing(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controllerWith(controller.Config{MaxBooting: -1, MaxArtifactBytes: 1 << 20, FetchStallTimeout: 300 * time.Millisecond})
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	url := artifactServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok.img":
			w.Write([]byte("ok"))
		case "/stall.img":
			w.Header().Set("Content-Length", "100")
			w.Write([]byte("abc"))
			w.(http.Flusher).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
		case "/huge.img":
			for i := 0; i < 2048 && r.Context().Err() == nil; i++ {
				w.Write(make([]byte, 1024))
			}
		}
	})
	for _, tc := range []struct {
		path string
		sum  string
		want apierr.Code
	}{
		{"/ok.img", "sha256:" + strings.Repeat("0", 64), apierr.ChecksumMismatch},
		{"/stall.img", "", apierr.Timeout},
		{"/huge.img", "", apierr.TooLarge},
	} {
		m := map[string]any{"name": "web", "version": "1", "workload": map[string]any{"entrypoint": []string{"/a"}},
			"initramfs": map[string]any{"url": url + tc.path, "checksum": tc.sum}}
		b, _ := json.Marshal(m)
		err := installWithin(t, c, 10*time.Second, b)
		if !apierr.Is(err, tc.want) {
			t.Errorf("%s: got %v (%s), want %s", tc.path, err, apierr.CodeOf(err), tc.want)
		}
		if _, err := os.Stat(filepath.Join(f.dir, "plugins", "web")); !os.IsNotExist(err) {
			t.Errorf("%s: data/plugins/web is left behind (%v)", tc.path, err)
		}
		if left := f.tempFiles(); len(left) > 0 {
			t.Errorf("%s: temporary files left: %v", tc.path, left)
		}
	}
}

func (f *fixture) pluginNames() string {
	f.t.Helper()
	var names []string
	err := f.st.Read(f.ctx, func(tx *sql.Tx) error {
		rows, err := tx.Query(`SELECT name || ':' || version FROM plugins ORDER BY name`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var s string
			rows.Scan(&s)
			names = append(names, s)
		}
		return rows.Err()
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return strings.Join(names, ",")
}

// tempFiles lists the hidden files under the plugins directory (partial
// downloads).
func (f *fixture) tempFiles() []string {
	var out []string
	filepath.WalkDir(filepath.Join(f.dir, "plugins"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasPrefix(d.Name(), ".") {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// TestRestartRemovesPartialDownloads: what a volantd killed during http
// installs leaves in the plugins directory (partial downloads, this
// version's and earlier versions' names; empty directories of plugins
// that were never recorded) is gone after the next start; an operator's
// files there stay.
func TestRestartRemovesPartialDownloads(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controller()
	f.plugin(c, "web")
	plugins := filepath.Join(f.dir, "plugins")
	for _, d := range []string{"web", "ghost", "mine", ".partial"} {
		os.MkdirAll(filepath.Join(plugins, d), 0o755)
	}
	partial := []string{
		filepath.Join(plugins, ".partial", ".rootfs.img8093475620475"), // this version's (renameio's name)
		filepath.Join(plugins, ".web.rootfs.img.partial-1234"),         // the previous version's
		filepath.Join(plugins, ".ghost.rootfs.img.partial-99"),
		filepath.Join(plugins, "web", ".rootfs.img.3712645"), // earlier versions' name
	}
	keep := []string{
		filepath.Join(plugins, "mine", "a.img"),
		filepath.Join(plugins, "mine", ".b.img.123"), // not a plugin's directory: not Volant's
		filepath.Join(plugins, "web", "rootfs.img"),
		filepath.Join(plugins, "web.img"),
	}
	for _, p := range append(append([]string{}, partial...), keep...) {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f.controller() // a restarted daemon
	for _, p := range partial {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s is left (%v)", p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(plugins, "ghost")); !os.IsNotExist(err) {
		t.Errorf("the empty directory of a plugin never installed is left (%v)", err)
	}
	for _, p := range keep {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s was removed: %v", p, err)
		}
	}
}

// TestDownloadedFileNames: a URL whose last segment is no file name (an
// escaped NUL or escape character, more than a name holds) is fetched
// under the artifact's field name, and the plugin's manifest stays valid.
func TestDownloadedFileNames(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controller()
	url := artifactServer(t, func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("initramfs")) })
	for i, last := range []string{"a%00b.img", "a%1B%5B2Jb.img", "a%0Ab.img", strings.Repeat("a", 300) + ".img"} {
		name := fmt.Sprintf("web%d", i)
		p, err := c.InstallPlugin(f.ctx, manifestWith(name, "initramfs", url+"/"+last), false)
		if err != nil {
			t.Errorf("%s: %v", last, err)
			continue
		}
		if _, err := manifest.Parse(p.Manifest); err != nil {
			t.Errorf("%s: the installed manifest is invalid: %v", last, err)
		}
		var m struct {
			Initramfs struct{ URL string } `json:"initramfs"`
		}
		json.Unmarshal(p.Manifest, &m)
		if base := filepath.Base(m.Initramfs.URL); base != "initramfs" {
			t.Errorf("%s: fetched to %q, want the field's name", last, base)
		}
	}
}
