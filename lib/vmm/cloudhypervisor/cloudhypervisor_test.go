package cloudhypervisor

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/cli/clitest"
	"github.com/volantvm/volant/lib/vmm"
	"github.com/volantvm/volant/lib/vmm/cloudhypervisor/chtest"
	"github.com/volantvm/volant/lib/vmm/vmmtest"
)

func TestMain(m *testing.M) {
	if chtest.Impersonating() {
		os.Exit(chtest.Main(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func base() vmm.Config {
	return vmm.Config{
		Name: "web-1", CPUs: 2, MemoryMB: 256,
		Kernel:    "/var/lib/volant/kernel/vmlinux",
		Initramfs: "/run/volant/vms/web-1/initrd.cpio",
		Cmdline:   "console=ttyS0 volant.vm=web-1",
		APISocket: "/run/volant/vms/web-1/api.sock",
		Serial:    vmm.Serial{LogFile: "/var/lib/volant/vms/web-1/serial.log"},
		Disks:     []vmm.Disk{{Path: "/var/lib/volant/plugins/nginx/rootfs.img"}, {Path: "/data/ref,1.qcow2", Format: "qcow2", ReadOnly: true}},
		Nets:      []vmm.Net{{Tap: "vt-web-1", MAC: "02:a1:b2:c3:d4:e5"}},
		Accel:     vmm.AccelKVM,
	}
}

func TestArgvGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*vmm.Config)
	}{
		{"spec-like", func(*vmm.Config) {}},
		{"console-socket-no-disks", func(c *vmm.Config) {
			c.Serial = vmm.Serial{Socket: "/run/volant/vms/web-1/console.sock"}
			c.Disks, c.Initramfs = nil, ""
		}},
		{"serial-null", func(c *vmm.Config) { c.Serial = vmm.Serial{}; c.Nets = nil }},
		{"agent-vsock", func(c *vmm.Config) { c.AgentSocket = "/run/volant/vms/web-1/agent.vsock" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base()
			tc.mod(&cfg)
			argv, err := Argv(DefaultBinary, cfg)
			if err != nil {
				t.Fatal(err)
			}
			clitest.Golden(t, "argv-"+tc.name, strings.Join(argv, "\n")+"\n")
		})
	}
}

func TestArgvRefusesEarly(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*vmm.Config)
		code apierr.Code
		want string
	}{
		{"tcg", func(c *vmm.Config) { c.Accel = vmm.AccelTCG }, apierr.NotSupported, "TCG"},
		{"machine", func(c *vmm.Config) { c.Machine = "pc" }, apierr.NotSupported, "machine"},
		{"agent socket with a quote", func(c *vmm.Config) { c.AgentSocket = `/run/a"b.sock` }, apierr.InvalidInput, "agent_socket"},
		{"logged socket", func(c *vmm.Config) { c.Serial.Socket = "/run/c.sock" }, apierr.NotSupported, "both logged"},
		{"quote in path", func(c *vmm.Config) { c.Disks[0].Path = `/a"b` }, apierr.InvalidInput, "cannot carry"},
		{"bracket in tap", func(c *vmm.Config) { c.Nets[0].Tap = "t[0]" }, apierr.InvalidInput, "cannot carry"},
		{"bad mac", func(c *vmm.Config) { c.Nets[0].MAC = "zz" }, apierr.InvalidInput, "not a MAC"},
		{"unresolved accel", func(c *vmm.Config) { c.Accel = vmm.AccelAuto }, apierr.InvalidInput, "resolved"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base()
			tc.mod(&cfg)
			_, err := Argv(DefaultBinary, cfg)
			if !apierr.Is(err, tc.code) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %s mentioning %q", err, tc.code, tc.want)
			}
			if tc.code == apierr.NotSupported && !errors.Is(err, vmm.ErrNotSupported) {
				t.Fatal("NOT_SUPPORTED error does not wrap vmm.ErrNotSupported")
			}
		})
	}
}

// serve runs handler behind the OpenAPI validator on a unix socket.
func serve(t *testing.T, h http.Handler) (string, *chtest.Validator) {
	t.Helper()
	v, err := chtest.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: v.Wrap(h)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock, v
}

