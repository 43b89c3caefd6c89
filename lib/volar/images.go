package volar

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/volantvm/volant/lib/api"
)

// InstallImage is `volar plugins install --image REF`: volantd builds the
// plugin from the image (or finds the one built from its digest). On a
// terminal the build's steps are printed on stderr as they happen.
func (s *Session) InstallImage(ctx context.Context, req api.InstallImageRequest) (*api.Plugin, bool, error) {
	stop := s.followBuild(ctx)
	p, built, err := s.Client.InstallImage(ctx, req)
	stop()
	return p, built, err
}

// followBuild prints plugin.build.* events on stderr until stop is called
// (table output, not quiet). Progress is a nicety: without the stream the
// install goes on.
func (s *Session) followBuild(ctx context.Context) (stop func()) {
	if s.Out.Format != Table || s.Out.Quiet {
		return func() {}
	}
	mark := s.markEvents(ctx)
	ctx, cancel := context.WithCancel(ctx)
	stream, err := s.Client.Events(ctx, api.EventOptions{Since: mark.id, FromStart: mark.ok && mark.id == 0, Types: []string{"plugin.build.*"}})
	if err != nil {
		cancel()
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer stream.Close()
		for {
			ev, err := stream.Next()
			if err != nil {
				return
			}
			if line := describeBuildEvent(&ev); line != "" {
				s.Out.progress("  %s", line)
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

func describeBuildEvent(ev *api.Event) string {
	var d struct {
		Name, Image, Step, Digest, Error string
		Done                             bool
		Bytes                            int64
		DurationMS                       int64 `json:"duration_ms"`
	}
	_ = json.Unmarshal(ev.Data, &d)
	switch ev.Type {
	case api.EventPluginBuildStarted:
		return fmt.Sprintf("building plugin %s from %s (%s)", d.Name, d.Image, shortDigest(d.Digest))
	case api.EventPluginBuildProgress:
		switch {
		case d.Error != "":
			return fmt.Sprintf("%s failed: %s", d.Step, d.Error)
		case d.Done && d.Bytes > 0:
			return fmt.Sprintf("%s done (%s)", d.Step, humanBytes(d.Bytes))
		case d.Done:
			return d.Step + " done"
		}
		return d.Step + "..."
	case api.EventPluginBuildFinished:
		return fmt.Sprintf("plugin %s built in %.1fs (%s)", d.Name, float64(d.DurationMS)/1000, humanBytes(d.Bytes))
	case api.EventPluginBuildFailed:
		return fmt.Sprintf("building plugin %s failed: %s", d.Name, d.Error)
	}
	return ""
}

func shortDigest(d string) string {
	h := strings.TrimPrefix(d, "sha256:")
	if len(h) > 12 {
		h = h[:12]
	}
	return h
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// RunRequest is `volar run`: the image to build (or reuse) and the VM to
// create from it (its Plugin is the built plugin; its Name defaults to
// REPOSITORY-XXXXXX).
type RunRequest struct {
	Image api.InstallImageRequest
	VM    api.CreateVMRequest
	Wait  WaitOptions
}

// RunImage is `volar run IMAGE [-- ARGS]`: the plugin from the image, a VM
// from the plugin, and the wait until it runs.
func (s *Session) RunImage(ctx context.Context, r RunRequest) error {
	if r.VM.Name != "" {
		if err := checkName("VM", r.VM.Name); err != nil {
			return err
		}
	}
	p, built, err := s.InstallImage(ctx, r.Image)
	if err != nil {
		return err
	}
	if s.Out.Format == Table && !s.Out.Quiet {
		how := "built"
		if !built {
			how = "reused"
		}
		s.Out.progress("Plugin %s %s (%s)", p.Name, how, p.Image)
	}
	r.VM.Plugin = p.Name
	if r.VM.Name == "" {
		r.VM.Name = runName(p.Name)
	}
	return s.CreateVM(ctx, r.VM, r.Wait)
}

// runName is the plugin's repository part and six random hex digits.
func runName(plugin string) string {
	base := plugin
	if i := strings.LastIndexByte(base, '-'); i > 0 && len(base)-i == 13 {
		base = base[:i] // <repository>-<digest>
	}
	if len(base) > 50 {
		base = base[:50]
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%x", strings.TrimRight(base, "-_"), b)
}
