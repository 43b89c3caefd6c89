// Package imagetest makes container images for fledge's tests: OCI layouts
// written with the Go libraries (layers with whiteouts, symlinks, hard
// links, device nodes, owners, xattrs; a config with Entrypoint, Env,
// WorkingDir, User, ExposedPorts), copies between transports with
// containers/image, and a real registry (Debian's docker-registry) on
// loopback.
package imagetest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containers/image/v5/copy"
	_ "github.com/containers/image/v5/docker"         // registers docker://
	_ "github.com/containers/image/v5/docker/archive" // registers docker-archive:
	_ "github.com/containers/image/v5/oci/archive"    // registers oci-archive:
	_ "github.com/containers/image/v5/oci/layout"     // registers oci:
	"github.com/containers/image/v5/signature"
	"github.com/containers/image/v5/transports"
	"github.com/containers/image/v5/types"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// File is one tar entry.
type File struct {
	Path   string
	Type   byte // tar.TypeReg when 0
	Mode   int64
	Body   string
	Link   string // symlink target or hard-link source
	UID    int
	GID    int
	Major  int64
	Minor  int64
	Xattrs map[string]string
}

// Layer is a list of entries with a compression ("gzip", "zstd", "none").
type Layer struct {
	Compression string
	Files       []File
}

// Image is an image to write.
type Image struct {
	Config ispec.ImageConfig
	Layers []Layer
	// Created is the image's creation time (zero: unset).
	Created time.Time
	// Arch defaults to amd64.
	Arch string
}

// Sample is the image the fledge tests build plugins from. Layer 1 lays
// out a small system; layer 2 (zstd) deletes /data/old.txt with a
// whiteout, replaces /opt/old with an opaque whiteout, changes
// /app/config.txt; layer 3 (uncompressed) adds /srv/index.html and a
// relative symlink. compression, when given, overrides every layer's.
func Sample(compression string) Image {
	img := Image{
		Created: time.Unix(1700000000, 0).UTC(),
		Config: ispec.ImageConfig{
			Entrypoint:   []string{"/usr/bin/app"},
			Cmd:          []string{"--serve"},
			Env:          []string{"PATH=/usr/bin:/bin", "APP_MODE=test"},
			WorkingDir:   "/app",
			User:         "app",
			ExposedPorts: map[string]struct{}{"9090/tcp": {}, "8080/tcp": {}, "53/udp": {}},
		},
		Layers: []Layer{
			{Compression: "gzip", Files: []File{
				{Path: "bin/", Type: tar.TypeDir, Mode: 0o755},
				{Path: "usr/", Type: tar.TypeDir, Mode: 0o755},
				{Path: "usr/bin/", Type: tar.TypeDir, Mode: 0o755},
				{Path: "usr/bin/app", Mode: 0o755, Body: "#!/bin/sh\necho app\n", Xattrs: map[string]string{"user.fledge": "yes"}},
				{Path: "usr/bin/app-link", Type: tar.TypeLink, Link: "usr/bin/app"},
				{Path: "bin/app", Type: tar.TypeSymlink, Link: "/usr/bin/app"},
				{Path: "etc/", Type: tar.TypeDir, Mode: 0o755},
				{Path: "etc/passwd", Mode: 0o644, Body: "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/app:/bin/sh\n"},
				{Path: "etc/group", Mode: 0o644, Body: "root:x:0:\napp:x:1001:\n"},
				{Path: "app/", Type: tar.TypeDir, Mode: 0o750, UID: 1000, GID: 1001},
				{Path: "app/config.txt", Mode: 0o640, Body: "v1\n", UID: 1000, GID: 1001},
				{Path: "app/null", Type: tar.TypeChar, Mode: 0o666, Major: 1, Minor: 3},
				{Path: "data/", Type: tar.TypeDir, Mode: 0o755},
				{Path: "data/old.txt", Mode: 0o644, Body: "old\n"},
				{Path: "data/keep.txt", Mode: 0o644, Body: "keep\n"},
				{Path: "opt/", Type: tar.TypeDir, Mode: 0o755},
				{Path: "opt/old/", Type: tar.TypeDir, Mode: 0o755},
				{Path: "opt/old/a", Mode: 0o644, Body: "a\n"},
				{Path: "opt/old/b", Mode: 0o644, Body: "b\n"},
			}},
			{Compression: "zstd", Files: []File{
				{Path: "data/.wh.old.txt", Mode: 0o644},
				{Path: "data/new.txt", Mode: 0o644, Body: "new\n"},
				{Path: "app/config.txt", Mode: 0o640, Body: "v2\n", UID: 1000, GID: 1001},
				{Path: "opt/old/.wh..wh..opq", Mode: 0o644},
				{Path: "opt/old/c", Mode: 0o644, Body: "c\n"},
			}},
			{Compression: "none", Files: []File{
				{Path: "srv/", Type: tar.TypeDir, Mode: 0o755},
				{Path: "srv/index.html", Mode: 0o644, Body: "hello from fledge\n"},
				{Path: "app/current", Type: tar.TypeSymlink, Link: "config.txt", UID: 1000, GID: 1001},
			}},
		},
	}
	if compression != "" {
		for i := range img.Layers {
			img.Layers[i].Compression = compression
		}
	}
	return img
}

