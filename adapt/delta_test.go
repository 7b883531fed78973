package adapt

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/plugins/lora/mapping"
	"github.com/refiners-go/refiners/sdk"
)

// The LyCORIS patch kinds (diff, loha, lokr) against reference outputs
// computed with LyCORIS's own functions (testdata/lycoris/generate.py).
// Plans come from the LoRA plugin's real planner, on a small model whose
// two layers sit at SD 1.5 U-Net paths, so the files use their real key
// names (kohya module names, LyCORIS tensor names, alpha).

const lycorisDir = "testdata/lycoris"

// Tolerances against the float64 reference, for float32 computations.
const deltaAtol, deltaRtol = 1e-5, 1e-4

var deltaTargets = map[string]string{
	"Linear": "TimestepEncoder.RangeEncoder.Linear_1", // time_embedding.linear_1
	"Conv2d": "DownBlocks.Chain_1.Conv2d",             // conv_in, here 3x3 with stride 2
}

func deltaModel() *core.Chain {
	return core.NewChain(
		core.NewNamed("TimestepEncoder", core.Sequence, core.NewNamed("RangeEncoder", core.Sequence,
			core.NewLinear(6, 8, true), core.NewSiLU(), core.NewLinear(8, 8, true))),
		core.NewNamed("DownBlocks", core.Sequence,
			core.NewChain(core.NewConv2d(4, 6, 3, core.ConvOptions{Stride: 2, Padding: 1})), core.NewChain()),
	)
}

// deltaSummary is the model's summary completed with the SD 1.5 U-Net's
// other layers from the planner's name table (the planner recognises the
// architecture by them).
func deltaSummary(t *testing.T, m *core.Chain) []mapping.Layer {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "plugins", "lora", "mapping", "data", "sd15.json"))
	if err != nil {
		t.Fatal(err)
	}
	var table struct {
		Layers []struct {
			Component, Refiners, Type string
			Weight                    []int64
		}
	}
	if err := json.Unmarshal(raw, &table); err != nil {
		t.Fatal(err)
	}
	var out []mapping.Layer
	seen := map[string]bool{}
	for _, l := range Summarize(m) {
		out = append(out, l)
		seen[l.Path] = true
	}
	for _, r := range table.Layers {
		if r.Component == "unet" && !seen[r.Refiners] {
			out = append(out, mapping.Layer{Path: r.Refiners, Type: r.Type, Params: map[string][]int64{"weight": r.Weight}})
		}
	}
	return out
}

// lycorisPlan plans files (by ID) with the real planner at user scale 0.75,
// as the LoRA plugin does, and checks that every key was used.
func lycorisPlan(t *testing.T, summary []mapping.Layer, files map[string]*weights.File, ids ...string) *sdk.Plan {
	t.Helper()
	var mfiles []mapping.File
	for _, id := range ids {
		mfiles = append(mfiles, Header(id, "", files[id]))
	}
	patches, report, err := mapping.Plan(summary, mfiles, mapping.Options{Scale: 0.75})
	if err != nil {
		t.Fatal(err)
	}
	if len(report.Unmatched)+len(report.ShapeMismatched) > 0 || len(report.Warnings) > 0 {
		t.Fatalf("plan of %v: unmatched %v, mismatched %v, warnings %v", ids, report.Unmatched, report.ShapeMismatched, report.Warnings)
	}
	return &sdk.Plan{Patches: patches, Report: report.SDK()}
}

// lycorisFiles opens every LyCORIS file of the test data, by ID (the file
// name without .safetensors).
func lycorisFiles(t *testing.T) map[string]*weights.File { return testFiles(t, lycorisDir) }

// testFiles opens every safetensors file of dir, by ID.
func testFiles(t *testing.T, dir string) map[string]*weights.File {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no test files in %s (%v)", dir, err)
	}
	files := map[string]*weights.File{}
	for _, p := range paths {
		f, err := weights.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		files[strings.TrimSuffix(filepath.Base(p), ".safetensors")] = f
	}
	return files
}