// Every request the client can send is one of CH's documented operations,
// with a valid method, path, host and body (none, or one naming only
// documented fields); every answer the fake gives is a documented
// response. The snapshot taken of the paused VM is restored by a second
// VMM, started without a VM, as volant-launch restores a clone.
func TestClientRequestsMatchOpenAPI(t *testing.T) {
	cfg, err := chtest.VMConfigFromFlags(map[string][]string{"kernel": {os.Args[0]}, "cmdline": {"console=ttyS0"},
		"disk": {"path=" + os.Args[0] + ",id=disk0"}, "net": {"tap=vt0,mac=02:00:00:00:00:01,id=net0"}})
	if err != nil {
		t.Fatal(err)
	}
	vm := chtest.NewVM(cfg)
	sock, v := serve(t, vm.Handler())
	c := NewClient(sock)
	ctx := context.Background()
	snapDir := t.TempDir()
	steps := []struct {
		name string
		call func() error
	}{
		{"ping", func() error {
			r, err := c.Ping(ctx)
			if err == nil && r.Version == "" {
				err = errors.New("no version")
			}
			return err
		}},
		{"info", func() error {
			r, err := c.Info(ctx)
			if err == nil && r.State != "Running" {
				err = errors.New("state " + r.State)
			}
			return err
		}},
		{"counters", func() error {
			r, err := c.Counters(ctx)
			if err == nil && r["_disk0"]["read_bytes"] != 4096 {
				err = errors.New("counters not decoded")
			}
			return err
		}},
		{"pause", func() error { return c.Pause(ctx) }},
		{"snapshot", func() error { return c.Snapshot(ctx, "file://"+snapDir) }},
		{"resume", func() error { return c.Resume(ctx) }},
		{"power-button", func() error { return c.PowerButton(ctx) }},
		{"shutdown vm", func() error { return c.ShutdownVM(ctx) }},
		{"shutdown vmm", func() error { return c.ShutdownVMM(ctx) }},
	}
	for _, s := range steps {
		if err := s.call(); err != nil {
			t.Errorf("%s: %v", s.name, err)
		}
	}
	if vs := v.Violations(); len(vs) > 0 {
		t.Fatalf("OpenAPI violations:\n%s", strings.Join(vs, "\n"))
	}
	want := []string{"GET /vm.counters", "GET /vm.info", "GET /vmm.ping", "PUT /vm.pause", "PUT /vm.power-button",
		"PUT /vm.resume", "PUT /vm.shutdown", "PUT /vm.snapshot", "PUT /vmm.shutdown"}
	if got := v.Ops(); !reflect.DeepEqual(got, want) {
		t.Fatalf("operations exercised %v, want %v", got, want)
	}

	// vm.restore, every field the client has set, into a VMM without a VM.
	sock2, v2 := serve(t, chtest.NewVM(nil).Handler())
	c2 := NewClient(sock2)
	if err := c2.Restore(ctx, RestoreConfig{SourceURL: "file://" + snapDir, Prefault: true, Resume: true}); err != nil {
		t.Fatalf("restore: %v", err)
	}
	if r, err := c2.Info(ctx); err != nil || r.State != "Running" {
		t.Fatalf("the restored VM: %+v %v, want it running", r, err)
	}
	if vs := v2.Violations(); len(vs) > 0 {
		t.Fatalf("OpenAPI violations in the restore:\n%s", strings.Join(vs, "\n"))
	}
	if got, want := v2.Ops(), []string{"GET /vm.info", "PUT /vm.restore"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("operations exercised in the restore %v, want %v", got, want)
	}

	// A request in the wrong state gets CH's documented 405, which the
	// client reports as an APIError.
	vm.SetState("Shutdown")
	var ae *APIError
	if err := c.Pause(ctx); !errors.As(err, &ae) || ae.Status != http.StatusMethodNotAllowed {
		t.Fatalf("pause of a shut-down VM: %v", err)
	}
}

// The validator is what makes the test above able to fail: requests that
// are not in the document are caught.
func TestValidatorCatchesViolations(t *testing.T) {
	sock, v := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	for _, r := range []struct{ method, url, body string }{
		{"GET", "http://localhost/api/v1/vm.pause", ""},                                             // wrong method
		{"PUT", "http://localhost/api/v1/vm.stop", ""},                                              // no such operation
		{"PUT", "http://localhost/vm.pause", ""},                                                    // missing /api/v1
		{"PUT", "http://localhost/api/v1/vm.pause", `{"x":1}`},                                      // a body where none is taken
		{"GET", "http://localhost/api/v1/vmm.ping", ""},                                             // answer 204 is not documented
		{"PUT", "http://localhost/api/v1/vm.restore", `{"resume":true}`},                            // no source_url
		{"PUT", "http://localhost/api/v1/vm.restore", `{"source_url":"file:///s","prefualt":true}`}, // a misspelt field
		{"PUT", "http://localhost/api/v1/vm.snapshot", `{"destination":"file:///s"}`},               // none of its fields
	} {
		req, _ := http.NewRequest(r.method, r.url, strings.NewReader(r.body))
		if r.body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Errorf("%s %s %q passed validation with %d", r.method, r.url, r.body, resp.StatusCode)
		}
	}
	if n := len(v.Violations()); n != 8 {
		t.Fatalf("%d violations recorded, want 8: %v", n, v.Violations())
	}
}

