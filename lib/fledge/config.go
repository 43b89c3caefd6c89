package fledge

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"unicode"

	"github.com/BurntSushi/toml"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/didyoumean"
)

// Strategies.
const (
	StrategyOCIRootfs = "oci_rootfs"
	StrategyInitramfs = "initramfs"
)

// DefaultBusybox is where Debian's busybox-static installs busybox.
const DefaultBusybox = "/bin/busybox"

// Config is a fledge.toml file (format version "1"). The build keys follow
// the original Volant fledge format (version, strategy, [agent], [init],
// [source], [filesystem], [mappings]); the plugin's manifest fields live in
// [plugin], [workload], [health_check], [resources], [network], [console],
// [actions], [labels] and [secrets], named as in the manifest JSON.
type Config struct {
	Version     string            `toml:"version"`
	Strategy    string            `toml:"strategy"`
	Plugin      Plugin            `toml:"plugin"`
	Agent       *Agent            `toml:"agent"`
	Init        *Init             `toml:"init"`
	Source      Source            `toml:"source"`
	Filesystem  *Filesystem       `toml:"filesystem"`
	Mappings    map[string]string `toml:"mappings"`
	Workload    Workload          `toml:"workload"`
	HealthCheck *HealthCheck      `toml:"health_check"`
	Resources   Resources         `toml:"resources"`
	Network     *Network          `toml:"network"`
	Console     *Console          `toml:"console"`
	Actions     map[string]Action `toml:"actions"`
	Labels      map[string]string `toml:"labels"`
	Secrets     *Secrets          `toml:"secrets"`

	// Dir is the absolute folder of the file: relative paths resolve
	// against it and mapping sources must stay inside it.
	Dir string `toml:"-"`
	// File is the absolute path of the file.
	File string `toml:"-"`
}

// Plugin names the plugin.
type Plugin struct {
	// Name defaults to the image's repository name (oci_rootfs) or the
	// folder of fledge.toml (initramfs).
	Name string `toml:"name"`
	// Version defaults to the image tag when that is a valid version
	// (names.ValidVersion), else "0.0.0".
	Version string `toml:"version"`
	Runtime string `toml:"runtime"`
	Enabled *bool  `toml:"enabled"`
	OpenAPI string `toml:"openapi"`
}

// Agent says where kestrel comes from.
type Agent struct {
	// Local is the path of a kestrel binary (relative to fledge.toml).
	Local string `toml:"local"`
	// SourceStrategy and Path are the original format's spelling of the
	// same: source_strategy = "local", path = "...". The "release" and
	// "http" strategies of the original are not supported.
	SourceStrategy string `toml:"source_strategy"`
	Path           string `toml:"path"`
	Version        string `toml:"version"`
	URL            string `toml:"url"`
	Checksum       string `toml:"checksum"`
}

// Init chooses the initramfs's /init.
type Init struct {
	// Path is a program (relative to fledge.toml, inside its folder)
	// copied to /init instead of kestrel.
	Path string `toml:"path"`
	// None: the mappings provide /init; no agent is added.
	None bool `toml:"none"`
}

// Source is what the build starts from.
type Source struct {
	// Image (oci_rootfs) is an image reference with a containers/image
	// transport; a plain name:tag means docker://.
	Image string `toml:"image"`
	// Insecure allows plain HTTP and unverified TLS registries.
	Insecure bool `toml:"insecure"`
	// SignaturePolicy is a containers-policy.json file to enforce; by
	// default any image is accepted (digests are always verified).
	SignaturePolicy string `toml:"signature_policy"`
	// AuthFile holds registry credentials (auth.json format).
	AuthFile string `toml:"auth_file"`

	// Busybox (initramfs) is the busybox binary; default /bin/busybox
	// (Debian's busybox-static).
	Busybox string `toml:"busybox"`
	// BusyboxURL (original format) fetches busybox over http(s) or
	// file://; BusyboxSHA256 checks it (and a local Busybox too).
	BusyboxURL    string `toml:"busybox_url"`
	BusyboxSHA256 string `toml:"busybox_sha256"`
}

