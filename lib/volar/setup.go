package volar

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/renameio/v2"

	"github.com/volantvm/volant/contrib/systemd"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/hostnet"
	"github.com/volantvm/volant/lib/kernel"
	"github.com/volantvm/volant/lib/launch"
	"github.com/volantvm/volant/lib/selfsigned"
)

// SetupRequest is what `volar setup` prepares. Zero fields take volantd's
// defaults.
type SetupRequest struct {
	// Network is the bridge, address, forwarding and NAT (lib/hostnet,
	// the same calls as `volant-net setup`).
	Network hostnet.Config `json:"network"`
	// DataDir is volantd's data directory (default /var/lib/volant):
	// setup makes it and its plugins/, vms/ and cache/.
	DataDir string `json:"data_dir"`
	// RunRoot holds the VMs' run directories (default /run/volant/vms);
	// setup makes it and its parent, where volantd's socket lives.
	RunRoot string `json:"run_root"`
	// KernelDir is the guest kernel directory (default
	// /var/lib/volant/kernel); setup checks it and extracts the
	// uncompressed vmlinux once.
	KernelDir string `json:"kernel_dir"`
	// Systemd installs volantd.socket, volantd.service and
	// volant-vm@.service into SystemdDir (default /etc/systemd/system)
	// and, where systemd runs, reloads it. Nothing is enabled or started.
	Systemd    bool   `json:"systemd,omitempty"`
	SystemdDir string `json:"systemd_dir,omitempty"`
	// TLS makes a self-signed certificate and key for volantd's TCP API
	// in DataDir/tls (cert.pem, key.pem mode 0600), for TLSHosts (default
	// this host's name, localhost, 127.0.0.1 and ::1); an existing pair is
	// kept. volantd --tls-cert/--tls-key serve it; clients trust it with
	// VOLANT_CA_FILE=cert.pem.
	TLS      bool     `json:"tls,omitempty"`
	TLSHosts []string `json:"tls_hosts,omitempty"`
	// DryRun changes nothing and reports what would change.
	DryRun bool `json:"dry_run"`
}

func (r SetupRequest) withDefaults() SetupRequest {
	if r.DataDir == "" {
		r.DataDir = launch.DefaultStateDir
	}
	if r.RunRoot == "" {
		r.RunRoot = launch.DefaultRunRoot
	}
	if r.KernelDir == "" {
		r.KernelDir = kernel.DefaultDir
	}
	if r.SystemdDir == "" {
		r.SystemdDir = "/etc/systemd/system"
	}
	return r
}

// Setup item statuses.
const (
	StatusOK          = "ok"           // already as wanted
	StatusChanged     = "changed"      // setup changed it
	StatusWouldChange = "would change" // dry run: setup would change it
	StatusMissing     = "missing"      // not there, and setup cannot make it
	StatusFailed      = "failed"       // checking or changing it failed
)

// SetupItem is one thing setup looked at.
type SetupItem struct {
	// Item is dir, bridge, address, link, forwarding, nat, kernel,
	// vmlinux, hypervisor, and with Systemd unit and systemd.
	Item   string `json:"item"`
	Status string `json:"status"`
	Detail string `json:"detail"`
	// Hint says what to do about a missing or failed item.
	Hint string `json:"hint,omitempty"`
}

// SetupResult is what setup did (or, in a dry run, would do).
type SetupResult struct {
	DryRun bool `json:"dry_run"`
	// Changed: setup changed something (dry run: would change).
	Changed bool `json:"changed"`
	// Ready: nothing is missing or failed; volantd can run VMs here.
	Ready bool        `json:"ready"`
	Items []SetupItem `json:"items"`
	// Network is lib/hostnet's own result (setup) or check (dry run).
	Network *hostnet.SetupResult `json:"network,omitempty"`
	Check   *hostnet.CheckResult `json:"check,omitempty"`
	// Hypervisor is the backend volantd's "auto" would pick.
	Hypervisor string `json:"hypervisor,omitempty"`
}

