package manifest

import (
	"encoding/json"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// The check for unknown fields reads the JSON text itself, after the typed
// decode has accepted its syntax. encoding/json matches a key to a field
// without regard to case ("Name" fills Name), so the typed decode alone
// would let a miscased key pass; decoding the whole document a second time
// into map[string]any, as Decode did before, ran that generic decode's
// code, its maps and an allocation per value in kestrel's boot, where
// under software emulation every first-run instruction is translated.
// Here one scan (keyScan) reads the text in place, allocating nothing for
// keys; only when it meets a key that no field takes does unknownKeys list
// the problems exactly as that generic decode's walk did: the same keys (a
// key given twice counts once, by its last value, as in a map), in the
// same order (sorted at each level), with the same paths and hints.
// decode_diff_test.go holds the two to that.

// keyScan reads a JSON text that encoding/json has found valid.
type keyScan struct {
	data []byte
	// unknown is set when a key matches no field, exactly.
	unknown bool
	// overflow is the first number, in the text's order, that a float64
	// cannot hold: decoding into an `any` reports only that.
	overflow string
}

// value reads the value at i and returns the index past it. With t, it
// checks the keys of objects that t decodes from against t's fields,
// down through the values of known keys; a value of the wrong kind is left
// to the typed decode, as are the values below it.
func (s *keyScan) value(i int, t reflect.Type) int {
	data := s.data
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if i >= len(data) {
		return i
	}
	c := data[i]
	switch c {
	case '"':
		return skipString(data, i)
	case '{', '[':
		var fields map[string]reflect.Type
		var elem reflect.Type
		if t != nil {
			switch k := t.Kind(); {
			case k == reflect.Struct && c == '{':
				fields = jsonFields(t)
			case k == reflect.Map && c == '{', k == reflect.Slice && c == '[':
				elem = t.Elem()
			}
		}
		for i = skipSpace(data, i+1); i < len(data) && data[i] != '}' && data[i] != ']'; {
			vt := elem
			if c == '{' {
				end := skipString(data, i)
				if fields != nil {
					// The key as written: one with escapes or
					// non-ASCII bytes, which no field's name has,
					// sends Decode to unknownKeys, which reads it as
					// encoding/json does.
					var ok bool
					if vt, ok = fields[string(data[i+1:end-1])]; !ok {
						s.unknown = true
					}
				}
				i = skipSpace(data, skipSpace(data, end)+1) // past the colon
			}
			i = skipSpace(data, s.value(i, vt))
			if i < len(data) && data[i] == ',' {
				i = skipSpace(data, i+1)
			}
		}
		return i + 1
	}
	// A number, true, false or null.
	j := i
	for j < len(data) && strings.IndexByte("0123456789.eE+-abflnrstu", data[j]) >= 0 {
		j++
	}
	if c == '-' || '0' <= c && c <= '9' {
		s.number(data[i:j])
	}
	return j
}

// number notes num when it is the first number a float64 cannot hold.
func (s *keyScan) number(num []byte) {
	exp := false
	for _, b := range num {
		exp = exp || b == 'e' || b == 'E'
	}
	// Without an exponent, a number of at most 308 digits is below 1e308.
	if s.overflow != "" || !exp && len(num) <= 308 {
		return
	}
	if _, err := strconv.ParseFloat(string(num), 64); err != nil {
		s.overflow = string(num)
	}
}

// skipSpace returns the index of the first non-whitespace byte from i.
func skipSpace(data []byte, i int) int {
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index just past the string starting at data[i].
func skipString(data []byte, i int) int {
	for i++; i < len(data); i++ {
		switch data[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return i
}

// member is an object's key and where its value starts.
type member struct {
	key string
	val int
}

// members lists the object starting at data[i] by key, sorted, each key
// once with its last value.
func members(data []byte, i int) []member {
	var ms []member
	skip := keyScan{data: data}
	for i = skipSpace(data, i+1); i < len(data) && data[i] == '"'; {
		end := skipString(data, i)
		key := unquoteKey(data[i:end])
		i = skipSpace(data, skipSpace(data, end)+1) // past the colon
		ms = append(ms, member{key: key, val: i})
		i = skipSpace(data, skip.value(i, nil))
		if i < len(data) && data[i] == ',' {
			i = skipSpace(data, i+1)
		}
	}
	slices.SortStableFunc(ms, func(a, b member) int { return strings.Compare(a.key, b.key) })
	out := ms[:0]
	for j, m := range ms {
		if j+1 < len(ms) && ms[j+1].key == m.key {
			continue // a later value of the same key replaces this one
		}
		out = append(out, m)
	}
	return out
}

// unquoteKey is the string a JSON string literal (valid, quotes included)
// decodes to: the bytes between the quotes when they need no decoding,
// otherwise encoding/json's own reading (escapes, and U+FFFD for invalid
// UTF-8).
func unquoteKey(lit []byte) string {
	plain := true
	for _, c := range lit[1 : len(lit)-1] {
		plain = plain && c != '\\' && c < 0x80
	}
	if plain {
		return string(lit[1 : len(lit)-1])
	}
	var s string
	if err := json.Unmarshal(lit, &s); err != nil {
		return string(lit[1 : len(lit)-1]) // not reached: lit is valid JSON
	}
	return s
}

// unknownKeys reports every key of the value at data[i] that no field of
// t takes, with its full path, descending where the value's kind is the
// one t decodes from (a value of the wrong kind is the typed decode's
// error).
func unknownKeys(data []byte, i int, t reflect.Type, path string) []Problem {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if i >= len(data) {
		return nil
	}
	var probs []Problem
	switch t.Kind() {
	case reflect.Struct:
		if data[i] != '{' {
			return nil
		}
		fields := jsonFields(t)
		for _, m := range members(data, i) {
			ft, ok := fields[m.key]
			if !ok {
				probs = append(probs, Problem{Field: join(path, m.key), Message: "unknown field" + suggest(m.key, fields)})
				continue
			}
			probs = append(probs, unknownKeys(data, m.val, ft, join(path, m.key))...)
		}
	case reflect.Slice:
		if data[i] != '[' {
			return nil
		}
		skip := keyScan{data: data}
		i = skipSpace(data, i+1)
		for n := 0; i < len(data) && data[i] != ']'; n++ {
			probs = append(probs, unknownKeys(data, i, t.Elem(), path+"["+strconv.Itoa(n)+"]")...)
			i = skipSpace(data, skip.value(i, nil))
			if i < len(data) && data[i] == ',' {
				i = skipSpace(data, i+1)
			}
		}
	case reflect.Map:
		if data[i] != '{' {
			return nil
		}
		for _, m := range members(data, i) {
			probs = append(probs, unknownKeys(data, m.val, t.Elem(), join(path, m.key))...)
		}
	}
	return probs
}

// jsonFields maps the JSON names of the struct type t's fields to their
// types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
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
	return fields
}
