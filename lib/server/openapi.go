package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"github.com/invopop/jsonschema"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/auth"
	"github.com/volantvm/volant/lib/buildinfo"
)

// OpenAPI returns the OpenAPI 3.1 document of the API, generated from the
// route table (paths, methods, parameters, error codes) and the Go types
// of the bodies (schemas, through invopop/jsonschema).
func (s *Server) OpenAPI() ([]byte, error) {
	return openAPI(s.routes(), s.need)
}

func schemaName(t reflect.Type) string {
	switch {
	case strings.HasSuffix(t.PkgPath(), "/lib/agentapi"):
		return "Agent" + t.Name()
	case strings.HasSuffix(t.PkgPath(), "/lib/apierr") && t.Name() != "Error":
		return "Error" + t.Name()
	case strings.HasSuffix(t.PkgPath(), "/lib/portmap"):
		return "Port" + t.Name()
	}
	return t.Name()
}

type schemaSet struct {
	r    *jsonschema.Reflector
	defs map[string]*jsonschema.Schema
}

// ref returns a reference to v's type, adding its schema (and the ones it
// uses) to the set.
func (ss *schemaSet) ref(v any) (map[string]any, error) {
	t := reflect.TypeOf(v)
	switch {
	case t.Kind() == reflect.String:
		return map[string]any{"type": "string"}, nil
	case t.Kind() == reflect.Map:
		return map[string]any{"type": "object"}, nil
	}
	sch := ss.r.Reflect(v)
	for name, d := range sch.Definitions {
		if old, ok := ss.defs[name]; ok && old != nil {
			a, _ := json.Marshal(old)
			b, _ := json.Marshal(d)
			if !bytes.Equal(a, b) {
				return nil, fmt.Errorf("openapi: two types are named %s", name)
			}
		}
		ss.defs[name] = d
	}
	return map[string]any{"$ref": "#/components/schemas/" + schemaName(t)}, nil
}

// mapType gives the closed string types their values.
func mapType(t reflect.Type) *jsonschema.Schema {
	enum := func(vals ...string) *jsonschema.Schema {
		s := &jsonschema.Schema{Type: "string"}
		for _, v := range vals {
			s.Enum = append(s.Enum, v)
		}
		return s
	}
	switch t {
	case reflect.TypeOf(apierr.Code("")):
		var codes []string
		for _, c := range apierr.Codes() {
			codes = append(codes, string(c))
		}
		sort.Strings(codes)
		return enum(codes...)
	case reflect.TypeOf(api.VMState("")):
		var states []string
		for _, s := range api.VMStates() {
			states = append(states, string(s))
		}
		return enum(states...)
	case reflect.TypeOf(api.VolumeState("")):
		return enum(string(api.VolumeCreating), string(api.VolumeReady), string(api.VolumeResizing), string(api.VolumeDeleting), string(api.VolumeDeleted))
	case reflect.TypeOf(agentapi.HealthState("")):
		return enum("", string(agentapi.HealthUnknown), string(agentapi.HealthHealthy), string(agentapi.HealthUnhealthy))
	}
	return nil
}