func (r *SetupResult) add(it SetupItem) {
	r.Items = append(r.Items, it)
	switch it.Status {
	case StatusChanged, StatusWouldChange:
		r.Changed = true
	case StatusMissing, StatusFailed:
		r.Ready = false
	}
}

// Setup prepares this host for volantd: data and run directories, the
// bridge network (lib/hostnet in the calling thread's network namespace),
// the guest kernel (checked, vmlinux extracted once), and reports the
// hypervisor volantd would use. Every step measures before it acts, so
// running it again changes nothing. With DryRun nothing is changed.
//
// It returns the result whenever it got far enough to have one: a
// missing kernel or hypervisor is reported in the items (Ready false) and
// as a NOT_FOUND/UNAVAILABLE error after everything else was done; a failed
// network setup stops there.
func Setup(ctx context.Context, req SetupRequest, log *slog.Logger) (*SetupResult, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	req = req.withDefaults()
	res := &SetupResult{DryRun: req.DryRun, Ready: true, Items: []SetupItem{}}

	// Directories.
	dirs := []struct {
		path string
		mode fs.FileMode
	}{
		{req.DataDir, 0o755},
		{filepath.Join(req.DataDir, "plugins"), 0o755},
		{filepath.Join(req.DataDir, "vms"), 0o755},
		{filepath.Join(req.DataDir, "cache"), 0o755},
		{filepath.Dir(req.RunRoot), 0o755},
		{req.RunRoot, 0o755},
	}
	for _, d := range dirs {
		it, err := ensureDir(d.path, d.mode, req.DryRun)
		res.add(it)
		if err != nil {
			return res, err
		}
		if it.Status == StatusChanged {
			log.Info("setup", "item", "dir", "change", it.Detail)
		}
	}

	if req.TLS {
		it, err := ensureTLS(filepath.Join(req.DataDir, "tls"), req.TLSHosts, req.DryRun)
		res.add(it)
		if err != nil {
			return res, err
		}
	}

	// Network.
	h := &hostnet.Host{Log: log}
	if req.DryRun {
		chk, err := h.Check(ctx, req.Network)
		if chk == nil {
			res.add(SetupItem{Item: "network", Status: StatusFailed, Detail: apierr.From(err).Message, Hint: networkHint(err)})
			return res, err
		}
		res.Check = chk
		want := map[string]hostnet.Difference{}
		for _, d := range chk.Differences {
			want[d.Item] = d
		}
		for _, item := range []string{"bridge", "address", "link", "forwarding", "nat"} {
			if d, ok := want[item]; ok {
				res.add(SetupItem{Item: item, Status: StatusWouldChange, Detail: "want " + d.Want + ", have " + d.Got})
			} else {
				res.add(SetupItem{Item: item, Status: StatusOK, Detail: "as wanted"})
			}
		}
	} else {
		nw, err := h.Setup(ctx, req.Network)
		if err != nil {
			res.add(SetupItem{Item: "network", Status: StatusFailed, Detail: apierr.From(err).Message, Hint: networkHint(err)})
			return res, err
		}
		res.Network = nw
		for _, it := range nw.Items {
			st := StatusOK
			if it.Changed {
				st = StatusChanged
			}
			res.add(SetupItem{Item: it.Item, Status: st, Detail: it.Detail})
		}
	}

	// Kernel.
	var missing []error
	k, err := kernel.Open(req.KernelDir)
	if err != nil {
		e := apierr.From(err)
		hint, _ := e.Details["hint"].(string)
		res.add(SetupItem{Item: "kernel", Status: StatusMissing, Detail: e.Message, Hint: hint})
		missing = append(missing, err)
	} else {
		res.add(SetupItem{Item: "kernel", Status: StatusOK, Detail: k.Release + " in " + k.Dir})
		it, err := ensureVmlinux(ctx, k, req.DryRun)
		res.add(it)
		if err != nil {
			missing = append(missing, err)
		} else if it.Status == StatusChanged {
			log.Info("setup", "item", "vmlinux", "change", it.Detail)
		}
	}

	// Hypervisor: what volantd's "auto" would pick, and why not the others.
	reports, def := launch.Backends(ctx, launch.Options{KernelDir: req.KernelDir, Logger: log})
	var why []string
	var detail string
	for _, r := range reports {
		if r.Name == def {
			detail = r.Name + " (" + r.Binary + ", accel " + string(r.Accel) + ")"
		} else if !r.Usable {
			why = append(why, r.Name+": "+r.Reason)
		}
	}
	if def == "" {
		res.add(SetupItem{Item: "hypervisor", Status: StatusMissing, Detail: "none usable: " + strings.Join(why, "; "),
			Hint: "install qemu-system-x86 (apt-get install qemu-system-x86) or put cloud-hypervisor on PATH"})
		missing = append(missing, apierr.New(apierr.Unavailable, "no usable hypervisor: %s", strings.Join(why, "; ")))
	} else {
		if len(why) > 0 {
			detail += "; not " + strings.Join(why, "; ")
		}
		res.Hypervisor = def
		res.add(SetupItem{Item: "hypervisor", Status: StatusOK, Detail: detail})
	}

	if req.Systemd {
		if err := setupSystemd(ctx, req, res, log); err != nil {
			return res, err
		}
	}

	if len(missing) > 0 {
		code := apierr.CodeOf(missing[0])
		return res, apierr.Wrap(code, errors.Join(missing...), "the host is not ready for VMs")
	}
	return res, nil
}

