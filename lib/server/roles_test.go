package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/controller"
	"github.com/volantvm/volant/lib/server"
)

const daemonToken = "Zk3vQ9xLm2Rt7Wp4Ys8Nb6Hd1Jc5Fg0T"

// tokens makes a named token of each role and returns their secrets.
func (e *env) tokens() map[string]string {
	e.t.Helper()
	out := map[string]string{}
	for _, r := range []string{"viewer", "operator", "admin"} {
		tok, err := e.ctl.CreateToken(e.ctx, api.CreateTokenRequest{Name: r + "-1", Role: r})
		if err != nil {
			e.t.Fatal(err)
		}
		out[r] = tok.Secret
	}
	return out
}

// TestEveryRouteObeysItsRole sends every operation of the OpenAPI document
// (its x-role) with a token of each role: a weaker role is
// PERMISSION_DENIED before anything runs, a strong enough one gets past
// the check (whatever the handler then says about "nope"), and nothing
// but /healthz answers without a token.
func TestEveryRouteObeysItsRole(t *testing.T) {
	e := newEnv(t, func(_ *controller.Config, o *server.Options) { o.Token = daemonToken })
	toks := e.tokens()
	var doc struct {
		Paths map[string]map[string]struct {
			Role string `json:"x-role"`
		} `json:"paths"`
	}
	raw, _ := e.srv.OpenAPI()
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	rank := map[string]int{"viewer": 1, "operator": 2, "admin": 3}
	n := 0
	for path, ops := range doc.Paths {
		for method, op := range ops {
			method = strings.ToUpper(method)
			p := strings.NewReplacer("{name}", "nope").Replace(path)
			send := func(hdr ...string) (int, []byte) {
				ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
				defer cancel()
				req, _ := http.NewRequestWithContext(ctx, method, e.ts.URL+p, strings.NewReader("{}"))
				req.Header.Set("Content-Type", "application/json")
				for i := 0; i+1 < len(hdr); i += 2 {
					req.Header.Set(hdr[i], hdr[i+1])
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatalf("%s %s: %v", method, p, err)
				}
				defer resp.Body.Close()
				var b []byte
				if resp.StatusCode >= 400 {
					b = make([]byte, 4096)
					k, _ := resp.Body.Read(b)
					b = b[:k]
				}
				return resp.StatusCode, b
			}
			if op.Role == "" {
				if path != "/healthz" {
					t.Errorf("%s %s has no x-role", method, path)
				}
				continue
			}
			n++
			if code, body := send(); code != 401 {
				t.Errorf("%s %s without a token: %d %s", method, p, code, body)
			}
			for role, secret := range toks {
				code, body := send("Authorization", "Bearer "+secret)
				denied := code == 403 && strings.Contains(string(body), `"PERMISSION_DENIED"`) && strings.Contains(string(body), `"role":"`+op.Role+`"`)
				if want := rank[role] < rank[op.Role]; denied != want {
					t.Errorf("%s %s (needs %s) as %s: %d %s", method, p, op.Role, role, code, body)
				}
			}
		}
	}
	if n < 40 {
		t.Fatalf("only %d operations checked", n)
	}
}

