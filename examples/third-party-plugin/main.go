// Command taskvector is a third-party refiners-go plugin, in a Go module of
// its own: it applies a task vector, the difference between a fine-tuned
// model's weights and its base's, saved under the base model's keys
// (Chain_1.Linear_2.weight, and .bias when the layer has one). Each weight
// of the file whose layer exists in the model, with the same shape, becomes
// a full-weight delta (patch kind "diff") scaled by the operation's scale;
// the host adds scale·Δ to the weight at run time or merges it (--fuse).
//
//	go build -o taskvector .
//	refinersd plugins check ./taskvector
//	refinersd plugins install ./taskvector
//	refinersd run SPEC --weights base.safetensors --input in.safetensors --output out.safetensors \
//	    --adapter 'taskvector:delta.safetensors:{"scale": 0.5}'
package main

import (
	"context"
	"slices"
	"strings"

	"github.com/refiners-go/refiners/sdk"
)

// version is this plugin's own version (semantic versioning); the protocol
// version is the SDK's (sdk.ProtocolVersion), negotiated at start.
const version = "0.2.0"

type params struct {
	// Scale multiplies the deltas; 0 (absent) means 1.
	Scale float64 `json:"scale"`
	// Only, if set, restricts the plan to layers whose path starts with it.
	Only string `json:"only"`
}

const schema = `{"type": "object", "additionalProperties": false, "properties": {
  "scale": {"type": "number", "description": "factor on the deltas (default 1)"},
  "only": {"type": "string", "description": "plan only layers whose path starts with this"}}}`

// example is a request the conformance kit (refinersd plugins check) runs:
// its plan must be well formed.
var example = &sdk.PlanRequest{
	Params: `{"scale": 0.5}`,
	Model: []sdk.Layer{
		{Path: "Linear_1", Type: "Linear", Params: map[string][]int64{"weight": {8, 4}, "bias": {8}}},
		{Path: "Linear_2", Type: "Linear", Params: map[string][]int64{"weight": {2, 8}}},
	},
	Files: []sdk.File{{ID: "file0", Tensors: []sdk.Tensor{
		{Key: "Linear_1.weight", DType: "float32", Shape: []int64{8, 4}},
		{Key: "Linear_1.bias", DType: "float32", Shape: []int64{8}},
	}}},
}

type planner struct{}

func (planner) Describe(context.Context) (*sdk.Description, error) {
	return &sdk.Description{Name: "taskvector", Version: version, Operations: []sdk.Operation{{
		Name: "apply", Doc: "add scale × a task vector (fine-tuned minus base weights, under the base's keys) to Linear and Conv2d layers",
		ParamsSchema: schema, Example: example,
	}}}, nil
}

func (planner) Plan(_ context.Context, req *sdk.PlanRequest) (*sdk.Plan, error) {
	if req.Operation != "apply" {
		return nil, sdk.Errorf("unknown operation %q (this plugin has: apply)", req.Operation)
	}
	var p params
	if err := req.DecodeParams(&p); err != nil {
		return nil, err
	}
	if p.Scale == 0 {
		p.Scale = 1
	}
	if len(req.Files) != 1 {
		return nil, sdk.Errorf("apply: want one task-vector file, got %d", len(req.Files))
	}
	file := req.Files[0]
	shapes := map[string][]int64{}
	for _, t := range file.Tensors {
		shapes[t.Key] = t.Shape
	}
	report := &sdk.Report{Format: "task vector"}
	used := map[string]bool{}
	var patches []sdk.Patch
	for _, l := range req.Model {
		if (l.Type != "Linear" && l.Type != "Conv2d") || !strings.HasPrefix(l.Path, p.Only) {
			continue
		}
		report.Layers++
		key := l.Path + ".weight"
		shape, ok := shapes[key]
		if !ok {
			continue
		}
		used[key] = true
		if !slices.Equal(shape, l.Params["weight"]) {
			report.ShapeMismatched = append(report.ShapeMismatched, key)
			continue
		}
		bindings := []sdk.Binding{{File: file.ID, Key: key, Param: "weight"}}
		_, withBias := shapes[l.Path+".bias"]
		if withBias {
			used[l.Path+".bias"] = true
			bindings = append(bindings, sdk.Binding{File: file.ID, Key: l.Path + ".bias", Param: "bias"})
			report.Matched = append(report.Matched, l.Path+".bias")
		}
		report.Matched = append(report.Matched, key)
		report.Covered++
		patches = append(patches, sdk.Patch{Target: l.Path, Kind: "diff", Bindings: bindings, Branch: map[string]any{
			"type": "WeightDelta", "name": "taskvector", "target_type": l.Type, "weight_shape": shape, "bias": withBias, "scale": p.Scale,
		}})
	}
	for _, t := range file.Tensors {
		if !used[t.Key] {
			report.Unmatched = append(report.Unmatched, t.Key)
		}
	}
	if len(patches) == 0 {
		return nil, sdk.Error(sdk.FailedPrecondition, "apply: no key of the file is a weight of a Linear or Conv2d layer of this model (the file has %d tensors, e.g. %q)", len(file.Tensors), firstKey(file))
	}
	return &sdk.Plan{Patches: patches, Report: report}, nil
}

func firstKey(f sdk.File) string {
	if len(f.Tensors) == 0 {
		return ""
	}
	return f.Tensors[0].Key
}

func main() { sdk.Serve(planner{}) }
