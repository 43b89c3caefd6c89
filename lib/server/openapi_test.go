package server_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/volantvm/volant/lib/agentapi"
	"github.com/volantvm/volant/lib/api"
	"github.com/volantvm/volant/lib/apierr"
	"github.com/volantvm/volant/lib/controller/controllertest"
)

type openapiDoc struct {
	OpenAPI string                                `json:"openapi"`
	Paths   map[string]map[string]json.RawMessage `json:"paths"`
}

func loadDoc(t *testing.T, e *env) (openapiDoc, []byte) {
	t.Helper()
	code, body := e.do("GET", "/openapi.json", "", nil)
	if code != 200 {
		t.Fatalf("GET /openapi.json: %d %s", code, body)
	}
	var d openapiDoc
	if err := json.Unmarshal(body, &d); err != nil {
		t.Fatal(err)
	}
	if d.OpenAPI != "3.1.0" || len(d.Paths) == 0 {
		t.Fatalf("not an OpenAPI 3.1 document: %.200s", body)
	}
	return d, body
}

var methods = []string{"GET", "POST", "PUT", "PATCH", "DELETE"}

// served reports whether the server routes method+path somewhere (rather
// than answering "no route" or 405).
func served(e *env, method, path string) bool {
	code, body := e.do(method, path, "application/json", []byte(`{}`), "Accept", "application/json, text/event-stream")
	if code == http.StatusMethodNotAllowed {
		return false
	}
	return !(code == 404 && strings.Contains(string(body), "no route"))
}

// TestOpenAPIMatchesTheRoutes fails when the server serves a route the
// document lacks, or the document lists one the server does not serve:
// every documented method of every documented path is served, and every
// other method on those paths is not; nor are paths outside the document.
func TestOpenAPIMatchesTheRoutes(t *testing.T) {
	e := newEnv(t)
	d, _ := loadDoc(t, e)
	for p, ops := range d.Paths {
		concrete := strings.NewReplacer("{name}", "zz").Replace(p)
		for _, m := range methods {
			_, documented := ops[strings.ToLower(m)]
			if m == "GET" && (p == "/api/v1/events" || p == "/mcp") {
				continue // streams; probed below
			}
			if got := served(e, m, concrete); got != documented {
				t.Errorf("%s %s: served %v, documented %v", m, p, got, documented)
			}
		}
	}
	for _, p := range []string{"/api/v1", "/api/v1/vm", "/api/v1/vms/zz/hibernate", "/api/v1/plugins/zz/actions", "/api/v2/vms", "/metricz", "/api/v1/deployments/zz/vms"} {
		for _, m := range methods {
			if served(e, m, p) {
				t.Errorf("%s %s is served but not documented", m, p)
			}
		}
	}
	// The agent routes are the paths kestrel computes.
	for _, p := range []string{agentapi.ManifestPath("{name}"), agentapi.ReportPath("{name}")} {
		p = strings.NewReplacer("%7B", "{", "%7D", "}").Replace(p)
		if _, ok := d.Paths[p]; !ok {
			t.Errorf("kestrel's path %s is not in the document", p)
		}
	}
}

// schemaFor returns the documented schema of a route's answer.
type validator struct {
	t   *testing.T
	doc map[string]any
	c   *jsonschema.Compiler
	mem map[string]*jsonschema.Schema
}

func newValidator(t *testing.T, raw []byte) *validator {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	if err := c.AddResource("mem://openapi.json", doc); err != nil {
		t.Fatal(err)
	}
	return &validator{t: t, doc: doc.(map[string]any), c: c, mem: map[string]*jsonschema.Schema{}}
}

func escapePointer(s string) string {
	return strings.NewReplacer("~", "~0", "/", "~1", "{", "%7B", "}", "%7D").Replace(s)
}

// check validates an answer against the document: the status must be
// documented for the route and the body must match its schema.
func (v *validator) check(method, tmpl string, status int, body []byte) {
	v.t.Helper()
	op, ok := v.doc["paths"].(map[string]any)[tmpl].(map[string]any)[strings.ToLower(method)].(map[string]any)
	if !ok {
		v.t.Fatalf("%s %s is not documented", method, tmpl)
	}
	resp, ok := op["responses"].(map[string]any)[strconv.Itoa(status)].(map[string]any)
	if !ok {
		v.t.Fatalf("%s %s answered %d, which the document does not list (%s)", method, tmpl, status, body)
	}
	content, ok := resp["content"].(map[string]any)
	if !ok {
		if len(bytes.TrimSpace(body)) != 0 {
			v.t.Fatalf("%s %s %d: documented without a body, got %s", method, tmpl, status, body)
		}
		return
	}
	var media string
	for m := range content {
		media = m
	}
	if media != "application/json" {
		return
	}
	ptr := fmt.Sprintf("mem://openapi.json#/paths/%s/%s/responses/%d/content/application~1json/schema",
		escapePointer(tmpl), strings.ToLower(method), status)
	sch, ok := v.mem[ptr]
	if !ok {
		var err error
		if sch, err = v.c.Compile(ptr); err != nil {
			v.t.Fatalf("compiling %s: %v", ptr, err)
		}
		v.mem[ptr] = sch
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		v.t.Fatalf("%s %s: body is not JSON: %s", method, tmpl, body)
	}
	if err := sch.Validate(inst); err != nil {
		v.t.Errorf("%s %s %d: the answer does not match the document: %v\n%s", method, tmpl, status, err, body)
	}
}