// Blob is a written blob.
type Blob struct {
	Digest digest.Digest
	Size   int64
}

// WriteLayout writes img into an OCI image layout at dir (created or
// extended) under tag and returns the manifest's descriptor.
func WriteLayout(dir, tag string, img Image) (ispec.Descriptor, error) {
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		return ispec.Descriptor{}, err
	}
	if err := os.WriteFile(filepath.Join(dir, ispec.ImageLayoutFile), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		return ispec.Descriptor{}, err
	}
	put := func(data []byte) (Blob, error) {
		sum := sha256.Sum256(data)
		h := hex.EncodeToString(sum[:])
		if err := os.WriteFile(filepath.Join(dir, "blobs", "sha256", h), data, 0o644); err != nil {
			return Blob{}, err
		}
		return Blob{Digest: digest.NewDigestFromEncoded(digest.SHA256, h), Size: int64(len(data))}, nil
	}
	var layers []ispec.Descriptor
	var diffIDs []digest.Digest
	mt := time.Unix(1700000000, 0)
	for _, l := range img.Layers {
		raw, err := TarOf(l.Files, mt)
		if err != nil {
			return ispec.Descriptor{}, err
		}
		diffIDs = append(diffIDs, digest.FromBytes(raw))
		data, media, err := compress(raw, l.Compression)
		if err != nil {
			return ispec.Descriptor{}, err
		}
		b, err := put(data)
		if err != nil {
			return ispec.Descriptor{}, err
		}
		layers = append(layers, ispec.Descriptor{MediaType: media, Digest: b.Digest, Size: b.Size})
	}
	arch := img.Arch
	if arch == "" {
		arch = "amd64"
	}
	cfg := ispec.Image{
		Platform: ispec.Platform{OS: "linux", Architecture: arch},
		Config:   img.Config,
		RootFS:   ispec.RootFS{Type: "layers", DiffIDs: diffIDs},
	}
	if !img.Created.IsZero() {
		t := img.Created
		cfg.Created = &t
	}
	cb, err := json.Marshal(cfg)
	if err != nil {
		return ispec.Descriptor{}, err
	}
	cblob, err := put(cb)
	if err != nil {
		return ispec.Descriptor{}, err
	}
	man := ispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ispec.MediaTypeImageManifest,
		Config:    ispec.Descriptor{MediaType: ispec.MediaTypeImageConfig, Digest: cblob.Digest, Size: cblob.Size},
		Layers:    layers,
	}
	mb, err := json.Marshal(man)
	if err != nil {
		return ispec.Descriptor{}, err
	}
	mblob, err := put(mb)
	if err != nil {
		return ispec.Descriptor{}, err
	}
	desc := ispec.Descriptor{MediaType: ispec.MediaTypeImageManifest, Digest: mblob.Digest, Size: mblob.Size,
		Annotations: map[string]string{ispec.AnnotationRefName: tag}}
	idx := ispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ispec.MediaTypeImageIndex}
	if b, err := os.ReadFile(filepath.Join(dir, ispec.ImageIndexFile)); err == nil {
		if err := json.Unmarshal(b, &idx); err != nil {
			return ispec.Descriptor{}, err
		}
	}
	kept := idx.Manifests[:0]
	for _, m := range idx.Manifests {
		if m.Annotations[ispec.AnnotationRefName] != tag {
			kept = append(kept, m)
		}
	}
	idx.Manifests = append(kept, desc)
	ib, err := json.Marshal(idx)
	if err != nil {
		return ispec.Descriptor{}, err
	}
	return desc, os.WriteFile(filepath.Join(dir, ispec.ImageIndexFile), ib, 0o644)
}