// TestTokenLifecycle: a named token works until revoked or expired, then
// is UNAUTHORIZED saying which; a token in the query string is refused
// even with a good header; the daemon's own token is an admin.
func TestTokenLifecycle(t *testing.T) {
	e := newEnv(t, func(_ *controller.Config, o *server.Options) { o.Token = daemonToken })
	bearer := func(s string) []string { return []string{"Authorization", "Bearer " + s} }
	tok, err := e.ctl.CreateToken(e.ctx, api.CreateTokenRequest{Name: "ci", Role: "viewer"})
	if err != nil {
		t.Fatal(err)
	}
	if code, body := e.do("GET", "/api/v1/vms", "", nil, bearer(tok.Secret)...); code != 200 {
		t.Fatalf("viewer: %d %s", code, body)
	}
	code, body := e.do("GET", "/api/v1/vms?token="+tok.Secret, "", nil, bearer(tok.Secret)...)
	if ae := e.apiErr(code, body, 401, apierr.Unauthorized); ae.Details["reason"] != "token_in_query" {
		t.Fatalf("token in the query: %v", ae.Details)
	}
	code, body = e.do("POST", "/api/v1/tokens", "application/json", []byte(`{"name":"x","role":"viewer"}`), bearer(tok.Secret)...)
	e.apiErr(code, body, 403, apierr.PermissionDenied)
	// The daemon's token is an admin: it makes a token that expires.
	code, body = e.do("POST", "/api/v1/tokens", "application/json", []byte(`{"name":"brief","role":"operator","expires_in":"1s"}`), bearer(daemonToken)...)
	var brief api.CreatedToken
	if json.Unmarshal(body, &brief); code != 201 || brief.Secret == "" || brief.CreatedBy != "volantd:token" || brief.ExpiresAt == nil {
		t.Fatalf("create as the daemon's token: %d %s", code, body)
	}
	if code, body := e.do("GET", "/api/v1/vms", "", nil, bearer(brief.Secret)...); code != 200 {
		t.Fatalf("fresh operator token: %d %s", code, body)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		code, body := e.do("GET", "/api/v1/vms", "", nil, bearer(brief.Secret)...)
		if code == 401 {
			if ae := e.apiErr(code, body, 401, apierr.Unauthorized); ae.Details["reason"] != "expired" {
				t.Fatalf("expired token: %v", ae)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the 1s token still works: %d %s", code, body)
		}
	}
	if _, err := e.ctl.RevokeToken(e.ctx, "ci"); err != nil {
		t.Fatal(err)
	}
	code, body = e.do("GET", "/api/v1/vms", "", nil, bearer(tok.Secret)...)
	if ae := e.apiErr(code, body, 401, apierr.Unauthorized); ae.Details["reason"] != "revoked" {
		t.Fatalf("revoked token: %v", ae.Details)
	}
	// Listed without secrets, in their states.
	ts, err := e.c.ListTokens(e.ctx)
	if err != nil || len(ts) != 2 || ts[0].Name != "brief" || ts[0].State != "expired" || ts[1].State != "revoked" {
		t.Fatalf("tokens: %+v %v", ts, err)
	}
	if raw, _ := json.Marshal(ts); strings.Contains(string(raw), tok.Secret) || strings.Contains(string(raw), "volant_") {
		t.Fatalf("the list shows a secret: %s", raw)
	}
	// Stored hashed: the secret is nowhere in the database.
	if b := e.dbBytes(); strings.Contains(b, tok.Secret) || strings.Contains(b, brief.Secret) {
		t.Fatal("a token's secret is in the database")
	}
}

// TestAuditTrail: each call that asks to change something, made by a
// known principal, is an "audit" event naming it, also when refused;
// reads and calls without a valid token are not; SSE readers see them.
func TestAuditTrail(t *testing.T) {
	e := newEnv(t, func(_ *controller.Config, o *server.Options) { o.Token = daemonToken })
	toks := e.tokens()
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	defer cancel()
	sub, err := e.c.Events(ctx, api.EventOptions{Types: []string{api.EventAudit}})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	e.do("POST", "/api/v1/vms", "application/json", []byte(`{"name":"a","plugin":"nope"}`), "Authorization", "Bearer "+toks["viewer"])
	e.do("POST", "/api/v1/vms", "application/json", []byte(`{"name":"a","plugin":"nope"}`), "Authorization", "Bearer "+toks["operator"])
	e.do("GET", "/api/v1/vms", "", nil, "Authorization", "Bearer "+toks["viewer"])
	e.do("DELETE", "/api/v1/plugins/web", "", nil, "Authorization", "Bearer wrong")
	e.do("POST", "/api/v1/tokens", "application/json", []byte(`{"name":"later","role":"viewer"}`), "Authorization", "Bearer "+daemonToken)
	want := []string{
		"viewer-1 createVM 403 PERMISSION_DENIED",
		"operator-1 createVM 404 NOT_FOUND",
		"volantd:token createToken 201 ",
	}
	for i, w := range want {
		ev, err := sub.Next()
		if err != nil {
			t.Fatalf("audit event %d (%s): %v", i, w, err)
		}
		var d struct {
			Principal, Operation, Code string
			Status                     int
		}
		json.Unmarshal(ev.Data, &d)
		if got := d.Principal + " " + d.Operation + " " + itoa(d.Status) + " " + d.Code; got != w {
			t.Fatalf("audit event %d: %s (%s), want %s", i, got, ev.Data, w)
		}
	}
	if evs := e.events(api.EventAudit); len(evs) != len(want) {
		t.Fatalf("%d audit events, want %d: %+v", len(evs), len(want), evs)
	}
	if evs := e.events(api.EventTokenCreated); len(evs) != 4 || !strings.Contains(string(evs[3].Data), `"by":"volantd:token"`) {
		t.Fatalf("token.created events: %+v", evs)
	}
}

// dbBytes is the database with its journal files, as one string.
func (e *env) dbBytes() string {
	e.t.Helper()
	var b strings.Builder
	for _, suffix := range []string{"", "-wal", "-shm"} {
		data, _ := os.ReadFile(e.st.Path() + suffix)
		b.Write(data)
	}
	return b.String()
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// TestMCPObeysRoles: over /mcp a viewer lists only the tools it may call,
// reads, and is refused a tool that changes something (and the refusal
// is audited); an operator's call passes the check; a session belongs to
// the principal that opened it.
func TestMCPObeysRoles(t *testing.T) {
	e := newEnv(t, func(_ *controller.Config, o *server.Options) { o.Token = daemonToken })
	toks := e.tokens()
	session := func(secret string) string {
		code, sid, body := e.mcpPost("", mcpInit, "Authorization", "Bearer "+secret)
		if code != 200 || sid == "" {
			t.Fatalf("initialize: %d %s", code, body)
		}
		e.mcpPost(sid, `{"jsonrpc":"2.0","method":"notifications/initialized"}`, "Authorization", "Bearer "+secret)
		return sid
	}
	viewer := session(toks["viewer"])
	_, _, body := e.mcpPost(viewer, `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`, "Authorization", "Bearer "+toks["viewer"])
	if s := string(body); !strings.Contains(s, `"list_vms"`) || strings.Contains(s, `"create_vm"`) || strings.Contains(s, `"exec_vm"`) {
		t.Fatalf("a viewer's tools: %s", body)
	}
	call := `{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"create_vm","arguments":{"name":"x","plugin":"nope"}}}`
	_, _, body = e.mcpPost(viewer, call, "Authorization", "Bearer "+toks["viewer"])
	if s := string(body); !strings.Contains(s, `"isError":true`) || !strings.Contains(s, "PERMISSION_DENIED") {
		t.Fatalf("a viewer's create_vm: %s", body)
	}
	_, _, body = e.mcpPost(viewer, `{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"list_vms","arguments":{}}}`, "Authorization", "Bearer "+toks["viewer"])
	if s := string(body); strings.Contains(s, `"isError":true`) || !strings.Contains(s, `"vms"`) {
		t.Fatalf("a viewer's list_vms: %s", body)
	}
	// Another token cannot use the viewer's session.
	code, _, body := e.mcpPost(viewer, call, "Authorization", "Bearer "+toks["operator"])
	e.apiErr(code, body, 403, apierr.PermissionDenied)
	op := session(toks["operator"])
	_, _, body = e.mcpPost(op, call, "Authorization", "Bearer "+toks["operator"])
	if s := string(body); !strings.Contains(s, "NOT_FOUND") || strings.Contains(s, "PERMISSION_DENIED") {
		t.Fatalf("an operator's create_vm: %s", body)
	}
	var got []string
	for _, ev := range e.events(api.EventAudit) {
		var d struct{ Principal, Tool, Code string }
		json.Unmarshal(ev.Data, &d)
		got = append(got, d.Principal+" "+d.Tool+" "+d.Code)
	}
	if strings.Join(got, ",") != "viewer-1 create_vm PERMISSION_DENIED,operator-1 create_vm NOT_FOUND" {
		t.Fatalf("audit of MCP calls: %q", got)
	}
}

// TestEveryMCPToolObeysItsRole calls every MCP tool with a session of each
// role: a weaker role than the tool's is refused with PERMISSION_DENIED
// before the tool runs, a strong enough one gets past the check, and
// tools/list shows each role exactly the tools it may call. The roles are
// written out here, by what each tool does, rather than taken from
// mcpTools(), so a tool mapped to the wrong operation fails; a tool
// missing here fails too.
func TestEveryMCPToolObeysItsRole(t *testing.T) {
	e := newEnv(t, func(_ *controller.Config, o *server.Options) { o.Token = daemonToken })
	toks := e.tokens()
	want := map[string]string{
		"list_vms": "viewer", "get_vm": "viewer", "vm_logs": "viewer", "list_plugins": "viewer",
		"list_deployments": "viewer", "rollout_status": "viewer", "list_volumes": "viewer",
		"get_volume": "viewer", "list_snapshots": "viewer",

		"create_vm": "operator", "start_vm": "operator", "stop_vm": "operator", "pause_vm": "operator",
		"resume_vm": "operator", "delete_vm": "operator", "exec_vm": "operator",
		"create_volume": "operator", "resize_volume": "operator", "delete_volume": "operator",
		"snapshot_vm": "operator", "create_vm_from_snapshot": "operator", "restore_vm": "operator",
		"delete_snapshot": "operator",

		"scale_deployment": "admin", "update_deployment": "admin", "undo_rollout": "admin",
	}
	rank := map[string]int{"viewer": 1, "operator": 2, "admin": 3}
	for _, role := range []string{"viewer", "operator", "admin"} {
		secret := toks[role]
		bearer := []string{"Authorization", "Bearer " + secret}
		code, sid, body := e.mcpPost("", mcpInit, bearer...)
		if code != 200 || sid == "" {
			t.Fatalf("initialize as %s: %d %s", role, code, body)
		}
		e.mcpPost(sid, `{"jsonrpc":"2.0","method":"notifications/initialized"}`, bearer...)
		_, _, body = e.mcpPost(sid, `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`, bearer...)
		var listed struct {
			Result struct {
				Tools []struct{ Name string } `json:"tools"`
			} `json:"result"`
		}
		if err := json.Unmarshal(sseData(body), &listed); err != nil {
			t.Fatalf("tools/list as %s: %v %s", role, err, body)
		}
		seen := map[string]bool{}
		for _, tool := range listed.Result.Tools {
			seen[tool.Name] = true
			need, ok := want[tool.Name]
			switch {
			case !ok:
				t.Errorf("tool %s is not in this test's table: add it with the role its action needs", tool.Name)
			case rank[need] > rank[role]:
				t.Errorf("tools/list shows %s (needs %s) to a %s", tool.Name, need, role)
			}
		}
		for tool, need := range want {
			if rank[need] <= rank[role] && !seen[tool] {
				t.Errorf("tools/list hides %s (needs %s) from a %s", tool, need, role)
			}
			call := fmt.Sprintf(`{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":%q,"arguments":{"name":"nope"}}}`, tool)
			_, _, body := e.mcpPost(sid, call, bearer...)
			denied := strings.Contains(string(body), "PERMISSION_DENIED")
			if want := rank[role] < rank[need]; denied != want {
				t.Errorf("%s (needs %s) as %s: denied %v: %s", tool, need, role, denied, body)
			}
		}
	}
}

// sseData is the data of a one-event stream answer, or body itself.
func sseData(body []byte) []byte {
	for _, line := range strings.Split(string(body), "\n") {
		if d, ok := strings.CutPrefix(line, "data: "); ok {
			return []byte(d)
		}
	}
	return body
}
