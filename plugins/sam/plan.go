package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/refiners-go/refiners/models/sam/samkeys"
	"github.com/refiners-go/refiners/sdk"
)

type params struct {
	DecoderHeads int `json:"decoder_heads"`
}

// model is one SAM model of the plan: its part prefix in Refiners' state
// dict and the branch that builds it.
type model struct {
	prefix string
	branch func(*samkeys.Sizes) map[string]any
}

var models = []model{
	{"image_encoder.", func(s *samkeys.Sizes) map[string]any {
		return map[string]any{"spec": "sam.yaml", "set": anyMap(s.Encoder)}
	}},
	{"point_encoder.", func(s *samkeys.Sizes) map[string]any {
		return map[string]any{"spec": "sam_point_encoder.yaml", "set": map[string]any{"embedding_dim": strconv.FormatInt(s.PointDim, 10)}}
	}},
	{"mask_encoder.", func(s *samkeys.Sizes) map[string]any {
		// The spec unwraps its MaskEncoder: the keys are mask_encoder.<key>.
		return map[string]any{"spec": "sam_mask_encoder.yaml", "set": map[string]any{
			"embedding_dim": strconv.FormatInt(s.MaskDim, 10), "intermediate_channels": strconv.FormatInt(s.MaskInner, 10)}}
	}},
	{"mask_decoder.", func(s *samkeys.Sizes) map[string]any {
		return map[string]any{"spec": "sam_mask_decoder.yaml", "set": anyMap(s.Decoder)}
	}},
}

func anyMap(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func plan(req *sdk.PlanRequest, p params) (*sdk.Plan, error) {
	if p.DecoderHeads < 1 {
		return nil, sdk.Errorf("load: decoder_heads must be at least 1, got %d", p.DecoderHeads)
	}
	if len(req.Files) != 1 {
		return nil, sdk.Errorf("load: want one Segment Anything file, got %d", len(req.Files))
	}
	f := req.Files[0]
	shapes := map[string][]int64{}
	for _, t := range f.Tensors {
		shapes[t.Key] = t.Shape
	}
	format, rules, unused, err := samkeys.Plan(shapes)
	if err != nil {
		return nil, sdk.Errorf("load: file %s: %v", f.ID, err)
	}
	sizes, err := samkeys.ReadSizes(samkeys.Targets(rules), p.DecoderHeads)
	if err != nil {
		return nil, sdk.Errorf("load: file %s: %v", f.ID, err)
	}
	report := &sdk.Report{Format: format, Covered: len(models), Layers: len(models), Unmatched: unused}
	if len(unused) > 0 {
		report.Warnings = append(report.Warnings, fmt.Sprintf("%d keys of %s are not Segment Anything's and unused, e.g. %s", len(unused), f.ID, unused[0]))
	}
	// Each model goes in at index 0, last first, so that the target ends
	// with them in SegmentAnything's order.
	var patches []sdk.Patch
	for i := len(models) - 1; i >= 0; i-- {
		m := models[i]
		branch := m.branch(sizes)
		branch["index"] = 0
		patch := sdk.Patch{Target: "", Kind: "insert", Branch: branch}
		for _, r := range rules {
			param, ok := strings.CutPrefix(r.Target, m.prefix)
			if !ok {
				continue
			}
			for _, src := range r.Sources {
				b := sdk.Binding{File: f.ID, Key: src, Param: param, Scale: 1}
				switch r.Op {
				case samkeys.Reshape:
					b.Reshape = r.Shape
				case samkeys.Transpose:
					b.Transpose = true
				}
				patch.Bindings = append(patch.Bindings, b)
				report.Matched = append(report.Matched, src)
			}
			if r.Op == samkeys.Concat {
				report.Warnings = append(report.Warnings, fmt.Sprintf("%s is %s concatenated along dimension 0 (one binding each, in order)", r.Target, strings.Join(r.Sources, " + ")))
			}
		}
		if len(patch.Bindings) == 0 {
			return nil, sdk.Errorf("load: file %s has no %s* tensors", f.ID, m.prefix)
		}
		patches = append(patches, patch)
	}
	return &sdk.Plan{Patches: patches, Report: report}, nil
}
