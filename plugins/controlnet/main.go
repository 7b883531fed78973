// Command controlnet is the refiners-go ControlNet plugin. Its operation
// "apply" plans the patch that puts one SD 1.5 ControlNet into an SD 1.5
// U-Net as Refiners' SD1ControlnetAdapter does: a single insert patch
// (package adapt, insert.go) adding specs/sd15_controlnet.yaml as child 0
// of the U-Net, sized from the U-Net's parameter shapes, with every
// parameter bound one to one from a ControlNet file: Refiners' format
// (keys as Refiners' Controlnet state dict, with or without a prefix),
// diffusers' ControlNetModel, or lllyasviel's original layout
// (control_v11p_sd15_*.safetensors, keys with no prefix or under
// control_model.), renamed through the converter's name tables
// (data/diffusers.json, data/original.json). Original .pth files go
// through `refinersd convert` first (the host reads safetensors). num_heads and num_groups are in no shape: they
// are parameters, SD 1.5's by default. It never reads tensor data.
package main

import (
	"context"
	_ "embed"
	"encoding/json"

	"github.com/refiners-go/refiners/sdk"
)

// version is the plugin's version; bump it with every behaviour change.
const version = "0.2.0"

const schema = `{
  "type": "object", "additionalProperties": false,
  "properties": {
    "name": {"type": "string", "description": "the ControlNet's name: its context keys end in _{name} (default: controlnet)"},
    "scale": {"type": "number", "description": "factor of the features added to the U-Net's residuals (default 1)"},
    "num_heads": {"type": "integer", "minimum": 1, "description": "attention heads (not in any shape; default 8, SD 1.5's)"},
    "num_groups": {"type": "integer", "minimum": 1, "description": "GroupNorm groups (not in any shape; default 32, SD 1.5's)"}
  }
}`

// exampleJSON is the tiny U-Net's summary and the tiny ControlNet file's
// header (conformance/testdata/controlnet), for the conformance kit;
// TestExample checks it against those files.
//
//go:embed testdata/example.json
var exampleJSON []byte

type planner struct{}

func (planner) Describe(context.Context) (*sdk.Description, error) {
	var ex sdk.PlanRequest
	if err := json.Unmarshal(exampleJSON, &ex); err != nil {
		return nil, sdk.Error(sdk.Internal, "the embedded example: %v", err)
	}
	return &sdk.Description{Name: "controlnet", Version: version,
		Operations: []sdk.Operation{{Name: "apply", ParamsSchema: schema, Example: &ex,
			Doc: "an SD 1.5 ControlNet (Refiners, diffusers or original lllyasviel format) into an SD 1.5 U-Net: inserted as the U-Net's first child, adding into its residuals; condition image in context controlnet/condition_{name}"}}}, nil
}

func (planner) Plan(_ context.Context, req *sdk.PlanRequest) (*sdk.Plan, error) {
	if req.Operation != "apply" {
		return nil, sdk.Errorf("unknown operation %q (this plugin has: apply)", req.Operation)
	}
	p := params{Name: "controlnet", Scale: 1, NumHeads: 8, NumGroups: 32}
	if err := req.DecodeParams(&p); err != nil {
		return nil, err
	}
	return plan(req, p)
}

func main() { sdk.Serve(planner{}) }
