package chtest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Name is the program name the fake answers to.
const Name = "cloud-hypervisor"

// Impersonating reports whether this process was started as the fake
// cloud-hypervisor (through the symlink Binary makes).
func Impersonating() bool { return filepath.Base(os.Args[0]) == Name }

// Binary returns the path of a "cloud-hypervisor" that is the running test
// binary; its TestMain must hand over to Main when Impersonating.
func Binary(t testing.TB) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), Name)
	if err := os.Symlink(self, p); err != nil {
		t.Fatal(err)
	}
	return p
}

// Main behaves like cloud-hypervisor v53 as far as Volant uses it: it
// parses the command line with CH's rules (clap flags; option_parser
// key=value lists with quotes and brackets; unknown flags and keys are
// errors), checks the payload files exist, "boots" (writes a line to the
// serial port), serves the REST API on --api-socket through the OpenAPI
// validator, keeps CH's VM state machine, and exits when the guest powers
// off (power button), on vmm.shutdown, or on SIGTERM/SIGINT — as CH does
// without --no-shutdown. With FAKE_CH_GUEST=deaf in its environment the
// guest ignores the power button.
func Main(args []string) int {
	fail := func(code int, format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "Error: "+format+"\n", a...)
		return code
	}
	flags, err := parseCLI(args)
	if err != nil {
		return fail(2, "%v", err)
	}
	var cfg *VMConfig
	if len(flags["kernel"]) > 0 {
		if cfg, err = VMConfigFromFlags(flags); err != nil {
			return fail(1, "parsing config: %v", err)
		}
	}
	api, err := parseOptions(first(flags["api-socket"]), "path", "fd")
	if err != nil || api["path"] == "" {
		return fail(1, "parsing --api-socket: %v", err)
	}
	v, err := NewValidator()
	if err != nil {
		return fail(1, "%v", err)
	}
	vm := NewVM(cfg)
	os.Remove(api["path"])
	ln, err := net.Listen("unix", api["path"])
	if err != nil {
		return fail(1, "creating API socket: %v", err)
	}
	defer os.Remove(api["path"])
	if cfg != nil {
		if err := vm.boot("booted"); err != nil {
			return fail(1, "booting VM: %v", err)
		}
	}
	srv := &http.Server{Handler: v.Wrap(vm.Handler())}
	go srv.Serve(ln)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-sig:
		return 0
	case code := <-vm.Exit:
		time.Sleep(20 * time.Millisecond) // let the last answer leave
		return code
	}
}

// parseCLI splits argv the way CH's clap definition does for the options
// Volant uses: each takes one value, --disk and --net one or more.
func parseCLI(args []string) (map[string][]string, error) {
	single := map[string]bool{"api-socket": true, "cpus": true, "memory": true, "kernel": true,
		"initramfs": true, "cmdline": true, "serial": true, "console": true, "vsock": true, "seccomp": true}
	multi := map[string]bool{"disk": true, "net": true, "landlock-rules": true}
	flag := map[string]bool{"landlock": true} // takes no value (clap's SetTrue)
	out := map[string][]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, ok := strings.CutPrefix(a, "--")
		if ok && flag[name] {
			out[name] = []string{"true"}
			continue
		}
		if !ok || !(single[name] || multi[name]) {
			return nil, fmt.Errorf("unexpected argument '%s' found", a)
		}
		if single[name] && len(out[name]) > 0 {
			return nil, fmt.Errorf("the argument '--%s' cannot be used multiple times", name)
		}
		n := 0
		for i+1 < len(args) && !strings.HasPrefix(args[i+1], "--") {
			i++
			out[name] = append(out[name], args[i])
			n++
			if single[name] {
				break
			}
		}
		if n == 0 {
			return nil, fmt.Errorf("a value is required for '--%s'", name)
		}
	}
	if len(out["kernel"]) == 0 && !(len(out) == 1 && len(out["api-socket"]) == 1) {
		// With --api-socket alone CH starts without a VM (one is created
		// or restored through the API).
		return nil, errors.New("the following required arguments were not provided: --kernel")
	}
	return out, nil
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// parseOptions is CH's option_parser: split on commas outside quotes and
// brackets (a quote toggles and is dropped), key=value, unknown keys fail.
func parseOptions(s string, keys ...string) (map[string]string, error) {
	known := map[string]bool{}
	for _, k := range keys {
		known[k] = true
	}
	var parts []string
	var cur strings.Builder
	depth, quoted := 0, false
	for _, c := range strings.TrimSpace(s) {
		switch {
		case c == '[':
			depth++
			cur.WriteRune(c)
		case c == ']':
			depth--
			if depth < 0 {
				return nil, fmt.Errorf("invalid syntax: %s", s)
			}
			cur.WriteRune(c)
		case c == '"':
			quoted = !quoted
		case c == ',' && depth == 0 && !quoted:
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteRune(c)
		}
	}
	parts = append(parts, cur.String())
	if depth != 0 || quoted {
		return nil, fmt.Errorf("invalid syntax: %s", s)
	}
	out := map[string]string{}
	for _, p := range parts {
		if strings.TrimSpace(s) == "" {
			break
		}
		k, v, ok := strings.Cut(p, "=")
		if !known[k] {
			return nil, fmt.Errorf("unknown option: %s", k)
		}
		if !ok {
			return nil, fmt.Errorf("invalid syntax: %s", p)
		}
		out[k] = strings.TrimSpace(v)
	}
	return out, nil
}