func openAPI(routes []route, need func(string) auth.Role) ([]byte, error) {
	ss := &schemaSet{
		r:    &jsonschema.Reflector{Namer: schemaName, Mapper: mapType},
		defs: map[string]*jsonschema.Schema{},
	}
	errRef, err := ss.ref(apierr.Error{})
	if err != nil {
		return nil, err
	}
	paths := map[string]map[string]any{}
	for _, rt := range routes {
		op := map[string]any{
			"operationId": rt.id,
			"summary":     rt.summary,
			"tags":        []string{rt.tag},
		}
		var params []map[string]any
		for _, seg := range strings.Split(rt.path, "/") {
			if strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}") {
				params = append(params, map[string]any{"name": strings.Trim(seg, "{}"), "in": "path", "required": true,
					"schema": map[string]any{"type": "string"}})
			}
		}
		for _, q := range rt.query {
			sch := map[string]any{"type": q.typ}
			if len(q.enum) > 0 {
				sch["enum"] = q.enum
			}
			params = append(params, map[string]any{"name": q.name, "in": "query", "description": q.desc, "schema": sch})
		}
		if rt.id == "events" {
			params = append(params, map[string]any{"name": "Last-Event-ID", "in": "header",
				"description": "resume after this event id (what an SSE client sends when it reconnects)", "schema": map[string]any{"type": "integer"}})
		}
		if len(params) > 0 {
			op["parameters"] = params
		}
		switch {
		case rt.req != nil:
			ref, err := ss.ref(rt.req)
			if err != nil {
				return nil, err
			}
			op["requestBody"] = map[string]any{"required": true, "content": map[string]any{"application/json": map[string]any{"schema": ref}}}
		case rt.rawBody != "" && rt.reqContent != "":
			op["requestBody"] = map[string]any{"required": true, "description": rt.rawBody,
				"content": map[string]any{rt.reqContent: map[string]any{"schema": map[string]any{"type": "string", "format": "binary"}}}}
		case rt.rawBody != "":
			op["requestBody"] = map[string]any{"required": true, "description": rt.rawBody,
				"content": map[string]any{"application/json": map[string]any{"schema": map[string]any{"type": "object"}}}}
		}
		if rt.upgrade != "" {
			params = append(params,
				map[string]any{"name": "Connection", "in": "header", "description": "Upgrade, to switch to the stream", "schema": map[string]any{"type": "string"}},
				map[string]any{"name": "Upgrade", "in": "header", "description": rt.upgrade + ", to switch to the stream",
					"schema": map[string]any{"type": "string", "enum": []string{rt.upgrade}}})
			op["parameters"] = params
			if rt.req != nil {
				op["requestBody"].(map[string]any)["required"] = false
			}
		}
		resps := map[string]any{}
		ok := map[string]any{"description": http.StatusText(rt.status)}
		if rt.resp != nil {
			content := rt.content
			if content == "" {
				content = "application/json"
			}
			var sch map[string]any
			if content == "text/event-stream" {
				ref, err := ss.ref(rt.resp)
				if err != nil {
					return nil, err
				}
				sch = map[string]any{"type": "string", "description": "Server-Sent Events; each data line is one event", "x-event": ref}
			} else {
				var err error
				if sch, err = ss.ref(rt.resp); err != nil {
					return nil, err
				}
			}
			ok["content"] = map[string]any{content: map[string]any{"schema": sch}}
		}
		resps[strconv.Itoa(rt.status)] = ok
		if rt.upgrade != "" {
			resps["101"] = map[string]any{"description": "Switching Protocols (Upgrade: " + rt.upgrade + "): " + rt.upgradeDoc}
		}
		byStatus := map[int][]string{}
		codes := append([]apierr.Code{apierr.Internal}, rt.errors...)
		role := need(rt.id)
		if role != anyone {
			codes = append(codes, apierr.Unauthorized, apierr.PermissionDenied)
			op["x-role"] = string(role)
		}
		for _, c := range codes {
			st := c.HTTPStatus()
			if !containsStr(byStatus[st], string(c)) {
				byStatus[st] = append(byStatus[st], string(c))
			}
		}
		for st, cs := range byStatus {
			sort.Strings(cs)
			resps[strconv.Itoa(st)] = map[string]any{
				"description": "error: " + strings.Join(cs, ", "),
				"content":     map[string]any{"application/json": map[string]any{"schema": errRef}},
			}
		}
		op["responses"] = resps
		if role == anyone {
			op["security"] = []any{}
		}
		if paths[rt.path] == nil {
			paths[rt.path] = map[string]any{}
		}
		paths[rt.path][strings.ToLower(rt.method)] = op
	}
	doc := map[string]any{
		"openapi": "3.1.0",
		"info": map[string]any{
			"title":   "volantd",
			"version": buildinfo.String(),
			"description": "The control plane of Volant: plugins, VMs, deployments, events, MCP. " +
				"Served on a unix socket (no token needed as root) and, with --listen, on TCP with a bearer token. " +
				"Each operation's x-role is the least role (viewer, operator, admin) whose token may call it. " +
				"Errors are {code, message, details} with the code's HTTP status.",
		},
		"paths": paths,
		"components": map[string]any{
			"schemas":         ss.defs,
			"securitySchemes": map[string]any{"bearer": map[string]any{"type": "http", "scheme": "bearer"}},
		},
		"security": []any{map[string]any{"bearer": []string{}}},
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding the OpenAPI document: %w", err)
	}
	return bytes.ReplaceAll(b, []byte(`"#/$defs/`), []byte(`"#/components/schemas/`)), nil
}

func containsStr(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