func networkHint(err error) string {
	switch apierr.CodeOf(err) {
	case apierr.PermissionDenied:
		return "run volar setup as root (it needs CAP_NET_ADMIN)"
	case apierr.Conflict:
		if h, ok := apierr.From(err).Details["hint"].(string); ok {
			return h
		}
		return "see volant-net status; --adopt manages an existing bridge, --bridge picks another"
	}
	if h, ok := apierr.From(err).Details["hint"].(string); ok {
		return h
	}
	return ""
}

func ensureDir(path string, mode fs.FileMode, dryRun bool) (SetupItem, error) {
	it := SetupItem{Item: "dir"}
	st, err := os.Stat(path)
	switch {
	case err == nil && st.IsDir():
		it.Status, it.Detail = StatusOK, path+" exists"
		return it, nil
	case err == nil:
		it.Status, it.Detail = StatusFailed, path+" exists and is not a directory"
		return it, apierr.New(apierr.Conflict, "%s exists and is not a directory", path).With("path", path)
	case !errors.Is(err, fs.ErrNotExist):
		it.Status, it.Detail = StatusFailed, err.Error()
		return it, apierr.Wrap(apierr.CodeOf(err), err, "checking "+path)
	case dryRun:
		it.Status, it.Detail = StatusWouldChange, "would create "+path
		return it, nil
	}
	if err := os.MkdirAll(path, mode); err != nil {
		it.Status, it.Detail = StatusFailed, err.Error()
		return it, apierr.Wrap(apierr.CodeOf(err), err, "creating "+path)
	}
	// MkdirAll applies the umask; the mode is part of what setup promises.
	if err := os.Chmod(path, mode); err != nil {
		it.Status, it.Detail = StatusFailed, err.Error()
		return it, apierr.Wrap(apierr.CodeOf(err), err, "setting the mode of "+path)
	}
	it.Status, it.Detail = StatusChanged, fmt.Sprintf("created %s (mode %04o)", path, mode)
	return it, nil
}

