package adapt

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/models/sd15"
	"github.com/refiners-go/refiners/sdk"
	"github.com/refiners-go/refiners/spec"
)

// tinySizes are the U-Net's parameters at test size (as
// conformance/generate_sd15_unet.py's TINY).
var tinySizes = map[string]string{
	"channels_1": "4", "channels_2": "8", "channels_3": "12", "sinusoidal_embedding_dim": "8",
	"timestep_embedding_dim": "16", "clip_embedding_dim": "8", "num_heads": "2", "num_groups": "2",
}

// tinyControlnet is the "set" of an insert patch for a tiny ControlNet.
func tinyControlnet(name string, scale float64) map[string]any {
	set := map[string]any{"name": name, "scale": scale, "condition_channels_1": 4, "condition_channels_2": 6,
		"condition_channels_3": 8, "condition_channels_4": 8}
	for k, v := range tinySizes {
		set[k] = v
	}
	return set
}

func buildSpec(t *testing.T, file string, set map[string]any) *core.Chain {
	t.Helper()
	desc, err := BranchDescription(map[string]any{"set": set}) // as after the wire
	if err != nil {
		t.Fatal(err)
	}
	o, err := overrides(desc["set"])
	if err != nil {
		t.Fatal(err)
	}
	sp, err := spec.LoadFS(SpecFS, file)
	if err != nil {
		t.Fatal(err)
	}
	m, err := sp.Build(o)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// controlnetFile writes random weights for a tiny ControlNet and returns
// the bindings of every parameter.
func controlnetFile(t *testing.T, s *tensor.Scope, dir, name string, seed int64) (*weights.File, []sdk.Binding) {
	t.Helper()
	cn := buildSpec(t, "sd15_controlnet.yaml", tinyControlnet(name, 1))
	if err := core.InitRandom(s, cn, seed); err != nil {
		t.Fatal(err)
	}
	defer core.ReleaseParams(cn)
	path := filepath.Join(dir, name+".safetensors")
	if err := core.SaveState(s, cn, path, nil); err != nil {
		t.Fatal(err)
	}
	f, err := weights.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	var b []sdk.Binding
	for _, e := range core.StateDict(cn) {
		b = append(b, sdk.Binding{File: name, Key: e.Key, Param: e.Key})
	}
	return f, b
}

func insertPlan(name string, scale float64, b []sdk.Binding) *sdk.Plan {
	return &sdk.Plan{Report: &sdk.Report{}, Patches: []sdk.Patch{{Target: "", Kind: InsertKind,
		Branch: map[string]any{"spec": "sd15_controlnet.yaml", "set": tinyControlnet(name, scale), "index": 0}, Bindings: b}}}
}

// TestInsertEjectRestoresExactly puts two tiny ControlNets into a tiny
// SD 1.5 U-Net through insert patches: each changes the output, they stack
// at index 0 (the later first), and ejecting gives back the tree print,
// every weight and the base output bit for bit.
func TestInsertEjectRestoresExactly(t *testing.T) {
	dir := t.TempDir()
	err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
		unet := buildSpec(t, "sd15_unet.yaml", map[string]any{"channels_1": "4", "channels_2": "8", "channels_3": "12",
			"sinusoidal_embedding_dim": "8", "timestep_embedding_dim": "16", "clip_embedding_dim": "8", "num_heads": "2", "num_groups": "2"})
		if err := core.InitRandom(s, unet, 1); err != nil {
			return err
		}
		defer core.ReleaseParams(unet)
		fa, ba := controlnetFile(t, s, dir, "a", 2)
		fb, bb := controlnetFile(t, s, dir, "b", 3)
		files := map[string]*weights.File{"a": fa, "b": fb}

		x := s.Randn(4, tensor.Float32, 1, 4, 8, 8)
		call := core.Call{Contexts: core.Contexts{
			"diffusion":             {"timestep": s.FromInt64([]int64{250}, 1)},
			"cross_attention_block": {"clip_text_embedding": s.Randn(5, tensor.Float32, 1, 5, 8)},
			"controlnet":            {"condition_a": s.Randn(6, tensor.Float32, 1, 3, 64, 64), "condition_b": s.Randn(7, tensor.Float32, 1, 3, 64, 64)},
		}}
		run := func() *tensor.Tensor {
			out, err := call.Forward(s, unet, x)
			if err != nil {
				t.Fatal(err)
			}
			return out[0]
		}
		tree0, params0 := print(s, unet)
		base := run()

		a, err := Apply(s, unet, insertPlan("a", 0.8, ba), files)
		if err != nil {
			return err
		}
		one := run()
		b, err := Apply(s, unet, insertPlan("b", 1.3, bb), files)
		if err != nil {
			return err
		}
		two := run()
		// The scales as contexts: the built ones give the same output; 0
		// switches a ControlNet off exactly.
		condA, condB := call.Contexts["controlnet"]["condition_a"].(*tensor.Tensor), call.Contexts["controlnet"]["condition_b"].(*tensor.Tensor)
		for _, c := range []struct {
			scaleA, scaleB float64
			want           *tensor.Tensor
		}{{0.8, 1.3, two}, {0, 0, base}} {
			sd15.SetControlnet(call.Contexts, "a", condA, c.scaleA)
			sd15.SetControlnet(call.Contexts, "b", condB, c.scaleB)
			if d := maxAbsDiff(s, run(), c.want); d != 0 {
				t.Errorf("scales %g, %g set as contexts: output off by %g", c.scaleA, c.scaleB, d)
			}
		}
		delete(call.Contexts["controlnet"], "scale_a")
		delete(call.Contexts["controlnet"], "scale_b")
		kids := unet.Children()
		if got := []string{core.Describe(kids[0]), core.Describe(kids[1])}; got[0] != "Controlnet(name=b)" || got[1] != "Controlnet(name=a)" {
			t.Errorf("children 0 and 1 are %v, want Controlnet(name=b), Controlnet(name=a)", got)
		}
		if d := maxAbsDiff(s, one, base); d < 1e-3 {
			t.Errorf("ControlNet a changes the output by %g only", d)
		}
		if d := maxAbsDiff(s, two, one); d < 1e-3 {
			t.Errorf("ControlNet b changes the output by %g only", d)
		}
		// A ControlNet named as one already in place is refused.
		if _, err := Apply(s, unet, insertPlan("a", 1, ba), files); err == nil || !strings.Contains(err.Error(), "already has a child Controlnet(name=a)") {
			t.Errorf("a second ControlNet a: %v", err)
		}
		for _, ap := range []*Applied{b, a} {
			if err := ap.Eject(); err != nil {
				return err
			}
		}
		tree1, params1 := print(s, unet)
		if tree1 != tree0 {
			t.Errorf("tree after eject differs:\n%s\nwant:\n%s", tree1, tree0)
		}
		if len(params1) != len(params0) {
			t.Errorf("%d parameters after eject, want %d", len(params1), len(params0))
		}
		for k, v := range params0 {
			if string(params1[k]) != string(v) {
				t.Errorf("%s changed", k)
			}
		}
		if d := maxAbsDiff(s, run(), base); d != 0 {
			t.Errorf("output after eject differs from the base by %g", d)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestBadInsertPlansChangeNothing: every bad insert plan is refused with a
// clear error, and the model is untouched.
func TestBadInsertPlansChangeNothing(t *testing.T) {
	dir := t.TempDir()
	err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
		unet := buildSpec(t, "sd15_unet.yaml", map[string]any{"channels_1": "4", "channels_2": "8", "channels_3": "12",
			"sinusoidal_embedding_dim": "8", "timestep_embedding_dim": "16", "clip_embedding_dim": "8", "num_heads": "2", "num_groups": "2"})
		if err := core.InitRandom(s, unet, 1); err != nil {
			return err
		}
		defer core.ReleaseParams(unet)
		fa, ba := controlnetFile(t, s, dir, "a", 2)
		files := map[string]*weights.File{"a": fa}
		tree0, params0 := print(s, unet)

		branch := func(change func(map[string]any)) map[string]any {
			b := map[string]any{"spec": "sd15_controlnet.yaml", "set": tinyControlnet("a", 1), "index": 0}
			change(b)
			return b
		}
		patch := func(target string, br map[string]any, b []sdk.Binding) sdk.Patch {
			return sdk.Patch{Target: target, Kind: InsertKind, Branch: br, Bindings: b}
		}
		same := func(map[string]any) {}
		wrongShape := append([]sdk.Binding(nil), ba...)
		wrongShape[0].Key = ba[len(ba)-1].Key // a bias for a weight
		cases := []struct {
			name    string
			patches []sdk.Patch
			want    string
		}{
			{"target not a chain", []sdk.Patch{patch("DownBlocks.Chain_1.Conv2d", branch(same), ba)}, "is a Conv2d, not a chain"},
			{"unknown target", []sdk.Patch{patch("Nope", branch(same), ba)}, `the model has no layer "Nope"`},
			{"index out of range", []sdk.Patch{patch("", branch(func(b map[string]any) { b["index"] = 9 }), ba)}, "index 9 out of range [0, 5]"},
			{"index not an integer", []sdk.Patch{patch("", branch(func(b map[string]any) { b["index"] = 0.5 }), ba)}, "index must be an integer"},
			{"unknown spec", []sdk.Patch{patch("", branch(func(b map[string]any) { b["spec"] = "nope.yaml" }), ba)}, "nope.yaml"},
			{"bad override", []sdk.Patch{patch("", branch(func(b map[string]any) { b["set"] = map[string]any{"nope": 1} }), ba)}, `override "nope"`},
			{"spec and layer", []sdk.Patch{patch("", branch(func(b map[string]any) { b["layer"] = map[string]any{"type": "SiLU"} }), ba)}, "not both"},
			{"unknown field", []sdk.Patch{patch("", branch(func(b map[string]any) { b["at"] = 1 }), ba)}, `unknown branch field "at"`},
			{"missing binding", []sdk.Patch{patch("", branch(same), ba[1:])}, "has no binding"},
			{"wrong shape", []sdk.Patch{patch("", branch(same), wrongShape)}, "the branch wants"},
			{"missing key", []sdk.Patch{patch("", branch(same), append([]sdk.Binding{{File: "a", Key: "nope", Param: ba[0].Param}}, ba[1:]...))}, `no tensor "nope"`},
			{"concatenation too long", []sdk.Patch{patch("", branch(same), append([]sdk.Binding{ba[0]}, ba...))}, "2 keys concatenated along dimension 0"},
			{"twice in one plan", []sdk.Patch{patch("", branch(same), ba), patch("", branch(same), ba)}, "two insertions of Controlnet(name=a)"},
			// The second patch is bad: the first must not stay inserted.
			{"good then bad", []sdk.Patch{patch("", branch(same), ba), patch("Nope", branch(same), ba)}, `the model has no layer "Nope"`},
		}
		for _, c := range cases {
			_, err := Apply(s, unet, &sdk.Plan{Report: &sdk.Report{}, Patches: c.patches}, files)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s: got %v, want an error containing %q", c.name, err, c.want)
			}
			tree1, params1 := print(s, unet)
			if tree1 != tree0 || fmt.Sprint(len(params1)) != fmt.Sprint(len(params0)) {
				t.Errorf("%s: the model changed", c.name)
			}
		}
		// Fuse refuses insert patches before anything changes.
		if _, err := Fuse(s, unet, insertPlan("a", 1, ba), files); err == nil || !strings.Contains(err.Error(), "cannot be fused") {
			t.Errorf("fuse: %v", err)
		}
		tree1, params1 := print(s, unet)
		if tree1 != tree0 {
			t.Error("fuse changed the tree")
		}
		for k, v := range params0 {
			if string(params1[k]) != string(v) {
				t.Errorf("fuse changed %s", k)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestInsertCastsToTheModelsDType: a float16 ControlNet file (as Refiners'
// converter saves them) goes into a float32 U-Net as float32 weights that
// hold exactly the file's values.
func TestInsertCastsToTheModelsDType(t *testing.T) {
	dir := t.TempDir()
	err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
		unet := buildSpec(t, "sd15_unet.yaml", map[string]any{"channels_1": "4", "channels_2": "8", "channels_3": "12",
			"sinusoidal_embedding_dim": "8", "timestep_embedding_dim": "16", "clip_embedding_dim": "8", "num_heads": "2", "num_groups": "2"})
		if err := core.InitRandom(s, unet, 1); err != nil {
			return err
		}
		defer core.ReleaseParams(unet)
		cn := buildSpec(t, "sd15_controlnet.yaml", tinyControlnet("h", 1))
		if err := core.InitRandom(s, cn, 5); err != nil {
			return err
		}
		defer core.ReleaseParams(cn)
		if err := core.ToDType(s, cn, tensor.Float16); err != nil {
			return err
		}
		path := filepath.Join(dir, "h.safetensors")
		if err := core.SaveState(s, cn, path, nil); err != nil {
			return err
		}
		f, err := weights.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		var b []sdk.Binding
		for _, e := range core.StateDict(cn) {
			b = append(b, sdk.Binding{File: "h", Key: e.Key, Param: e.Key})
		}
		a, err := Apply(s, unet, insertPlan("h", 1, b), map[string]*weights.File{"h": f})
		if err != nil {
			return err
		}
		defer a.Eject()
		inserted := core.StateDict(unet.Children()[0])
		if len(inserted) != len(b) {
			t.Fatalf("%d parameters inserted, want %d", len(inserted), len(b))
		}
		for _, e := range inserted {
			if got := (*e.Value).DType(); got != tensor.Float32 {
				t.Errorf("%s is %s, want float32", e.Key, got)
				continue
			}
			if d := maxAbsDiff(s, *e.Value, s.ToDType(f.Load(s, e.Key), tensor.Float32)); d != 0 {
				t.Errorf("%s differs from the file's float16 values by %g", e.Key, d)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSummarizeLeavesInsertsOut: while ControlNets are inserted, Summarize
// describes the U-Net alone, exactly as before (so a plan made then, a
// LoRA's or another ControlNet's, never targets a ControlNet's layers),
// and a LoRA patch on a U-Net layer still applies by its base path; after
// ejection the ControlNets are forgotten.
func TestSummarizeLeavesInsertsOut(t *testing.T) {
	dir := t.TempDir()
	err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
		unet := buildSpec(t, "sd15_unet.yaml", map[string]any{"channels_1": "4", "channels_2": "8", "channels_3": "12",
			"sinusoidal_embedding_dim": "8", "timestep_embedding_dim": "16", "clip_embedding_dim": "8", "num_heads": "2", "num_groups": "2"})
		if err := core.InitRandom(s, unet, 1); err != nil {
			return err
		}
		defer core.ReleaseParams(unet)
		fa, ba := controlnetFile(t, s, dir, "a", 2)
		fb, bb := controlnetFile(t, s, dir, "b", 3)
		files := map[string]*weights.File{"a": fa, "b": fb}
		want := fmt.Sprint(Summarize(unet))
		a, err := Apply(s, unet, insertPlan("a", 1, ba), files)
		if err != nil {
			return err
		}
		b, err := Apply(s, unet, insertPlan("b", 1, bb), files)
		if err != nil {
			return err
		}
		sum := Summarize(unet)
		if got := fmt.Sprint(sum); got != want {
			t.Error("Summarize with two ControlNets in differs from the U-Net's")
		}
		n := 0
		unet.Walk(func(m core.Module, _ *core.Chain, path string) bool {
			if strings.HasPrefix(path, "Controlnet") {
				if _, ok := m.(core.Weighted); ok {
					n++
				}
			}
			return true
		})
		if n == 0 {
			t.Fatal("the live tree has no ControlNet layer: the test checks nothing")
		}
		// A LoRA on the first Linear of the summary applies by its base path.
		var target sdk.Layer
		for _, l := range sum {
			if l.Type == "Linear" {
				target = l
				break
			}
		}
		in, out := target.Params["weight"][1], target.Params["weight"][0]
		loraPath := filepath.Join(dir, "lora.safetensors")
		if err := weights.Save(s, loraPath, map[string]*tensor.Tensor{"down": s.Randn(8, tensor.Float32, 1, in),
			"up": s.Randn(9, tensor.Float32, out, 1)}, nil); err != nil {
			return err
		}
		lf, err := weights.Open(loraPath)
		if err != nil {
			return err
		}
		defer lf.Close()
		lora, err := Apply(s, unet, &sdk.Plan{Report: &sdk.Report{}, Patches: []sdk.Patch{{Target: target.Path, Kind: "lora",
			Branch:   map[string]any{"type": "LinearLora", "name": "x", "in_features": in, "out_features": out, "rank": 1},
			Bindings: []sdk.Binding{{File: "l", Key: "down", Param: "Linear_1.weight"}, {File: "l", Key: "up", Param: "Linear_2.weight"}}}}},
			map[string]*weights.File{"l": lf})
		if err != nil {
			t.Errorf("a LoRA on %s with ControlNets in: %v", target.Path, err)
		} else if err := lora.Eject(); err != nil {
			return err
		}
		for _, ap := range []*Applied{b, a} {
			if err := ap.Eject(); err != nil {
				return err
			}
		}
		if got := fmt.Sprint(Summarize(unet)); got != want {
			t.Error("Summarize after eject differs")
		}
		count := 0
		inserted.Range(func(any, any) bool { count++; return true })
		if count != 0 {
			t.Errorf("%d inserted sub-models remembered after eject", count)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
