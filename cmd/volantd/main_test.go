package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/cli"
	"github.com/volantvm/volant/lib/cli/clitest"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/server"
	"github.com/volantvm/volant/lib/testutil/guesttest"
	"github.com/volantvm/volant/lib/vmm/cloudhypervisor/chtest"
)

// The test binary is also volantd (for processes the tests start and
// kill) and the fake cloud-hypervisor (for the VMs volant-launch runs).
func TestMain(m *testing.M) {
	switch filepath.Base(os.Args[0]) {
	case "volantd":
		cli.Main(run)
	case chtest.Name:
		os.Exit(chtest.Main(os.Args[1:]))
	}
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

// bins returns a directory holding volantd and cloud-hypervisor (this test
// binary under those names) and a volant-launch built from this checkout
// ($VOLANT_BIN/volant-launch when the Makefile provides it).
func bins(t testing.TB) string {
	t.Helper()
	launcher := guesttest.Command(t, "volant-launch")
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "volantd-bins-")
		if binErr != nil {
			return
		}
		self, err := os.Executable()
		if err != nil {
			binErr = err
			return
		}
		for _, n := range []string{"volantd", chtest.Name} {
			if binErr = os.Symlink(self, filepath.Join(binDir, n)); binErr != nil {
				return
			}
		}
		binErr = os.Symlink(launcher, filepath.Join(binDir, "volant-launch"))
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binDir
}

// daemon is a volantd process.
type volantdProc struct {
	t      testing.TB
	cmd    *exec.Cmd
	sock   string
	log    string
	c      *client.Client
	done   chan struct{}
	exitMu sync.Mutex
	exit   error
}

// startDaemon runs volantd with args (and the socket, database and data
// dir in dir) as cmd's process; wrap lets a test run it elsewhere (ip
// netns exec ...). It returns once the daemon answers /healthz.
func startDaemon(t testing.TB, dir string, wrap []string, env []string, args ...string) *volantdProc {
	t.Helper()
	return startDaemonFiles(t, dir, wrap, nil, env, args...)
}

// startDaemonFiles is startDaemon whose process (wrap's first program)
// inherits files from fd 3 on (a kvmtest stand-in's FUSE device).
func startDaemonFiles(t testing.TB, dir string, wrap []string, files []*os.File, env []string, args ...string) *volantdProc {
	t.Helper()
	return startDaemonFrom(t, bins(t), dir, wrap, files, env, args...)
}