func ensureVmlinux(ctx context.Context, k *kernel.Kernel, dryRun bool) (SetupItem, error) {
	it := SetupItem{Item: "vmlinux"}
	path := k.VmlinuxPath()
	if _, err := os.Stat(path); err == nil {
		// Vmlinux re-extracts a file that is not an ELF image (an
		// interrupted extraction cannot leave one: it renames).
		if dryRun {
			it.Status, it.Detail = StatusOK, path+" exists"
			return it, nil
		}
		if _, err := k.Vmlinux(ctx); err != nil {
			it.Status, it.Detail = StatusFailed, apierr.From(err).Message
			return it, err
		}
		it.Status, it.Detail = StatusOK, path+" exists"
		return it, nil
	}
	if dryRun {
		it.Status, it.Detail = StatusWouldChange, "would extract "+path+" from "+k.Vmlinuz
		return it, nil
	}
	if _, err := k.Vmlinux(ctx); err != nil {
		it.Status, it.Detail = StatusFailed, apierr.From(err).Message
		it.Hint = "the xz (or gzip/zstd) command extracts it: apt-get install xz-utils"
		return it, err
	}
	it.Status, it.Detail = StatusChanged, "extracted "+path+" (boots without in-guest decompression)"
	return it, nil
}

// setupSystemd installs the embedded units, changing only files whose
// content differs, and asks a running systemd to reload.
func setupSystemd(ctx context.Context, req SetupRequest, res *SetupResult, log *slog.Logger) error {
	entries, err := fs.ReadDir(systemd.Units, ".")
	if err != nil {
		return fmt.Errorf("reading the embedded units: %w", err)
	}
	changed := false
	for _, e := range entries {
		want, err := fs.ReadFile(systemd.Units, e.Name())
		if err != nil {
			return fmt.Errorf("reading the embedded unit %s: %w", e.Name(), err)
		}
		path := filepath.Join(req.SystemdDir, e.Name())
		it := SetupItem{Item: "unit"}
		have, err := os.ReadFile(path)
		switch {
		case err == nil && string(have) == string(want):
			it.Status, it.Detail = StatusOK, path+" is this build's"
		case err != nil && !errors.Is(err, fs.ErrNotExist):
			it.Status, it.Detail = StatusFailed, err.Error()
			res.add(it)
			return apierr.Wrap(apierr.CodeOf(err), err, "checking "+path)
		case req.DryRun:
			it.Status, it.Detail = StatusWouldChange, "would write "+path
		default:
			if err := writeFileAtomic(path, want, 0o644); err != nil {
				it.Status, it.Detail = StatusFailed, err.Error()
				res.add(it)
				return apierr.Wrap(apierr.CodeOf(err), err, "installing "+path)
			}
			verb := "installed "
			if len(have) > 0 {
				verb = "updated "
			}
			it.Status, it.Detail = StatusChanged, verb+path
			changed = true
			log.Info("setup", "item", "unit", "change", it.Detail)
		}
		res.add(it)
	}
	// Like sd_booted(3): systemd is the init system when this exists.
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		res.add(SetupItem{Item: "systemd", Status: StatusOK, Detail: "systemd is not running here: units installed, not loaded",
			Hint: "where systemd runs: systemctl daemon-reload && systemctl enable --now volantd.socket"})
		return nil
	}
	switch {
	case !changed:
		res.add(SetupItem{Item: "systemd", Status: StatusOK, Detail: "units loaded; enable with systemctl enable --now volantd.socket"})
	case req.DryRun:
		res.add(SetupItem{Item: "systemd", Status: StatusWouldChange, Detail: "would run systemctl daemon-reload"})
	default:
		if out, err := exec.CommandContext(ctx, "systemctl", "daemon-reload").CombinedOutput(); err != nil {
			res.add(SetupItem{Item: "systemd", Status: StatusFailed, Detail: strings.TrimSpace(string(out))})
			return apierr.Wrap(apierr.Unavailable, err, "systemctl daemon-reload: "+strings.TrimSpace(string(out)))
		}
		res.add(SetupItem{Item: "systemd", Status: StatusChanged, Detail: "ran systemctl daemon-reload; enable with systemctl enable --now volantd.socket"})
	}
	return nil
}