// Filesystem is the root disk of an oci_rootfs plugin.
type Filesystem struct {
	Type string `toml:"type"`
	// SizeBufferMB is the free space beyond the content; 0 means
	// automatic (a tenth of the content, at least 8 MiB).
	SizeBufferMB int `toml:"size_buffer_mb"`
	// Preallocate is accepted for compatibility; images are always
	// sparse files.
	Preallocate bool `toml:"preallocate"`
}

// Workload is the manifest's workload. Entrypoint is a list, or a string
// (the original manifest.toml form) to which Args are appended.
type Workload struct {
	Type       string            `toml:"type"`
	Entrypoint StringList        `toml:"entrypoint"`
	Args       []string          `toml:"args"`
	BaseURL    string            `toml:"base_url"`
	Env        map[string]string `toml:"env"`
	Workdir    string            `toml:"workdir"`
	User       string            `toml:"user"`
	Restart    string            `toml:"restart"`
}

// HealthCheck is the manifest's health_check.
type HealthCheck struct {
	Endpoint   string `toml:"endpoint"`
	IntervalMS int    `toml:"interval_ms"`
	TimeoutMS  int    `toml:"timeout_ms"`
	Retries    int    `toml:"retries"`
}

// Resources are the manifest's resources.
type Resources struct {
	CPUCores int `toml:"cpu_cores"`
	MemoryMB int `toml:"memory_mb"`
}

// Network is the manifest's network.
type Network struct {
	Mode      string `toml:"mode"`
	AgentPort int    `toml:"agent_port"`
}

// Console is the manifest's console: Shell is a shell in the guest that
// kestrel runs on the serial console (empty: the console is output only).
type Console struct {
	Shell string `toml:"shell"`
}

// Secrets is the manifest's secrets: the names of the env variables and
// guest files each VM's create request must give (never their values).
type Secrets struct {
	Env   []string `toml:"env"`
	Files []string `toml:"files"`
}

// Action is one of the manifest's actions.
type Action struct {
	Description string `toml:"description"`
	Method      string `toml:"method"`
	Path        string `toml:"path"`
	TimeoutMS   int    `toml:"timeout_ms"`
}

// StringList decodes from a TOML string or array of strings.
type StringList []string

// UnmarshalTOML implements toml.Unmarshaler.
func (s *StringList) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case string:
		*s = StringList{v}
	case []any:
		out := make(StringList, 0, len(v))
		for i, e := range v {
			str, ok := e.(string)
			if !ok {
				return fmt.Errorf("element %d must be a string, not %T", i, e)
			}
			out = append(out, str)
		}
		*s = out
	default:
		return fmt.Errorf("must be a string or an array of strings, not %T", v)
	}
	return nil
}

// Problem is one thing wrong with a fledge.toml.
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

// Problems extracts the problem list from an error of Load or Parse.
func Problems(err error) []Problem {
	var e *apierr.Error
	if !errors.As(err, &e) {
		return nil
	}
	p, _ := e.Details["errors"].([]Problem)
	return p
}

func invalid(file string, probs []Problem) error {
	msgs := make([]string, len(probs))
	for i, p := range probs {
		msgs[i] = p.String()
	}
	noun := "problem"
	if len(probs) != 1 {
		noun = "problems"
	}
	e := apierr.New(apierr.InvalidInput, "invalid %s (%d %s): %s", path.Base(file), len(probs), noun, strings.Join(msgs, "; ")).
		With("errors", probs)
	if file != "" {
		e.With("file", file)
	}
	return e
}

// Load reads and checks a fledge.toml.
func Load(file string) (*Config, error) {
	abs, err := filepath.Abs(file)
	if err != nil {
		return nil, fmt.Errorf("locating %s: %w", file, err)
	}
	data, err := os.ReadFile(abs)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, apierr.Wrap(apierr.NotFound, err, "build configuration "+file+" not found").
				With("hint", "write a fledge.toml (see examples/) or pass -c FILE")
		}
		return nil, fmt.Errorf("reading %s: %w", file, err)
	}
	return Parse(abs, data)
}

