// Package fledgecmd runs the fledge command in a process of its own, for a
// program that must not link what fledge links. volantd builds plugins
// from container images through it: the image libraries (containers/image,
// umoci, sigstore's protobufs, json-iterator, yaml, toml) are megabytes of
// code and heap that a daemon would otherwise carry for a path it rarely
// takes. The package links only the standard library and the few light
// Volant packages it names; a test in cmd/volantd keeps it that way.
//
// It speaks the command's stdio contract (lib/cli): flags in, one JSON
// result on stdout; on stderr, with --progress json, one progress event a
// line (lib/fledge/progress.Event), replayed into the caller's Reporter,
// and on failure the error object {"code","message","details"} as the last
// line, returned as the same *apierr.Error. Other stderr lines (logs) go to
// the Logger at debug level and, when no error object came, into the
// INTERNAL error.
//
// fledge is found like volant-launch (Find): a path given, else the fledge
// installed next to the running executable, else $PATH.
package fledgecmd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/fledge/progress"
	"github.com/volantvm/volant/lib/layout"
)

// Name is the command's file name.
const Name = "fledge"

// Find returns the fledge binary: explicit when given (a path, or a name on
// PATH), else the fledge next to the running executable, else the one on
// PATH (layout.FindBinary). Not found is UNAVAILABLE.
func Find(explicit string) (string, error) {
	p, err := layout.FindBinary(Name, explicit)
	switch {
	case err == nil:
		return p, nil
	case explicit != "":
		return "", apierr.Wrap(apierr.Unavailable, err, "fledge binary "+strconv.Quote(explicit))
	}
	return "", apierr.New(apierr.Unavailable, "fledge not found next to %s nor on PATH: plugins are built from images by the fledge command", filepath.Base(os.Args[0])).
		With("hint", "install fledge beside it (make build puts both in bin/), or name it with --fledge")
}

// Cmd runs one fledge binary.
type Cmd struct {
	// Binary is the fledge executable ("": Find("") at each call, so a
	// fledge installed after the caller started is found).
	Binary string
	// Logger receives fledge's log lines at debug level (nil: discarded).
	Logger *slog.Logger
	// StopTimeout is how long a canceled command has, after SIGTERM, to
	// remove its temporary files before it is killed (default 30 s).
	StopTimeout time.Duration
}

// ImageInfo is what `fledge inspect` says of an image reference.
type ImageInfo struct {
	// Image is the canonical transport:reference
	// (docker://docker.io/library/nginx:alpine).
	Image string `json:"image"`
	// Transport is the containers/image transport: docker, oci,
	// oci-archive, docker-archive or dir.
	Transport string `json:"transport"`
	// Path is the host file or directory the image is read from (every
	// transport but docker).
	Path string `json:"path,omitempty"`
	// Registry is the registry's host[:port] (docker).
	Registry string `json:"registry,omitempty"`
	// Name and Tag are the plugin name and version fledge would give a
	// plugin built from the image: the repository's (or layout
	// directory's) last path component, and the tag.
	Name string `json:"name"`
	Tag  string `json:"tag,omitempty"`
	// With Resolve: the digest the reference resolves to (the manifest
	// list's when the image has one), the platform's manifest digest, the
	// signature policy that accepted it and the layers' compressed size
	// (-1 when the manifest does not give every size).
	Digest          string `json:"digest,omitempty"`
	InstanceDigest  string `json:"instance_digest,omitempty"`
	SignaturePolicy string `json:"signature_policy,omitempty"`
	CompressedBytes int64  `json:"compressed_bytes,omitempty"`
}

// InspectRequest is one `fledge inspect`.
type InspectRequest struct {
	Image string
	// Resolve reads the image's manifest and config (a registry request
	// for docker://) for its digest; without it nothing is fetched.
	Resolve bool
	// Insecure allows plain HTTP and unverified TLS; AuthFile holds
	// registry credentials ("": the usual places).
	Insecure bool
	AuthFile string
}

// Inspect parses, and with Resolve resolves, an image reference.
func (c *Cmd) Inspect(ctx context.Context, req InspectRequest) (*ImageInfo, error) {
	args := []string{"inspect"}
	if req.Resolve {
		args = append(args, "--resolve")
	}
	args = append(args, imageFlags(req.Insecure, req.AuthFile)...)
	args = append(args, "--", req.Image)
	var info ImageInfo
	if err := c.run(ctx, args, nil, "fledge.inspect", &info); err != nil {
		return nil, err
	}
	return &info, nil
}

func imageFlags(insecure bool, authFile string) []string {
	var args []string
	if insecure {
		args = append(args, "--insecure")
	}
	if authFile != "" {
		args = append(args, "--auth-file="+authFile)
	}
	return args
}

// BuildRequest is one `fledge build --image`: an oci_rootfs plugin from an
// image alone, as a fledge.toml with only [plugin] name and [source] would
// describe it.
type BuildRequest struct {
	Image string
	// Name is the plugin's name ("": fledge's, from the image).
	Name string
	// OutputDir receives <name>.img and <name>.manifest.json.
	OutputDir string
	// Kestrel is the agent binary to install ("": fledge's choice).
	Kestrel string
	// WorkDir is where the image is unpacked ("": fledge's choice).
	WorkDir  string
	Insecure bool
	AuthFile string
	// Progress receives the build's steps as fledge reports them.
	Progress progress.Reporter
}

