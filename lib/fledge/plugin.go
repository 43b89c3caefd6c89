package fledge

import (
	"bufio"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	securejoin "github.com/cyphar/filepath-securejoin"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/names"
)

// ExposedPortsLabel is the manifest label listing an image's exposed ports
// ("80/tcp,443/tcp").
const ExposedPortsLabel = "fledge.exposed-ports"

// EntrypointLabel and CmdLabel record an image's Entrypoint and Cmd (JSON
// string arrays) when the workload's entrypoint is their concatenation, so
// that a VM can replace either one as Docker and Kubernetes do (command
// replaces the Entrypoint, args the Cmd; see lib/manifest.SplitCommand).
// They are left out when either would be longer than a label may be.
const (
	EntrypointLabel = manifest.EntrypointLabel
	CmdLabel        = manifest.CmdLabel
)

var nameSanitize = regexp.MustCompile(`[^a-z0-9_-]+`)

// sanitizeName turns s into a valid plugin name, or "".
func sanitizeName(s string) string {
	s = strings.Trim(nameSanitize.ReplaceAllString(strings.ToLower(s), "-"), "-_")
	if len(s) > 63 {
		s = strings.TrimRight(s[:63], "-_")
	}
	return s
}

// names returns the plugin name and version: [plugin] name/version, else
// the defaults given (image repository and tag, or the folder name), else
// "plugin" and "0.0.0" when the defaults are no valid name or version. A
// name or version the config gives is kept as it is: the manifest's
// validation refuses it if it breaks the rule.
func (c *Config) names(defName, defVersion string) (string, string) {
	name, version := c.Plugin.Name, c.Plugin.Version
	if name == "" {
		name = sanitizeName(defName)
	}
	if !names.Valid(name) && c.Plugin.Name == "" {
		name = "plugin"
	}
	if version == "" {
		version = defVersion
		if !names.ValidVersion(version) {
			version = "0.0.0"
		}
	}
	return name, version
}

// tomlWorkload is the workload as fledge.toml gives it.
func (c *Config) tomlWorkload() manifest.Workload {
	w := c.Workload
	var ep []string
	if len(w.Entrypoint) > 0 {
		ep = append(append([]string{}, w.Entrypoint...), w.Args...)
	}
	env := map[string]string{}
	for k, v := range w.Env {
		env[k] = v
	}
	if len(env) == 0 {
		env = nil
	}
	return manifest.Workload{Type: w.Type, Entrypoint: ep, BaseURL: w.BaseURL, Env: env, Workdir: w.Workdir, User: w.User, Restart: w.Restart}
}

// manifestFor assembles the plugin manifest around a workload.
func (c *Config) manifestFor(name, version string, w manifest.Workload, labels map[string]string) *manifest.Manifest {
	m := &manifest.Manifest{
		SchemaVersion: manifest.SchemaVersion,
		Name:          name,
		Version:       version,
		Runtime:       c.Plugin.Runtime,
		Enabled:       c.Plugin.Enabled,
		OpenAPI:       c.Plugin.OpenAPI,
		Resources:     manifest.Resources{CPUCores: c.Resources.CPUCores, MemoryMB: c.Resources.MemoryMB},
		Workload:      w,
	}
	if h := c.HealthCheck; h != nil {
		m.HealthCheck = &manifest.HealthCheck{Endpoint: h.Endpoint, IntervalMS: h.IntervalMS, TimeoutMS: h.TimeoutMS, Retries: h.Retries}
	}
	if n := c.Network; n != nil {
		m.Network = &manifest.Network{Mode: n.Mode, AgentPort: n.AgentPort}
	}
	if k := c.Console; k != nil && k.Shell != "" {
		m.Console = &manifest.Console{Shell: k.Shell}
	}
	if s := c.Secrets; s != nil && len(s.Env)+len(s.Files) > 0 {
		m.Secrets = &manifest.Secrets{Env: s.Env, Files: s.Files}
	}
	if len(c.Actions) > 0 {
		m.Actions = map[string]manifest.Action{}
		for k, a := range c.Actions {
			m.Actions[k] = manifest.Action{Description: a.Description, Method: a.Method, Path: a.Path, TimeoutMS: a.TimeoutMS}
		}
	}
	all := map[string]string{}
	for k, v := range labels {
		all[k] = v
	}
	for k, v := range c.Labels {
		all[k] = v
	}
	if len(all) > 0 {
		m.Labels = all
	}
	return m
}

