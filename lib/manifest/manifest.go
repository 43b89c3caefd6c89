// Package manifest is the Volant plugin manifest: its Go types (the one
// source of truth, from which the JSON Schema is generated), strict parsing
// with field paths in every error, normalization (documented defaults),
// validation that reports every problem at once, and the compact encoding
// carried on the guest kernel command line: base64url(gzip(json)), no padding.
//
// The format is compatible with manifests written for the original Volant
// (schema_version "1.0").
package manifest

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/didyoumean"
)

// SchemaVersion is the manifest format this package reads and writes.
const SchemaVersion = "1.0"

// MaxBytes bounds a manifest, decoded or decompressed.
const MaxBytes = 256 << 10

// Manifest describes a plugin: what to boot and how to run its workload.
type Manifest struct {
	Schema        string            `json:"$schema,omitempty" jsonschema_description:"URL of this JSON Schema, for editors."`
	SchemaVersion string            `json:"schema_version,omitempty" jsonschema:"enum=1.0,enum=1" jsonschema_description:"Manifest format version. Default 1.0."`
	Name          string            `json:"name" jsonschema:"pattern=^[a-z0-9][a-z0-9_-]{0\\,62}$" jsonschema_description:"Unique plugin name: lowercase letters, digits, - and _."`
	Version       string            `json:"version" jsonschema:"pattern=^[A-Za-z0-9][A-Za-z0-9_.+-]{0\\,63}$" jsonschema_description:"Plugin version: 1-64 ASCII letters, digits, '.', '_', '+' and '-', starting with a letter or digit (1.0.0, v2, 2024.01+build.3, 1.27-alpine). It names a directory and is part of URLs."`
	Runtime       string            `json:"runtime,omitempty" jsonschema_description:"Runtime identifier. Defaults to the name."`
	Enabled       *bool             `json:"enabled,omitempty" jsonschema_description:"Whether VMs may be created from it. Default true."`
	Image         string            `json:"image,omitempty" jsonschema_description:"OCI image reference the plugin was built from (set by fledge)."`
	ImageDigest   string            `json:"image_digest,omitempty" jsonschema_description:"Digest of that image (set by fledge)."`
	Initramfs     *Artifact         `json:"initramfs,omitempty" jsonschema_description:"Boot from this initramfs (cpio, optionally gzip). Exactly one of initramfs and rootfs."`
	Rootfs        *Rootfs           `json:"rootfs,omitempty" jsonschema_description:"Boot from this root disk image. Exactly one of initramfs and rootfs."`
	Disks         []Disk            `json:"disks,omitempty" jsonschema_description:"Extra disks attached after the root disk."`
	Resources     Resources         `json:"resources,omitempty" jsonschema_description:"Default CPU and memory of a VM."`
	Workload      Workload          `json:"workload" jsonschema_description:"The process kestrel runs and supervises."`
	HealthCheck   *HealthCheck      `json:"health_check,omitempty" jsonschema_description:"HTTP probe of base_url + endpoint; a VM is running once it passes."`
	Actions       map[string]Action `json:"actions,omitempty" jsonschema_description:"Named HTTP calls into the workload, proxied by kestrel."`
	Network       *Network          `json:"network,omitempty" jsonschema_description:"How the VM is networked. Default bridged."`
	OpenAPI       string            `json:"openapi,omitempty" jsonschema_description:"URL or absolute path of the workload's OpenAPI document."`
	Console       *Console          `json:"console,omitempty" jsonschema_description:"What the serial console offers besides output. Default: output only."`
	Labels        map[string]string `json:"labels,omitempty" jsonschema_description:"Free-form key/value labels; values without control characters."`
	Secrets       *Secrets          `json:"secrets,omitempty" jsonschema_description:"The names of the secrets every VM of this plugin needs; their values come with each create request's inputs, never in the manifest."`
}