// BuildResult is the part of fledge's build result (lib/fledge.Result,
// the command's stdout) that a caller installing the plugin reads.
type BuildResult struct {
	Name        string           `json:"name"`
	Version     string           `json:"plugin_version"`
	Artifact    string           `json:"artifact"`
	Manifest    string           `json:"manifest"`
	SHA256      string           `json:"sha256"`
	Bytes       int64            `json:"bytes"`
	Image       string           `json:"image"`
	ImageDigest string           `json:"image_digest"`
	DurationMS  int64            `json:"duration_ms"`
	StepsMS     map[string]int64 `json:"steps_ms"`
}

// Build builds the plugin. Canceling ctx stops fledge (SIGTERM, then
// SIGKILL after StopTimeout); fledge leaves nothing in OutputDir then.
func (c *Cmd) Build(ctx context.Context, req BuildRequest) (*BuildResult, error) {
	// --flag=value throughout: a value that begins with a dash stays a value.
	args := []string{"build", "--progress=json", "--image=" + req.Image, "--output-dir=" + req.OutputDir}
	if req.Name != "" {
		args = append(args, "--name="+req.Name)
	}
	if req.Kestrel != "" {
		args = append(args, "--kestrel="+req.Kestrel)
	}
	if req.WorkDir != "" {
		args = append(args, "--work-dir="+req.WorkDir)
	}
	args = append(args, imageFlags(req.Insecure, req.AuthFile)...)
	var res BuildResult
	if err := c.run(ctx, args, req.Progress, "fledge.build", &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// maxStdout bounds the result read from fledge's stdout.
const maxStdout = 4 << 20

// run runs fledge with args and decodes its result of kind into out.
func (c *Cmd) run(ctx context.Context, args []string, prog progress.Reporter, kind string, out any) error {
	bin := c.Binary
	if bin == "" {
		var err error
		if bin, err = Find(""); err != nil {
			return err
		}
	}
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	what := Name + " " + args[0]
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = c.StopTimeout
	if cmd.WaitDelay <= 0 {
		cmd.WaitDelay = 30 * time.Second
	}
	// fledge ends with its caller (SIGTERM: it removes its temporary
	// files); Pdeathsig follows the forking thread, held below.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	var stdout bytes.Buffer
	cmd.Stdout = &limitWriter{w: &stdout, n: maxStdout}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	replay := progress.NewReplayer(prog)
	var last []byte // the last line that is not a progress event
	var tail []string
	scanned := make(chan struct{})

	// Start and Wait on one goroutine locked to its thread: the kernel's
	// parent-death signal fires when the forking thread exits, and Go may
	// retire an unlocked thread while fledge runs.
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			close(scanned)
			errc <- apierr.Wrap(apierr.Unavailable, err, "starting "+bin)
			return
		}
		go func() {
			defer close(scanned)
			sc := bufio.NewScanner(stderr)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				line := sc.Bytes()
				if len(line) == 0 {
					continue
				}
				if line[0] == '{' {
					var ev progress.Event
					if json.Unmarshal(line, &ev) == nil && ev.Kind == progress.EventKind {
						replay.Replay(ev)
						continue
					}
				}
				last = append(last[:0], line...)
				log.Debug(string(line), "command", what)
				if tail = append(tail, string(line)); len(tail) > 8 {
					tail = tail[1:]
				}
			}
			io.Copy(io.Discard, stderr)
		}()
		<-scanned // stderr is at EOF before Wait closes the pipe
		errc <- cmd.Wait()
	}()
	err = <-errc
	<-scanned
	if err != nil {
		if ce := context.Cause(ctx); ce != nil {
			return apierr.Wrap(apierr.CodeOf(ce), ce, what+" stopped")
		}
		if apierr.CodeOf(err) == apierr.Unavailable {
			return err
		}
		var ae apierr.Error
		if len(last) > 0 && json.Unmarshal(last, &ae) == nil && ae.Code != "" && ae.Message != "" {
			return &ae
		}
		return apierr.Wrap(apierr.Internal, err, what+" failed: "+strings.Join(tail, "\n"))
	}
	if err := decodeResult(stdout.Bytes(), kind, out); err != nil {
		return apierr.Wrap(apierr.Internal, err, what+" answered "+strconv.Quote(truncate(stdout.String(), 200)))
	}
	return nil
}

// decodeResult checks the result's version and kind and decodes it.
func decodeResult(b []byte, kind string, out any) error {
	var head struct {
		Version string `json:"version"`
		Kind    string `json:"kind"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return err
	}
	if head.Version != "1" || head.Kind != kind {
		return fmt.Errorf("a result of kind %q version %q, want %q version 1", head.Kind, head.Version, kind)
	}
	return json.Unmarshal(b, out)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// limitWriter keeps the first n bytes and fails after them.
type limitWriter struct {
	w io.Writer
	n int
}

var errTooLong = errors.New("fledge's result is too long")

func (l *limitWriter) Write(p []byte) (int, error) {
	if len(p) > l.n {
		return 0, errTooLong
	}
	l.n -= len(p)
	return l.w.Write(p)
}
