package controller

import (
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"sort"
	"strings"
	"unicode"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/manifest"
)

// A VM's own workload: the overrides of its create request (vms.workload),
// its labels (vms.labels), and its inputs (env and files for the agent
// channel): vms.workload keeps their names, never their values, which are
// sealed in vm_inputs and nowhere in an answer (secrets.go).

// vmWorkload is the vms.workload column.
type vmWorkload struct {
	Override *api.WorkloadOverride `json:"override,omitempty"`
	Inputs   *api.InputsSummary    `json:"inputs,omitempty"`
}

// Limits of a create request's labels and inputs.
const (
	MaxVMLabels = 32
	// MaxInputBytes bounds a VM's inputs: the sum of file contents and
	// env values (the request body's own bound, 1 MiB, comes first).
	MaxInputBytes = 1 << 20
	// MaxInputFiles bounds the files and directories of a VM's inputs.
	MaxInputFiles = 256
)

var (
	labelKeyRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/-]*$`)
	envNameRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]*$`)
)

func badField(field, format string, args ...any) error {
	return apierr.New(apierr.InvalidInput, field+": "+format, args...).With("field", field)
}

func checkText(field, s string) error {
	if strings.ContainsFunc(s, func(r rune) bool { return r == 0 || (unicode.IsControl(r) && r != '\t' && r != '\n') }) {
		return badField(field, "control characters are not allowed")
	}
	return nil
}

func checkEnv(field string, env map[string]string) error {
	for k, v := range env {
		if !envNameRE.MatchString(k) {
			return badField(field+"."+k, "not a valid environment variable name")
		}
		if strings.ContainsRune(v, 0) {
			return badField(field+"."+k, "NUL in the value")
		}
	}
	return nil
}

// checkGuestPath: absolute, clean, not the root, at most PATH_MAX, no NUL
// or control characters (tabs and line breaks included, as the manifest's
// paths: checkText allows those, which a path has no use for).
func checkGuestPath(field, p string) error {
	if !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
		return badField(field, "%q must be a clean absolute path other than /", p)
	}
	if len(p) > manifest.MaxGuestPath {
		return badField(field, "a path of %d bytes; at most %d", len(p), manifest.MaxGuestPath)
	}
	if i := strings.IndexFunc(p, unicode.IsControl); i >= 0 {
		return badField(field, "%q: control characters are not allowed in a path (byte %d)", p, i)
	}
	return nil
}

// checkWorkload validates a create request's workload, labels and inputs.
func checkWorkload(req api.CreateVMRequest) error {
	if w := req.Workload; w != nil {
		for i, a := range append(append([]string{}, w.Command...), w.Args...) {
			if strings.ContainsRune(a, 0) {
				return badField(fmt.Sprintf("workload.command/args[%d]", i), "NUL in an argument")
			}
		}
		if err := checkEnv("workload.env", w.Env); err != nil {
			return err
		}
		if w.Workdir != "" {
			if err := checkGuestPath("workload.workdir", w.Workdir); err != nil {
				return err
			}
		}
		switch w.Restart {
		case "", "no", "on-failure", "always":
		default:
			return badField("workload.restart", "%q: use no, on-failure or always", w.Restart)
		}
	}
	if len(req.Labels) > MaxVMLabels {
		return badField("labels", "%d labels; at most %d", len(req.Labels), MaxVMLabels)
	}
	for k, v := range req.Labels {
		if len(k) > 63 || !labelKeyRE.MatchString(k) {
			return badField("labels."+k, "label keys use letters, digits and ._/- (at most 63)")
		}
		if len(v) > 256 {
			return badField("labels."+k, "value longer than 256 characters")
		}
		if err := checkText("labels."+k, v); err != nil {
			return err
		}
	}
	in := req.Inputs
	if in == nil {
		return nil
	}
	if err := checkEnv("inputs.env", in.Env); err != nil {
		return err
	}
	if n := len(in.Files) + len(in.Dirs); n > MaxInputFiles {
		return badField("inputs.files", "%d files and directories; at most %d", n, MaxInputFiles)
	}
	size := 0
	seen := map[string]bool{}
	for i, f := range in.Files {
		field := fmt.Sprintf("inputs.files[%d].path", i)
		if err := checkGuestPath(field, f.Path); err != nil {
			return err
		}
		if seen[f.Path] {
			return badField(field, "%s is given twice", f.Path)
		}
		seen[f.Path] = true
		if f.Mode&^0o7777 != 0 {
			return badField(fmt.Sprintf("inputs.files[%d].mode", i), "%#o is not a permission mode", f.Mode)
		}
		size += len(f.Data)
	}
	for i, d := range in.Dirs {
		field := fmt.Sprintf("inputs.dirs[%d]", i)
		if err := checkGuestPath(field, d); err != nil {
			return err
		}
		if seen[d] {
			return badField(field, "%s is given twice", d)
		}
		seen[d] = true
	}
	for _, v := range in.Env {
		size += len(v)
	}
	if size > MaxInputBytes {
		return apierr.New(apierr.TooLarge, "inputs hold %d bytes; at most %d", size, MaxInputBytes).With("field", "inputs")
	}
	return nil
}

// vmManifest is the manifest a VM boots: its plugin's, changed by its
// workload override.
func vmManifest(raw []byte, o *api.WorkloadOverride) (json.RawMessage, error) {
	if o == nil {
		return json.RawMessage(raw), nil
	}
	m, err := manifest.Decode(raw)
	if err != nil {
		return nil, err
	}
	m.Workload.Entrypoint = m.Workload.ResolveCommand(m.Labels, o.Command, o.Args)
	if len(o.Env) > 0 {
		env := map[string]string{}
		for k, v := range m.Workload.Env {
			env[k] = v
		}
		for k, v := range o.Env {
			env[k] = v
		}
		m.Workload.Env = env
	}
	if o.Workdir != "" {
		m.Workload.Workdir = o.Workdir
	}
	if o.Restart != "" {
		m.Workload.Restart = o.Restart
	}
	m.Normalize()
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return m.JSON()
}

func (v vmRow) workloadSummary() (*api.WorkloadOverride, *api.InputsSummary) {
	if v.Workload == nil {
		return nil, nil
	}
	return v.Workload.Override, v.Workload.Inputs
}

// labelFilter parses GET /api/v1/vms?label=K=V.
func labelFilter(s string) (k, v string, err error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return "", "", apierr.New(apierr.InvalidInput, "label filter %q: use KEY=VALUE", s).With("field", "label")
	}
	return k, v, nil
}

func sortedLabelKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
