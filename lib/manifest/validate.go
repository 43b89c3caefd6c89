package manifest

import (
	"fmt"
	"net/url"
	"path"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/volantvm/volant/lib/names"
)

// Bounds of a VM's resources: the manifest's, and every override of them
// (lib/launch applies the same to a spec's cpus and memory_mb).
const (
	MaxCPUCores = 64
	MinMemoryMB = 64
	MaxMemoryMB = 262144 // 256 GiB
)

// Defaults applied by Normalize.
const (
	DefaultCPUCores    = 1
	DefaultMemoryMB    = 128
	DefaultIntervalMS  = 5000
	DefaultTimeoutMS   = 2000
	DefaultRetries     = 3
	DefaultActionMS    = 30000
	DefaultRestart     = "on-failure"
	DefaultNetworkMode = "bridged"
	DefaultFSType      = "ext4"
	// DefaultAgentPort is kestrel's API port in the guest (the spec's 8080).
	DefaultAgentPort = 8080
)

// The syntax checks below are small hand-written matchers, not regular
// expressions: compiling even these few patterns (and the unicode tables
// package regexp brings in) runs at the start of every program that
// imports this package, kestrel in the guest included, where under
// software emulation every first-run instruction is translated.

// isChecksum reports whether s is "sha256:" and 64 lowercase hex digits.
func isChecksum(s string) bool {
	h, ok := strings.CutPrefix(s, "sha256:")
	return ok && len(h) == 64 && strings.IndexFunc(h, func(r rune) bool { return !('0' <= r && r <= '9' || 'a' <= r && r <= 'f') }) < 0
}

// isHex64 reports whether s is 64 hex digits of either case.
func isHex64(s string) bool {
	return len(s) == 64 && strings.IndexFunc(s, func(r rune) bool {
		return !('0' <= r && r <= '9' || 'a' <= r && r <= 'f' || 'A' <= r && r <= 'F')
	}) < 0
}

func isAlnum(b byte) bool {
	return '0' <= b && b <= '9' || 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z'
}

// isLabelKey: a letter or digit, then letters, digits and ._/- (the
// length is bounded at the call).
func isLabelKey(s string) bool {
	if s == "" || !isAlnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '.' && c != '_' && c != '/' && c != '-' {
			return false
		}
	}
	return true
}

// isEnvKey: a letter or underscore, then letters, digits and underscores.
func isEnvKey(s string) bool {
	if s == "" || !(isAlnum(s[0]) && !('0' <= s[0] && s[0] <= '9') || s[0] == '_') {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '_' {
			return false
		}
	}
	return true
}

// isUser: a numeric uid, or uid:gid.
func isUser(s string) bool {
	digits := func(t string) bool {
		return t != "" && strings.IndexFunc(t, func(r rune) bool { return r < '0' || r > '9' }) < 0
	}
	uid, gid, hasGID := strings.Cut(s, ":")
	return digits(uid) && (!hasGID || digits(gid))
}

var filesystems = map[string]bool{"ext4": true, "xfs": true, "btrfs": true, "squashfs": true}

