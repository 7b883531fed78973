// Command sam is the refiners-go Segment Anything plugin. Its operation
// "load" plans a SAM weights file — Refiners' converted SegmentAnything
// state dict (segment-anything-h.safetensors) or an official
// segment_anything checkpoint's keys (sam_vit_{h,l,b}_*.pth) — as the four
// SAM models inserted into the target chain (the root): specs/sam.yaml
// (image encoder), specs/sam_point_encoder.yaml, the MaskEncoder layer and
// specs/sam_mask_decoder.yaml, sized from the file's shapes, every
// parameter bound to the file's keys through models/sam/samkeys' name
// table (renames; pos_embed reshaped; the Gaussian matrix transposed; the
// point-type and IoU/mask-token embeddings as several keys, in order, to
// concatenate along dimension 0). It never reads tensor data.
package main

import (
	"context"
	_ "embed"
	"encoding/json"

	"github.com/refiners-go/refiners/sdk"
)

// version is the plugin's version; bump it with every behaviour change.
const version = "0.1.0"

const schema = `{
  "type": "object", "additionalProperties": false,
  "properties": {
    "decoder_heads": {"type": "integer", "minimum": 1, "description": "attention heads of the mask decoder (in no shape; default 8, SAM's)"}
  }
}`

// exampleJSON is the header of the small official checkpoint of
// conformance/testdata/sam_official, for the conformance kit; TestExample
// checks it against that file.
//
//go:embed testdata/example.json
var exampleJSON []byte

type planner struct{}

func (planner) Describe(context.Context) (*sdk.Description, error) {
	var ex sdk.PlanRequest
	if err := json.Unmarshal(exampleJSON, &ex); err != nil {
		return nil, sdk.Error(sdk.Internal, "the embedded example: %v", err)
	}
	return &sdk.Description{Name: "sam", Version: version,
		Operations: []sdk.Operation{{Name: "load", ParamsSchema: schema, Example: &ex,
			Doc: "a Segment Anything file (Refiners' SegmentAnything layout or an official segment_anything checkpoint) as its four models, inserted into the target chain in order: image encoder, point encoder, mask encoder, mask decoder"}}}, nil
}

func (planner) Plan(_ context.Context, req *sdk.PlanRequest) (*sdk.Plan, error) {
	if req.Operation != "load" {
		return nil, sdk.Errorf("unknown operation %q (this plugin has: load)", req.Operation)
	}
	p := params{DecoderHeads: 8}
	if err := req.DecodeParams(&p); err != nil {
		return nil, err
	}
	return plan(req, p)
}

func main() { sdk.Serve(planner{}) }
