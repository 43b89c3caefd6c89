package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/controller/controllertest"
	"github.com/volantvm/volant/lib/server"
	"github.com/volantvm/volant/lib/store"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

var (
	npmOnce sync.Once
	npmErr  error
)

// mcpClientDir installs the TypeScript SDK in tests/mcp (npm ci: the
// versions in package-lock.json) once per test process.
func mcpClientDir(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("the MCP client test needs node and npm; skipped under -short")
	}
	for _, p := range []string{"node", "npm"} {
		if _, err := exec.LookPath(p); err != nil {
			netnstest.SkipOrFail(t, "%s is not installed", p)
		}
	}
	dir, err := filepath.Abs("../../tests/mcp")
	if err != nil {
		t.Fatal(err)
	}
	npmOnce.Do(func() {
		if _, err := os.Stat(filepath.Join(dir, "node_modules", "@modelcontextprotocol", "sdk", "package.json")); err == nil {
			return
		}
		cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			npmErr = err
			t.Logf("npm ci:\n%s", out)
		}
	})
	if npmErr != nil {
		t.Fatalf("npm ci: %v", npmErr)
	}
	return dir
}

// mcpDaemon is the API on in-memory fakes, over TCP with a token.
func mcpDaemon(t *testing.T) (*httptest.Server, *client.Client) {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := store.Open(ctx, filepath.Join(dir, "volant.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctl, err := controller.New(controller.Config{MaxBooting: -1, Store: st, DataDir: dir, Runtime: controllertest.NewRuntime(),
		Network: controllertest.NewNetwork(), Prober: controllertest.NewProber(), ReconcileInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { ctl.Run(ctx); close(done) }()
	ts := httptest.NewServer(server.New(ctl, server.Options{Token: "tok"}).Handler(true))
	t.Cleanup(func() {
		ts.CloseClientConnections()
		ts.Close()
		cancel()
		<-done
		st.Close()
	})
	c, _ := client.New(ts.URL, client.Options{Token: "tok"})
	art := filepath.Join(dir, "plugins", "web.cpio")
	os.MkdirAll(filepath.Dir(art), 0o755)
	os.WriteFile(art, []byte("web"), 0o644)
	for _, v := range []string{"2", "1"} { // 1, installed last, is the default
		m := `{"name":"web","version":"` + v + `","initramfs":{"url":"` + art + `"},"workload":{"entrypoint":["/app"]}}`
		if _, err := c.InstallPlugin(ctx, []byte(m), client.InstallOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.CreateDeployment(ctx, api.CreateDeploymentRequest{Name: "svc", Plugin: "web", Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	return ts, c
}

func runMCPClient(t *testing.T, dir string, env ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "mcp-client.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("MCP client: %v\nstdout: %s\nstderr: %s", err, out, stderr.String())
	}
	var sum struct {
		OK     bool `json:"ok"`
		Checks int  `json:"checks"`
	}
	if err := json.Unmarshal(out, &sum); err != nil || !sum.OK || sum.Checks < 15 {
		t.Fatalf("MCP client summary: %s (%v)", out, err)
	}
	t.Logf("MCP client: %s", strings.TrimSpace(string(out)))
}

// TestMCPOverHTTP: the official TypeScript SDK against /mcp.
func TestMCPOverHTTP(t *testing.T) {
	dir := mcpClientDir(t)
	ts, c := mcpDaemon(t)
	runMCPClient(t, dir, "MCP_TRANSPORT=http", "MCP_URL="+ts.URL+"/mcp", "MCP_TOKEN=tok", "MCP_VM=mcphttp")
	d, err := c.Deployment(context.Background(), "svc")
	if err != nil || d.Replicas != 2 {
		t.Fatalf("the scale did not reach the daemon: %+v %v", d, err)
	}
	// Without the token, /mcp is refused like the rest of the API.
	code, _ := httpStatus(ts.URL + "/mcp")
	if code != 401 {
		t.Fatalf("/mcp without a token: %d", code)
	}
}

// TestMCPOverStdio: the SDK spawns `volantd mcp`, which talks to the daemon
// through lib/client.
func TestMCPOverStdio(t *testing.T) {
	dir := mcpClientDir(t)
	ts, c := mcpDaemon(t)
	argv, _ := json.Marshal([]string{filepath.Join(bins(t), "volantd"), "mcp", "--host", ts.URL, "--token", "tok"})
	runMCPClient(t, dir, "MCP_TRANSPORT=stdio", "MCP_COMMAND="+string(argv), "MCP_VM=mcpstdio")
	if vms, _ := c.ListVMs(context.Background(), api.VMFilter{Plugin: "web"}); len(vms) != 2 {
		t.Fatalf("VMs after the stdio session: %+v", vms)
	}
}

func httpStatus(url string) (int, error) {
	resp, err := (&http.Client{}).Post(url, "application/json", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"ping"}`))
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