// Normalize fills documented defaults and canonical spellings in place. It
// never rejects anything; Validate does that afterwards.
func (m *Manifest) Normalize() {
	if m.SchemaVersion == "" || m.SchemaVersion == "1" {
		m.SchemaVersion = SchemaVersion
	}
	if m.Runtime == "" {
		m.Runtime = m.Name
	}
	if m.Enabled == nil {
		t := true
		m.Enabled = &t
	}
	if m.Initramfs != nil {
		m.Initramfs.Checksum = normChecksum(m.Initramfs.Checksum)
	}
	if r := m.Rootfs; r != nil {
		r.Checksum = normChecksum(r.Checksum)
		r.Format = strings.ToLower(r.Format)
		if filesystems[r.Format] {
			if r.FSType == "" {
				r.FSType = r.Format
			}
			r.Format = "raw"
		}
		if r.Format == "" {
			r.Format = "raw"
		}
		if r.FSType == "" {
			r.FSType = DefaultFSType
		}
	}
	for i := range m.Disks {
		d := &m.Disks[i]
		d.Checksum = normChecksum(d.Checksum)
		d.Format = strings.ToLower(d.Format)
		if d.Format == "" {
			d.Format = "raw"
		}
	}
	if m.Resources.CPUCores == 0 {
		m.Resources.CPUCores = DefaultCPUCores
	}
	if m.Resources.MemoryMB == 0 {
		m.Resources.MemoryMB = DefaultMemoryMB
	}
	w := &m.Workload
	if w.Type == "" {
		w.Type = "exec"
		if w.BaseURL != "" {
			w.Type = "http"
		}
	}
	if w.Restart == "" {
		w.Restart = DefaultRestart
	}
	if w.Workdir == "" {
		w.Workdir = "/"
	}
	if h := m.HealthCheck; h != nil {
		if h.Endpoint == "" {
			h.Endpoint = "/"
		}
		if h.IntervalMS == 0 {
			h.IntervalMS = DefaultIntervalMS
		}
		if h.TimeoutMS == 0 {
			h.TimeoutMS = DefaultTimeoutMS
		}
		if h.Retries == 0 {
			h.Retries = DefaultRetries
		}
	}
	for name, a := range m.Actions {
		a.Method = strings.ToUpper(a.Method)
		if a.Method == "" {
			a.Method = "POST"
		}
		if a.TimeoutMS == 0 {
			a.TimeoutMS = DefaultActionMS
		}
		m.Actions[name] = a
	}
	if m.Network == nil {
		m.Network = &Network{}
	}
	// Empty collections become nil, so a manifest and its encoding agree
	// ("disks": [] is omitted when encoded).
	if len(m.Disks) == 0 {
		m.Disks = nil
	}
	if len(m.Actions) == 0 {
		m.Actions = nil
	}
	if len(m.Labels) == 0 {
		m.Labels = nil
	}
	if len(w.Env) == 0 {
		w.Env = nil
	}
	if m.Network.Mode == "" {
		m.Network.Mode = DefaultNetworkMode
	}
	if m.Network.AgentPort == 0 {
		m.Network.AgentPort = DefaultAgentPort
		if p := urlPort(w.BaseURL); p == DefaultAgentPort {
			m.Network.AgentPort = DefaultAgentPort + 1
		}
	}
}

func normChecksum(c string) string {
	c = strings.TrimSpace(c)
	if isHex64(c) {
		return "sha256:" + strings.ToLower(c)
	}
	if h, ok := strings.CutPrefix(c, "sha256:"); ok {
		return "sha256:" + strings.ToLower(h)
	}
	return c
}