// preflight validates what fledge.toml contributes to the manifest before
// the expensive part of the build, with placeholders for what the build
// will fill in (artifact, and for images the workload's defaults).
func (c *Config) preflight(name, version string) error {
	w := c.tomlWorkload()
	if len(w.Entrypoint) == 0 {
		w.Entrypoint = []string{"/placeholder"}
	}
	if c.Strategy == StrategyOCIRootfs && w.BaseURL == "" && w.Type != "exec" {
		// The image's ExposedPorts may give it; the real manifest is
		// validated again once the image config is merged.
		w.BaseURL = "http://127.0.0.1:1"
	}
	m := c.manifestFor(name, version, w, nil)
	const url = "file:///placeholder"
	if c.Strategy == StrategyOCIRootfs {
		m.Rootfs = &manifest.Rootfs{URL: url}
	} else {
		m.Initramfs = &manifest.Artifact{URL: url}
	}
	m.Normalize()
	if err := m.Validate(); err != nil {
		return manifestError(c, err)
	}
	return nil
}

// manifestError reports manifest problems as fledge.toml problems.
func manifestError(c *Config, err error) error {
	probs := manifest.Problems(err)
	if len(probs) == 0 {
		return err
	}
	out := make([]Problem, len(probs))
	for i, p := range probs {
		f := p.Field
		switch f {
		case "name", "version", "runtime", "openapi", "enabled":
			f = "plugin." + f
		}
		out[i] = Problem{Field: f, Message: p.Message}
	}
	e := invalid(c.File, out)
	if ae, ok := e.(*apierr.Error); ok {
		ae.Message = "the plugin manifest would be invalid: " + ae.Message
	}
	return e
}

// imageWorkload merges an image's config under fledge.toml's workload:
// Entrypoint+Cmd, Env, WorkingDir, User (names resolved in the unpacked
// rootfs) and ExposedPorts (the lowest TCP port becomes base_url unless
// the toml says otherwise; all are listed in a label).
func imageWorkload(toml manifest.Workload, ic ispec.ImageConfig, rootfs string) (manifest.Workload, map[string]string, error) {
	w := toml
	labels := map[string]string{}
	if len(w.Entrypoint) == 0 {
		w.Entrypoint = append(append([]string{}, ic.Entrypoint...), ic.Cmd...)
		for k, v := range manifest.CommandLabels(ic.Entrypoint, ic.Cmd) {
			labels[k] = v
		}
	}
	if len(w.Entrypoint) == 0 {
		return w, nil, apierr.New(apierr.InvalidInput, "the image has no Entrypoint or Cmd").
			With("hint", "set [workload] entrypoint in fledge.toml")
	}
	if len(ic.Env) > 0 {
		env := map[string]string{}
		for _, kv := range ic.Env {
			k, v, _ := strings.Cut(kv, "=")
			if k != "" {
				env[k] = v
			}
		}
		for k, v := range toml.Env {
			env[k] = v
		}
		w.Env = env
	}
	if w.Workdir == "" {
		w.Workdir = ic.WorkingDir
	}
	if w.User == "" && ic.User != "" {
		u, err := resolveUser(rootfs, ic.User)
		if err != nil {
			return w, nil, err
		}
		if u != "0:0" {
			w.User = u
		}
	}
	var ports []string
	lowest := 0
	for p := range ic.ExposedPorts {
		ports = append(ports, p)
		num, proto, _ := strings.Cut(p, "/")
		if proto == "" || proto == "tcp" {
			if n, err := strconv.Atoi(num); err == nil && n > 0 && n < 65536 && (lowest == 0 || n < lowest) {
				lowest = n
			}
		}
	}
	if len(ports) > 0 {
		sort.Strings(ports)
		v := strings.Join(ports, ",")
		if len(v) > 256 {
			v = v[:256]
		}
		labels[ExposedPortsLabel] = v
	}
	if w.BaseURL == "" && w.Type != "exec" && lowest > 0 {
		w.BaseURL = fmt.Sprintf("http://127.0.0.1:%d", lowest)
	}
	return w, labels, nil
}