// writeFileAtomic writes data to path (and its directory) through a
// temporary file, fsync and rename (google/renameio), so a crash leaves the
// old file or the new one.
func writeFileAtomic(path string, data []byte, mode fs.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return renameio.WriteFile(path, data, mode, renameio.WithTempDir(filepath.Dir(path)))
}

// SetupSummary prints a setup result: a table of items and a closing
// sentence, or the result as JSON.
func (o *Output) SetupSummary(res *SetupResult) error {
	switch {
	case o.Quiet:
		for _, it := range res.Items {
			if it.Status == StatusChanged || it.Status == StatusWouldChange {
				if err := o.names(it.Item); err != nil {
					return err
				}
			}
		}
		return nil
	case o.Format == JSON:
		return o.JSONValue(res)
	}
	rows := make([][]string, 0, len(res.Items))
	var hints []string
	for _, it := range res.Items {
		rows = append(rows, []string{it.Item, it.Status, it.Detail})
		if it.Hint != "" {
			hints = append(hints, it.Item+": "+it.Hint)
		}
	}
	if err := o.table([]string{"ITEM", "STATUS", "DETAIL"}, rows); err != nil {
		return err
	}
	n := 0
	for _, it := range res.Items {
		if it.Status == StatusChanged || it.Status == StatusWouldChange {
			n++
		}
	}
	var sum string
	switch {
	case res.DryRun && n == 0:
		sum = "Dry run: nothing would change."
	case res.DryRun:
		sum = fmt.Sprintf("Dry run: %d %s would change; run volar setup without --dry-run to apply.", n, plural(n, "item"))
	case n == 0:
		sum = "Nothing changed."
	default:
		sum = fmt.Sprintf("Changed %d %s.", n, plural(n, "item"))
	}
	switch {
	case res.Ready && res.DryRun:
		sum += " Nothing is missing."
	case res.Ready:
		sum += " The host is ready for volantd."
	default:
		sum += " The host is not ready yet:"
	}
	fmt.Fprintln(o.Stdout, sum)
	for _, h := range hints {
		fmt.Fprintln(o.Stdout, "  "+h)
	}
	return nil
}

// ensureTLS makes a self-signed pair in dir unless both files are there.
func ensureTLS(dir string, hosts []string, dryRun bool) (SetupItem, error) {
	it := SetupItem{Item: "tls"}
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	_, errC := os.Stat(cert)
	_, errK := os.Stat(key)
	switch {
	case errC == nil && errK == nil:
		it.Status, it.Detail = StatusOK, cert+" and "+key+" exist"
		return it, nil
	case dryRun:
		it.Status, it.Detail = StatusWouldChange, "would make a self-signed certificate "+cert
		return it, nil
	}
	if len(hosts) == 0 {
		hosts = []string{"localhost", "127.0.0.1", "::1"}
		if h, err := os.Hostname(); err == nil && h != "" {
			hosts = append([]string{h}, hosts...)
		}
	}
	fail := func(err error, what string) (SetupItem, error) {
		it.Status, it.Detail = StatusFailed, err.Error()
		return it, apierr.Wrap(apierr.CodeOf(err), err, what)
	}
	p, err := selfsigned.New(hosts, 5*365*24*time.Hour)
	if err != nil {
		return fail(err, "making the certificate")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fail(err, "creating "+dir)
	}
	// The key first: a certificate is never there without its key.
	if err := renameio.WriteFile(key, p.Key, 0o600); err != nil {
		return fail(err, "writing "+key)
	}
	if err := renameio.WriteFile(cert, p.Cert, 0o644); err != nil {
		return fail(err, "writing "+cert)
	}
	it.Status = StatusChanged
	it.Detail = fmt.Sprintf("made a self-signed certificate for %s: volantd --tls-cert %s --tls-key %s; clients VOLANT_CA_FILE=%s",
		strings.Join(hosts, ", "), cert, key, cert)
	return it, nil
}
