package volar

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/portmap"
)

// Format is how results are printed on stdout.
type Format string

// The formats.
const (
	// Table: aligned columns for lists, "Key: value" lines for one object,
	// one sentence for actions. For people; the layout may change.
	Table Format = "table"
	// JSON: the API objects exactly as volantd sends them, indented. One
	// object for commands about one thing, an array (never null) for
	// lists, one compact object per line for streams (events). For
	// scripts; stable.
	JSON Format = "json"
)

// ParseFormat checks an --output value ("" is Table).
func ParseFormat(s string) (Format, error) {
	switch Format(s) {
	case "", Table:
		return Table, nil
	case JSON:
		return JSON, nil
	}
	return "", apierr.New(apierr.Usage, "unknown output format %q: use table or json", s).With("hint", "-o table or -o json")
}

// Output prints results. Quiet wins over Format: it prints only the names
// of the objects a command lists or acts on, one per line.
type Output struct {
	Format Format
	Quiet  bool
	// Stdout receives results; Stderr progress and messages.
	Stdout io.Writer
	Stderr io.Writer
	// Now is the clock ages are measured against (default time.Now).
	Now func() time.Time
}

func (o *Output) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

// JSONValue writes v indented, without HTML escaping.
func (o *Output) JSONValue(v any) error {
	b, err := marshalIndent(v)
	if err != nil {
		return fmt.Errorf("encoding the result: %w", err)
	}
	_, err = fmt.Fprintf(o.Stdout, "%s\n", b)
	return err
}

