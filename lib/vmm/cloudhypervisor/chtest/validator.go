// Package chtest stands in for Cloud Hypervisor in tests, since no CH binary
// can run on the machines Volant is developed on: Validator checks HTTP
// traffic against CH's own OpenAPI document (v53), and Main is a fake
// cloud-hypervisor process that a test binary becomes when it is run through
// a symlink of that name (the os/exec helper-process trick):
//
//	func TestMain(m *testing.M) {
//		if chtest.Impersonating() {
//			os.Exit(chtest.Main(os.Args[1:]))
//		}
//		os.Exit(m.Run())
//	}
//
// and then &cloudhypervisor.Backend{Binary: chtest.Binary(t)}.
package chtest

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
)

// specYAML is Cloud Hypervisor's own API description (v53, Apache-2.0,
// vmm/src/api/openapi/cloud-hypervisor.yaml in its repository), the
// contract every request of Client and every answer of the fake CH is
// checked against.
//
//go:embed cloud-hypervisor-v53-openapi.yaml
var specYAML []byte

func loadRouter() (routers.Router, error) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(specYAML)
	if err != nil {
		return nil, fmt.Errorf("loading CH OpenAPI document: %w", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("CH OpenAPI document does not validate: %w", err)
	}
	return gorillamux.NewRouter(doc)
}

// Validator wraps a handler: every request must match an operation of the
// document and validate against it, naming no field its schema does not
// (see undocumentedFields), and every answer must be one of the
// operation's documented responses with a body matching its schema.
// Violations are answered with 400 (request) or 500 (answer) and recorded.
type Validator struct {
	router routers.Router

	mu         sync.Mutex
	violations []string
	ops        map[string]int // "PUT /vm.pause" -> count of valid requests
}

// NewValidator loads the document.
func NewValidator() (*Validator, error) {
	r, err := loadRouter()
	if err != nil {
		return nil, err
	}
	return &Validator{router: r, ops: map[string]int{}}, nil
}

func (v *Validator) violate(format string, args ...any) string {
	msg := fmt.Sprintf(format, args...)
	v.mu.Lock()
	v.violations = append(v.violations, msg)
	v.mu.Unlock()
	return msg
}

// Violations returns what went wrong so far.
func (v *Validator) Violations() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]string(nil), v.violations...)
}

// Ops returns the operations validly requested, sorted.
func (v *Validator) Ops() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	var out []string
	for k := range v.ops {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Wrap returns next behind the validation.
func (v *Validator) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		route, params, err := v.router.FindRoute(r)
		if err != nil {
			http.Error(w, v.violate("%s %s (host %q): no such operation in the CH API: %v", r.Method, r.URL.Path, r.Host, err), http.StatusNotFound)
			return
		}
		in := &openapi3filter.RequestValidationInput{
			Request: r, PathParams: params, Route: route,
			Options: &openapi3filter.Options{IncludeResponseStatus: true},
		}
		if err := openapi3filter.ValidateRequest(r.Context(), in); err != nil {
			http.Error(w, v.violate("%s %s: request violates the CH API: %v", r.Method, r.URL.Path, err), http.StatusBadRequest)
			return
		}
		if len(body) > 0 && route.Operation.RequestBody == nil {
			http.Error(w, v.violate("%s %s: sends a body the operation does not take: %q", r.Method, r.URL.Path, body), http.StatusBadRequest)
			return
		}
		if unknown := undocumentedFields(route.Operation.RequestBody, body); len(unknown) > 0 {
			http.Error(w, v.violate("%s %s: sends fields the CH API does not document: %s", r.Method, r.URL.Path, strings.Join(unknown, ", ")), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		op := r.Method + " " + strings.TrimPrefix(r.URL.Path, "/api/v1")
		v.mu.Lock()
		v.ops[op]++
		v.mu.Unlock()

		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		res := rec.Result()
		out := rec.Body.Bytes()
		rin := &openapi3filter.ResponseValidationInput{
			RequestValidationInput: in,
			Status:                 res.StatusCode,
			Header:                 res.Header,
			Body:                   io.NopCloser(bytes.NewReader(out)),
			Options:                &openapi3filter.Options{IncludeResponseStatus: true},
		}
		if err := openapi3filter.ValidateResponse(r.Context(), rin); err != nil {
			http.Error(w, v.violate("%s: answer %d %q violates the CH API: %v", op, res.StatusCode, out, err), http.StatusInternalServerError)
			return
		}
		for k, vals := range res.Header {
			w.Header()[k] = vals
		}
		w.WriteHeader(res.StatusCode)
		w.Write(out)
	})
}

// undocumentedFields returns the fields of a JSON request body that its
// schema does not name, as dotted paths. CH's schemas do not forbid other
// fields, so a misspelt optional one ("prefualt") would validate, and CH
// would ignore it: the client is held to the documented names instead.
func undocumentedFields(rb *openapi3.RequestBodyRef, body []byte) []string {
	if rb == nil || rb.Value == nil || len(body) == 0 {
		return nil
	}
	mt := rb.Value.Content.Get("application/json")
	var v any
	if mt == nil || mt.Schema == nil || json.Unmarshal(body, &v) != nil {
		return nil // ValidateRequest judges what is not JSON
	}
	return undocumented(mt.Schema.Value, v, "")
}

// undocumented walks v along s. Objects whose schema lists no properties
// (free-form maps) and compositions (allOf, oneOf, anyOf) are not judged.
func undocumented(s *openapi3.Schema, v any, at string) []string {
	if s == nil || len(s.AllOf)+len(s.OneOf)+len(s.AnyOf) > 0 {
		return nil
	}
	var out []string
	switch x := v.(type) {
	case map[string]any:
		if len(s.Properties) == 0 {
			return nil
		}
		for k, e := range x {
			p, ok := s.Properties[k]
			if !ok {
				out = append(out, at+k)
				continue
			}
			out = append(out, undocumented(p.Value, e, at+k+".")...)
		}
	case []any:
		if s.Items != nil {
			for i, e := range x {
				out = append(out, undocumented(s.Items.Value, e, fmt.Sprintf("%s[%d].", strings.TrimSuffix(at, "."), i))...)
			}
		}
	}
	sort.Strings(out)
	return out
}