// Secrets names the secrets a plugin's workload needs: environment
// variables and files that each VM's create request must give in its
// inputs (api.CreateVMRequest.inputs), which reach kestrel over the
// host-only agent channel. A manifest holds no secret's value: it is
// encoded onto the guest's kernel command line (readable in the guest's
// /proc/cmdline and in the hypervisor's argv on the host), kept in clear
// in the state database, answered by GET /api/v1/plugins, and published
// and signed as one artifact for every VM that runs it, while a secret
// belongs to one VM. Nor does it name host files to read: the plugin's
// author does not know the host, and volantd reading a path a manifest
// names would hand the host's files to whoever installs a plugin.
type Secrets struct {
	Env   []string `json:"env,omitempty" jsonschema_description:"Environment variables the workload needs: each must be in the create request's inputs.env."`
	Files []string `json:"files,omitempty" jsonschema_description:"Clean absolute guest paths (at most 4095 bytes) of files the workload needs: each must be in the create request's inputs.files."`
}

// Artifact is a file the VM boots from.
type Artifact struct {
	URL      string `json:"url" jsonschema_description:"Absolute path, file://, http:// or https:// URL."`
	Checksum string `json:"checksum,omitempty" jsonschema:"pattern=^(sha256:)?[0-9a-fA-F]{64}$" jsonschema_description:"sha256:<hex>; verified before every boot."`
}

// Rootfs is a root disk image.
type Rootfs struct {
	URL      string `json:"url" jsonschema_description:"Absolute path, file://, http:// or https:// URL."`
	Checksum string `json:"checksum,omitempty" jsonschema:"pattern=^(sha256:)?[0-9a-fA-F]{64}$" jsonschema_description:"sha256:<hex>; verified before every boot."`
	Format   string `json:"format,omitempty" jsonschema:"enum=raw,enum=qcow2,enum=ext4,enum=xfs,enum=btrfs" jsonschema_description:"Image format raw or qcow2 (default raw). A filesystem name here means a raw image of that filesystem."`
	FSType   string `json:"fstype,omitempty" jsonschema:"enum=ext4,enum=xfs,enum=btrfs,enum=squashfs" jsonschema_description:"Filesystem on the image. Default ext4."`
}

// Disk is an extra block device.
type Disk struct {
	Name     string `json:"name" jsonschema_description:"Unique name within the manifest."`
	Source   string `json:"source" jsonschema_description:"Absolute path, file://, http:// or https:// URL of the image."`
	Format   string `json:"format,omitempty" jsonschema:"enum=raw,enum=qcow2" jsonschema_description:"Default raw."`
	Checksum string `json:"checksum,omitempty" jsonschema:"pattern=^(sha256:)?[0-9a-fA-F]{64}$"`
	ReadOnly bool   `json:"readonly,omitempty"`
	Target   string `json:"target,omitempty" jsonschema_description:"Absolute mount point in the guest; empty leaves it unmounted."`
}

// Resources are a VM's defaults; a create request may override them.
type Resources struct {
	CPUCores int `json:"cpu_cores,omitempty" jsonschema:"minimum=1,maximum=64" jsonschema_description:"vCPUs. Default 1."`
	MemoryMB int `json:"memory_mb,omitempty" jsonschema:"minimum=64,maximum=262144" jsonschema_description:"Guest memory in MiB. Default 128."`
}

// Workload is what kestrel starts inside the guest.
type Workload struct {
	Type       string            `json:"type,omitempty" jsonschema:"enum=http,enum=exec" jsonschema_description:"http (serves base_url) or exec (a plain process). Default http when base_url is set, else exec."`
	Entrypoint []string          `json:"entrypoint" jsonschema:"minItems=1" jsonschema_description:"Program and arguments."`
	BaseURL    string            `json:"base_url,omitempty" jsonschema_description:"Where the workload listens inside the guest, e.g. http://127.0.0.1:80."`
	Env        map[string]string `json:"env,omitempty"`
	Workdir    string            `json:"workdir,omitempty" jsonschema_description:"Absolute working directory. Default /."`
	User       string            `json:"user,omitempty" jsonschema_description:"uid[:gid] to run as (numeric). Default 0:0."`
	Restart    string            `json:"restart,omitempty" jsonschema:"enum=no,enum=on-failure,enum=always" jsonschema_description:"Restart policy. Default on-failure."`
}

