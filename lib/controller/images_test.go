package controller_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/controller/controllertest"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/testutil/ext4test"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/testutil/imagetest"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// busyboxStandIn is a static binary that stands in for kestrel in builds
// whose images are only inspected, not booted.
const busyboxStandIn = "/bin/busybox"

// imageFixture is a controller whose image builds run the real fledge
// command and read from a real registry (Debian's docker-registry on
// loopback) holding imagetest.Sample as web:1.
func imageFixture(t *testing.T) (*fixture, *controller.Controller, string) {
	t.Helper()
	return imageFixtureWith(t, busyboxStandIn)
}

// imageFixtureWith is imageFixture whose builds install kestrel from the
// file kestrel.
func imageFixtureWith(t *testing.T, kestrel string) (*fixture, *controller.Controller, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		netnstest.SkipOrFail(t, "image builds need root (owners and device nodes are kept)")
	}
	ext4test.Require(t)
	if _, err := os.Stat(busyboxStandIn); err != nil {
		netnstest.SkipOrFail(t, "busybox-static not installed: %v", err)
	}
	reg := imagetest.Registry(t, netnstest.SkipOrFail)
	layout := filepath.Join(t.TempDir(), "layout")
	if _, err := imagetest.WriteLayout(layout, "v1", imagetest.Sample("")); err != nil {
		t.Fatal(err)
	}
	if err := imagetest.Copy(context.Background(), "oci:"+layout+":v1", "docker://"+reg+"/web:1", true); err != nil {
		t.Fatal(err)
	}
	f := newFixture(t)
	c, _ := f.controllerWith(controller.Config{Prober: controllertest.NewProber(), MaxBooting: -1,
		Launch: controller.LaunchDefaults{Kestrel: kestrel},
		Images: controller.ImageConfig{Fledge: guesttest.Command(t, "fledge"), InsecureRegistries: []string{reg}}})
	return f, c, reg
}

func buildEvents(t *testing.T, f *fixture, typ string) []api.Event {
	t.Helper()
	var out []api.Event
	evs, err := f.st.EventsSince(f.ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if e.Type == typ {
			out = append(out, api.Event{ID: e.ID, Type: e.Type, ResourceID: e.ResourceID, Data: e.Data})
		}
	}
	return out
}

