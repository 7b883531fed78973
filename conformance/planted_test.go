package conformance

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
)

// A planter changes a case's parameters (keys param.<model key>, float32
// data) before they are loaded, the way a bug would: it returns what it
// did, or ok false when the case has nothing it applies to.
type planter func(m core.Module, params map[string]weights.Raw) (what string, ok bool)

// plantedParams returns f itself when plant is nil, else an in-memory file
// holding f's param.* tensors as plant left them.
func plantedParams(f *weights.File, m core.Module, plant planter) (*weights.File, error) {
	if plant == nil {
		return f, nil
	}
	params := map[string]weights.Raw{}
	for _, k := range f.Keys() {
		if !strings.HasPrefix(k, "param.") {
			continue
		}
		info, _ := f.Info(k)
		data, err := f.Bytes(k)
		if err != nil {
			return nil, err
		}
		params[k] = weights.Raw{DType: info.DType, Shape: info.Shape, Data: data}
	}
	what, ok := plant(m, params)
	if !ok {
		return nil, errNotApplicable
	}
	var buf bytes.Buffer
	if err := weights.Encode(&buf, params, nil); err != nil {
		return nil, err
	}
	return weights.Parse(f.Path()+" ("+what+")", buf.Bytes())
}

var errNotApplicable = fmt.Errorf("the planted bug does not apply to this case")

// weightKeys lists the param keys of Linear and Conv weights (two or more
// dimensions) in the model's tree order.
func weightKeys(m core.Module, params map[string]weights.Raw) []string {
	var keys []string
	for _, e := range core.StateDict(m) {
		k := "param." + e.Key
		if r, ok := params[k]; ok && r.DType == tensor.Float32 && len(r.Shape) >= 2 && strings.HasSuffix(k, ".weight") {
			keys = append(keys, k)
		}
	}
	return keys
}

func float32s(r weights.Raw) []float32 {
	out := make([]float32, len(r.Data)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(r.Data[4*i:]))
	}
	return out
}

func putFloat32s(r *weights.Raw, v []float32) {
	r.Data = slices.Clone(r.Data)
	for i, x := range v {
		binary.LittleEndian.PutUint32(r.Data[4*i:], math.Float32bits(x))
	}
}

// scaleWeight multiplies the pick-th weight (of n: first, middle, last) by
// 1.01: a constant off by 1%.
func scaleWeight(pick string) planter {
	return func(m core.Module, params map[string]weights.Raw) (string, bool) {
		keys := weightKeys(m, params)
		if len(keys) == 0 {
			return "", false
		}
		if pick == "last" {
			// A bias-less layer right before a normalization is scale
			// invariant (SAM's neck: Conv2d then LayerNorm2d): a 1% scale
			// there changes no output, in the reference either.
			for len(keys) > 1 && normalizedAfter(m, strings.TrimSuffix(strings.TrimPrefix(keys[len(keys)-1], "param."), ".weight"), params) {
				keys = keys[:len(keys)-1]
			}
		}
		k := map[string]string{"first": keys[0], "middle": keys[len(keys)/2], "last": keys[len(keys)-1]}[pick]
		r := params[k]
		v := float32s(r)
		for i := range v {
			v[i] *= 1.01
		}
		putFloat32s(&r, v)
		params[k] = r
		return "1% scale on " + strings.TrimPrefix(k, "param."), true
	}
}

// normalizedAfter reports whether the layer at path has no bias and its
// next sibling normalizes (LayerNorm, LayerNorm2d, GroupNorm,
// InstanceNorm2d), which makes a uniform scale of its weight invisible.
func normalizedAfter(m core.Module, path string, params map[string]weights.Raw) bool {
	if _, hasBias := params["param."+path+".bias"]; hasBias {
		return false
	}
	root, ok := m.(*core.Chain)
	if !ok {
		return false
	}
	var parent *core.Chain
	var layer core.Module
	root.Walk(func(x core.Module, p *core.Chain, at string) bool {
		if at == path {
			layer, parent = x, p
		}
		return layer == nil
	})
	if parent == nil {
		return false
	}
	children := parent.Children()
	for i := range children[:len(children)-1] {
		if children[i] == layer {
			switch core.TypeName(children[i+1]) {
			case "LayerNorm", "LayerNorm2d", "GroupNorm", "InstanceNorm2d":
				return true
			}
		}
	}
	return false
}

