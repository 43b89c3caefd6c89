package fledgecmd_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/fledge"
	"github.com/volantvm/volant/lib/fledge/fledgecmd"
	"github.com/volantvm/volant/lib/fledge/progress"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/testutil/imagetest"
)

// TestInspect runs the real fledge: references it parses come back
// described, and its errors come back as the same apierr codes, messages
// and details. Nothing is fetched (no --resolve), so no root is needed.
func TestInspect(t *testing.T) {
	c := &fledgecmd.Cmd{Binary: guesttest.Command(t, "fledge")}
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "Web-App")
	if _, err := imagetest.WriteLayout(dir, "v1", imagetest.Sample("")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		image string
		want  fledgecmd.ImageInfo
	}{
		{"nginx:alpine", fledgecmd.ImageInfo{Image: "docker://docker.io/library/nginx:alpine", Transport: "docker", Registry: "docker.io", Name: "nginx", Tag: "alpine"}},
		{"docker://localhost:5000/team/app:2", fledgecmd.ImageInfo{Image: "docker://localhost:5000/team/app:2", Transport: "docker", Registry: "localhost:5000", Name: "app", Tag: "2"}},
		{"oci:" + dir + ":v1", fledgecmd.ImageInfo{Image: "oci:" + dir + ":v1", Transport: "oci", Path: dir, Name: "web-app", Tag: "v1"}},
		{"dir:" + dir, fledgecmd.ImageInfo{Image: "dir:" + dir, Transport: "dir", Path: dir, Name: "web-app"}},
	} {
		got, err := c.Inspect(ctx, fledgecmd.InspectRequest{Image: tc.image})
		if err != nil {
			t.Fatalf("%s: %v", tc.image, err)
		}
		if *got != tc.want {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.image, *got, tc.want)
		}
	}

	_, err := c.Inspect(ctx, fledgecmd.InspectRequest{Image: "containers-storage:web"})
	var ae *apierr.Error
	if !errors.As(err, &ae) || ae.Code != apierr.InvalidInput || !strings.Contains(ae.Message, "containers-storage") || ae.Details["hint"] == nil {
		t.Fatalf("an unlinked transport: %#v", err)
	}
	if _, err := c.Inspect(ctx, fledgecmd.InspectRequest{Image: "-rf"}); !apierr.Is(err, apierr.InvalidInput) {
		t.Fatalf("an image that looks like a flag: %v", err)
	}
	// A build's values that look like flags stay values: fledge refuses
	// the image, not the command line.
	_, err = c.Build(ctx, fledgecmd.BuildRequest{Image: "-q", Name: "--insecure", OutputDir: t.TempDir()})
	if apierr.Is(err, apierr.Usage) || err == nil {
		t.Fatalf("a build of image -q: %v", err)
	}
}

// TestBuildResultMatchesFledge: every field of BuildResult is a field of
// fledge's build result under the same JSON name, so what volantd reads is
// what fledge writes.
func TestBuildResultMatchesFledge(t *testing.T) {
	full := fledge.Result{Name: "web", Version: "1", Artifact: "/o/web.img", Manifest: "/o/web.manifest.json", SHA256: "ab",
		Bytes: 7, Image: "docker://r/web:1", ImageDigest: "sha256:cd", DurationMS: 9, StepsMS: map[string]int64{"mkfs": 3}}
	b, err := json.Marshal(full)
	if err != nil {
		t.Fatal(err)
	}
	var got fledgecmd.BuildResult
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	want := fledgecmd.BuildResult{Name: "web", Version: "1", Artifact: "/o/web.img", Manifest: "/o/web.manifest.json", SHA256: "ab",
		Bytes: 7, Image: "docker://r/web:1", ImageDigest: "sha256:cd", DurationMS: 9, StepsMS: map[string]int64{"mkfs": 3}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("decoded %+v\nwant %+v", got, want)
	}
	// And no field of BuildResult is one fledge does not write.
	var fields map[string]json.RawMessage
	json.Unmarshal(b, &fields)
	rt := reflect.TypeOf(got)
	for i := range rt.NumField() {
		name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
		if _, ok := fields[name]; !ok {
			t.Errorf("BuildResult.%s (%q) is not in fledge's result", rt.Field(i).Name, name)
		}
	}
}

// TestNotFound: no fledge is UNAVAILABLE, with a hint.
func TestNotFound(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := fledgecmd.Find("")
	var ae *apierr.Error
	if !errors.As(err, &ae) || ae.Code != apierr.Unavailable || ae.Details["hint"] == nil {
		t.Fatalf("Find without fledge: %v", err)
	}
	c := &fledgecmd.Cmd{Binary: filepath.Join(t.TempDir(), "fledge")}
	if _, err := c.Inspect(context.Background(), fledgecmd.InspectRequest{Image: "web:1"}); !apierr.Is(err, apierr.Unavailable) {
		t.Fatalf("a binary that is not there: %v", err)
	}
}

// script writes an executable shell script standing in for a fledge that
// misbehaves, which the real one cannot be made to do.
func script(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fledge")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestBrokenOutput: a fledge that dies without its error object, or
// answers something that is not its result, is INTERNAL, with what it
// said.
func TestBrokenOutput(t *testing.T) {
	ctx := context.Background()
	c := &fledgecmd.Cmd{Binary: script(t, "echo 'panic: boom' >&2; exit 2\n")}
	_, err := c.Inspect(ctx, fledgecmd.InspectRequest{Image: "web:1"})
	if !apierr.Is(err, apierr.Internal) || !strings.Contains(err.Error(), "panic: boom") {
		t.Fatalf("a crash: %v", err)
	}
	c = &fledgecmd.Cmd{Binary: script(t, `echo '{"version":"1","kind":"fledge.version","build":"x"}'`+"\n")}
	if _, err := c.Inspect(ctx, fledgecmd.InspectRequest{Image: "web:1"}); !apierr.Is(err, apierr.Internal) || !strings.Contains(err.Error(), "fledge.version") {
		t.Fatalf("a result of another kind: %v", err)
	}
}

// TestCancel: a canceled build stops fledge with SIGTERM, so it can
// clean up (its StopTimeout would SIGKILL it, and the trap would not run).
func TestCancel(t *testing.T) {
	mark := filepath.Join(t.TempDir(), "terminated")
	c := &fledgecmd.Cmd{Binary: script(t, `trap 'echo term > `+mark+`; exit 12' TERM
echo '{"version":"1","kind":"fledge.progress","step":"resolve x"}' >&2
while :; do sleep 0.05; done
`), StopTimeout: 5 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	steps := make(chan string, 4)
	go func() {
		// Cancel once the build has started a step.
		<-steps
		cancel()
	}()
	_, err := c.Build(ctx, fledgecmd.BuildRequest{Image: "web:1", OutputDir: t.TempDir(), Progress: reporter(steps)})
	if !errors.Is(err, context.Canceled) && !apierr.Is(err, apierr.Canceled) {
		t.Fatalf("canceled build: %v", err)
	}
	if b, err := os.ReadFile(mark); err != nil || string(b) != "term\n" {
		t.Fatalf("fledge did not get SIGTERM: %q %v", b, err)
	}
}

// reporter sends the name of each step started to ch.
func reporter(ch chan<- string) progress.Reporter { return chReporter(ch) }

type chReporter chan<- string

func (r chReporter) Step(name string, total int64) progress.Step {
	r <- name
	return progress.Discard.Step(name, total)
}