func fakeHarness(t *testing.T) vmmtest.Harness {
	bin := chtest.Binary(t)
	kernel := filepath.Join(t.TempDir(), "vmlinux")
	os.WriteFile(kernel, []byte("not really a kernel"), 0o644)
	disk := filepath.Join(t.TempDir(), "root,fs.img") // a comma: quoting is exercised
	os.WriteFile(disk, make([]byte, 4096), 0o644)
	return vmmtest.Harness{
		Backend: &Backend{Binary: bin},
		Config: func(t testing.TB, dir string) vmm.Config {
			return vmm.Config{
				Name: "fake", CPUs: 2, MemoryMB: 128, Accel: vmm.AccelKVM,
				Kernel: kernel, Cmdline: "console=ttyS0 volant.vm=fake",
				APISocket: filepath.Join(dir, "api.sock"),
				Serial:    vmm.Serial{LogFile: filepath.Join(dir, "serial.log")},
				Disks:     []vmm.Disk{{Path: disk, ReadOnly: true}},
				Nets:      []vmm.Net{{Tap: "vt-fake", MAC: "02:00:00:00:00:07"}},
			}
		},
		PowerButtonStops: true,
		Timeout:          20 * time.Second,
	}
}

// TestConformance runs the shared backend suite against the fake CH.
func TestConformance(t *testing.T) {
	t.Run("guest-honours-power-button", func(t *testing.T) { vmmtest.Run(t, fakeHarness(t)) })
	t.Run("guest-ignores-power-button", func(t *testing.T) {
		h := fakeHarness(t)
		h.PowerButtonStops = false
		h.Env = append(os.Environ(), "FAKE_CH_GUEST=deaf")
		vmmtest.Run(t, h)
	})
}

// What the fake CH parsed from our argv is what we meant: the VmConfig it
// reports through vm.info matches the vmm.Config.
func TestFakeCHParsesOurArgv(t *testing.T) {
	h := fakeHarness(t)
	dir := t.TempDir()
	cfg := h.Config(t, dir)
	argv, err := h.Backend.Argv(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	c := NewClient(cfg.APISocket)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var info VMInfo
	for {
		if info, err = c.Info(ctx); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	var got struct {
		Cpus struct {
			BootVcpus int `json:"boot_vcpus"`
		} `json:"cpus"`
		Memory  struct{ Size int64 } `json:"memory"`
		Payload struct{ Kernel, Cmdline string }
		Disks   []struct {
			Path      string
			Readonly  bool
			ImageType string `json:"image_type"`
		}
		Net    []struct{ Tap, Mac string }
		Serial struct{ Mode, File string }
	}
	if err := json.Unmarshal(info.Config, &got); err != nil {
		t.Fatal(err)
	}
	if got.Cpus.BootVcpus != 2 || got.Memory.Size != 128<<20 || got.Payload.Kernel != cfg.Kernel || got.Payload.Cmdline != cfg.Cmdline ||
		len(got.Disks) != 1 || got.Disks[0].Path != cfg.Disks[0].Path || !got.Disks[0].Readonly || got.Disks[0].ImageType != "Raw" ||
		len(got.Net) != 1 || got.Net[0].Tap != "vt-fake" || got.Net[0].Mac != "02:00:00:00:00:07" ||
		got.Serial.Mode != "File" || got.Serial.File != cfg.Serial.LogFile {
		t.Fatalf("CH understood %+v from %q", got, argv)
	}
	log, _ := os.ReadFile(cfg.Serial.LogFile)
	if !strings.Contains(string(log), "booted") {
		t.Fatalf("serial log %q", log)
	}
}

// An unquoted comma in a path would split the option: the fake (CH's
// parser) refuses it, which is why Argv quotes.
func TestFakeCHRefusesUnquotedComma(t *testing.T) {
	h := fakeHarness(t)
	cfg := h.Config(t, t.TempDir())
	argv, _ := h.Backend.Argv(cfg)
	for i, a := range argv {
		if strings.HasPrefix(a, "path=\"") && strings.Contains(a, "root,fs.img") {
			argv[i] = strings.ReplaceAll(a, `"`, "")
		}
	}
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !strings.Contains(string(out), "unknown option") {
		t.Fatalf("fake CH accepted an unquoted comma: %v %s", err, out)
	}
}

func TestProbe(t *testing.T) {
	b := &Backend{Binary: filepath.Join(t.TempDir(), "cloud-hypervisor")}
	if a := b.Probe(context.Background()); a.Usable || !strings.Contains(a.Reason, "not found") {
		t.Fatalf("missing binary: %+v", a)
	}
	b = &Backend{Binary: chtest.Binary(t)}
	a := b.Probe(context.Background())
	// The binary is there; usability now depends on this host's KVM, and an
	// unusable KVM must be explained.
	if a.Binary == "" || (!a.Usable && a.Reason == "") {
		t.Fatalf("%+v", a)
	}
	t.Logf("cloud-hypervisor here: %+v", a)
}