// Console is what the guest's serial console offers besides output.
type Console struct {
	// Shell is run by kestrel on the serial console, as root, so that an
	// attached console (volar vms console) is interactive.
	Shell string `json:"shell,omitempty" jsonschema_description:"Absolute path of a shell in the guest that kestrel runs on the serial console, as root, respawned when it exits (volar vms console is then interactive). Empty, the default: the console is output only. A VM's kernel argument volant.console_shell=PATH|off overrides it."`
}

// HealthCheck is kestrel's periodic probe.
type HealthCheck struct {
	Endpoint   string `json:"endpoint,omitempty" jsonschema_description:"Path probed on base_url. Default /."`
	IntervalMS int    `json:"interval_ms,omitempty" jsonschema:"minimum=100" jsonschema_description:"Time between probes. Default 5000."`
	TimeoutMS  int    `json:"timeout_ms,omitempty" jsonschema:"minimum=10" jsonschema_description:"Per-probe timeout. Default 2000."`
	Retries    int    `json:"retries,omitempty" jsonschema:"minimum=1" jsonschema_description:"Consecutive failures before unhealthy. Default 3."`
}

// Action is a named call into the workload.
type Action struct {
	Description string `json:"description,omitempty"`
	Method      string `json:"method,omitempty" jsonschema:"enum=GET,enum=POST,enum=PUT,enum=PATCH,enum=DELETE,enum=get,enum=post,enum=put,enum=patch,enum=delete" jsonschema_description:"HTTP method, case-insensitive. Default POST."`
	Path        string `json:"path" jsonschema_description:"Path on base_url, starting with /."`
	TimeoutMS   int    `json:"timeout_ms,omitempty" jsonschema_description:"Default 30000."`
}

// Network is the VM's network attachment.
type Network struct {
	Mode string `json:"mode,omitempty" jsonschema:"enum=bridged,enum=none" jsonschema_description:"bridged: a tap on the host bridge with a leased address. none: no NIC."`
	// AgentPort is where kestrel serves its API in the guest. It must not
	// be a port the workload listens on.
	AgentPort int `json:"agent_port,omitempty" jsonschema:"minimum=1,maximum=65535" jsonschema_description:"TCP port of kestrel's API in the guest. Default 8080, or the next free port above it when workload.base_url uses 8080."`
}

// IsEnabled reports the effective enabled flag (default true).
func (m *Manifest) IsEnabled() bool { return m.Enabled == nil || *m.Enabled }

// Parse decodes a manifest strictly, normalizes and validates it. Every
// problem found is reported in one INVALID_MANIFEST error whose details hold
// {"errors":[{"field":"workload.entrypoint","message":"..."}...]}.
func Parse(data []byte) (*Manifest, error) {
	m, err := Decode(data)
	if err != nil {
		return nil, err
	}
	m.Normalize()
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return m, nil
}

// Decode decodes JSON strictly without normalizing or validating: unknown
// fields anywhere, wrong types and syntax errors are INVALID_MANIFEST errors
// naming the field (or the line and column).
func Decode(data []byte) (*Manifest, error) {
	if len(data) > MaxBytes {
		return nil, apierr.New(apierr.TooLarge, "manifest is %d bytes; the limit is %d", len(data), MaxBytes)
	}
	var m Manifest
	err := json.Unmarshal(data, &m)
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return nil, invalid(syntaxProblem(data, err))
	}
	// The syntax is valid: Unmarshal checks all of it before it decodes.
	t := reflect.TypeFor[Manifest]()
	s := keyScan{data: data}
	start := skipSpace(data, 0)
	s.value(start, t)
	if s.overflow != "" {
		return nil, invalid([]Problem{{Message: "must be a number, not number " + s.overflow}})
	}
	if start >= len(data) || data[start] != '{' {
		return nil, invalid([]Problem{{Field: "", Message: "a manifest is a JSON object"}})
	}
	var probs []Problem
	if s.unknown {
		probs = unknownKeys(data, start, t, "")
	}
	if err != nil {
		probs = append(probs, syntaxProblem(data, err)...)
	}
	if len(probs) > 0 {
		return nil, invalid(probs)
	}
	return &m, nil
}

// Problem is one validation failure.
type Problem struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

func (p Problem) String() string {
	if p.Field == "" {
		return p.Message
	}
	return p.Field + ": " + p.Message
}

