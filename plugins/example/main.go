// Command example is a complete refiners-go plugin in a few dozen lines: it
// plans one low-rank (LoRA) branch on one layer, from a file whose down and
// up tensor keys the caller names. Build it, then
// `refinersd plugins install ./example`.
package main

import (
	"context"

	"github.com/refiners-go/refiners/sdk"
)

type params struct {
	Target string  `json:"target"`
	File   string  `json:"file"`
	Down   string  `json:"down"` // tensor keys in File
	Up     string  `json:"up"`
	Scale  float64 `json:"scale"`
}

const schema = `{"type": "object", "required": ["target", "file", "down", "up"], "additionalProperties": false,
  "properties": {"target": {"type": "string"}, "file": {"type": "string"}, "down": {"type": "string"},
                 "up": {"type": "string"}, "scale": {"type": "number"}}}`

// example is a request the conformance kit can run.
var example = &sdk.PlanRequest{
	Params: `{"target": "Linear", "file": "f", "down": "down", "up": "up"}`,
	Model:  []sdk.Layer{{Path: "Linear", Type: "Linear", Params: map[string][]int64{"weight": {8, 4}}}},
	Files: []sdk.File{{ID: "f", Tensors: []sdk.Tensor{
		{Key: "down", DType: "float32", Shape: []int64{2, 4}}, {Key: "up", DType: "float32", Shape: []int64{8, 2}}}}},
}

// scaled is a layer type this plugin contributes: specs use it as example/Scaled.
const scaled = `refiners: 1
blocks:
  Scaled:
    params: {factor: 2}
    layers:
      - Multiply: {scale: "${factor}"}
`

type planner struct{}

func (planner) Describe(context.Context) (*sdk.Description, error) {
	return &sdk.Description{Name: "example", Version: "1.1.0",
		Operations: []sdk.Operation{{Name: "lora", Doc: "one LoRA branch on one Linear layer", ParamsSchema: schema, Example: example}},
		LayerTypes: []sdk.LayerType{{Name: "Scaled", Doc: "multiplies by a factor", Spec: scaled}}}, nil
}

func (planner) Plan(_ context.Context, req *sdk.PlanRequest) (*sdk.Plan, error) {
	if req.Operation != "lora" {
		return nil, sdk.Errorf("unknown operation %q (this plugin has: lora)", req.Operation)
	}
	var p params
	if err := req.DecodeParams(&p); err != nil {
		return nil, err
	}
	if p.Target == "" || p.Down == "" || p.Up == "" {
		return nil, sdk.Errorf("lora: want {target, file, down, up[, scale]}")
	}
	if p.Scale == 0 {
		p.Scale = 1
	}
	shapes := map[string][]int64{}
	for _, f := range req.Files {
		if f.ID == p.File {
			for _, t := range f.Tensors {
				shapes[t.Key] = t.Shape
			}
		}
	}
	down, up := shapes[p.Down], shapes[p.Up]
	if len(down) != 2 || len(up) != 2 || down[0] != up[1] {
		return nil, sdk.Errorf("lora: %s %v and %s %v in file %q are not a down [rank, in] and up [out, rank] pair", p.Down, down, p.Up, up, p.File)
	}
	return &sdk.Plan{
		Patches: []sdk.Patch{{Target: p.Target, Kind: "lora", Bindings: []sdk.Binding{
			{File: p.File, Key: p.Down, Param: "Linear_1.weight"},
			{File: p.File, Key: p.Up, Param: "Linear_2.weight"},
		}, Branch: map[string]any{"type": "LinearLora", "name": "example", "in_features": down[1],
			"out_features": up[0], "rank": down[0], "scale": p.Scale}}},
		Report: &sdk.Report{Format: "example", Matched: []string{p.Down, p.Up}, Covered: 1, Layers: 1},
	}, nil
}

func main() { sdk.Serve(planner{}) }
