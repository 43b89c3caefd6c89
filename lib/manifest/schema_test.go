package manifest_test

import (
	"bytes"
	"encoding/json"
	"os"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/volantvm/volant/lib/manifest"
	"github.com/volantvm/volant/lib/manifest/schema"
)

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
	for name, data := range manifest.ManifestExamples(t) {
		m, err := manifest.Parse(data)
		if err != nil {
			t.Fatal(err)
		}
		normalized, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		for label, b := range map[string][]byte{"as written": data, "normalized": normalized} {
			v, _ := jsonschema.UnmarshalJSON(bytes.NewReader(b))
			if err := sch.Validate(v); err != nil {
				t.Errorf("%s (%s) fails the schema: %v", name, label, err)
			}
		}
	}
	for _, f := range []string{"unknown-field", "typo-suggests", "wrong-type"} {
		b, _ := os.ReadFile("testdata/invalid/" + f + ".json")
		v, _ := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if sch.Validate(v) == nil {
			t.Errorf("schema accepts %s", f)
		}
	}
}