// TestInstallImage builds a plugin from an image in a real registry with
// the fledge command, names it by digest, answers the same plugin without a second
// build (also to concurrent requests), reports the steps as events, and
// honours the pull policies.
func TestInstallImage(t *testing.T) {
	f, c, reg := imageFixture(t)
	ref := "docker://" + reg + "/web:1"

	// Two requests at once: one build.
	var wg sync.WaitGroup
	type answer struct {
		p     *api.Plugin
		built bool
		err   error
	}
	answers := make([]answer, 2)
	t0 := time.Now()
	for i := range answers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, built, err := c.InstallImage(f.ctx, api.InstallImageRequest{Image: ref})
			answers[i] = answer{p, built, err}
		}()
	}
	wg.Wait()
	t.Logf("two concurrent installs answered in %s", time.Since(t0).Round(time.Millisecond))
	for _, a := range answers {
		if a.err != nil {
			t.Fatal(a.err)
		}
	}
	if answers[0].built == answers[1].built {
		t.Fatalf("built %v and %v: want exactly one build", answers[0].built, answers[1].built)
	}
	p := answers[0].p
	if answers[1].p.Name != p.Name {
		t.Fatalf("two plugins: %s and %s", p.Name, answers[1].p.Name)
	}
	hex := strings.TrimPrefix(p.ImageDigest, "sha256:")
	if p.Name != "web-"+hex[:12] || p.Image != ref || !strings.HasPrefix(p.ImageDigest, "sha256:") {
		t.Fatalf("plugin %s image %s digest %s", p.Name, p.Image, p.ImageDigest)
	}
	m, err := manifest.Parse(p.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(f.dir, "plugins", p.Name, hex[:12]+".img")
	if m.Rootfs == nil || m.Rootfs.URL != want || !strings.HasPrefix(m.Rootfs.Checksum, "sha256:") {
		t.Fatalf("rootfs %+v, want the image at %s", m.Rootfs, want)
	}
	if _, err := os.Stat(want); err != nil {
		t.Fatal(err)
	}
	if strings.Join(m.Workload.Entrypoint, " ") != "/usr/bin/app --serve" || m.Labels[manifest.CmdLabel] != `["--serve"]` {
		t.Fatalf("workload %+v labels %v", m.Workload, m.Labels)
	}
	// Nothing of the build is left beside the plugins.
	entries, _ := os.ReadDir(filepath.Join(f.dir, "plugins"))
	for _, e := range entries {
		if e.Name() != p.Name {
			t.Errorf("left in the plugins directory: %s", e.Name())
		}
	}
	if n := len(buildEvents(t, f, api.EventPluginBuildStarted)); n != 1 {
		t.Fatalf("%d build.started events", n)
	}
	fin := buildEvents(t, f, api.EventPluginBuildFinished)
	if len(fin) != 1 || !strings.Contains(string(fin[0].Data), p.ImageDigest) {
		t.Fatalf("build.finished events %+v", fin)
	}
	var steps []string
	for _, e := range buildEvents(t, f, api.EventPluginBuildProgress) {
		var d struct {
			Step string
			Done bool
		}
		json.Unmarshal(e.Data, &d)
		if d.Done {
			steps = append(steps, d.Step)
		}
	}
	if len(steps) < 2 || !strings.HasPrefix(steps[0], "resolve ") {
		t.Fatalf("progress steps %q", steps)
	}

	// Again: the plugin as it is, no build.
	again, built, err := c.InstallImage(f.ctx, api.InstallImageRequest{Image: ref})
	if err != nil || built || again.Name != p.Name || !again.UpdatedAt.Equal(p.UpdatedAt) {
		t.Fatalf("second install: %+v built %v %v", again, built, err)
	}
	// if-not-present does not ask the registry; never does not either.
	if got, built, err := c.InstallImage(f.ctx, api.InstallImageRequest{Image: ref, Pull: api.PullIfNotPresent}); err != nil || built || got.Name != p.Name {
		t.Fatalf("if-not-present: %+v %v %v", got, built, err)
	}
	_, _, err = c.InstallImage(f.ctx, api.InstallImageRequest{Image: "docker://" + reg + "/other:1", Pull: api.PullNever})
	if !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("pull never without a plugin: %v", err)
	}
	if n := len(buildEvents(t, f, api.EventPluginBuildStarted)); n != 1 {
		t.Fatalf("%d builds after the cached installs", n)
	}

	// A name of one's own; a different image under it is a CONFLICT.
	named, built, err := c.InstallImage(f.ctx, api.InstallImageRequest{Image: ref, Name: "web"})
	if err != nil || !built || named.Name != "web" || named.ImageDigest != p.ImageDigest {
		t.Fatalf("named install: %+v %v %v", named, built, err)
	}
	layout := filepath.Join(t.TempDir(), "layout2")
	img := imagetest.Sample("")
	img.Config.Cmd = []string{"--other"}
	if _, err := imagetest.WriteLayout(layout, "v2", img); err != nil {
		t.Fatal(err)
	}
	if err := imagetest.Copy(f.ctx, "oci:"+layout+":v2", "docker://"+reg+"/web:2", true); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.InstallImage(f.ctx, api.InstallImageRequest{Image: "docker://" + reg + "/web:2", Name: "web"}); !apierr.Is(err, apierr.Conflict) {
		t.Fatalf("another digest under a taken name: %v", err)
	}
	if p2, built, err := c.InstallImage(f.ctx, api.InstallImageRequest{Image: "docker://" + reg + "/web:2", Name: "web", Replace: true}); err != nil || !built || p2.ImageDigest == p.ImageDigest {
		t.Fatalf("replace: %+v %v %v", p2, built, err)
	}
}

