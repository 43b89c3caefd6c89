// Package schema generates the JSON Schema of the plugin manifest from
// lib/manifest's Go types, so the document and the code cannot disagree.
//
// It is a package of its own so that importers of lib/manifest (kestrel,
// in the guest) do not link the schema generator or run its packages'
// initialisation at boot.
package schema

import (
	"encoding/json"
	"fmt"

	"github.com/invopop/jsonschema"

	"github.com/volantvm/volant/lib/manifest"
)

// ID is the schema document's $id.
const ID = "https://volant.dev/schemas/plugin-manifest-v1.json"

// Document returns the manifest's JSON Schema, indented.
func Document() ([]byte, error) {
	r := &jsonschema.Reflector{DoNotReference: false, ExpandedStruct: true}
	s := r.Reflect(&manifest.Manifest{})
	s.ID = ID
	s.Title = "Volant plugin manifest"
	s.Description = fmt.Sprintf("Volant plugin manifest, schema_version %s.", manifest.SchemaVersion)
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding schema: %w", err)
	}
	return b, nil
}
