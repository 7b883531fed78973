// Command lora is the refiners-go LoRA plugin. It plans LoRA patches for a
// model from community LoRA files (Refiners, kohya/A1111, diffusers/PEFT,
// LyCORIS LoHa/LoKr, full-weight deltas, DoRA in the kohya/LyCORIS and PEFT
// layouts): which layers to adapt, with which branch, and which file keys
// fill it. It never reads tensor data. Its report says per component what
// was matched and skipped, and names every kind of key it did not use with
// a count and an example (sent as warnings).
package main

import (
	"context"

	"github.com/refiners-go/refiners/plugins/lora/mapping"
	"github.com/refiners-go/refiners/sdk"
)

// version is the plugin's version; bump it with every behaviour change.
const version = "0.3.1"

type params struct {
	Scale       float64            `json:"scale"`
	BlockScales map[string]float64 `json:"block_scales"`
	Strict      bool               `json:"strict"`
	Name        string             `json:"name"`
	Component   string             `json:"component"`
}

const schema = `{
  "type": "object", "additionalProperties": false,
  "properties": {
    "scale": {"type": "number", "description": "multiplies every LoRA's effective scale (default 1)"},
    "block_scales": {"type": "object", "additionalProperties": {"type": "number"}, "description": "scale by model path prefix"},
    "strict": {"type": "boolean", "description": "fail on any file key that maps to no layer"},
    "name": {"type": "string", "description": "branch name in the adapters (default: the file id)"},
    "component": {"enum": ["unet", "text_encoder"], "description": "which part of a combined SD file to take"}
  }
}`

type planner struct{}

func (planner) Describe(context.Context) (*sdk.Description, error) {
	return &sdk.Description{Name: "lora", Version: version,
		Operations: []sdk.Operation{{Name: "apply", ParamsSchema: schema, Example: example,
			Doc: "LoRA files onto a model: low-rank (and DoRA, LoHa, LoKr, full-weight delta) branches on Linear and Conv2d layers, keys matched from the file's format"}}}, nil
}

// example is a Refiners-style LoRA on a one-layer model, for the kit.
var example = &sdk.PlanRequest{
	Params: `{"scale": 1}`,
	Model:  []sdk.Layer{{Path: "Linear", Type: "Linear", Params: map[string][]int64{"weight": {8, 4}, "bias": {8}}}},
	Files: []sdk.File{{ID: "f", Tensors: []sdk.Tensor{
		{Key: "Chain.0.Linear.down.weight", DType: "float32", Shape: []int64{2, 4}}, {Key: "Chain.0.Linear.up.weight", DType: "float32", Shape: []int64{8, 2}}}}},
}

func (planner) Plan(_ context.Context, req *sdk.PlanRequest) (*sdk.Plan, error) {
	if req.Operation != "apply" {
		return nil, sdk.Errorf("unknown operation %q (this plugin has: apply)", req.Operation)
	}
	p := params{Scale: 1}
	if err := req.DecodeParams(&p); err != nil {
		return nil, err
	}
	if len(req.Files) == 0 {
		return nil, sdk.Errorf("apply: no LoRA file given")
	}
	patches, report, err := mapping.Plan(req.Model, req.Files, mapping.Options{
		Scale: p.Scale, BlockScales: p.BlockScales, Strict: p.Strict, Name: p.Name, Component: p.Component})
	if err != nil {
		// The files or options do not fit the model: the user's input.
		return nil, sdk.Errorf("%v", err)
	}
	return &sdk.Plan{Patches: patches, Report: report.SDK()}, nil
}

func main() { sdk.Serve(planner{}) }