func toggle(v string) (bool, error) {
	switch strings.ToLower(v) {
	case "", "off", "false":
		return false, nil
	case "on", "true":
		return true, nil
	}
	return false, fmt.Errorf("invalid value: %s", v)
}

func byteSize(v string) (int64, error) {
	shift := 0
	switch {
	case strings.HasSuffix(v, "K"):
		shift = 10
	case strings.HasSuffix(v, "M"):
		shift = 20
	case strings.HasSuffix(v, "G"):
		shift = 30
	}
	n, err := strconv.ParseInt(strings.TrimRight(v, "KMG"), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid value: %s", v)
	}
	return n << shift, nil
}

// VMConfig is the VmConfig of the OpenAPI document, as far as the fake fills it.
type VMConfig struct {
	Cpus    map[string]any   `json:"cpus"`
	Memory  map[string]any   `json:"memory"`
	Payload map[string]any   `json:"payload"`
	Disks   []map[string]any `json:"disks,omitempty"`
	Net     []map[string]any `json:"net,omitempty"`
	Serial  map[string]any   `json:"serial"`
	Console map[string]any   `json:"console"`
	Vsock   map[string]any   `json:"vsock,omitempty"`
	// LandlockEnable and LandlockRules are --landlock and --landlock-rules.
	LandlockEnable bool             `json:"landlock_enable,omitempty"`
	LandlockRules  []map[string]any `json:"landlock_rules,omitempty"`
	// Seccomp is --seccomp (not part of VmConfig: the fake keeps it for
	// tests, outside the JSON it serves).
	Seccomp string `json:"-"`
}