// TestInstallImageRefusals: bad requests fail before anything is fetched,
// host paths outside the allowed directories are refused whatever is
// there, and a registry that is not there is UNAVAILABLE.
func TestInstallImageRefusals(t *testing.T) {
	f := newFixture(t)
	c, _ := f.controllerWith(controller.Config{Prober: controllertest.NewProber(), MaxBooting: -1,
		Images: controller.ImageConfig{Fledge: guesttest.Command(t, "fledge")}})
	for _, tc := range []struct {
		req  api.InstallImageRequest
		code apierr.Code
	}{
		{api.InstallImageRequest{Image: ""}, apierr.InvalidInput},
		{api.InstallImageRequest{Image: "web:1", Pull: "sometimes"}, apierr.InvalidInput},
		{api.InstallImageRequest{Image: "web:1", Name: "Bad Name"}, apierr.InvalidInput},
		{api.InstallImageRequest{Image: "oci:/etc:latest"}, apierr.PermissionDenied},
		{api.InstallImageRequest{Image: "dir:/root"}, apierr.PermissionDenied},
		{api.InstallImageRequest{Image: "containers-storage:web"}, apierr.InvalidInput},
	} {
		if _, _, err := c.InstallImage(f.ctx, tc.req); !apierr.Is(err, tc.code) {
			t.Errorf("%+v: %v, want %s", tc.req, err, tc.code)
		}
	}
	if os.Geteuid() == 0 {
		// Nothing listens on port 1 of loopback.
		_, _, err := c.InstallImage(f.ctx, api.InstallImageRequest{Image: "docker://127.0.0.1:1/web:1", Insecure: true})
		if err == nil || apierr.Is(err, apierr.Internal) {
			t.Fatalf("unreachable registry: %v", err)
		}
		t.Logf("unreachable registry: %v", err)
	}
}

// TestInstallImageWithoutFledge: image builds need the fledge command; a
// controller without one says so (UNAVAILABLE, with a hint) and records
// nothing.
func TestInstallImageWithoutFledge(t *testing.T) {
	f := newFixture(t)
	t.Setenv("PATH", t.TempDir()) // no fledge on PATH, none beside the test binary
	c, _ := f.controller()
	_, _, err := c.InstallImage(f.ctx, api.InstallImageRequest{Image: "docker://127.0.0.1:1/web:1"})
	var ae *apierr.Error
	if !errors.As(err, &ae) || ae.Code != apierr.Unavailable || ae.Details["hint"] == nil || !strings.Contains(ae.Message, "fledge") {
		t.Fatalf("without fledge: %v", err)
	}
	c, _ = f.controllerWith(controller.Config{Prober: controllertest.NewProber(), MaxBooting: -1,
		Images: controller.ImageConfig{Fledge: filepath.Join(t.TempDir(), "fledge")}})
	if _, _, err := c.InstallImage(f.ctx, api.InstallImageRequest{Image: "web:1"}); !apierr.Is(err, apierr.Unavailable) {
		t.Fatalf("a fledge that is not there: %v", err)
	}
	if evs := buildEvents(t, f, api.EventPluginBuildStarted); len(evs) != 0 {
		t.Fatalf("build events without fledge: %+v", evs)
	}
}

// TestInstallImageBuildFails: a build that fails in fledge (here: the
// kestrel to install is not there) answers fledge's own error code and
// message, records plugin.build.failed with it, and leaves nothing in the
// plugins directory.
func TestInstallImageBuildFails(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-kestrel")
	f, c, reg := imageFixtureWith(t, missing)
	_, _, err := c.InstallImage(f.ctx, api.InstallImageRequest{Image: "docker://" + reg + "/web:1"})
	var ae *apierr.Error
	if !errors.As(err, &ae) || ae.Code != apierr.NotFound || !strings.Contains(ae.Message, missing) {
		t.Fatalf("a build without kestrel: %#v", err)
	}
	failed := buildEvents(t, f, api.EventPluginBuildFailed)
	if len(failed) != 1 || !strings.Contains(string(failed[0].Data), "no-kestrel") {
		t.Fatalf("build.failed events %+v", failed)
	}
	if n := len(buildEvents(t, f, api.EventPluginBuildFinished)); n != 0 {
		t.Fatalf("%d build.finished events for a failed build", n)
	}
	entries, _ := os.ReadDir(filepath.Join(f.dir, "plugins"))
	for _, e := range entries {
		t.Errorf("left in the plugins directory: %s", e.Name())
	}
	if ps, _ := c.ListPlugins(f.ctx); len(ps) != 0 {
		t.Fatalf("a failed build installed %d plugins", len(ps))
	}
}

