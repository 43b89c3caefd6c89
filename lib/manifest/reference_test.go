package manifest

// The decoder before the single-pass check of unknown fields (keys.go),
// kept as the reference the differential tests compare Decode against:
// a generic decode into map[string]any, a walk of it against the types,
// then the typed decode.

import (
	"encoding/json"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"github.com/volantvm/volant/lib/apierr"
)

// decodeReference is Decode as it was, verbatim.
func decodeReference(data []byte) (*Manifest, error) {
	if len(data) > MaxBytes {
		return nil, apierr.New(apierr.TooLarge, "manifest is %d bytes; the limit is %d", len(data), MaxBytes)
	}
	var generic any
	if err := json.Unmarshal(data, &generic); err != nil {
		return nil, invalid(syntaxProblem(data, err))
	}
	if _, ok := generic.(map[string]any); !ok {
		return nil, invalid([]Problem{{Field: "", Message: "a manifest is a JSON object"}})
	}
	probs := unknownFieldsReference(generic, reflect.TypeOf(Manifest{}), "")
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		probs = append(probs, syntaxProblem(data, err)...)
	}
	if len(probs) > 0 {
		return nil, invalid(probs)
	}
	return &m, nil
}

// unknownFieldsReference walks a generic decode against the struct type and reports
// every key that no field takes, with its full path.
func unknownFieldsReference(v any, t reflect.Type, path string) []Problem {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	var probs []Problem
	switch t.Kind() {
	case reflect.Struct:
		obj, ok := v.(map[string]any)
		if !ok {
			return nil // type errors are reported by the typed decode
		}
		fields := map[string]reflect.Type{}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "-" || !f.IsExported() {
				continue
			}
			if name == "" {
				name = f.Name
			}
			fields[name] = f.Type
		}
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			ft, ok := fields[k]
			if !ok {
				probs = append(probs, Problem{Field: join(path, k), Message: "unknown field" + suggest(k, fields)})
				continue
			}
			probs = append(probs, unknownFieldsReference(obj[k], ft, join(path, k))...)
		}
	case reflect.Slice:
		arr, ok := v.([]any)
		if !ok {
			return nil
		}
		for i, e := range arr {
			probs = append(probs, unknownFieldsReference(e, t.Elem(), path+"["+strconv.Itoa(i)+"]")...)
		}
	case reflect.Map:
		obj, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			probs = append(probs, unknownFieldsReference(obj[k], t.Elem(), join(path, k))...)
		}
	}
	return probs
}