// Parse checks a fledge.toml whose absolute path is file. Every problem is
// reported in one INVALID_INPUT error whose details.errors lists them as
// {"field","message"}.
func Parse(file string, data []byte) (*Config, error) {
	var c Config
	md, err := toml.Decode(string(data), &c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			msg := pe.Message
			if msg == "" {
				msg = err.Error()
			}
			return nil, invalid(file, []Problem{{Field: pe.LastKey, Message: fmt.Sprintf("line %d, column %d: %s", pe.Position.Line, pe.Position.Col, msg)}})
		}
		return nil, invalid(file, []Problem{{Message: err.Error()}})
	}
	c.File = file
	c.Dir = filepath.Dir(file)
	var probs []Problem
	for _, k := range md.Undecoded() {
		probs = append(probs, Problem{Field: k.String(), Message: "unknown key" + suggestKey(k)})
	}
	probs = append(probs, c.check()...)
	if len(probs) > 0 {
		return nil, invalid(file, probs)
	}
	return &c, nil
}

// known keys per table, for suggestions.
var knownKeys = map[string][]string{
	"":             {"version", "strategy", "plugin", "agent", "init", "source", "filesystem", "mappings", "workload", "health_check", "resources", "network", "console", "actions", "labels"},
	"plugin":       {"name", "version", "runtime", "enabled", "openapi"},
	"agent":        {"local", "source_strategy", "path", "version", "url", "checksum"},
	"init":         {"path", "none"},
	"source":       {"image", "insecure", "signature_policy", "auth_file", "busybox", "busybox_url", "busybox_sha256"},
	"filesystem":   {"type", "size_buffer_mb", "preallocate"},
	"workload":     {"type", "entrypoint", "args", "base_url", "env", "workdir", "user", "restart"},
	"health_check": {"endpoint", "interval_ms", "timeout_ms", "retries"},
	"resources":    {"cpu_cores", "memory_mb"},
	"network":      {"mode", "agent_port"},
	"console":      {"shell"},
}

