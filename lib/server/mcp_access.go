package server

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	mcpauth "github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/auth"
)

// mcpPrincipal carries the API's principal into the MCP transport, which
// hands it to every message of the request as its TokenInfo (and binds a
// session to the principal that opened it: another one is refused).
func mcpPrincipal(h http.Handler) http.Handler {
	bearer := mcpauth.RequireBearerToken(func(ctx context.Context, _ string, r *http.Request) (*mcpauth.TokenInfo, error) {
		p, ok := auth.FromContext(r.Context())
		if !ok {
			return nil, mcpauth.ErrInvalidToken
		}
		// Checked per request: the expiry only satisfies the transport.
		return &mcpauth.TokenInfo{UserID: p.Name, Extra: map[string]any{"principal": p}, Expiration: time.Now().Add(time.Hour)}, nil
	}, nil)(h)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "" {
			// A local admin on the unix socket: the transport reads a
			// bearer header; the principal is already known.
			r = r.Clone(r.Context())
			r.Header.Set("Authorization", "Bearer unix")
		}
		bearer.ServeHTTP(w, r)
	})
}

// mcpGuard is the MCP server's middleware: tools/list shows only the tools
// the caller's role may call, and tools/call checks the role of the
// operation the tool performs (mcpTools) and records it in the audit trail
// when it asks to change something.
func (s *Server) mcpGuard(next mcp.MethodHandler) mcp.MethodHandler {
	tools := mcpTools()
	return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
		var p auth.Principal
		ok := false
		if ex := req.GetExtra(); ex != nil && ex.TokenInfo != nil {
			p, ok = ex.TokenInfo.Extra["principal"].(auth.Principal)
		}
		switch method {
		case "tools/list":
			res, err := next(ctx, method, req)
			if lr, isList := res.(*mcp.ListToolsResult); isList && err == nil {
				var keep []*mcp.Tool
				for _, t := range lr.Tools {
					if ok && p.Role.Allows(s.need(tools[t.Name])) {
						keep = append(keep, t)
					}
				}
				lr.Tools = keep
			}
			return res, err
		case "tools/call":
			params, _ := req.GetParams().(*mcp.CallToolParamsRaw)
			if params == nil {
				return next(ctx, method, req)
			}
			op, known := tools[params.Name]
			if !known {
				op = "mcp:" + params.Name // needs admin; the SDK says the tool is unknown
			}
			need := s.need(op)
			var args struct {
				Name string `json:"name"`
			}
			_ = json.Unmarshal(params.Arguments, &args)
			audit := func(status int, code apierr.Code) {
				if !ok || !s.mutating[op] {
					return
				}
				data := map[string]any{"principal": p.Name, "role": p.Role, "operation": op, "tool": params.Name, "method": "POST", "path": "/mcp", "status": status}
				if code != "" {
					data["code"] = code
				}
				if err := s.ctl.Audit(ctx, args.Name, data); err != nil {
					s.log.Error("recording the audit event failed", "operation", op, "principal", p.Name, "err", err)
				}
			}
			if !ok || !p.Role.Allows(need) {
				audit(http.StatusForbidden, apierr.PermissionDenied)
				return &mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{
					Text: string(apierr.PermissionDenied) + ": the tool " + params.Name + " needs the " + string(need) + " role; token " + p.Name + " is " + string(p.Role)}}}, nil
			}
			res, err := next(ctx, method, req)
			var code apierr.Code
			if cr, isCall := res.(*mcp.CallToolResult); isCall && cr.IsError {
				code = apierr.Internal
				for _, c := range cr.Content {
					if t, isText := c.(*mcp.TextContent); isText {
						if k, _, found := strings.Cut(t.Text, ":"); found && k == strings.ToUpper(k) && !strings.Contains(k, " ") {
							code = apierr.Code(k)
						}
					}
				}
			} else if err != nil {
				code = apierr.From(err).Code
			}
			status := http.StatusOK
			if code != "" {
				status = code.HTTPStatus()
			}
			audit(status, code)
			return res, err
		}
		return next(ctx, method, req)
	}
}
