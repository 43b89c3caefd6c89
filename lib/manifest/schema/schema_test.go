package schema_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/manifest/schema"
)

func examples(t *testing.T) map[string][]byte {
	t.Helper()
	files, err := filepath.Glob("../testdata/examples/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	out := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(f)] = b
	}
	return out
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The generated schema and the Go validator agree on the examples (all
// valid) and on unknown fields (all rejected).
func TestSchemaAgreesWithValidator(t *testing.T) {
	raw, err := schema.Document()
	if err != nil {
		t.Fatal(err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("manifest.json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile("manifest.json")
	if err != nil {
		t.Fatalf("schema does not compile: %v", err)
	}
	for name, data := range examples(t) {
		m, err := manifest.Parse(data)
		if err != nil {
			t.Fatal(err)
		}
		for label, b := range map[string][]byte{"as written": data, "normalized": mustJSON(t, m)} {
			v, _ := jsonschema.UnmarshalJSON(bytes.NewReader(b))
			if err := sch.Validate(v); err != nil {
				t.Errorf("%s (%s) fails the schema: %v", name, label, err)
			}
		}
	}
	for _, f := range []string{"unknown-field", "typo-suggests", "wrong-type"} {
		b, _ := os.ReadFile("../testdata/invalid/" + f + ".json")
		v, _ := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if sch.Validate(v) == nil {
			t.Errorf("schema accepts %s", f)
		}
	}
}