// VMConfigFromFlags builds the VmConfig CH would from parsed flags.
func VMConfigFromFlags(f map[string][]string) (*VMConfig, error) {
	c := &VMConfig{Payload: map[string]any{}}
	mustExist := func(what, p string) error {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%s %s: %w", what, p, err)
		}
		return nil
	}
	if err := mustExist("kernel", first(f["kernel"])); err != nil {
		return nil, err
	}
	c.Payload["kernel"] = first(f["kernel"])
	if v := first(f["initramfs"]); v != "" {
		if err := mustExist("initramfs", v); err != nil {
			return nil, err
		}
		c.Payload["initramfs"] = v
	}
	if v := first(f["cmdline"]); v != "" {
		c.Payload["cmdline"] = v
	}
	cpus, err := parseOptions(or(first(f["cpus"]), "boot=1"), "boot", "max", "topology", "kvm_hyperv", "max_phys_bits", "affinity", "features", "nested", "core_scheduling")
	if err != nil {
		return nil, fmt.Errorf("--cpus: %w", err)
	}
	boot, err := strconv.Atoi(or(cpus["boot"], "1"))
	if err != nil || boot < 1 {
		return nil, fmt.Errorf("--cpus: invalid boot=%q", cpus["boot"])
	}
	c.Cpus = map[string]any{"boot_vcpus": boot, "max_vcpus": boot}
	mem, err := parseOptions(or(first(f["memory"]), "size=512M"), "size", "mergeable", "shared", "hugepages", "hugepage_size", "hotplug_method", "hotplug_size", "hotplugged_size", "prefault", "thp")
	if err != nil {
		return nil, fmt.Errorf("--memory: %w", err)
	}
	size, err := byteSize(mem["size"])
	if err != nil {
		return nil, fmt.Errorf("--memory: %w", err)
	}
	c.Memory = map[string]any{"size": size}
	for _, d := range f["disk"] {
		o, err := parseOptions(d, "path", "readonly", "direct", "iommu", "num_queues", "queue_size", "vhost_user", "socket",
			"bw_size", "bw_one_time_burst", "bw_refill_time", "ops_size", "ops_one_time_burst", "ops_refill_time",
			"id", "pci_segment", "pci_device_id", "rate_limit_group", "queue_affinity", "serial", "backing_files", "sparse", "image_type", "lock_granularity")
		if err != nil {
			return nil, fmt.Errorf("--disk: %w", err)
		}
		if err := mustExist("disk", o["path"]); err != nil {
			return nil, err
		}
		ro, err := toggle(o["readonly"])
		if err != nil {
			return nil, fmt.Errorf("--disk readonly: %w", err)
		}
		it := map[string]string{"": "Raw", "raw": "Raw", "qcow2": "Qcow2", "vhd": "FixedVhd", "vhdx": "Vhdx"}[o["image_type"]]
		if it == "" {
			return nil, fmt.Errorf("--disk: invalid image_type %q", o["image_type"])
		}
		disk := map[string]any{"path": o["path"], "readonly": ro, "image_type": it, "id": o["id"]}
		if o["serial"] != "" {
			disk["serial"] = o["serial"]
		}
		c.Disks = append(c.Disks, disk)
	}
	for _, n := range f["net"] {
		o, err := parseOptions(n, "tap", "ip", "mask", "mac", "host_mac", "mtu", "iommu", "queue_size", "num_queues", "vhost_user", "socket", "vhost_mode", "id", "fd",
			"bw_size", "bw_one_time_burst", "bw_refill_time", "ops_size", "ops_one_time_burst", "ops_refill_time", "pci_segment", "pci_device_id", "offload_tso", "offload_ufo", "offload_csum")
		if err != nil {
			return nil, fmt.Errorf("--net: %w", err)
		}
		if _, err := net.ParseMAC(o["mac"]); o["mac"] != "" && err != nil {
			return nil, fmt.Errorf("--net: invalid mac %q", o["mac"])
		}
		c.Net = append(c.Net, map[string]any{"tap": o["tap"], "mac": o["mac"], "id": o["id"]})
	}
	var err2 error
	if c.Serial, err2 = consoleConfig(or(first(f["serial"]), "null"), true); err2 != nil {
		return nil, fmt.Errorf("--serial: %w", err2)
	}
	if c.Console, err2 = consoleConfig(or(first(f["console"]), "tty"), false); err2 != nil {
		return nil, fmt.Errorf("--console: %w", err2)
	}
	if v := first(f["vsock"]); v != "" {
		o, err := parseOptions(v, "cid", "socket", "iommu", "id", "pci_segment")
		if err != nil {
			return nil, fmt.Errorf("--vsock: %w", err)
		}
		cid, err := strconv.Atoi(o["cid"])
		if err != nil || cid < 3 || o["socket"] == "" {
			return nil, fmt.Errorf("--vsock: cid (>= 3) and socket are required, got %q", v)
		}
		c.Vsock = map[string]any{"cid": cid, "socket": o["socket"]}
	}
	switch v := or(first(f["seccomp"]), "true"); v {
	case "true", "false", "log":
		c.Seccomp = v
	default:
		return nil, fmt.Errorf("--seccomp: invalid value %q (true, false or log)", v)
	}
	c.LandlockEnable = first(f["landlock"]) == "true"
	for _, r := range f["landlock-rules"] {
		o, err := parseOptions(r, "path", "access")
		if err != nil {
			return nil, fmt.Errorf("--landlock-rules: %w", err)
		}
		if o["path"] == "" || strings.Trim(o["access"], "rw") != "" || o["access"] == "" {
			return nil, fmt.Errorf("--landlock-rules: path and access (r, w or rw) are required, got %q", r)
		}
		if !c.LandlockEnable {
			return nil, errors.New("--landlock-rules needs --landlock")
		}
		c.LandlockRules = append(c.LandlockRules, map[string]any{"path": o["path"], "access": o["access"]})
	}
	return c, nil
}

// consoleConfig parses off|null|pty|tty|file=PATH (and socket=PATH for the
// serial port).
func consoleConfig(s string, socketOK bool) (map[string]any, error) {
	modes := map[string]string{"off": "Off", "null": "Null", "pty": "Pty", "tty": "Tty"}
	if m, ok := modes[s]; ok {
		return map[string]any{"mode": m}, nil
	}
	keys := []string{"file", "iommu"}
	if socketOK {
		keys = []string{"file", "socket"}
	}
	o, err := parseOptions(s, keys...)
	if err != nil {
		return nil, err
	}
	switch {
	case o["file"] != "" && o["socket"] != "":
		return nil, errors.New("file and socket are exclusive")
	case o["file"] != "":
		return map[string]any{"mode": "File", "file": o["file"]}, nil
	case o["socket"] != "":
		return map[string]any{"mode": "Socket", "socket": o["socket"]}, nil
	}
	return nil, fmt.Errorf("invalid value %q", s)
}

