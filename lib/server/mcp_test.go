package server_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/server"
	"github.com/volantvm/volant/lib/testutil/wait"
)

const mcpInit = `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`

// mcpPost posts one JSON-RPC message (in session sid, "" for none) and
// returns the status, the session the server named and the body.
func (e *env) mcpPost(sid, body string, hdr ...string) (int, string, []byte) {
	e.t.Helper()
	req, _ := http.NewRequest("POST", e.ts.URL+"/mcp", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if sid != "" {
		req.Header.Set("Mcp-Session-Id", sid)
		req.Header.Set("Mcp-Protocol-Version", "2025-06-18")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Mcp-Session-Id"), b
}

// mcpSession initializes a session and returns its id.
func (e *env) mcpSession() string {
	e.t.Helper()
	code, sid, body := e.mcpPost("", mcpInit)
	if code != 200 || sid == "" {
		e.t.Fatalf("initialize: %d %q %s", code, sid, body)
	}
	if code, _, body := e.mcpPost(sid, `{"jsonrpc":"2.0","method":"notifications/initialized"}`); code != 202 {
		e.t.Fatalf("initialized: %d %s", code, body)
	}
	return sid
}

// TestMCPSessionsAreCapped: past the cap, initialize is UNAVAILABLE until
// a session ends (6,000 initialize calls used to keep 6,000 sessions). The
// sessions' timeout is the default, so none expires while the test runs,
// however slowly.
func TestMCPSessionsAreCapped(t *testing.T) {
	e := newEnv(t, func(_ *controller.Config, o *server.Options) { o.MCPMaxSessions = 4 })
	var sids []string
	for i := 0; i < 4; i++ {
		sids = append(sids, e.mcpSession())
	}
	if code, _, body := e.mcpPost(sids[0], `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`); code != 200 {
		t.Fatalf("tools/list: %d %s", code, body)
	}
	for i := 0; i < 20; i++ {
		code, sid, body := e.mcpPost("", mcpInit)
		e.apiErr(code, body, 503, apierr.Unavailable)
		if sid != "" {
			t.Fatalf("a session past the cap: %s", sid)
		}
	}
	// Ending one makes room.
	req, _ := http.NewRequest("DELETE", e.ts.URL+"/mcp", nil)
	req.Header.Set("Mcp-Session-Id", sids[0])
	req.Header.Set("Mcp-Protocol-Version", "2025-06-18")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	e.mcpSession()
}

// TestMCPIdleSessionsExpire: a session that sends nothing for the session
// timeout ends: its place under the cap is free again and its requests
// are NOT_FOUND. Nothing here depends on how fast the test runs: the cap
// of one refuses every initialize (which does not touch the idle session)
// until the session has expired.
func TestMCPIdleSessionsExpire(t *testing.T) {
	e := newEnv(t, func(_ *controller.Config, o *server.Options) {
		o.MCPSessionTimeout, o.MCPMaxSessions = 200*time.Millisecond, 1
	})
	code, idle, body := e.mcpPost("", mcpInit)
	if code != 200 || idle == "" {
		t.Fatalf("initialize: %d %q %s", code, idle, body)
	}
	var next string
	wait.Until(t, 20*time.Second, "the idle session to expire and free its place", func() bool {
		code, next, body = e.mcpPost("", mcpInit)
		if code != 200 {
			e.apiErr(code, body, 503, apierr.Unavailable)
		}
		return code == 200
	})
	if next == "" || next == idle {
		t.Fatalf("the session after the idle one: %q (idle %q)", next, idle)
	}
	code, _, body = e.mcpPost(idle, `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`)
	e.apiErr(code, body, 404, apierr.NotFound)
}

// TestMCPTransportErrorsAreJSON: what the MCP transport refuses comes as
// the API's JSON error object, with the status of its code.
func TestMCPTransportErrorsAreJSON(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name   string
		method string
		ctype  string
		accept string
		sid    string
		body   string
		status int
		code   apierr.Code
	}{
		{"not JSON", "POST", "text/plain", "application/json, text/event-stream", "", mcpInit, 400, apierr.InvalidInput},
		{"no accept", "POST", "application/json", "", "", mcpInit, 400, apierr.InvalidInput},
		{"malformed", "POST", "application/json", "application/json, text/event-stream", "", `{"jsonrpc":`, 400, apierr.InvalidInput},
		{"unknown session", "POST", "application/json", "application/json, text/event-stream", "nosuchsession", `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`, 404, apierr.NotFound},
		{"stream without session", "GET", "", "text/event-stream", "", "", 400, apierr.InvalidInput},
		{"delete without session", "DELETE", "", "", "", "", 400, apierr.InvalidInput},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, e.ts.URL+"/mcp", bytes.NewReader([]byte(tc.body)))
			if tc.ctype != "" {
				req.Header.Set("Content-Type", tc.ctype)
			}
			if tc.accept != "" {
				req.Header.Set("Accept", tc.accept)
			}
			if tc.sid != "" {
				req.Header.Set("Mcp-Session-Id", tc.sid)
				req.Header.Set("Mcp-Protocol-Version", "2025-06-18")
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type %q: %s", ct, body)
			}
			var ae apierr.Error
			if json.Unmarshal(body, &ae) != nil || ae.Code != tc.code || ae.Message == "" || resp.StatusCode != tc.status {
				t.Errorf("got %d %s, want %d %s", resp.StatusCode, body, tc.status, tc.code)
			}
		})
	}
}
