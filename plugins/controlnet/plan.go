package main

import (
	_ "embed"
	"encoding/json"
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

// diffusersAnchor marks a diffusers ControlNetModel.
const diffusersAnchor = "controlnet_cond_embedding.conv_in.weight"

// originalAnchor marks lllyasviel's original ControlNet layout
// (control_v11p_sd15_*.pth and their safetensors: keys with no prefix, or
// control_model.* in the 1.0 checkpoints that also hold the SD model).
const originalAnchor = "input_hint_block.0.weight"

// diffusersJSON and originalJSON are the converter's ControlNet name table
// reduced to diffusers name -> Refiners key and original name -> Refiners
// key (TestNameTable checks them against convert/data/sd15_controlnet.json).
//
//go:embed data/diffusers.json
var diffusersJSON []byte

//go:embed data/original.json
var originalJSON []byte

var diffusersNames, originalNames = nameTable("diffusers", diffusersJSON), nameTable("original", originalJSON)

func nameTable(what string, data []byte) map[string]string {
	m := map[string]string{}
	if err := json.Unmarshal(data, &m); err != nil {
		panic(fmt.Sprintf("controlnet: data/%s.json: %v", what, err))
	}
	return m
}

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
	format, keyOf, unused, err := readFile(f)
	if err != nil {
		return nil, err
	}
	within := map[string][]int64{} // Refiners key -> shape
	fshapes := map[string][]int64{}
	for _, t := range f.Tensors {
		fshapes[t.Key] = t.Shape
	}
	for param, key := range keyOf {
		within[param] = fshapes[key]
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

	report := &sdk.Report{Format: format, Covered: 1, Layers: 1, Unmatched: unused}
	var bindings []sdk.Binding
	paramOf := map[string]string{}
	for param, key := range keyOf {
		paramOf[key] = param
	}
	for _, t := range f.Tensors { // in the file's order
		if param, ok := paramOf[t.Key]; ok {
			bindings = append(bindings, sdk.Binding{File: f.ID, Key: t.Key, Param: param, Scale: 1})
			report.Matched = append(report.Matched, t.Key)
		}
	}
	if n := len(unused); n > 0 {
		report.Warnings = append(report.Warnings, fmt.Sprintf("%d keys of %s are not the ControlNet's and unused, e.g. %s", n, f.ID, unused[0]))
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

// readFile finds the ControlNet in a file: in Refiners' layout (keys as
// Refiners' Controlnet state dict, with or without a prefix), in
// diffusers' ControlNetModel layout or in lllyasviel's original layout
// (renamed through the converter's name tables, data/diffusers.json and
// data/original.json). keyOf maps each Refiners key to the file's
// key; unused are the file's other keys.
func readFile(f sdk.File) (format string, keyOf map[string]string, unused []string, err error) {
	find := func(anchor string) []string {
		var prefixes []string
		for _, t := range f.Tensors {
			if pre, ok := strings.CutSuffix(t.Key, anchor); ok && (pre == "" || strings.HasSuffix(pre, ".")) {
				prefixes = append(prefixes, pre)
			}
		}
		slices.Sort(prefixes)
		return prefixes
	}
	var prefixes []string
	for _, l := range []struct{ format, anchor string }{{"refiners", anchor}, {"diffusers", diffusersAnchor}, {"original", originalAnchor}} {
		if prefixes = find(l.anchor); len(prefixes) > 0 {
			format = l.format
			break
		}
	}
	switch len(prefixes) {
	case 0:
		return "", nil, nil, sdk.Errorf("apply: file %s is not an SD 1.5 ControlNet in Refiners', diffusers' or the original layout: no key %s, %s or %s (with or without a prefix)", f.ID, anchor, diffusersAnchor, originalAnchor)
	case 1:
	default:
		return "", nil, nil, sdk.Errorf("apply: file %s holds %d ControlNets (key prefixes %q); give a file with one", f.ID, len(prefixes), prefixes)
	}
	prefix := prefixes[0]
	table := map[string]map[string]string{"diffusers": diffusersNames, "original": originalNames}[format]
	rename := func(k string) (string, bool) { return k, true }
	if table != nil {
		rename = func(k string) (string, bool) { r, ok := table[k]; return r, ok }
	}
	keyOf = map[string]string{}
	for _, t := range f.Tensors {
		rest, ok := strings.CutPrefix(t.Key, prefix)
		if ok {
			rest, ok = rename(rest)
		}
		if !ok {
			unused = append(unused, t.Key)
			continue
		}
		keyOf[rest] = t.Key
	}
	if table != nil {
		var missing []string
		for d, r := range table {
			if _, ok := keyOf[r]; !ok {
				missing = append(missing, prefix+d)
			}
		}
		if len(missing) > 0 {
			slices.Sort(missing)
			return "", nil, nil, sdk.Errorf("apply: file %s is an incomplete %s ControlNet: %d tensors missing, e.g. %s", f.ID, format, len(missing), missing[0])
		}
	}
	return format, keyOf, unused, nil
}
