package main

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/refiners-go/refiners/internal/names"
	"github.com/refiners-go/refiners/sdk"
)

type params struct {
	Name      string  `json:"name"`
	Scale     float64 `json:"scale"`
	NumHeads  int     `json:"num_heads"`
	NumGroups int     `json:"num_groups"`
}

// specFile is the ControlNet spec the host builds (specs/).
const specFile = "sd15_controlnet.yaml"

// size is a spec parameter read from one dimension of a parameter's
// shape, by state-dict key (shared by SD1UNet and Controlnet in Refiners).
type size struct {
	param string
	key   string
	dim   int
}

// unetSizes are the sizes the ControlNet shares with its U-Net.
var unetSizes = []size{
	{"channels_1", "DownBlocks.Chain_1.Conv2d.weight", 0},
	{"channels_2", "DownBlocks.Chain_5.ResidualBlock.Chain.RangeAdapter2d.Conv2d.weight", 0},
	{"channels_3", "DownBlocks.Chain_8.ResidualBlock.Chain.RangeAdapter2d.Conv2d.weight", 0},
	{"sinusoidal_embedding_dim", "TimestepEncoder.RangeEncoder.Linear_1.weight", 1},
	{"timestep_embedding_dim", "TimestepEncoder.RangeEncoder.Linear_1.weight", 0},
	{"clip_embedding_dim", "DownBlocks.Chain_2.CLIPLCrossAttention.Chain_2.CrossAttentionBlock.Residual_2.Attention.Distribute.Linear_2.weight", 1},
}

// fileSizes are the ControlNet's own sizes, read from its file.
var fileSizes = []size{
	{"in_channels", "DownBlocks.Chain_1.Conv2d.weight", 1},
	{"condition_channels_1", "DownBlocks.Chain_1.Residual.ConditionEncoder.Chain_1.Conv2d.weight", 0},
	{"condition_channels_2", "DownBlocks.Chain_1.Residual.ConditionEncoder.Chain_2.Conv2d_2.weight", 0},
	{"condition_channels_3", "DownBlocks.Chain_1.Residual.ConditionEncoder.Chain_3.Conv2d_2.weight", 0},
	{"condition_channels_4", "DownBlocks.Chain_1.Residual.ConditionEncoder.Chain_4.Conv2d_2.weight", 0},
}

// unetOnly are layers an SD 1.5 U-Net has and a bare ControlNet has not.
var unetOnly = []string{"UpBlocks.Chain_1.ResidualBlock.Chain.Conv2d", "Sum.MiddleBlock.ResidualBlock_1.Chain.Conv2d"}

// anchor is the key that marks a Refiners-format ControlNet (its prefix
// is the ControlNet's prefix in the file).
const anchor = "DownBlocks.Chain_1.Residual.ConditionEncoder.Chain_1.Conv2d.weight"

