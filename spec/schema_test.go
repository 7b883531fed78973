package spec

import (
	"bytes"
	"encoding/json"
	"os"
	"testing"

	"github.com/refiners-go/refiners/core"
)

// The committed schema must be what the registry generates today
// (regenerate with: go run ./cmd/refinersd schema > specs/refiners.schema.json).
func TestCommittedSchemaIsCurrent(t *testing.T) {
	got, err := Schema()
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("../specs/refiners.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(bytes.TrimSpace(got), bytes.TrimSpace(want)) {
		t.Error("specs/refiners.schema.json is stale: regenerate it with `go run ./cmd/refinersd schema > specs/refiners.schema.json`")
	}
	var doc map[string]any
	if err := json.Unmarshal(got, &doc); err != nil {
		t.Fatal(err)
	}
	items := doc["$defs"].(map[string]any)["item"].(map[string]any)["anyOf"].([]any)
	if len(items) != len(core.LayerTypes())+2 {
		t.Errorf("%d item schemas for %d layer types", len(items), len(core.LayerTypes()))
	}
}
