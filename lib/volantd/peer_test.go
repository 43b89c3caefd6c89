package volantd

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/client"
	"github.com/volantvm/volant/lib/testutil/netnstest"
)

// peerEnv makes the test binary a client of the socket it names, run by
// TestUnixPeerNeedsAToken as another uid: it prints the status of
// GET /api/v1/vms without a token and with the one in VOLANT_TOKEN.
const peerEnv = "VOLANTD_TEST_PEER_SOCKET"

func TestMain(m *testing.M) {
	if sock := os.Getenv(peerEnv); sock != "" {
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
		for _, tok := range []string{"", os.Getenv("VOLANT_TOKEN")} {
			req, _ := http.NewRequest("GET", "http://volantd/api/v1/vms", nil)
			if tok != "" {
				req.Header.Set("Authorization", "Bearer "+tok)
			}
			resp, err := c.Do(req)
			if err != nil {
				fmt.Println("error", err)
				os.Exit(1)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			fmt.Printf("%d %s\n", resp.StatusCode, strings.TrimSpace(string(b)))
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestUnixPeerNeedsAToken: on volantd's unix socket root is an admin
// without a token, and another uid the socket's mode lets in (here made
// 0666) is UNAUTHORIZED without one and a viewer with a viewer's token.
func TestUnixPeerNeedsAToken(t *testing.T) {
	if os.Geteuid() != 0 {
		netnstest.SkipOrFail(t, "needs root to run a client as another uid")
	}
	dir, err := os.MkdirTemp("", "volantd-peer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	sock := filepath.Join(dir, "api.sock")
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan Addrs, 1)
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, Config{Socket: sock, DataDir: filepath.Join(dir, "data"), RunRoot: filepath.Join(dir, "run"),
			AgentListen: "off", Launcher: "/bin/true", VMRunner: "detached", Ready: func(a Addrs) { ready <- a }})
	}()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Serve ended: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not become ready")
	}
	root, err := client.New(sock, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := root.CreateToken(ctx, api.CreateTokenRequest{Name: "guest", Role: "viewer"})
	if err != nil || tok.CreatedBy != "unix:root" {
		t.Fatalf("root on the socket creating a token: %+v %v", tok, err)
	}
	os.Chmod(sock, 0o666)
	// The test binary, where uid 65534 may run it.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "peer")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = []string{peerEnv + "=" + sock, "VOLANT_TOKEN=" + tok.Secret}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the client as uid 65534: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "401 ") || !strings.Contains(lines[0], `"uid":65534`) ||
		!strings.HasPrefix(lines[1], `200 {"vms":`) {
		t.Fatalf("uid 65534 on the socket, without and with a viewer token:\n%s", out)
	}
}