// Validate checks a normalized manifest and reports every problem at once as
// an INVALID_MANIFEST error (see Problems).
func (m *Manifest) Validate() error {
	var v validator
	v.check(m.SchemaVersion == SchemaVersion, "schema_version", "must be %q, got %q", SchemaVersion, m.SchemaVersion)
	v.name("name", m.Name)
	// A version becomes a directory name, part of URL paths and of what
	// volar prints: one word of a few safe characters (names.ValidVersion).
	if m.Version == "" {
		v.add("version", "required")
	} else {
		v.check(names.ValidVersion(m.Version), "version", "%q: %s", m.Version, names.VersionRule)
	}
	if m.Runtime != m.Name {
		v.name("runtime", m.Runtime)
	}
	// Free text that volar and logs print: no control characters (an
	// escape sequence would drive the reader's terminal).
	v.text("image", m.Image)
	v.text("image_digest", m.ImageDigest)

	switch {
	case m.Initramfs == nil && m.Rootfs == nil:
		v.add("", "one of initramfs or rootfs is required")
	case m.Initramfs != nil && m.Rootfs != nil:
		v.add("", "initramfs and rootfs are exclusive; give one")
	}
	if a := m.Initramfs; a != nil {
		v.location("initramfs.url", a.URL)
		v.text("initramfs.url", a.URL)
		v.checksum("initramfs.checksum", a.Checksum)
	}
	if r := m.Rootfs; r != nil {
		v.location("rootfs.url", r.URL)
		v.text("rootfs.url", r.URL)
		v.checksum("rootfs.checksum", r.Checksum)
		v.oneOf("rootfs.format", r.Format, "raw", "qcow2")
		v.oneOf("rootfs.fstype", r.FSType, "ext4", "xfs", "btrfs", "squashfs")
	}
	seenDisk := map[string]bool{}
	for i, d := range m.Disks {
		p := "disks[" + strconv.Itoa(i) + "]"
		v.name(p+".name", d.Name)
		v.check(!seenDisk[d.Name], p+".name", "duplicate disk name %q", d.Name)
		seenDisk[d.Name] = true
		v.location(p+".source", d.Source)
		v.text(p+".source", d.Source)
		v.checksum(p+".checksum", d.Checksum)
		v.oneOf(p+".format", d.Format, "raw", "qcow2")
		if d.Target != "" {
			v.absPath(p+".target", d.Target)
			v.text(p+".target", d.Target)
		}
	}

	v.check(m.Resources.CPUCores >= 1 && m.Resources.CPUCores <= MaxCPUCores, "resources.cpu_cores", "must be between 1 and %d, got %d", MaxCPUCores, m.Resources.CPUCores)
	v.check(m.Resources.MemoryMB >= MinMemoryMB && m.Resources.MemoryMB <= MaxMemoryMB, "resources.memory_mb", "must be between %d and %d, got %d", MinMemoryMB, MaxMemoryMB, m.Resources.MemoryMB)

	w := m.Workload
	v.oneOf("workload.type", w.Type, "http", "exec")
	if len(w.Entrypoint) == 0 {
		v.add("workload.entrypoint", "required: the program to run and its arguments")
	} else {
		v.check(strings.TrimSpace(w.Entrypoint[0]) != "", "workload.entrypoint[0]", "the program must not be empty")
		for i, a := range w.Entrypoint {
			v.arg("workload.entrypoint["+strconv.Itoa(i)+"]", a)
		}
	}
	if w.Type == "http" || w.BaseURL != "" {
		v.httpURL("workload.base_url", w.BaseURL)
		v.text("workload.base_url", w.BaseURL)
	}
	for _, k := range sortedKeys(w.Env) {
		v.check(isEnvKey(k), "workload.env."+k, "not a valid environment variable name")
	}
	v.absPath("workload.workdir", w.Workdir)
	v.text("workload.workdir", w.Workdir)
	if w.User != "" {
		v.check(isUser(w.User), "workload.user", "must be numeric uid or uid:gid, got %q", w.User)
	}
	v.oneOf("workload.restart", w.Restart, "no", "on-failure", "always")

	if h := m.HealthCheck; h != nil {
		v.check(strings.HasPrefix(h.Endpoint, "/"), "health_check.endpoint", "must be a path starting with /, got %q", h.Endpoint)
		v.text("health_check.endpoint", h.Endpoint)
		v.check(w.BaseURL != "", "health_check", "needs workload.base_url to probe")
		v.check(h.IntervalMS >= 100, "health_check.interval_ms", "must be at least 100, got %d", h.IntervalMS)
		v.check(h.TimeoutMS >= 10 && h.TimeoutMS <= 60000, "health_check.timeout_ms", "must be between 10 and 60000, got %d", h.TimeoutMS)
		v.check(h.Retries >= 1 && h.Retries <= 100, "health_check.retries", "must be between 1 and 100, got %d", h.Retries)
	}
	for _, name := range sortedKeys(m.Actions) {
		a := m.Actions[name]
		p := "actions." + name
		v.check(names.Valid(name), p, "action names: %s", names.Rule)
		v.oneOf(p+".method", a.Method, "GET", "POST", "PUT", "PATCH", "DELETE")
		v.check(strings.HasPrefix(a.Path, "/"), p+".path", "must start with /, got %q", a.Path)
		v.text(p+".path", a.Path)
		v.text(p+".description", a.Description)
		v.check(a.TimeoutMS > 0, p+".timeout_ms", "must be positive")
		v.check(w.BaseURL != "", p, "actions need workload.base_url")
	}
	v.text("openapi", m.OpenAPI)
	if m.Network != nil {
		v.oneOf("network.mode", m.Network.Mode, "bridged", "none")
		p := m.Network.AgentPort
		v.check(p >= 1 && p <= 65535, "network.agent_port", "must be 1-65535, got %d", p)
		v.check(p != urlPort(w.BaseURL), "network.agent_port", "%d is also the port of workload.base_url; kestrel and the workload cannot both listen there", p)
	}
	if m.Console != nil && m.Console.Shell != "" {
		v.absPath("console.shell", m.Console.Shell)
		v.check(!strings.ContainsFunc(m.Console.Shell, unicode.IsControl) && !strings.ContainsAny(m.Console.Shell, " \t"),
			"console.shell", "must be a path without spaces or control characters, as volant.console_shell takes it")
	}
	for _, k := range sortedKeys(m.Labels) {
		v.check(len(k) <= 63 && isLabelKey(k), "labels."+k, "label keys use letters, digits and ._/- (at most 63)")
		v.check(len(m.Labels[k]) <= 256, "labels."+k, "value longer than 256 characters")
		v.text("labels."+k, m.Labels[k])
	}
	if sec := m.Secrets; sec != nil {
		v.check(len(sec.Env)+len(sec.Files) <= MaxSecrets, "secrets", "%d secrets; at most %d", len(sec.Env)+len(sec.Files), MaxSecrets)
		seen := map[string]bool{}
		for i, k := range sec.Env {
			f := "secrets.env[" + strconv.Itoa(i) + "]"
			v.check(isEnvKey(k), f, "%q is not a valid environment variable name", k)
			v.check(!seen[k], f, "%s is named twice", k)
			seen[k] = true
			_, inEnv := w.Env[k]
			v.check(!inEnv, f, "%s is also in workload.env: a secret's value comes with each VM's inputs, never in the manifest", k)
		}
		for i, p := range sec.Files {
			f := "secrets.files[" + strconv.Itoa(i) + "]"
			v.check(path.IsAbs(p) && path.Clean(p) == p && p != "/", f, "%q must be a clean absolute path other than /", p)
			v.check(len(p) <= MaxGuestPath, f, "a path of %d bytes; at most %d", len(p), MaxGuestPath)
			v.text(f, p)
			v.check(!seen[p], f, "%s is named twice", p)
			seen[p] = true
		}
	}
	if len(v.probs) > 0 {
		return invalid(v.probs)
	}
	return nil
}