// Problems extracts the problem list from an INVALID_MANIFEST error.
func Problems(err error) []Problem {
	var e *apierr.Error
	if !errors.As(err, &e) {
		return nil
	}
	p, _ := e.Details["errors"].([]Problem)
	return p
}

func invalid(probs []Problem) error {
	msgs := make([]string, len(probs))
	for i, p := range probs {
		msgs[i] = p.String()
	}
	noun := "problem"
	if len(probs) != 1 {
		noun = "problems"
	}
	return apierr.New(apierr.InvalidManifest, "invalid manifest (%d %s): %s", len(probs), noun, strings.Join(msgs, "; ")).
		With("errors", probs)
}

func syntaxProblem(data []byte, err error) []Problem {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		line, col := lineCol(data, se.Offset)
		return []Problem{{Message: fmt.Sprintf("JSON syntax error at line %d, column %d: %s", line, col, se.Error())}}
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return []Problem{{Field: te.Field, Message: fmt.Sprintf("must be %s, not %s", jsonKind(te.Type), te.Value)}}
	}
	return []Problem{{Message: strings.TrimPrefix(err.Error(), "json: ")}}
}

func lineCol(data []byte, off int64) (int, int) {
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	before := data[:off]
	line := bytes.Count(before, []byte("\n")) + 1
	col := int(off) - bytes.LastIndexByte(before, '\n')
	return line, col - 1
}

func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Uint, reflect.Uint64, reflect.Float64:
		return "a number"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice:
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	case reflect.Pointer:
		return jsonKind(t.Elem())
	}
	return t.String()
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

// suggest names a known field the key likely misspells.
func suggest(k string, fields map[string]reflect.Type) string {
	names := make([]string, 0, len(fields))
	for f := range fields {
		names = append(names, f)
	}
	if best, ok := didyoumean.Closest(k, names); ok {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	return ""
}

// JSON encodes the manifest compactly, as stored and as carried to the guest.
func (m *Manifest) JSON() ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encoding manifest %s: %w", m.Name, err)
	}
	return b, nil
}

// Encode returns base64url(gzip(json)) without padding. The gzip stream has
// no name or time in its header, so equal manifests encode to equal strings.
func (m *Manifest) Encode() (string, error) {
	b, err := m.JSON()
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return "", fmt.Errorf("compressing manifest: %w", err)
	}
	if _, err := zw.Write(b); err != nil {
		return "", fmt.Errorf("compressing manifest: %w", err)
	}
	if err := zw.Close(); err != nil {
		return "", fmt.Errorf("compressing manifest: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(buf.Bytes()), nil
}

// DecodeString reverses Encode and parses (normalizes, validates) the result.
// Padding and surrounding whitespace are tolerated.
func DecodeString(s string) (*Manifest, error) {
	s = strings.TrimRight(strings.TrimSpace(s), "=")
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, apierr.Wrap(apierr.InvalidInput, err, "encoded manifest is not base64url")
	}
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		return nil, apierr.Wrap(apierr.InvalidInput, err, "encoded manifest is not gzip data")
	}
	data, err := io.ReadAll(io.LimitReader(zr, MaxBytes+1))
	if err != nil {
		return nil, apierr.Wrap(apierr.InvalidInput, err, "decompressing manifest")
	}
	if len(data) > MaxBytes {
		return nil, apierr.New(apierr.TooLarge, "decoded manifest exceeds %d bytes", MaxBytes)
	}
	return Parse(data)
}

// ParseInput is Parse for what a command receives: a manifest, or the
// result of `volant-manifest decode` or `validate`, whose "manifest" field
// is used (so `volant-manifest decode X | volant-manifest cmdline` composes).
func ParseInput(data []byte) (*Manifest, error) {
	var probe struct {
		Kind     string          `json:"kind"`
		Manifest json.RawMessage `json:"manifest"`
	}
	if json.Unmarshal(data, &probe) == nil && probe.Kind != "" {
		if len(probe.Manifest) == 0 {
			return nil, apierr.New(apierr.InvalidInput, "input is a %q result without a manifest field", probe.Kind)
		}
		data = probe.Manifest
	}
	return Parse(data)
}
