package spec

import (
	"encoding/json"

	"github.com/refiners-go/refiners/core"
)

// exprPattern matches a "${...}" expression, allowed wherever a value is.
const exprPattern = `^\$\{.*\}$`

// Schema returns a JSON Schema (draft 2020-12) for spec files, generated
// from the layer registry, so editors can complete and check specs. Block
// names are the spec's own, so an item whose type is not a core layer is
// accepted as a block call.
func Schema() ([]byte, error) {
	var items []any
	for _, name := range core.LayerTypes() {
		t, _ := core.LookupLayer(name)
		props := map[string]any{"repeat": valueSchema(core.IntArg)}
		var required []string
		for i, a := range t.Args {
			s := valueSchema(a.Kind)
			if a.Bounded {
				bound(s, a.Min)
			}
			if doc := t.ArgDoc(i); doc != "" {
				s["description"] = doc
			}
			if a.Default != nil && a.Kind != core.ModuleArg {
				s["default"] = a.Default
			}
			props[a.Name] = s
			if a.Required {
				required = append(required, a.Name)
			}
		}
		var body any
		argsSchema := map[string]any{"type": "object", "properties": props, "additionalProperties": false}
		if len(required) > 0 {
			argsSchema["required"] = required
		}
		if t.Children {
			props["layers"] = map[string]any{"$ref": "#/$defs/layers"}
			props["provider"] = valueSchema(core.BoolArg)
			body = map[string]any{"anyOf": []any{argsSchema, map[string]any{"$ref": "#/$defs/layers"}, map[string]any{"type": "null"}}}
		} else if len(required) == 0 {
			body = map[string]any{"anyOf": []any{argsSchema, map[string]any{"type": "null"}}}
		} else {
			body = argsSchema
		}
		items = append(items, map[string]any{
			"type": "object", "description": t.Doc,
			"properties":           map[string]any{name: body},
			"required":             []string{name},
			"additionalProperties": false,
		})
	}
	names := core.LayerTypes()
	items = append(items,
		map[string]any{"type": "string", "description": "a layer without arguments, or a block", "examples": names},
		map[string]any{"type": "object", "description": "a block or plugin layer call", "minProperties": 1, "maxProperties": 1,
			"propertyNames": map[string]any{"not": map[string]any{"enum": names}}},
	)
	param := map[string]any{"anyOf": []any{
		map[string]any{"type": []string{"number", "string", "boolean", "null"}},
		map[string]any{"type": "object", "properties": map[string]any{"default": map[string]any{}, "doc": map[string]any{"type": "string"}}, "additionalProperties": false},
	}}
	params := map[string]any{"type": "object", "additionalProperties": param}
	kinds := []string{"Sequence", "Chain", "Residual", "Sum", "Parallel", "Distribute", "Passthrough", "Concatenate", "Matmul"}
	schema := map[string]any{
		"$schema":              "https://json-schema.org/draft/2020-12/schema",
		"$id":                  "https://refiners-go.dev/schema/spec-1.json",
		"title":                "refiners-go model spec",
		"type":                 "object",
		"required":             []string{"refiners"},
		"additionalProperties": false,
		"properties": map[string]any{
			"refiners":    map[string]any{"const": Version},
			"name":        map[string]any{"type": "string"},
			"unwrap":      map[string]any{"type": "boolean"},
			"kind":        map[string]any{"enum": kinds},
			"args":        map[string]any{"type": "string"},
			"provider":    map[string]any{"type": "boolean"},
			"description": map[string]any{"type": "string"},
			"params":      params,
			"imports":     map[string]any{"type": "array", "items": map[string]any{"type": "string"}},
			"blocks": map[string]any{"type": "object", "additionalProperties": map[string]any{
				"type": "object", "required": []string{"layers"}, "additionalProperties": false,
				"properties": map[string]any{
					"params": params, "kind": map[string]any{"enum": kinds}, "args": map[string]any{"type": "string"},
					"provider": map[string]any{"type": "boolean"}, "description": map[string]any{"type": "string"},
					"layers": map[string]any{"$ref": "#/$defs/layers"},
				},
			}},
			"layers": map[string]any{"$ref": "#/$defs/layers"},
		},
		"$defs": map[string]any{
			"layers": map[string]any{"type": "array", "items": map[string]any{"$ref": "#/$defs/item"}},
			"item":   map[string]any{"anyOf": items},
			"expr":   map[string]any{"type": "string", "pattern": exprPattern},
		},
	}
	return json.MarshalIndent(schema, "", "  ")
}

func valueSchema(k core.ArgKind) map[string]any {
	expr := map[string]any{"$ref": "#/$defs/expr"}
	switch k {
	case core.IntArg:
		return map[string]any{"anyOf": []any{map[string]any{"type": "integer"}, expr}}
	case core.FloatArg:
		return map[string]any{"anyOf": []any{map[string]any{"type": "number"}, expr}}
	case core.BoolArg:
		return map[string]any{"anyOf": []any{map[string]any{"type": "boolean"}, expr}}
	case core.StringArg:
		return map[string]any{"type": "string"}
	case core.IntsArg:
		return map[string]any{"type": "array", "items": map[string]any{"anyOf": []any{map[string]any{"type": "integer"}, expr}}}
	}
	return map[string]any{"$ref": "#/$defs/item"}
}

// bound adds a minimum to an integer (or list of integers) schema.
func bound(s map[string]any, min int64) {
	if items, ok := s["items"].(map[string]any); ok {
		s = items
	}
	for _, alt := range s["anyOf"].([]any) {
		if m := alt.(map[string]any); m["type"] == "integer" {
			m["minimum"] = min
		}
	}
}
