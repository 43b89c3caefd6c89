package fledge

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/fetch"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// trapBusybox compiles testdata/trapbusybox.c statically into dir/name: a
// "busybox" whose applet tables list 7 applets, and which, run, creates
// marker and lists another.
func trapBusybox(t *testing.T, dir, name, marker string) {
	t.Helper()
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		netnstest.SkipOrFail(t, "gcc not installed")
	}
	src, _ := filepath.Abs("testdata/trapbusybox.c")
	out, err := exec.Command(gcc, "-static", "-O1", "-o", filepath.Join(dir, name), `-DMARKER="`+marker+`"`, src).CombinedOutput()
	if err != nil {
		netnstest.SkipOrFail(t, "gcc -static: %v: %s", err, out)
	}
}

const trapToml = `version = "1"
strategy = "initramfs"

[plugin]
name = "trap"
version = "1"

[source]
busybox = "bb"

[agent]
local = "/bin/busybox"

[workload]
entrypoint = ["/bin/sh"]
`

// fledge reads the applets from busybox's ELF file: a busybox from the
// build context never runs on the build host (fledge often runs as root).
func TestBuildNeverRunsBusybox(t *testing.T) {
	needBusybox(t)
	dir := project(t, trapToml, nil)
	marker := filepath.Join(t.TempDir(), "ran")
	trapBusybox(t, dir, "bb", marker)
	res, _, err := build(t, dir, nil)
	if _, serr := os.Stat(marker); serr == nil {
		t.Fatal("fledge ran the build context's busybox on the host")
	}
	if err != nil {
		t.Fatal(err)
	}
	if res.Applets != 7 {
		t.Errorf("%d applets, want the table's 7", res.Applets)
	}
	list := cpioList(t, res.Artifact)
	for p, want := range map[string]bool{
		"usr/bin/[": true, "bin/cat": true, "usr/bin/env": true, "sbin/ifconfig": true, "bin/ls": true,
		"bin/sh": true, "usr/sbin/trapped": true, "bin/evil": false,
	} {
		if got := entryLine(list, p) != ""; got != want {
			t.Errorf("%s in the archive: %v, want %v", p, got, want)
		}
	}
}

// On Debian's busybox, the ELF tables give what busybox itself lists
// (the test runs it; fledge does not).
func TestBusyboxAppletsMatchItsOwnList(t *testing.T) {
	needBusybox(t)
	got, err := busyboxApplets(standIn)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(standIn, "--list-full").Output()
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, l := range strings.Fields(string(out)) {
		want = append(want, "/"+l)
	}
	sort.Strings(want)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("from the ELF file:\n%v\nbusybox --list-full:\n%v", got, want)
	}
	t.Logf("%d applets", len(got))
}

// Files that are not busybox are refused with a clear error, not run.
func TestBusyboxAppletsRefusesOtherFiles(t *testing.T) {
	self, _ := os.Executable()
	for _, p := range []string{self, "/nonexistent/busybox", "testdata/trapbusybox.c"} {
		if _, err := busyboxApplets(p); err == nil {
			t.Errorf("%s: applets read from a file that is not busybox", p)
		}
	}
}

// busybox_url is fetched with lib/fetch's timeouts: a server that serves
// it works, one that never answers or stops half way fails the build with
// TIMEOUT instead of hanging it.
func TestBusyboxURLTimeouts(t *testing.T) {
	needBusybox(t)
	bb, err := os.ReadFile(standIn)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hang := func() {
			select {
			case <-done:
			case <-r.Context().Done():
			}
		}
		switch r.URL.Path {
		case "/busybox":
			w.Write(bb)
		case "/silent":
			hang()
		case "/stalls":
			w.Header().Set("Content-Length", fmt.Sprint(len(bb)))
			w.Write(bb[:len(bb)/2])
			w.(http.Flusher).Flush()
			hang()
		}
	}))
	t.Cleanup(func() { close(done); srv.CloseClientConnections(); srv.Close() })
	toml := func(path string) string {
		return strings.Replace(trapToml, `busybox = "bb"`, `busybox_url = "`+srv.URL+path+`"`, 1)
	}
	quick := func(r *Request) {
		r.Fetch = fetch.Options{HeaderTimeout: 300 * time.Millisecond, StallTimeout: 300 * time.Millisecond}
	}
	res, _, err := build(t, project(t, toml("/busybox"), nil), quick)
	if err != nil || res.Applets < 100 {
		t.Fatalf("served busybox: %+v %v", res, err)
	}
	for _, path := range []string{"/silent", "/stalls"} {
		t0 := time.Now()
		_, _, err := build(t, project(t, toml(path), nil), quick)
		if !apierr.Is(err, apierr.Timeout) || time.Since(t0) > 10*time.Second {
			t.Errorf("%s: after %s: %v", path, time.Since(t0), err)
		}
	}
}