// dropBias zeroes the bias of the first or last Linear or Conv that has
// one. (The last, in a model: a bias right before a normalization, such as
// the demo ViT's patch embedding, is invisible by construction.)
func dropBias(pick string) planter {
	return func(m core.Module, params map[string]weights.Raw) (string, bool) {
		keys := weightKeys(m, params)
		if pick == "last" {
			slices.Reverse(keys)
		}
		for _, wk := range keys {
			k := strings.TrimSuffix(wk, "weight") + "bias"
			if r, ok := params[k]; ok {
				r.Data = make([]byte, len(r.Data))
				params[k] = r
				return "missing bias " + strings.TrimPrefix(k, "param."), true
			}
		}
		return "", false
	}
}

// swapOperands swaps the weights of the first two same-shaped projections
// that an attention distributes its inputs to (query and key, or key and
// value): operands in the wrong order.
func swapOperands(m core.Module, params map[string]weights.Raw) (string, bool) {
	keys := weightKeys(m, params)
	for i, a := range keys {
		parent, _ := cutLast(strings.TrimSuffix(a, ".weight"), ".")
		if !strings.HasSuffix(parent, ".Distribute") {
			continue
		}
		for _, b := range keys[i+1:] {
			if strings.HasPrefix(b, parent+".") && slices.Equal(params[a].Shape, params[b].Shape) {
				params[a], params[b] = params[b], params[a]
				return "swapped " + strings.TrimPrefix(a, "param.") + " and " + strings.TrimPrefix(b, "param."), true
			}
		}
	}
	return "", false
}

// cutLast splits s around the last sep.
func cutLast(s, sep string) (before, after string) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return "", s
	}
	return s[:i], s[i+len(sep):]
}

// TestPlantedBugsFail plants the bugs the error model must catch — a weight
// 1% off (in the first, a middle and the last layer), a missing bias, two
// attention operands swapped — into every float32 layer and spec case they
// apply to, and requires each to fail. It logs the smallest ratio seen per
// bug: how far above ErrorBound the weakest planted bug still lands.
func TestPlantedBugsFail(t *testing.T) {
	// Layer cases hold one to three layers, some after a Return or inside
	// a Sum where order does not matter: they get the first-layer bugs.
	const layers, specs = 1, 2
	bugs := []struct {
		name  string
		plant planter
		sets  int
	}{
		{"scale first layer 1%", scaleWeight("first"), layers | specs},
		{"scale middle layer 1%", scaleWeight("middle"), specs},
		{"scale last layer 1%", scaleWeight("last"), specs},
		{"missing first bias", dropBias("first"), layers},
		{"missing last bias", dropBias("last"), specs},
		{"swapped operands", swapOperands, layers | specs},
	}
	layerFiles, _ := filepath.Glob("testdata/layers/*.safetensors")
	specFiles, _ := filepath.Glob("testdata/specs/*.safetensors")
	if len(layerFiles) == 0 || len(specFiles) == 0 {
		t.Fatal("no golden vectors (run make golden)")
	}
	type runner func(string, planter) ([]Diff, error)
	var report strings.Builder
	fmt.Fprintf(&report, "%-24s %-6s %-12s %s\n", "planted bug", "cases", "min ratio", "weakest case")
	for _, bug := range bugs {
		caught, minRatio, weakest := 0, math.Inf(1), ""
		for _, set := range []struct {
			kind  int
			files []string
			run   runner
		}{{layers, layerFiles, runCaseWith}, {specs, specFiles, runSpecCaseWith}} {
			if bug.sets&set.kind == 0 {
				continue
			}
			for _, path := range set.files {
				name := strings.TrimSuffix(filepath.Base(path), ".safetensors")
				if strings.HasSuffix(name, "_bf16") {
					continue // bfloat16 rounding is ~0.4%: a 1% bug is within a few ulps
				}
				diffs, err := set.run(path, bug.plant)
				if err == errNotApplicable || (err != nil && strings.Contains(err.Error(), errNotApplicable.Error())) {
					continue
				}
				if err != nil {
					t.Fatalf("%s, %s: %v", bug.name, name, err)
				}
				worst := 0.0
				for _, d := range diffs {
					worst = math.Max(worst, d.Ratio)
				}
				if worst <= ErrorBound {
					t.Errorf("%s: %s passes the error model (ratio %.3g ≤ %d): the tolerance hides it", bug.name, name, worst, ErrorBound)
					continue
				}
				caught++
				if worst < minRatio {
					minRatio, weakest = worst, name
				}
			}
		}
		if caught == 0 {
			t.Errorf("%s: applied to no case", bug.name)
		}
		fmt.Fprintf(&report, "%-24s %-6d %-12.3g %s\n", bug.name, caught, minRatio, weakest)
	}
	t.Logf("every planted bug fails (ratio > %d):\n%s", ErrorBound, report.String())
	publishReport(t, report.String())
}