// TestAnswersMatchTheDocument drives every JSON route, with successes and
// errors, and validates each answer against the document's schema.
func TestAnswersMatchTheDocument(t *testing.T) {
	e := newEnv(t)
	_, raw := loadDoc(t, e)
	v := newValidator(t, raw)
	path := regexp.MustCompile(`/(vms|plugins|deployments)/[^/]+`)
	call := func(method, p string, body string, want int) []byte {
		t.Helper()
		ct := ""
		if body != "" {
			ct = "application/json"
		}
		code, b := e.do(method, p, ct, []byte(body))
		if code != want {
			t.Fatalf("%s %s: %d %s, want %d", method, p, code, b, want)
		}
		tmpl := p
		if i := strings.IndexByte(tmpl, '?'); i >= 0 {
			tmpl = tmpl[:i]
		}
		tmpl = path.ReplaceAllString(tmpl, "/$1/{name}")
		v.check(method, tmpl, code, b)
		return b
	}
	call("GET", "/healthz", "", 200)
	call("POST", "/api/v1/plugins", string(e.plugin("web", `,"health_check":{"endpoint":"/"},"labels":{"a":"b"}`)), 201)
	call("POST", "/api/v1/plugins", string(e.plugin("web", "")), 409)
	call("POST", "/api/v1/plugins", `{"name":"x"}`, 422)
	call("GET", "/api/v1/plugins", "", 200)
	call("GET", "/api/v1/plugins/web", "", 200)
	call("GET", "/api/v1/plugins/nope", "", 404)
	call("GET", "/api/v1/plugins/web/manifest", "", 200)
	call("POST", "/api/v1/plugins/web/disable", "", 200)
	call("POST", "/api/v1/plugins/web/enable", "", 200)
	call("POST", "/api/v1/vms", `{"name":"web1","plugin":"web","kernel_args":["a=b"]}`, 201)
	call("POST", "/api/v1/vms", `{"name":"web1","plugin":"web"}`, 409)
	call("POST", "/api/v1/vms", `{"name":"web1"`, 400)
	call("GET", "/api/v1/vms", "", 200)
	call("GET", "/api/v1/vms?state=starting&plugin=web", "", 200)
	call("GET", "/api/v1/vms/web1", "", 200)
	st := controllertest.Healthy("web1")
	b, _ := json.Marshal(st)
	call("POST", "/api/v1/vms/web1/agent", string(b), 204)
	call("GET", "/api/v1/vms/web1/wait?state=running&timeout=5s", "", 200)
	call("GET", "/api/v1/vms/web1/wait?state=stopped&timeout=100ms", "", 504)
	call("GET", "/api/v1/vms/web1", "", 200) // with the agent status
	call("POST", "/api/v1/vms/web1/stop", "", 200)
	call("GET", "/api/v1/vms/web1/wait?state=running&timeout=1s", "", 409)
	call("POST", "/api/v1/vms/web1/start", "", 200)
	call("POST", "/api/v1/vms/web1/restart", "", 200)
	call("POST", "/api/v1/deployments", `{"name":"svc","plugin":"web","replicas":2}`, 201)
	call("POST", "/api/v1/deployments", `{"name":"svc","plugin":"web","replicas":2}`, 409)
	eventually(t, 10*time.Second, "replicas", func() bool {
		d, err := e.c.Deployment(e.ctx, "svc")
		return err == nil && len(d.VMs) == 2
	})
	call("GET", "/api/v1/deployments", "", 200)
	call("GET", "/api/v1/deployments/svc", "", 200)
	call("POST", "/api/v1/deployments/svc/scale", `{"replicas":1}`, 200)
	call("POST", "/api/v1/deployments/svc/scale", `{"replicas":-1}`, 400)
	call("DELETE", "/api/v1/deployments/svc", "", 200)
	call("GET", "/api/v1/deployments/svc", "", 404)
	call("DELETE", "/api/v1/plugins/web", "", 409)
	call("DELETE", "/api/v1/vms/web1", "", 200)
	call("DELETE", "/api/v1/vms/web1", "", 404)
	call("DELETE", "/api/v1/plugins/web", "", 200)
	call("GET", "/openapi.json", "", 200)

	// Every documented error status carries an apierr code that maps to it.
	var doc map[string]any
	json.Unmarshal(raw, &doc)
	var bad []string
	for p, ops := range doc["paths"].(map[string]any) {
		for m, op := range ops.(map[string]any) {
			for st, r := range op.(map[string]any)["responses"].(map[string]any) {
				n, _ := strconv.Atoi(st)
				if n < 400 {
					continue
				}
				desc := r.(map[string]any)["description"].(string)
				for _, c := range strings.Split(strings.TrimPrefix(desc, "error: "), ", ") {
					if apierr.Code(c).HTTPStatus() != n {
						bad = append(bad, fmt.Sprintf("%s %s %d lists %s", m, p, n, c))
					}
				}
			}
		}
	}
	sort.Strings(bad)
	if len(bad) > 0 {
		t.Fatalf("error statuses that do not match their codes:\n%s", strings.Join(bad, "\n"))
	}
	_ = api.Prefix
}