// loadDeltaModel builds the model with the reference weights (the layers
// the cases do not touch get random ones).
func loadDeltaModel(s *tensor.Scope, ref *weights.File) (*core.Chain, error) {
	m := deltaModel()
	if err := core.InitRandom(s, m, 1); err != nil {
		return nil, err
	}
	r, err := core.LoadState(s, m, ref, core.LoadOptions{Prefix: "model."})
	if err != nil {
		return nil, err
	}
	if len(r.Loaded) != 4 {
		return nil, fmt.Errorf("reference weights: %s", r)
	}
	return m, nil
}

func maxAbsDiff(s *tensor.Scope, a, b *tensor.Tensor) float64 {
	return s.Item(s.Max(s.Abs(s.Sub(a, b))))
}

// TestLycorisKindsMatchReference applies each case's plan at run time and
// fused: both outputs match LyCORIS's within float32 tolerance (atol 1e-5,
// rtol 1e-4), the tree shows the branch while applied, and ejecting or
// unfusing leaves the tree and every weight bit for bit as before.
func TestLycorisKindsMatchReference(t *testing.T) {
	cases := []struct {
		name   string
		target string
		files  []string
		print  []string // branch lines of the applied tree
	}{
		{"diff_linear", "Linear", nil, []string{"WeightDelta(scale=0.75, name=lora, device=cpu, dtype=float32)"}},
		{"diff_b_linear", "Linear", nil, []string{"WeightDelta(bias=True, scale=0.75, name=lora"}},
		{"diff_b_conv", "Conv2d", nil, []string{"WeightDelta(bias=True, scale=0.75, name=lora"}},
		{"loha_linear", "Linear", nil, []string{"LoHa(rank=2, scale=0.75, name=lora"}},
		{"loha_conv", "Conv2d", nil, []string{"LoHa(rank=2, scale=0.75, name=lora"}},
		{"loha_conv_tucker", "Conv2d", nil, []string{"LoHa(rank=2, tucker=True, scale=0.75, name=lora"}},
		{"lokr_linear_full", "Linear", nil, []string{"LoKr(w1=(2, 2), scale=0.75, name=lora"}},
		{"lokr_linear_w2_factored", "Linear", nil, []string{"LoKr(w1=(2, 2), rank=2, scale=0.75"}},
		{"lokr_linear_both_factored", "Linear", nil, []string{"LoKr(w1=(4, 3), rank=2, scale=0.75"}},
		{"lokr_conv_full", "Conv2d", nil, []string{"LoKr(w1=(2, 2), scale=0.75"}},
		{"lokr_conv_w2_flat", "Conv2d", nil, []string{"LoKr(w1=(2, 2), scale=0.75"}},
		{"lokr_conv_w2_factored", "Conv2d", nil, []string{"LoKr(w1=(3, 2), rank=2, scale=0.75"}},
		{"lokr_conv_tucker", "Conv2d", nil, []string{"LoKr(w1=(2, 2), rank=2, tucker=True, scale=0.75"}},
		// Two files on one layer: a LoRA and a LoHa share one adapter.
		{"lora_loha_linear", "Linear", []string{"lora_loha_linear.0", "lora_loha_linear.1"},
			[]string{"LinearLora(in_features=6, out_features=8, name=lora_loha_linear.0)", "LoHa(rank=2, scale=0.75, name=lora_loha_linear.1"}},
	}
	files := lycorisFiles(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ids := c.files
			if ids == nil {
				ids = []string{c.name}
			}
			err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
				ref := files["reference"]
				m, err := loadDeltaModel(s, ref)
				if err != nil {
					return err
				}
				defer core.ReleaseParams(m)
				plan := lycorisPlan(t, deltaSummary(t, m), files, ids...)
				if len(plan.Patches) != len(ids) {
					t.Fatalf("%d patches for %d files", len(plan.Patches), len(ids))
				}
				target, err := m.BaseLayer(deltaTargets[c.target])
				if err != nil {
					return err
				}
				x, want := ref.Load(s, "input."+c.target), ref.Load(s, "expected."+c.name)
				branches, err := checkRuntimeAndFused(t, s, m, plan, files, target, x, want, want, c.print)
				if err != nil {
					return err
				}
				if branches != len(ids) {
					t.Errorf("%d branches in the adapter, want %d", branches, len(ids))
				}
				return s.Err()
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// checkRuntimeAndFused applies plan to m at run time, checks the tree shows
// the branch lines and the target's adapter gives want on x, ejects and
// checks the tree and every weight came back bit for bit; then does the
// same fused (against wantFused) and unfused. It returns how many branches
// the runtime adapter held; an error ends the case (it runs on the tensor
// worker, where t.Fatal must not be called).
func checkRuntimeAndFused(t *testing.T, s *tensor.Scope, m *core.Chain, plan *sdk.Plan, files map[string]*weights.File,
	target core.Module, x, want, wantFused *tensor.Tensor, lines []string) (branches int, err error) {
	t.Helper()
	tree0, params0 := print(s, m)
	unchanged := func(when string) {
		tree, params := print(s, m)
		if tree != tree0 {
			t.Errorf("tree after %s:\n%s\nbefore:\n%s", when, tree, tree0)
		}
		for k, v := range params0 {
			if !bytes.Equal(v, params[k]) {
				t.Errorf("%s differs after %s", k, when)
			}
		}
	}
	applied, err := Apply(s, m, plan, files)
	if err != nil {
		return 0, fmt.Errorf("apply: %w", err)
	}
	tree, _ := print(s, m)
	for _, line := range lines {
		if !strings.Contains(tree, line) {
			t.Errorf("applied tree lacks %q:\n%s", line, tree)
		}
	}
	adapter, ok := m.ParentOf(target)
	if !ok {
		return 0, fmt.Errorf("no adapter around the target")
	}
	branches = len(core.LoraNames(adapter))
	y, err := core.Forward(s, adapter, x)
	if err != nil {
		return 0, fmt.Errorf("runtime forward: %w", err)
	}
	runErr := maxAbsDiff(s, y[0], want)
	if !s.AllClose(y[0], want, deltaRtol, deltaAtol) {
		t.Errorf("runtime output differs from the reference by %g", runErr)
	}
	if err := applied.Eject(); err != nil {
		return 0, fmt.Errorf("eject: %w", err)
	}
	unchanged("eject")

	fused, err := Fuse(s, m, plan, files)
	if err != nil {
		return 0, fmt.Errorf("fuse: %w", err)
	}
	y, err = core.Forward(s, target, x)
	if err != nil {
		return 0, fmt.Errorf("fused forward: %w", err)
	}
	fuseErr := maxAbsDiff(s, y[0], wantFused)
	if !s.AllClose(y[0], wantFused, deltaRtol, deltaAtol) {
		t.Errorf("fused output differs from the reference by %g", fuseErr)
	}
	if err := fused.Unfuse(); err != nil {
		return 0, fmt.Errorf("unfuse: %w", err)
	}
	unchanged("unfuse")
	t.Logf("max abs error: runtime %.3g, fused %.3g", runErr, fuseErr)
	return branches, nil
}

// checkRefused requires Apply and Fuse both to refuse plan with an error
// containing each of want, and m's tree and every weight to be unchanged.
func checkRefused(t *testing.T, s *tensor.Scope, m *core.Chain, plan *sdk.Plan, files map[string]*weights.File, want []string) {
	t.Helper()
	tree0, params0 := print(s, m)
	_, errApply := Apply(s, m, plan, files)
	_, errFuse := Fuse(s, m, plan, files)
	for what, err := range map[string]error{"Apply": errApply, "Fuse": errFuse} {
		if err == nil {
			t.Fatalf("%s accepted the plan", what)
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s error lacks %q:\n%v", what, w, err)
			}
		}
	}
	tree, params := print(s, m)
	if tree != tree0 {
		t.Errorf("tree changed:\n%s", tree)
	}
	for k, v := range params0 {
		if !bytes.Equal(v, params[k]) {
			t.Errorf("%s changed", k)
		}
	}
}

// TestBadDeltaPlansChangeNothing: a plan with one bad weight-delta patch
// (next to a good one) is refused by Apply and Fuse before anything
// changes, and the error names the patch and, where one is at fault, the
// binding.
func TestBadDeltaPlansChangeNothing(t *testing.T) {
	files := lycorisFiles(t)
	patch := func(p sdk.Patch, edit func(branch map[string]any)) sdk.Patch {
		b, err := BranchDescription(p.Branch) // a copy
		if err != nil {
			t.Fatal(err)
		}
		p.Branch, p.Bindings = b, slices.Clone(p.Bindings)
		if edit != nil {
			edit(b)
		}
		return p
	}
	cases := []struct {
		name string
		file string // the bad patch starts from this file's plan
		bad  func(p sdk.Patch) sdk.Patch
		want []string
	}{
		{"wrong factor shape", "loha_linear", func(p sdk.Patch) sdk.Patch {
			return patch(p, func(b map[string]any) { b["rank"] = 3 })
		}, []string{"patch 1 (TimestepEncoder.RangeEncoder.Linear_1): binding hada_w1_a", "gives shape [8 2], the branch wants [8 3]"}},
		{"missing factor", "lokr_conv_tucker", func(p sdk.Patch) sdk.Patch {
			p = patch(p, nil)
			for i, b := range p.Bindings {
				if b.Param == "lokr_t2" {
					p.Bindings = append(p.Bindings[:i], p.Bindings[i+1:]...)
					break
				}
			}
			return p
		}, []string{"patch 1 (DownBlocks.Chain_1.Conv2d): branch parameter lokr_t2 has no binding"}},
		{"Tucker core bound to a plain LoHa", "loha_linear", func(p sdk.Patch) sdk.Patch {
			p = patch(p, nil)
			p.Bindings = append(p.Bindings, sdk.Binding{File: "loha_conv_tucker", Key: "lora_unet_conv_in.hada_t1", Param: "hada_t1"})
			return p
		}, []string{"patch 1 (TimestepEncoder.RangeEncoder.Linear_1): binding: the branch has no parameter \"hada_t1\""}},
		{"Tucker LoHa on a Linear target", "loha_conv_tucker", func(p sdk.Patch) sdk.Patch {
			p = patch(p, nil)
			p.Target = deltaTargets["Linear"]
			return p
		}, []string{"patch 1 (TimestepEncoder.RangeEncoder.Linear_1): LoHa \"lora\" (for a Conv2d weight [6 4 3 3]) does not fit Linear"}},
		{"Tucker LoHa described for a Linear", "loha_conv_tucker", func(p sdk.Patch) sdk.Patch {
			p = patch(p, func(b map[string]any) { b["target_type"], b["weight_shape"] = "Linear", []int{8, 6} })
			p.Target = deltaTargets["Linear"]
			return p
		}, []string{"patch 1 (TimestepEncoder.RangeEncoder.Linear_1): branch: LoHa: Tucker cores need a Conv2d target"}},
		{"LoKr w1 not dividing the weight", "lokr_linear_full", func(p sdk.Patch) sdk.Patch {
			return patch(p, func(b map[string]any) { b["w1_shape"] = []int{3, 2} })
		}, []string{"patch 1 (TimestepEncoder.RangeEncoder.Linear_1): branch: LoKr: w1 (3, 2) does not divide the weight shape (8, 6)"}},
		{"kind and branch disagree", "loha_linear", func(p sdk.Patch) sdk.Patch {
			p = patch(p, nil)
			p.Kind = "lokr"
			return p
		}, []string{"patch 1 (TimestepEncoder.RangeEncoder.Linear_1): branch LoHa(", "is not a lokr branch (LoKr)"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
				m, err := loadDeltaModel(s, files["reference"])
				if err != nil {
					return err
				}
				defer core.ReleaseParams(m)
				summary := deltaSummary(t, m)
				good := lycorisPlan(t, summary, files, "diff_b_conv")
				if c.file == "diff_b_conv" {
					t.Fatal("the bad patch must target another file")
				}
				plan := &sdk.Plan{Report: &sdk.Report{}, Patches: []sdk.Patch{good.Patches[0],
					c.bad(lycorisPlan(t, summary, files, c.file).Patches[0])}}
				checkRefused(t, s, m, plan, files, c.want)
				return s.Err()
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}