// MaxSecrets bounds the secrets a manifest names (env and files together).
const MaxSecrets = 64

// MaxGuestPath bounds a path in the guest that a manifest or a create
// request names (a secret file's): the guest kernel's PATH_MAX, 4096
// bytes with the terminating NUL.
const MaxGuestPath = 4095

// MissingSecrets lists the secrets m names that in does not give: env
// names missing from env, file paths missing from files.
func (m *Manifest) MissingSecrets(env map[string]string, files []string) (missingEnv, missingFiles []string) {
	if m.Secrets == nil {
		return nil, nil
	}
	for _, k := range m.Secrets.Env {
		if _, ok := env[k]; !ok {
			missingEnv = append(missingEnv, k)
		}
	}
	have := map[string]bool{}
	for _, f := range files {
		have[f] = true
	}
	for _, f := range m.Secrets.Files {
		if !have[f] {
			missingFiles = append(missingFiles, f)
		}
	}
	return missingEnv, missingFiles
}

type validator struct{ probs []Problem }

func (v *validator) add(field, format string, args ...any) {
	v.probs = append(v.probs, Problem{Field: field, Message: fmt.Sprintf(format, args...)})
}

func (v *validator) check(ok bool, field, format string, args ...any) {
	if !ok {
		v.add(field, format, args...)
	}
}