func suggestKey(k toml.Key) string {
	if len(k) == 0 {
		return ""
	}
	table := ""
	if len(k) > 1 {
		table = k[0]
	}
	if len(k) > 2 {
		return ""
	}
	last := k[len(k)-1]
	// A manifest-style key at the top level belongs in a table.
	if table == "" {
		switch last {
		case "name", "runtime":
			return fmt.Sprintf(" (did you mean [plugin] %s?)", last)
		case "entrypoint", "base_url", "env":
			return fmt.Sprintf(" (did you mean [workload] %s?)", last)
		case "image", "busybox":
			return fmt.Sprintf(" (did you mean [source] %s?)", last)
		}
	}
	if best, ok := didyoumean.Closest(last, knownKeys[table]); ok {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	return ""
}

// InitMode is how an initramfs starts.
type InitMode string

const (
	InitKestrel InitMode = "kestrel"
	InitCustom  InitMode = "custom"
	InitNone    InitMode = "none"
)

// InitMode reports the configured init mode.
func (c *Config) InitMode() InitMode {
	switch {
	case c.Init == nil:
		return InitKestrel
	case c.Init.None:
		return InitNone
	case c.Init.Path != "":
		return InitCustom
	}
	return InitKestrel
}

func (c *Config) check() []Problem {
	var probs []Problem
	add := func(field, format string, args ...any) {
		probs = append(probs, Problem{Field: field, Message: fmt.Sprintf(format, args...)})
	}
	switch c.Version {
	case "1":
	case "":
		add("version", `required: version = "1"`)
	default:
		add("version", `must be "1", got %q`, c.Version)
	}
	oci, ird := c.Strategy == StrategyOCIRootfs, c.Strategy == StrategyInitramfs
	switch {
	case c.Strategy == "":
		add("strategy", `required: "oci_rootfs" or "initramfs"`)
	case !oci && !ird:
		add("strategy", `must be "oci_rootfs" or "initramfs", got %q`, c.Strategy)
	}

	if oci {
		if strings.TrimSpace(c.Source.Image) == "" {
			add("source.image", "required for oci_rootfs: an image such as docker://nginx:alpine or oci:./layout:tag")
		}
		for field, v := range map[string]string{"source.busybox": c.Source.Busybox, "source.busybox_url": c.Source.BusyboxURL, "source.busybox_sha256": c.Source.BusyboxSHA256} {
			if v != "" {
				add(field, "applies to initramfs builds only")
			}
		}
		if c.Init != nil {
			add("init", "applies to initramfs builds only (rootfs plugins boot kestrel from the boot initramfs)")
		}
		if fs := c.Filesystem; fs != nil {
			switch fs.Type {
			case "", "ext4":
			case "xfs", "btrfs":
				add("filesystem.type", "%s is not supported yet; use ext4", fs.Type)
			default:
				add("filesystem.type", "must be ext4, got %q", fs.Type)
			}
			if fs.SizeBufferMB < 0 {
				add("filesystem.size_buffer_mb", "must be 0 (automatic) or more, got %d", fs.SizeBufferMB)
			}
		}
	}
	if ird {
		if c.Source.Image != "" {
			add("source.image", "applies to oci_rootfs builds only")
		}
		if c.Source.Insecure || c.Source.SignaturePolicy != "" || c.Source.AuthFile != "" {
			add("source", "insecure, signature_policy and auth_file apply to oci_rootfs builds only")
		}
		if c.Source.Busybox != "" && c.Source.BusyboxURL != "" {
			add("source.busybox_url", "give busybox or busybox_url, not both")
		}
		if h := c.Source.BusyboxSHA256; h != "" && !isHex64(strings.TrimPrefix(h, "sha256:")) {
			add("source.busybox_sha256", "must be 64 hex digits, got %q", h)
		}
		if c.Filesystem != nil {
			add("filesystem", "applies to oci_rootfs builds only")
		}
		if in := c.Init; in != nil {
			if in.None && in.Path != "" {
				add("init", "give path or none = true, not both")
			}
			if c.InitMode() != InitKestrel && c.Agent != nil {
				add("agent", "a custom or no init runs no agent; remove [agent]")
			}
		}
	}
	if a := c.Agent; a != nil {
		switch a.SourceStrategy {
		case "", "local":
		case "release", "http":
			add("agent.source_strategy", "%q is not supported: fledge does not download kestrel; use local = \"PATH\" or leave [agent] out to use the kestrel installed next to fledge", a.SourceStrategy)
		default:
			add("agent.source_strategy", `must be "local", got %q`, a.SourceStrategy)
		}
		if a.Local != "" && a.Path != "" && a.Local != a.Path {
			add("agent", "give local or path, not both")
		}
		if a.SourceStrategy == "local" && a.Local == "" && a.Path == "" {
			add("agent.path", `required with source_strategy = "local"`)
		}
	}

	dests := map[string]string{}
	srcs := make([]string, 0, len(c.Mappings))
	for s := range c.Mappings {
		srcs = append(srcs, s)
	}
	sort.Strings(srcs)
	for _, src := range srcs {
		dst := c.Mappings[src]
		field := fmt.Sprintf("mappings.%q", src)
		if strings.TrimSpace(src) == "" {
			add(field, "source path is empty")
		}
		if strings.ContainsRune(src, 0) {
			add(field, "source path contains a NUL byte")
		}
		if msg := checkDest(dst); msg != "" {
			add(field, "%s", msg)
			continue
		}
		clean := path.Clean(dst)
		if other, ok := dests[clean]; ok {
			add(field, "destination %s is also the destination of %q", clean, other)
		}
		dests[clean] = src
	}
	if w := c.Workload; len(w.Args) > 0 && len(w.Entrypoint) == 0 {
		add("workload.args", "needs workload.entrypoint")
	}
	return probs
}

// checkDest explains what is wrong with a mapping destination, or "".
func checkDest(dst string) string {
	switch {
	case dst == "":
		return "destination is empty"
	case !strings.HasPrefix(dst, "/"):
		return fmt.Sprintf("destination %q must be an absolute guest path", dst)
	case path.Clean(dst) == "/":
		return "destination must not be the root directory"
	case strings.ContainsFunc(dst, unicode.IsControl):
		// A NUL would end the name in the archive or the filesystem
		// early; other control characters hide in listings.
		return fmt.Sprintf("destination %q contains a control character", dst)
	}
	for _, seg := range strings.Split(dst, "/") {
		if seg == ".." {
			return fmt.Sprintf("destination %q must not contain ..", dst)
		}
	}
	return ""
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}