// TarOf writes entries as a tar stream with every time set to mt.
func TarOf(files []File, mt time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		typ := f.Type
		if typ == 0 {
			typ = tar.TypeReg
		}
		h := &tar.Header{
			Name: f.Path, Typeflag: typ, Mode: f.Mode, Uid: f.UID, Gid: f.GID,
			ModTime: mt, Linkname: f.Link, Devmajor: f.Major, Devminor: f.Minor,
			Format: tar.FormatPAX,
		}
		if typ == tar.TypeReg {
			h.Size = int64(len(f.Body))
		}
		if len(f.Xattrs) > 0 {
			h.PAXRecords = map[string]string{}
			for k, v := range f.Xattrs {
				h.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("tar %s: %w", f.Path, err)
		}
		if typ == tar.TypeReg {
			if _, err := io.WriteString(tw, f.Body); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func compress(raw []byte, how string) ([]byte, string, error) {
	var buf bytes.Buffer
	switch how {
	case "", "gzip":
		zw := gzip.NewWriter(&buf)
		if _, err := zw.Write(raw); err != nil {
			return nil, "", err
		}
		if err := zw.Close(); err != nil {
			return nil, "", err
		}
		return buf.Bytes(), ispec.MediaTypeImageLayerGzip, nil
	case "zstd":
		zw, err := zstd.NewWriter(&buf)
		if err != nil {
			return nil, "", err
		}
		if _, err := zw.Write(raw); err != nil {
			return nil, "", err
		}
		if err := zw.Close(); err != nil {
			return nil, "", err
		}
		return buf.Bytes(), ispec.MediaTypeImageLayerZstd, nil
	case "none":
		return raw, ispec.MediaTypeImageLayer, nil
	}
	return nil, "", fmt.Errorf("unknown compression %q", how)
}

// parseImageName parses TRANSPORT:REFERENCE with the transports linked
// here (not alltransports, which would need containers/storage's cgo).
func parseImageName(s string) (types.ImageReference, error) {
	name, rest, ok := strings.Cut(s, ":")
	t := transports.Get(name)
	if !ok || t == nil {
		return nil, fmt.Errorf("unknown transport in %q", s)
	}
	return t.ParseReference(rest)
}

// Copy copies an image between two containers/image references
// (transport:ref), e.g. pushes an oci: layout to docker://127.0.0.1:5000/x:1
// or writes a docker-archive:. insecure allows plain-HTTP registries.
func Copy(ctx context.Context, src, dst string, insecure bool) error {
	sref, err := parseImageName(src)
	if err != nil {
		return err
	}
	dref, err := parseImageName(dst)
	if err != nil {
		return err
	}
	pc, err := signature.NewPolicyContext(&signature.Policy{Default: signature.PolicyRequirements{signature.NewPRInsecureAcceptAnything()}})
	if err != nil {
		return err
	}
	defer pc.Destroy()
	sys := &types.SystemContext{}
	if insecure {
		sys.DockerInsecureSkipTLSVerify = types.OptionalBoolTrue
	}
	_, err = copy.Image(ctx, pc, dref, sref, &copy.Options{SourceCtx: sys, DestinationCtx: sys, ReportWriter: io.Discard})
	return err
}

// Registry starts Debian's docker-registry on a free loopback port with
// its own configuration and storage, and stops it when the test ends. It
// returns host:port.
func Registry(t testing.TB, skip func(testing.TB, string, ...any)) string {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		if _, serr := os.Stat("/usr/bin/docker-registry"); serr != nil {
			skip(t, "docker-registry not installed (apt-get install docker-registry)")
		}
		bin = "/usr/bin/docker-registry"
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	conf := filepath.Join(dir, "config.yml")
	yml := fmt.Sprintf("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n", filepath.Join(dir, "storage"), addr)
	if err := os.WriteFile(conf, []byte(yml), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	cmd := exec.Command(bin, "serve", conf)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting docker-registry: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return addr
			}
		}
		select {
		case <-done:
			t.Fatalf("docker-registry exited: %s", logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("docker-registry did not answer on %s: %v\n%s", addr, err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