func (v *validator) name(field, s string) {
	if s == "" {
		v.add(field, "required")
		return
	}
	v.check(names.Valid(s), field, "%q: %s", s, names.Rule)
}

// text refuses control characters (C0, DEL, C1) in a free-text field.
func (v *validator) text(field, s string) {
	if i := strings.IndexFunc(s, unicode.IsControl); i >= 0 {
		r, _ := utf8.DecodeRuneInString(s[i:])
		v.add(field, "must not contain control characters (%U at byte %d)", r, i)
	}
}

// arg is text for a program argument: a shell script given to `sh -c`
// may hold tabs and line breaks, so those are allowed; every other control
// character (an escape sequence, a bell) is refused as in text. volar
// quotes arguments that hold line breaks when it prints them.
func (v *validator) arg(field, s string) {
	isControl := func(r rune) bool { return unicode.IsControl(r) && r != '\t' && r != '\n' && r != '\r' }
	if i := strings.IndexFunc(s, isControl); i >= 0 {
		r, _ := utf8.DecodeRuneInString(s[i:])
		v.add(field, "must not contain control characters other than tab and line breaks (%U at byte %d)", r, i)
	}
}

func (v *validator) oneOf(field, s string, allowed ...string) {
	for _, a := range allowed {
		if s == a {
			return
		}
	}
	v.add(field, "must be one of %s, got %q", strings.Join(allowed, ", "), s)
}

func (v *validator) checksum(field, s string) {
	if s != "" {
		v.check(isChecksum(s), field, "must be sha256:<64 hex digits>, got %q", s)
	}
}

func (v *validator) absPath(field, p string) {
	v.check(path.IsAbs(p), field, "must be an absolute path, got %q", p)
}

// location accepts an absolute path or a file/http/https URL.
func (v *validator) location(field, s string) {
	if s == "" {
		v.add(field, "required")
		return
	}
	if path.IsAbs(s) {
		return
	}
	u, err := url.Parse(s)
	if err != nil {
		v.add(field, "not a URL: %v", err)
		return
	}
	switch u.Scheme {
	case "file":
		v.check(path.IsAbs(u.Path), field, "file URL must carry an absolute path, got %q", s)
	case "http", "https":
		v.check(u.Host != "", field, "URL has no host: %q", s)
	default:
		v.add(field, "must be an absolute path or a file://, http:// or https:// URL, got %q", s)
	}
}

func (v *validator) httpURL(field, s string) {
	if s == "" {
		v.add(field, "required for http workloads, e.g. http://127.0.0.1:8000")
		return
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		v.add(field, "must be an http:// or https:// URL with a host, got %q", s)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// urlPort is the TCP port of an http(s) URL (explicit or the scheme's), or 0.
func urlPort(s string) int {
	u, err := url.Parse(s)
	if err != nil || s == "" {
		return 0
	}
	if p := u.Port(); p != "" {
		n, _ := strconv.Atoi(p)
		return n
	}
	switch u.Scheme {
	case "http":
		return 80
	case "https":
		return 443
	}
	return 0
}

// AgentPort is kestrel's API port for this manifest.
func (m *Manifest) AgentPort() int {
	if m.Network != nil && m.Network.AgentPort != 0 {
		return m.Network.AgentPort
	}
	return DefaultAgentPort
}

// LocalPath returns the filesystem path of an artifact location given as an
// absolute path or a file:// URL, and false for remote URLs.
func LocalPath(location string) (string, bool) {
	if path.IsAbs(location) {
		return location, true
	}
	u, err := url.Parse(location)
	if err != nil || u.Scheme != "file" {
		return "", false
	}
	return u.Path, true
}