func marshalIndent(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

func marshalCompact(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

// names prints one name per line (quiet mode).
func (o *Output) names(names ...string) error {
	for _, n := range names {
		if _, err := fmt.Fprintln(o.Stdout, n); err != nil {
			return err
		}
	}
	return nil
}

// table writes rows under a header, columns separated by at least two
// spaces. Empty cells print as "-".
func (o *Output) table(header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(o.Stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		cells := make([]string, len(r))
		for i, c := range r {
			cells[i] = orDash(c)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// fields writes "Key: value" lines with the values aligned; empty values
// are left out.
func (o *Output) fields(kv [][2]string) error {
	tw := tabwriter.NewWriter(o.Stdout, 0, 8, 1, ' ', 0)
	for _, f := range kv {
		if f[1] == "" {
			continue
		}
		fmt.Fprintf(tw, "%s:\t%s\n", f[0], f[1])
	}
	return tw.Flush()
}

// line prints one sentence (table format's answer to an action).
func (o *Output) line(format string, args ...any) error {
	_, err := fmt.Fprintf(o.Stdout, format+"\n", args...)
	return err
}

// progress prints a line on stderr (never in quiet or JSON mode's stdout).
func (o *Output) progress(format string, args ...any) {
	if o.Stderr != nil {
		fmt.Fprintf(o.Stderr, format+"\n", args...)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Age formats how long ago t was, the way `docker ps` and kubectl do:
// 45s, 12m, 5h, 3d (the largest unit, rounded down). Zero time is "-".
func Age(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Minute:
		return strconv.Itoa(int(d/time.Second)) + "s"
	case d < time.Hour:
		return strconv.Itoa(int(d/time.Minute)) + "m"
	case d < 48*time.Hour:
		return strconv.Itoa(int(d/time.Hour)) + "h"
	}
	return strconv.Itoa(int(d/(24*time.Hour))) + "d"
}

// timestamp formats t for "show" output: RFC 3339 in UTC plus the age.
func (o *Output) timestamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339) + " (" + Age(o.now(), t) + " ago)"
}

func mib(n int) string {
	if n == 0 {
		return ""
	}
	return strconv.Itoa(n) + " MiB"
}

func itoa(n int) string {
	if n == 0 {
		return ""
	}
	return strconv.Itoa(n)
}

// vmState is the state with the health verdict when it adds something.
func vmState(vm *api.VM) string {
	s := string(vm.State)
	if vm.State == api.VMRunning && vm.Health != "" && string(vm.Health) != "healthy" {
		s += " (" + string(vm.Health) + ")"
	}
	return s
}

// --- VMs ---

// VMList prints VMs.
func (o *Output) VMList(vms []api.VM) error {
	if vms == nil {
		vms = []api.VM{}
	}
	switch {
	case o.Quiet:
		for _, vm := range vms {
			if err := o.names(vm.Name); err != nil {
				return err
			}
		}
		return nil
	case o.Format == JSON:
		return o.JSONValue(vms)
	}
	rows := make([][]string, 0, len(vms))
	for i := range vms {
		vm := &vms[i]
		rows = append(rows, []string{vm.Name, vm.Plugin, vmState(vm), vm.IP, itoa(vm.Resources.CPUCores),
			mib(vm.Resources.MemoryMB), vm.Deployment, Age(o.now(), vm.CreatedAt)})
	}
	return o.table([]string{"NAME", "PLUGIN", "STATE", "IP", "CPUS", "MEMORY", "DEPLOYMENT", "AGE"}, rows)
}

// VM prints one VM in full ("vms show").
func (o *Output) VM(vm *api.VM) error {
	switch {
	case o.Quiet:
		return o.names(vm.Name)
	case o.Format == JSON:
		return o.JSONValue(vm)
	}
	var started string
	if vm.StartedAt != nil {
		started = o.timestamp(*vm.StartedAt)
	}
	health := string(vm.Health)
	kv := [][2]string{
		{"Name", vm.Name},
		{"Plugin", vm.Plugin},
		{"Deployment", vm.Deployment},
		{"State", string(vm.State)},
		{"Health", health},
		{"Step", vm.Step},
		{"Error", vm.Error},
		{"IP", vm.IP},
		{"MAC", vm.MAC},
		{"Tap", vm.Tap},
		{"PID", itoa(vm.PID)},
		{"CPUs", itoa(vm.Resources.CPUCores)},
		{"Memory", mib(vm.Resources.MemoryMB)},
		{"Created", o.timestamp(vm.CreatedAt)},
		{"Started", started},
		{"Updated", o.timestamp(vm.UpdatedAt)},
		{"Serial log", vm.SerialLog},
		{"Ports", portList(vm.Ports)},
		{"Jail", jailLine(vm.Jail)},
	}
	if a := vm.Agent; a != nil {
		kv = append(kv, [2]string{"Agent", a.Agent})
	}
	return o.fields(kv)
}

// VMAction prints the answer of start, stop, restart or delete: "VM web1
// stopped" (verb is the past participle).
func (o *Output) VMAction(vm *api.VM, verb string) error {
	switch {
	case o.Quiet:
		return o.names(vm.Name)
	case o.Format == JSON:
		return o.JSONValue(vm)
	}
	if verb == "deleted" || string(vm.State) == verb {
		return o.line("VM %s %s", vm.Name, verb)
	}
	return o.line("VM %s %s (state %s)", vm.Name, verb, vmState(vm))
}

// VMCreated prints the answer of a create, the spec's sentence:
// "VM nginx-demo created with IP 192.168.127.100".
func (o *Output) VMCreated(vm *api.VM) error {
	switch {
	case o.Quiet:
		return o.names(vm.Name)
	case o.Format == JSON:
		return o.JSONValue(vm)
	}
	if vm.IP == "" {
		return o.line("VM %s created without a network address", vm.Name)
	}
	return o.line("VM %s created with IP %s", vm.Name, vm.IP)
}

// VMReached prints the answer of a wait: "VM web1 is running".
func (o *Output) VMReached(vm *api.VM) error {
	switch {
	case o.Quiet:
		return o.names(vm.Name)
	case o.Format == JSON:
		return o.JSONValue(vm)
	}
	return o.line("VM %s is %s", vm.Name, vmState(vm))
}

// --- plugins ---

// PluginList prints plugins.
func (o *Output) PluginList(ps []api.Plugin) error {
	if ps == nil {
		ps = []api.Plugin{}
	}
	switch {
	case o.Quiet:
		for _, p := range ps {
			if err := o.names(p.Name); err != nil {
				return err
			}
		}
		return nil
	case o.Format == JSON:
		return o.JSONValue(ps)
	}
	rows := make([][]string, 0, len(ps))
	for i := range ps {
		p := &ps[i]
		rows = append(rows, []string{p.Name, p.Version, p.Runtime, enabled(p.Enabled), bootMode(p.Manifest), Age(o.now(), p.CreatedAt)})
	}
	return o.table([]string{"NAME", "VERSION", "RUNTIME", "ENABLED", "BOOT", "AGE"}, rows)
}

func enabled(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// parseManifest reads an installed plugin's manifest leniently (display
// only: the daemon validated it).
func parseManifest(raw json.RawMessage) *manifest.Manifest {
	var m manifest.Manifest
	if len(raw) == 0 || json.Unmarshal(raw, &m) != nil {
		return nil
	}
	return &m
}

func bootMode(raw json.RawMessage) string {
	m := parseManifest(raw)
	switch {
	case m == nil:
		return ""
	case m.Rootfs != nil:
		return "rootfs"
	case m.Initramfs != nil:
		return "initramfs"
	}
	return ""
}

// versionsLine lists a plugin's versions when it has more than one.
func versionsLine(vs []string) string {
	if len(vs) < 2 {
		return ""
	}
	return strings.Join(vs, ", ") + " (the last is the default)"
}

// Plugin prints one plugin in full ("plugins show").
func (o *Output) Plugin(p *api.Plugin) error {
	switch {
	case o.Quiet:
		return o.names(p.Name)
	case o.Format == JSON:
		return o.JSONValue(p)
	}
	kv := [][2]string{
		{"Name", p.Name},
		{"Version", p.Version},
		{"Versions", versionsLine(p.Versions)},
		{"Runtime", p.Runtime},
		{"Enabled", enabled(p.Enabled)},
		{"Installed", o.timestamp(p.CreatedAt)},
		{"Updated", o.timestamp(p.UpdatedAt)},
	}
	if sg := p.Signature; sg != nil {
		v := "by key " + sg.KeyID + " (verified with a trusted key)"
		if !sg.Verified {
			v = "by key " + sg.KeyID + " (not verified: volantd has no trusted keys)"
		}
		kv = append(kv, [2]string{"Signed", v})
	}
	if m := parseManifest(p.Manifest); m != nil {
		switch {
		case m.Initramfs != nil:
			kv = append(kv, [2]string{"Boot", "initramfs " + m.Initramfs.URL})
		case m.Rootfs != nil:
			kv = append(kv, [2]string{"Boot", "rootfs " + m.Rootfs.URL})
		}
		if m.Image != "" {
			kv = append(kv, [2]string{"Image", m.Image})
		}
		kv = append(kv,
			[2]string{"CPUs", itoa(m.Resources.CPUCores)},
			[2]string{"Memory", mib(m.Resources.MemoryMB)},
			[2]string{"Entrypoint", joinArgs(m.Workload.Entrypoint)},
			[2]string{"Base URL", m.Workload.BaseURL})
		if m.HealthCheck != nil {
			kv = append(kv, [2]string{"Health check", orSlash(m.HealthCheck.Endpoint)})
		}
		if m.Network != nil && m.Network.Mode != "" {
			kv = append(kv, [2]string{"Network", m.Network.Mode})
		}
		if len(m.Actions) > 0 {
			kv = append(kv, [2]string{"Actions", strings.Join(sortedKeys(m.Actions), ", ")})
		}
		if len(m.Labels) > 0 {
			var ls []string
			for _, k := range sortedKeys(m.Labels) {
				ls = append(ls, k+"="+m.Labels[k])
			}
			kv = append(kv, [2]string{"Labels", strings.Join(ls, ", ")})
		}
	}
	return o.fields(kv)
}

func orSlash(s string) string {
	if s == "" {
		return "/"
	}
	return s
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// PluginAction prints the answer of install, enable, disable or remove.
func (o *Output) PluginAction(p *api.Plugin, verb string) error {
	switch {
	case o.Quiet:
		return o.names(p.Name)
	case o.Format == JSON:
		return o.JSONValue(p)
	}
	if p.Signature != nil && p.Signature.Verified {
		verb += ", signed by key " + p.Signature.KeyID
	}
	return o.line("Plugin %s %s %s", p.Name, p.Version, verb)
}

// --- deployments ---

// DeploymentList prints deployments.
func (o *Output) DeploymentList(ds []api.Deployment) error {
	if ds == nil {
		ds = []api.Deployment{}
	}
	switch {
	case o.Quiet:
		for _, d := range ds {
			if err := o.names(d.Name); err != nil {
				return err
			}
		}
		return nil
	case o.Format == JSON:
		return o.JSONValue(ds)
	}
	rows := make([][]string, 0, len(ds))
	for i := range ds {
		d := &ds[i]
		rows = append(rows, []string{d.Name, d.Plugin, fmt.Sprintf("%d/%d", d.Current, d.Replicas),
			itoa(d.Resources.CPUCores), mib(d.Resources.MemoryMB), Age(o.now(), d.CreatedAt)})
	}
	return o.table([]string{"NAME", "PLUGIN", "READY", "CPUS", "MEMORY", "AGE"}, rows)
}

// Deployment prints one deployment in full ("deployments show").
func (o *Output) Deployment(d *api.Deployment) error {
	switch {
	case o.Quiet:
		return o.names(d.Name)
	case o.Format == JSON:
		return o.JSONValue(d)
	}
	vms := strings.Join(d.VMs, ", ")
	if len(d.VMs) == 0 {
		vms = "none"
	}
	var tmpl []string
	for _, t := range d.VolumeTemplates {
		tmpl = append(tmpl, fmt.Sprintf("%s-<i> %s at %s", t.Name, t.Size, t.Path))
	}
	return o.fields([][2]string{
		{"Name", d.Name},
		{"Plugin", pluginVersion(d.Plugin, d.PluginVersion)},
		{"Replicas", fmt.Sprintf("%d desired, %d running", d.Replicas, d.Current)},
		{"Update", rolloutLine(d.Rollout)},
		{"CPUs", itoa(d.Resources.CPUCores)},
		{"Memory", mib(d.Resources.MemoryMB)},
		{"Volumes", strings.Join(tmpl, ", ")},
		{"From snapshot", d.FromSnapshot},
		{"VMs", vms},
		{"Ports", portList(d.Ports)},
		{"Endpoints", endpoints(d)},
		{"Error", d.Error},
		{"Created", o.timestamp(d.CreatedAt)},
		{"Updated", o.timestamp(d.UpdatedAt)},
	})
}

// DeploymentAction prints the answer of create, scale or delete.
func (o *Output) DeploymentAction(d *api.Deployment, verb string) error {
	switch {
	case o.Quiet:
		return o.names(d.Name)
	case o.Format == JSON:
		return o.JSONValue(d)
	}
	if verb == "deleted" {
		return o.line("Deployment %s deleted", d.Name)
	}
	if verb == "updated" {
		if r := d.Rollout; r != nil && r.State.Active() {
			return o.line("Deployment %s: update %d from %s to %s under way (max surge %d, max unavailable %d, deadline %s)", d.Name, r.Revision,
				r.From, r.To, r.MaxSurge, r.MaxUnavailable, time.Duration(r.DeadlineMS)*time.Millisecond)
		}
		return o.line("Deployment %s runs %s already", d.Name, pluginVersion(d.Plugin, d.PluginVersion))
	}
	return o.line("Deployment %s %s: %d %s of plugin %s", d.Name, verb, d.Replicas, plural(d.Replicas, "replica"), pluginVersion(d.Plugin, d.PluginVersion))
}

// pluginVersion is NAME@VERSION, or NAME when the version is unknown.
func pluginVersion(name, version string) string {
	if version == "" {
		return name
	}
	return name + "@" + version
}

// rolloutLine says where an update is.
func rolloutLine(r *api.Rollout) string {
	if r == nil {
		return ""
	}
	s := fmt.Sprintf("%d %s, %s → %s", r.Revision, r.State, r.From, r.To)
	if p := r.Progress; p != nil && r.State.Active() {
		s += fmt.Sprintf(" (%d of %d at %s, %d ready; %d old)", p.Updated, p.Replicas, p.Target, p.Ready, p.Old)
	}
	return s
}

// Rollout prints a deployment's latest update.
func (o *Output) Rollout(r *api.Rollout) error {
	switch {
	case o.Quiet:
		return o.names(r.Deployment)
	case o.Format == JSON:
		return o.JSONValue(r)
	}
	kv := [][2]string{
		{"Deployment", r.Deployment},
		{"Revision", itoa(r.Revision)},
		{"State", string(r.State)},
		{"From", r.From},
		{"To", r.To},
		{"Max surge", strconv.Itoa(r.MaxSurge)},
		{"Max unavailable", strconv.Itoa(r.MaxUnavailable)},
		{"Deadline", (time.Duration(r.DeadlineMS) * time.Millisecond).String()},
		{"Reason", r.Reason},
	}
	if p := r.Progress; p != nil {
		kv = append(kv, [2]string{"Replicas", fmt.Sprintf("%d desired; %d at %s, %d of them ready; %d old; %d healthy in all",
			p.Replicas, p.Updated, p.Target, p.Ready, p.Old, p.Healthy)})
	}
	kv = append(kv, [2]string{"Started", o.timestamp(r.StartedAt)})
	if r.FinishedAt != nil {
		kv = append(kv, [2]string{"Finished", o.timestamp(*r.FinishedAt)})
	}
	return o.fields(kv)
}

// RolloutList prints a deployment's updates.
func (o *Output) RolloutList(rs []api.Rollout) error {
	if rs == nil {
		rs = []api.Rollout{}
	}
	switch {
	case o.Quiet:
		for _, r := range rs {
			if err := o.names(strconv.Itoa(r.Revision)); err != nil {
				return err
			}
		}
		return nil
	case o.Format == JSON:
		return o.JSONValue(api.RolloutList{Rollouts: rs})
	}
	rows := make([][]string, 0, len(rs))
	for _, r := range rs {
		rows = append(rows, []string{strconv.Itoa(r.Revision), r.From, r.To, string(r.State), o.timestamp(r.StartedAt), r.Reason})
	}
	return o.table([]string{"REVISION", "FROM", "TO", "STATE", "STARTED", "REASON"}, rows)
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

// --- events ---

// Event prints one event as it arrives: a line per event in every format
// (JSON: one compact object per line).
func (o *Output) Event(ev *api.Event) error {
	switch {
	case o.Quiet:
		if ev.ResourceID == "" {
			return nil
		}
		return o.names(ev.ResourceID)
	case o.Format == JSON:
		b, err := marshalCompact(ev)
		if err != nil {
			return fmt.Errorf("encoding event %d: %w", ev.ID, err)
		}
		_, err = fmt.Fprintf(o.Stdout, "%s\n", b)
		return err
	}
	data := ""
	if len(ev.Data) > 0 && string(ev.Data) != "null" {
		var buf bytes.Buffer
		if json.Compact(&buf, ev.Data) == nil {
			data = buf.String()
		}
	}
	line := fmt.Sprintf("%-6d %s  %-18s %-20s %s", ev.ID, ev.Timestamp.UTC().Format(time.RFC3339),
		ev.Type, orDash(ev.ResourceID), data)
	_, err := fmt.Fprintln(o.Stdout, strings.TrimRight(line, " "))
	return err
}

// joinArgs prints a command line: an argument holding a space or a line
// break (a script for `sh -c`) is quoted Go-style, so one row stays one line.
func joinArgs(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\r\n\"") {
			a = strconv.Quote(a)
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

// jailLine says how a running VM's hypervisor is confined: its uid, its
// cgroup and memory limit, or that it runs as root (volantd
// --insecure-vmm).
func jailLine(j *api.VMMJail) string {
	switch {
	case j == nil:
		return ""
	case j.Insecure:
		return "none: the hypervisor runs as root (--insecure-vmm)"
	}
	parts := []string{fmt.Sprintf("uid %d", j.UID)}
	if j.Cgroup != "" {
		parts = append(parts, "cgroup "+j.Cgroup)
	} else {
		parts = append(parts, "limits in its systemd unit")
	}
	if j.MemoryLimitMB > 0 {
		parts = append(parts, fmt.Sprintf("memory limit %d MiB", j.MemoryLimitMB))
	}
	return strings.Join(parts, ", ")
}

// portList is published ports as "8080→80/tcp, 127.0.0.1:8443→443/tcp".
func portList(ms []portmap.Mapping) string {
	out := make([]string, len(ms))
	for i, m := range ms {
		s := fmt.Sprintf("%d→%d/%s", m.HostPort, m.GuestPort, m.Normalized().Protocol)
		if m.HostIP != "" {
			s = m.HostIP + ":" + s
		}
		out[i] = s
	}
	return strings.Join(out, ", ")
}

// endpoints says which replicas take a deployment's published ports.
func endpoints(d *api.Deployment) string {
	switch {
	case len(d.Ports) == 0:
		return ""
	case len(d.Endpoints) == 0:
		return "none (no replica is running and healthy)"
	}
	return strings.Join(d.Endpoints, ", ")
}

// Copied reports a `volar vms cp`: a sentence, the CopyResult in JSON,
// nothing in quiet mode.
func (o *Output) Copied(res api.CopyResult, src, dst string) error {
	switch {
	case o.Format == JSON:
		return o.JSONValue(res)
	case o.Quiet:
		return nil
	}
	return o.line("Copied %s to %s (%d files, %d bytes).", src, dst, res.Files, res.Bytes)
}