// agentPortFor picks kestrel's API port for an image: the default 8080
// unless the image exposes it or the workload's base_url uses it, else the
// next port above that neither does. Images exposing 8080 are common, and
// kestrel binding it first would keep the workload from listening.
func agentPortFor(exposed, baseURL string) int {
	taken := map[int]bool{}
	for _, p := range strings.Split(exposed, ",") {
		num, proto, _ := strings.Cut(p, "/")
		if n, err := strconv.Atoi(num); err == nil && (proto == "" || proto == "tcp") {
			taken[n] = true
		}
	}
	if u, err := url.Parse(baseURL); err == nil && u.Port() != "" {
		if n, err := strconv.Atoi(u.Port()); err == nil {
			taken[n] = true
		}
	}
	p := manifest.DefaultAgentPort
	for taken[p] {
		p++
	}
	return p
}

// resolveUser turns an image's User ("1000", "app", "app:staff",
// "1000:50") into the manifest's numeric uid:gid, reading the image's
// /etc/passwd and /etc/group for names. A bare user gets its primary group
// (0 when it is numeric and has no passwd entry, as container runtimes do).
func resolveUser(rootfs, spec string) (string, error) {
	user, group, hasGroup := strings.Cut(spec, ":")
	passwd, err := readColonFile(rootfs, "/etc/passwd")
	if err != nil {
		return "", err
	}
	uid, gid := -1, -1
	if n, err := strconv.Atoi(user); err == nil && n >= 0 {
		uid = n
		gid = 0
		for _, f := range passwd {
			if len(f) >= 4 && f[2] == user {
				if g, err := strconv.Atoi(f[3]); err == nil {
					gid = g
				}
				break
			}
		}
	} else {
		for _, f := range passwd {
			if len(f) >= 4 && f[0] == user {
				uid, _ = strconv.Atoi(f[2])
				gid, _ = strconv.Atoi(f[3])
				break
			}
		}
		if uid < 0 {
			return "", apierr.New(apierr.InvalidInput, "the image's user %q is not in its /etc/passwd", user).
				With("hint", "set [workload] user = \"UID:GID\" in fledge.toml")
		}
	}
	if hasGroup {
		if n, err := strconv.Atoi(group); err == nil && n >= 0 {
			gid = n
		} else {
			groups, err := readColonFile(rootfs, "/etc/group")
			if err != nil {
				return "", err
			}
			gid = -1
			for _, f := range groups {
				if len(f) >= 3 && f[0] == group {
					gid, _ = strconv.Atoi(f[2])
					break
				}
			}
			if gid < 0 {
				return "", apierr.New(apierr.InvalidInput, "the image's group %q is not in its /etc/group", group).
					With("hint", "set [workload] user = \"UID:GID\" in fledge.toml")
			}
		}
	}
	return fmt.Sprintf("%d:%d", uid, gid), nil
}

// readColonFile reads a passwd-style file inside rootfs (symlinks resolved
// within it); a missing file reads as empty.
func readColonFile(rootfs, name string) ([][]string, error) {
	p, err := securejoin.SecureJoin(rootfs, name)
	if err != nil {
		return nil, fmt.Errorf("resolving %s in the image: %w", name, err)
	}
	f, err := os.Open(p)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("reading %s of the image: %w", name, err)
	}
	defer f.Close()
	var out [][]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out = append(out, strings.Split(line, ":"))
	}
	return out, sc.Err()
}

// fileURL is the file:// URL of an absolute path.
func fileURL(p string) string { return "file://" + filepath.ToSlash(p) }
