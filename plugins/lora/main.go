// Command lora is the refiners-go LoRA plugin. It plans LoRA patches for a
// model from community LoRA files (Refiners, kohya/A1111, diffusers/PEFT,
// LyCORIS, full-weight deltas): which layers to adapt, with which branch,
// and which file keys fill it. It never reads tensor data.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	pb "github.com/refiners-go/refiners/pluginproto"
	"github.com/refiners-go/refiners/plugins/lora/mapping"
	"github.com/refiners-go/refiners/sdk"
)

// version is the plugin's version; bump it with every behaviour change.
const version = "0.2.0"

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

func (planner) Describe(context.Context) (*pb.Description, error) {
	return &pb.Description{Name: "lora", Version: version, Protocol: sdk.ProtocolVersion,
		Operations: []*pb.Operation{{Name: "apply", ParamsSchema: schema, Example: example,
			Doc: "LoRA files onto a model: low-rank branches on Linear and Conv2d layers, keys matched from the file's format"}}}, nil
}

// example is a Refiners-style LoRA on a one-layer model, for the kit.
var example = &pb.PlanRequest{
	ParamsJson: `{"scale": 1}`,
	Model:      []*pb.Layer{{Path: "Linear", Type: "Linear", Params: []*pb.Param{{Name: "weight", Shape: []int64{8, 4}, Dtype: "float32"}, {Name: "bias", Shape: []int64{8}, Dtype: "float32"}}}},
	Files: []*pb.WeightFile{{Id: "f", Tensors: []*pb.TensorInfo{
		{Key: "Chain.0.Linear.down.weight", Dtype: "float32", Shape: []int64{2, 4}}, {Key: "Chain.0.Linear.up.weight", Dtype: "float32", Shape: []int64{8, 2}}}}},
}

func (planner) Plan(_ context.Context, req *pb.PlanRequest) (*pb.PlanResponse, error) {
	if req.Operation != "apply" {
		return nil, sdk.Errorf("unknown operation %q (this plugin has: apply)", req.Operation)
	}
	p := params{Scale: 1}
	if strings.TrimSpace(req.ParamsJson) != "" {
		dec := json.NewDecoder(strings.NewReader(req.ParamsJson))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&p); err != nil {
			return nil, sdk.Errorf("apply: parameters: %v", err)
		}
	}
	if len(req.Files) == 0 {
		return nil, sdk.Errorf("apply: no LoRA file given")
	}
	var model []mapping.Layer
	for _, l := range req.Model {
		ps := map[string][]int64{}
		for _, q := range l.Params {
			ps[q.Name] = q.Shape
		}
		model = append(model, mapping.Layer{Path: l.Path, Type: l.Type, Params: ps})
	}
	var files []mapping.File
	for _, f := range req.Files {
		mf := mapping.File{ID: f.Id, Metadata: f.Metadata}
		for _, t := range f.Tensors {
			mf.Tensors = append(mf.Tensors, mapping.Tensor{Key: t.Key, DType: t.Dtype, Shape: t.Shape, Value: t.Value})
		}
		files = append(files, mf)
	}
	patches, report, err := mapping.Plan(model, files, mapping.Options{
		Scale: p.Scale, BlockScales: p.BlockScales, Strict: p.Strict, Name: p.Name, Component: p.Component})
	if err != nil {
		// The files or options do not fit the model: the user's input.
		return nil, sdk.Errorf("%v", err)
	}
	resp := &pb.PlanResponse{Report: &pb.Report{Format: report.Format, Matched: report.Matched, Unmatched: report.Unmatched,
		ShapeMismatched: report.ShapeMismatched, Warnings: report.Warnings, Covered: int32(report.Covered), Layers: int32(report.Layers), EffectiveScales: report.EffectiveScales}}
	for _, q := range patches {
		branch, err := json.Marshal(q.Branch)
		if err != nil {
			return nil, fmt.Errorf("apply: %s: %w", q.Target, err)
		}
		patch := &pb.Patch{Target: q.Target, Kind: q.Kind, BranchJson: string(branch)}
		for _, b := range q.Bindings {
			patch.Bindings = append(patch.Bindings, &pb.Binding{File: b.File, Key: b.Key, Param: b.Param, Scale: b.Scale, Reshape: b.Reshape})
		}
		resp.Patches = append(resp.Patches, patch)
	}
	return resp, nil
}

func main() { sdk.Serve(planner{}) }