func or(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// VM is the fake's VM state machine and API.
type VM struct {
	cfg   *VMConfig
	mu    sync.Mutex
	state string
	// Exit receives the process exit code when the VMM should end.
	Exit chan int
}

// NewVM returns a running VM for cfg; with a nil cfg, a VMM without a VM.
func NewVM(cfg *VMConfig) *VM {
	vm := &VM{cfg: cfg, state: "Running", Exit: make(chan int, 4)}
	if cfg == nil {
		vm.state = ""
	}
	return vm
}

// SetState forces the VM's state (Created, Running, Paused, Shutdown).
func (vm *VM) SetState(s string) {
	vm.mu.Lock()
	vm.state = s
	vm.mu.Unlock()
}

// boot writes the guest's first console line where --serial says, and
// serves the vsock device's host socket.
func (vm *VM) boot(how string) error {
	if vm.cfg.Vsock != nil {
		if err := serveVsock(vm.cfg.Vsock["socket"].(string)); err != nil {
			return err
		}
	}
	line := fmt.Sprintf("fake cloud-hypervisor guest: %s with %q\n", how, vm.cfg.Payload["cmdline"])
	switch vm.cfg.Serial["mode"] {
	case "File":
		f, err := os.OpenFile(vm.cfg.Serial["file"].(string), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = f.WriteString(line)
		return err
	case "Socket":
		p := vm.cfg.Serial["socket"].(string)
		ln, err := net.Listen("unix", p)
		if err != nil {
			return err
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Write([]byte(line))
				go io.Copy(c, c) // the guest's console echoes what is typed
			}
		}()
	}
	return nil
}

// Handler serves CH's API for this VM.
func (vm *VM) Handler() http.Handler {
	mux := http.NewServeMux()
	jsonOK := func(w http.ResponseWriter, v any) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(v)
	}
	// transition answers 204 and moves from one of the states in from to
	// to, or answers 405 (not in a state the operation applies to).
	transition := func(to string, from ...string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			vm.mu.Lock()
			defer vm.mu.Unlock()
			for _, f := range from {
				if vm.state == f {
					vm.state = to
					w.WriteHeader(http.StatusNoContent)
					return
				}
			}
			w.WriteHeader(http.StatusMethodNotAllowed)
		}
	}
	mux.HandleFunc("GET /api/v1/vmm.ping", func(w http.ResponseWriter, r *http.Request) {
		jsonOK(w, map[string]any{"version": "v53.0", "build_version": "v53.0-fake", "pid": os.Getpid(), "features": []string{"kvm"}})
	})
	mux.HandleFunc("GET /api/v1/vm.info", func(w http.ResponseWriter, r *http.Request) {
		vm.mu.Lock()
		defer vm.mu.Unlock()
		if vm.cfg == nil {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		jsonOK(w, map[string]any{"config": vm.cfg, "state": vm.state, "memory_actual_size": vm.cfg.Memory["size"]})
	})
	mux.HandleFunc("GET /api/v1/vm.counters", func(w http.ResponseWriter, r *http.Request) {
		c := map[string]map[string]int64{}
		for _, d := range vm.cfg.Disks {
			c["_"+d["id"].(string)] = map[string]int64{"read_bytes": 4096, "write_bytes": 0, "read_ops": 1, "write_ops": 0}
		}
		for _, n := range vm.cfg.Net {
			c["_"+n["id"].(string)] = map[string]int64{"rx_bytes": 0, "rx_frames": 0, "tx_bytes": 0, "tx_frames": 0}
		}
		jsonOK(w, c)
	})
	mux.HandleFunc("PUT /api/v1/vm.pause", transition("Paused", "Running"))
	mux.HandleFunc("PUT /api/v1/vm.resume", transition("Running", "Paused"))
	mux.HandleFunc("PUT /api/v1/vm.shutdown", transition("Shutdown", "Running", "Paused"))
	mux.HandleFunc("PUT /api/v1/vm.power-button", func(w http.ResponseWriter, r *http.Request) {
		vm.mu.Lock()
		running := vm.state == "Running"
		vm.mu.Unlock()
		if !running {
			w.WriteHeader(http.StatusMethodNotAllowed)
			return
		}
		w.WriteHeader(http.StatusNoContent)
		if os.Getenv("FAKE_CH_GUEST") == "deaf" {
			return // a guest without an ACPI button driver ignores it
		}
		// The guest handles the button and powers off; CH then exits.
		go func() {
			time.Sleep(100 * time.Millisecond)
			vm.mu.Lock()
			vm.state = "Shutdown"
			vm.mu.Unlock()
			vm.Exit <- 0
		}()
	})
	mux.HandleFunc("PUT /api/v1/vm.snapshot", vm.snapshot)
	mux.HandleFunc("PUT /api/v1/vm.restore", vm.restore)
	mux.HandleFunc("PUT /api/v1/vmm.shutdown", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
		go func() { vm.Exit <- 0 }()
	})
	return mux
}