func plan(req *sdk.PlanRequest, p params) (*sdk.Plan, error) {
	if err := names.Check("ControlNet name", p.Name); err != nil {
		return nil, sdk.Errorf("apply: %v", err)
	}
	if math.IsNaN(p.Scale) || math.IsInf(p.Scale, 0) {
		return nil, sdk.Errorf("apply: scale must be a finite number, got %v", p.Scale)
	}
	if p.NumHeads < 1 || p.NumGroups < 1 {
		return nil, sdk.Errorf("apply: num_heads and num_groups must be at least 1, got %d and %d", p.NumHeads, p.NumGroups)
	}
	if len(req.Model) == 0 {
		return nil, sdk.Errorf("apply: the request has no model (want an SD 1.5 U-Net)")
	}
	shapes := map[string][]int64{} // state-dict key -> shape
	for _, l := range req.Model {
		for name, shape := range l.Params {
			shapes[l.Path+"."+name] = shape
		}
	}
	set := map[string]any{"name": p.Name, "scale": p.Scale,
		"num_heads": strconv.Itoa(p.NumHeads), "num_groups": strconv.Itoa(p.NumGroups)}
	for _, l := range unetOnly {
		if _, ok := shapes[l+".weight"]; !ok {
			return nil, sdk.Errorf("apply: the model is not an SD 1.5 U-Net: it has no layer %s", l)
		}
	}
	for _, s := range unetSizes {
		v, err := dim(shapes, s)
		if err != nil {
			return nil, sdk.Errorf("apply: the model is not an SD 1.5 U-Net: %v", err)
		}
		set[s.param] = strconv.FormatInt(v, 10)
	}

	if len(req.Files) != 1 {
		return nil, sdk.Errorf("apply: want one ControlNet file, got %d", len(req.Files))
	}
	f := req.Files[0]
	var prefixes []string
	fshapes := map[string][]int64{}
	for _, t := range f.Tensors {
		fshapes[t.Key] = t.Shape
		if pre, ok := strings.CutSuffix(t.Key, anchor); ok && (pre == "" || strings.HasSuffix(pre, ".")) {
			prefixes = append(prefixes, pre)
		}
	}
	switch len(prefixes) {
	case 0:
		return nil, sdk.Errorf("apply: file %s is not a Refiners-format ControlNet: no key %s (with or without a prefix)", f.ID, anchor)
	case 1:
	default:
		slices.Sort(prefixes)
		return nil, sdk.Errorf("apply: file %s holds %d ControlNets (key prefixes %q); give a file with one", f.ID, len(prefixes), prefixes)
	}
	prefix := prefixes[0]
	within := map[string][]int64{}
	for k, v := range fshapes {
		if rest, ok := strings.CutPrefix(k, prefix); ok {
			within[rest] = v
		}
	}
	for _, s := range fileSizes {
		v, err := dim(within, s)
		if err != nil {
			return nil, sdk.Errorf("apply: file %s: not a whole ControlNet: %v", f.ID, err)
		}
		set[s.param] = strconv.FormatInt(v, 10)
	}
	for _, s := range unetSizes {
		v, err := dim(within, s)
		if err != nil {
			return nil, sdk.Errorf("apply: file %s: not a whole ControlNet: %v", f.ID, err)
		}
		if want := set[s.param]; strconv.FormatInt(v, 10) != want {
			return nil, sdk.Errorf("apply: file %s is a ControlNet for another U-Net: its %s is %d, the model's %s", f.ID, s.param, v, want)
		}
	}

	report := &sdk.Report{Format: "refiners", Covered: 1, Layers: 1}
	var bindings []sdk.Binding
	for _, t := range f.Tensors {
		rest, ok := strings.CutPrefix(t.Key, prefix)
		if !ok {
			report.Unmatched = append(report.Unmatched, t.Key)
			continue
		}
		bindings = append(bindings, sdk.Binding{File: f.ID, Key: t.Key, Param: rest, Scale: 1})
		report.Matched = append(report.Matched, t.Key)
	}
	if n := len(report.Unmatched); n > 0 {
		report.Warnings = append(report.Warnings, fmt.Sprintf("%d keys of %s are outside the ControlNet's prefix %q and unused, e.g. %s", n, f.ID, prefix, report.Unmatched[0]))
	}
	report.EffectiveScales = map[string]float64{p.Name: p.Scale}
	return &sdk.Plan{Report: report, Patches: []sdk.Patch{{Target: "", Kind: "insert",
		Branch: map[string]any{"spec": specFile, "set": set, "index": 0}, Bindings: bindings}}}, nil
}

// dim reads one size from a shape table.
func dim(shapes map[string][]int64, s size) (int64, error) {
	shape, ok := shapes[s.key]
	if !ok {
		return 0, fmt.Errorf("no parameter %s (for %s)", s.key, s.param)
	}
	if s.dim >= len(shape) {
		return 0, fmt.Errorf("parameter %s has shape %v, want at least %d dimensions (for %s)", s.key, shape, s.dim+1, s.param)
	}
	return shape[s.dim], nil
}