// countingFledge is a fledge that runs the real one and records in log
// when each build starts and ends ("start PID" / "end PID" lines).
func countingFledge(t *testing.T, log string) string {
	t.Helper()
	real := guesttest.Command(t, "fledge")
	p := filepath.Join(t.TempDir(), "fledge")
	script := "#!/bin/sh\nif [ \"$1\" != build ]; then exec " + real + " \"$@\"; fi\n" +
		"echo \"start $$\" >>" + log + "\n" + real + " \"$@\"\nrc=$?\necho \"end $$\" >>" + log + "\nexit $rc\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestInstallImageMaxBuilds: three builds asked for at once (one image
// under three names) run at most MaxBuilds (2) at a time; the third waits
// for a slot, and all three are built.
func TestInstallImageMaxBuilds(t *testing.T) {
	f, _, reg := imageFixture(t)
	log := filepath.Join(t.TempDir(), "builds.log")
	c, _ := f.controllerWith(controller.Config{Prober: controllertest.NewProber(), MaxBooting: -1,
		Launch: controller.LaunchDefaults{Kestrel: busyboxStandIn},
		Images: controller.ImageConfig{Fledge: countingFledge(t, log), MaxBuilds: 2, InsecureRegistries: []string{reg}}})
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, built, err := c.InstallImage(f.ctx, api.InstallImageRequest{Image: "docker://" + reg + "/web:1", Name: "web" + strconv.Itoa(i)})
			if err == nil && !built {
				err = errors.New("not built")
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("install %d: %v", i, err)
		}
	}
	data, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	running, peak, starts := 0, 0, 0
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		switch {
		case strings.HasPrefix(line, "start "):
			running++
			starts++
		case strings.HasPrefix(line, "end "):
			running--
		}
		peak = max(peak, running)
	}
	t.Logf("builds: %d, at most %d at once\n%s", starts, peak, data)
	if starts != 3 || peak > 2 {
		t.Fatalf("%d builds, %d at once: want 3, at most MaxBuilds (2) at once", starts, peak)
	}
}

// authProxy stands in front of the registry at reg and answers only
// requests with the basic credentials user:secret, as a registry that
// needs a login does. It returns its host:port.
func authProxy(t *testing.T, reg string) string {
	t.Helper()
	target, _ := url.Parse("http://" + reg)
	rp := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "user" || p != "secret" {
			w.Header().Set("WWW-Authenticate", `Basic realm="volant-test"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// TestInstallImageRegistryAuth: an image in a registry that needs a login
// is refused without credentials, and built with those of the auth file
// volantd is given (--registry-auth-file), or of $REGISTRY_AUTH_FILE, the
// usual place, when it is given none.
func TestInstallImageRegistryAuth(t *testing.T) {
	f, _, reg := imageFixture(t)
	priv := authProxy(t, reg)
	ref := "docker://" + priv + "/web:1"
	authFile := filepath.Join(t.TempDir(), "auth.json")
	auth := `{"auths":{"` + priv + `":{"auth":"` + base64.StdEncoding.EncodeToString([]byte("user:secret")) + `"}}}`
	if err := os.WriteFile(authFile, []byte(auth), 0o600); err != nil {
		t.Fatal(err)
	}
	controllerWith := func(authFile string) *controller.Controller {
		c, _ := f.controllerWith(controller.Config{Prober: controllertest.NewProber(), MaxBooting: -1,
			Launch: controller.LaunchDefaults{Kestrel: busyboxStandIn},
			Images: controller.ImageConfig{Fledge: guesttest.Command(t, "fledge"), AuthFile: authFile, InsecureRegistries: []string{priv}}})
		return c
	}
	// No credentials anywhere fledge looks.
	t.Setenv("REGISTRY_AUTH_FILE", filepath.Join(t.TempDir(), "none.json"))
	t.Setenv("HOME", t.TempDir())
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	_, _, err := controllerWith("").InstallImage(f.ctx, api.InstallImageRequest{Image: ref, Name: "anon"})
	if !apierr.Is(err, apierr.Unauthorized) {
		t.Fatalf("without credentials: %v, want UNAUTHORIZED", err)
	}
	t.Logf("without credentials: %v", err)

	p, built, err := controllerWith(authFile).InstallImage(f.ctx, api.InstallImageRequest{Image: ref, Name: "given"})
	if err != nil || !built || p.ImageDigest == "" {
		t.Fatalf("with the auth file: %+v %v %v", p, built, err)
	}
	t.Setenv("REGISTRY_AUTH_FILE", authFile)
	if _, built, err := controllerWith("").InstallImage(f.ctx, api.InstallImageRequest{Image: ref, Name: "usual"}); err != nil || !built {
		t.Fatalf("with $REGISTRY_AUTH_FILE: %v %v", built, err)
	}
}