// startDaemonFrom is startDaemonFiles with the volantd, cloud-hypervisor
// and volant-launch of directory b.
func startDaemonFrom(t testing.TB, b, dir string, wrap []string, files []*os.File, env []string, args ...string) *volantdProc {
	t.Helper()
	sock := filepath.Join(dir, "volantd.sock")
	argv := append(append([]string{}, wrap...), filepath.Join(b, "volantd"),
		"--socket", sock, "--data-dir", filepath.Join(dir, "data"), "--run-root", filepath.Join(dir, "run"),
		"--launcher", filepath.Join(b, "volant-launch"))
	argv = append(argv, args...)
	d := &volantdProc{t: t, sock: sock, log: filepath.Join(dir, fmt.Sprintf("volantd-%d.log", time.Now().UnixNano())), done: make(chan struct{})}
	logf, err := os.Create(d.log)
	if err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command(argv[0], argv[1:]...)
	d.cmd.Env = append(append(os.Environ(), "PATH="+b+":"+os.Getenv("PATH")), env...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	d.cmd.ExtraFiles = files
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := d.cmd.Wait()
		logf.Close()
		d.exitMu.Lock()
		d.exit = err
		d.exitMu.Unlock()
		close(d.done)
	}()
	t.Cleanup(func() {
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(15 * time.Second):
			d.cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			b, _ := os.ReadFile(d.log)
			t.Logf("volantd log %s:\n%s", d.log, tail(string(b), 80))
		}
	})
	d.c, err = client.New(sock, client.Options{Timeout: 90 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	d.waitReady(60 * time.Second)
	return d
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (d *volantdProc) waitReady(timeout time.Duration) {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		h, err := d.c.Health(context.Background())
		if err == nil && h.Ready {
			return
		}
		select {
		case <-d.done:
			b, _ := os.ReadFile(d.log)
			d.t.Fatalf("volantd exited: %v\n%s", d.exit, tail(string(b), 40))
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("volantd not ready after %s: %v", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (d *volantdProc) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

func TestContract(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"tcp without a token", []string{"--listen", "127.0.0.1:0", "--socket", ""}, 2, `"code":"USAGE"`},
		{"nothing to listen on", []string{"--socket", ""}, 2, `"code":"USAGE"`},
		{"metrics on tcp without a token", []string{"--metrics-listen", "127.0.0.1:0", "--socket", "/nonexistent/x.sock"}, 2, `--metrics-no-auth`},
		{"metrics-no-auth alone", []string{"--metrics-no-auth", "--socket", "/nonexistent/x.sock"}, 2, `applies only to --metrics-listen`},
		{"nat and no-nat", []string{"--nat", "--no-nat"}, 2, `--nat and --no-nat contradict`},
		{"bad runner", []string{"--vm-runner", "docker"}, 2, `"code":"USAGE"`},
		{"bad subnet", []string{"--subnet", "300.1.1.0/24", "--socket", "/nonexistent/x.sock"}, 3, `"code":"INVALID_INPUT"`},
		{"unknown verb", []string{"frobnicate"}, 2, `"code":"USAGE"`},
		{"stray argument", []string{"serve", "extra"}, 2, `"code":"USAGE"`},
		{"argument to version", []string{"version", "extra"}, 2, `unexpected argument \"extra\"`},
		{"flag given twice", []string{"--socket", "/nonexistent/a.sock", "--socket", "/nonexistent/b.sock"}, 2, `--socket given twice`},
		{"one-character token", safe(t, "--listen", "127.0.0.1:0", "--socket", "", "--token", "x"), 2, `128 bits`},
		{"short hex token", safe(t, "--listen", "127.0.0.1:0", "--socket", "", "--token", "0123456789abcdef0123"), 2, `128 bits`},
		{"token of one repeated character", safe(t, "--listen", "127.0.0.1:0", "--socket", "", "--token", strings.Repeat("a", 64)), 2, `128 bits`},
		{"token with a space", safe(t, "--listen", "127.0.0.1:0", "--socket", "", "--token", "Zk3vQ9 xLm2Rt7Wp4Ys8Nb6Hd1Jc5Fg0"), 2, `"code":"USAGE"`},
		{"weak token in a file", safe(t, "--listen", "127.0.0.1:0", "--socket", "", "--token-file", writeTemp(t, "tok\n")), 2, `128 bits`},
		{"missing token file", safe(t, "--listen", "127.0.0.1:0", "--socket", "", "--token-file", "/nonexistent/token"), 2, `"code":"USAGE"`},
		{"token and token file", safe(t, "--listen", "127.0.0.1:0", "--socket", "", "--token", testToken, "--token-file", writeTemp(t, testToken)), 2, `"code":"USAGE"`},
		{"relative artifact dir", safe(t, "--artifact-dir", "plugins", "--socket", "/nonexistent/x.sock"), 2, `"code":"USAGE"`},
		{"a fledge that is not there", safe(t, "--fledge", "/nonexistent/fledge", "--socket", "/nonexistent/x.sock"), 9, `fledge binary \"/nonexistent/fledge\"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := clitest.Run(t, run, "", nil, tc.args...)
			if res.Code != tc.code || !strings.Contains(res.Stderr, tc.want) {
				t.Fatalf("exit %d, stderr %s", res.Code, res.Stderr)
			}
			if res.Stdout != "" {
				t.Fatalf("stdout not empty: %s", res.Stdout)
			}
		})
	}
	res := clitest.Run(t, run, "", nil, "version")
	if res.Code != 0 || !strings.Contains(res.Stdout, `"kind":"volantd.version"`) {
		t.Fatalf("version: %+v", res)
	}
	res = clitest.Run(t, run, "", nil, "openapi")
	want, _ := server.New(nil, server.Options{}).OpenAPI()
	if res.Code != 0 || strings.TrimSpace(res.Stdout) != string(want) {
		t.Fatalf("openapi: exit %d", res.Code)
	}
	res = clitest.Run(t, run, "", nil, "mcp", "--host", filepath.Join(t.TempDir(), "none.sock"))
	if res.Code != 9 || !strings.Contains(res.Stderr, `"code":"UNAVAILABLE"`) {
		t.Fatalf("mcp without a daemon: %+v", res)
	}
}

// safe appends to serve's args what keeps a case that gets past
// validation from touching the host: no bridge, no agent listener, no
// state outside the test, no launcher (so it ends at once).
func safe(t *testing.T, args ...string) []string {
	return append(args, "--no-network-setup", "--agent-listen", "off", "--data-dir", t.TempDir(), "--run-root", t.TempDir(),
		"--launcher", "/nonexistent/volant-launch")
}

// testToken is a token of 128 random bits (hex).
const testToken = "5f0c2e8a9b71d4636e02a1f9c8b3d7e4"

// writeTemp writes s to a new file and returns its path.
func writeTemp(t *testing.T, s string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDaemonProcess runs volantd as a process without a network (no VMs):
// socket mode, a refused second daemon, TCP with a token, SIGTERM.
func TestDaemonProcess(t *testing.T) {
	dir := t.TempDir()
	d := startDaemon(t, dir, nil, nil, "--no-network-setup", "--agent-listen", "off", "--listen", "127.0.0.1:0", "--insecure-tcp", "--token", testToken)
	// A token on the command line is in every user's ps: volantd says so.
	if b, _ := os.ReadFile(d.log); !strings.Contains(string(b), "--token-file") {
		t.Errorf("no warning about --token in the log:\n%s", b)
	}
	st, err := os.Stat(d.sock)
	if err != nil || st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o660 {
		t.Fatalf("socket %v: %v", st.Mode(), err)
	}
	ctx := context.Background()
	if ps, err := d.c.ListPlugins(ctx); err != nil || len(ps) != 0 {
		t.Fatalf("plugins: %v %v", ps, err)
	}
	if _, err := d.c.Plugin(ctx, "x"); !apierr.Is(err, apierr.NotFound) {
		t.Fatalf("unknown plugin: %v", err)
	}
	// A second daemon on the same socket is refused.
	second := exec.Command(filepath.Join(bins(t), "volantd"), "--socket", d.sock, "--data-dir", filepath.Join(dir, "data2"), "--no-network-setup", "--agent-listen", "off")
	out, err := second.CombinedOutput()
	if err == nil || !strings.Contains(string(out), `"code":"CONFLICT"`) {
		t.Fatalf("second daemon: %v %s", err, out)
	}
	// SIGTERM: exit 0, socket gone.
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(15 * time.Second):
		t.Fatal("volantd did not exit on SIGTERM")
	}
	if d.exit != nil {
		t.Fatalf("exit: %v", d.exit)
	}
	if _, err := os.Stat(d.sock); !os.IsNotExist(err) {
		t.Fatalf("socket left behind: %v", err)
	}
}

// TestSocketActivation starts volantd through systemd-socket-activate on
// a unix socket and a TCP port, as volantd.socket would, and checks that
// it serves them (TCP only with the token) and reports READY=1.
func TestSocketActivation(t *testing.T) {
	if _, err := exec.LookPath("systemd-socket-activate"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("systemd-socket-activate is not installed")
		}
		t.Skip("systemd-socket-activate is not installed")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "activated.sock")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	notify := filepath.Join(dir, "notify.sock")
	nl, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	b := bins(t)
	cmd := exec.Command("systemd-socket-activate", "-l", sock, "-l", fmt.Sprintf("127.0.0.1:%d", port),
		"-E", "NOTIFY_SOCKET="+notify, "-E", "VOLANT_TOKEN="+testToken, "-E", "VOLANT_INSECURE_TCP=1",
		filepath.Join(b, "volantd"), "--socket", filepath.Join(dir, "unused.sock"), "--data-dir", filepath.Join(dir, "data"),
		"--run-root", filepath.Join(dir, "run"), "--no-network-setup", "--agent-listen", "off", "--launcher", filepath.Join(b, "volant-launch"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Logf("output:\n%s", out.String())
		}
	}()
	waitPath(t, sock)
	// The first connection starts volantd, which then serves the passed
	// socket. The path exists once systemd-socket-activate has bound it,
	// a moment before it listens: until then a connect is refused.
	c, _ := client.New(sock, client.Options{Timeout: 30 * time.Second})
	var h *api.Health
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		h, err = c.Health(context.Background())
		if !errors.Is(err, syscall.ECONNREFUSED) || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || !h.Ready {
		t.Fatalf("health over the activated socket: %+v %v", h, err)
	}
	// READY=1 arrives on NOTIFY_SOCKET.
	nl.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	var states []string
	for !strings.Contains(strings.Join(states, "\n"), "READY=1") {
		n, _, err := nl.ReadFromUnix(buf)
		if err != nil {
			t.Fatalf("no READY=1 (got %q): %v", states, err)
		}
		states = append(states, string(buf[:n]))
	}
	// It did not open its own socket; the activated TCP port needs the token.
	if _, err := os.Stat(filepath.Join(dir, "unused.sock")); !os.IsNotExist(err) {
		t.Fatalf("volantd opened --socket despite activation: %v", err)
	}
	tc, _ := client.New(fmt.Sprintf("http://127.0.0.1:%d", port), client.Options{})
	if _, err := tc.ListVMs(context.Background(), api.VMFilter{}); !apierr.Is(err, apierr.Unauthorized) {
		t.Fatalf("activated TCP without a token: %v", err)
	}
	tc, _ = client.New(fmt.Sprintf("http://127.0.0.1:%d", port), client.Options{Token: testToken})
	if _, err := tc.ListVMs(context.Background(), api.VMFilter{}); err != nil {
		t.Fatalf("activated TCP with the token: %v", err)
	}
}

func waitPath(t *testing.T, p string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(p); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear", p)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSocketActivationWithoutTokenRefusesTCP: a TCP socket passed by
// systemd is refused without a token, like --listen.
func TestSocketActivationRefusesTCPWithoutToken(t *testing.T) {
	if _, err := exec.LookPath("systemd-socket-activate"); err != nil {
		t.Skip("systemd-socket-activate is not installed")
	}
	dir := t.TempDir()
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	b := bins(t)
	cmd := exec.Command("systemd-socket-activate", "-l", fmt.Sprintf("127.0.0.1:%d", port),
		filepath.Join(b, "volantd"), "--data-dir", filepath.Join(dir, "data"), "--no-network-setup", "--agent-listen", "off")
	cmd.Env = append(os.Environ(), "VOLANT_TOKEN=")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Trigger the start.
	var conn net.Conn
	for i := 0; i < 100; i++ {
		if conn, _ = net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); conn != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if conn == nil {
		t.Fatal("cannot connect")
	}
	conn.Close()
	err := cmd.Wait()
	if err == nil || !strings.Contains(out.String(), "refusing to serve the API on TCP without a token") {
		t.Fatalf("exit %v:\n%s", err, out.String())
	}
}

// readJSONLines decodes JSON objects, one per line.
func readJSONLines(t *testing.T, data []byte) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}
