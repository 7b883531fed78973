package adapt

import (
	"context"
	"slices"
	"testing"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/sdk"
)

// The DoRA patch kind against reference outputs computed by the reference
// libraries' own layers (testdata/dora/generate.py): LyCORIS's LoConModule
// with weight_decompose (dora_scale per output and per input channel, its
// multiplier convention) and PEFT's lora.Linear / lora.Conv2d with
// use_dora (the scale inside the norm), on the small model of
// delta_test.go; plans come from the LoRA plugin's real planner.

const doraDir = "testdata/dora"

// TestDoraMatchesReference applies each case's plan at run time and fused:
// both outputs match the reference within float32 tolerance, and ejecting
// or unfusing leaves the tree and every weight bit for bit as before. Two
// files on one layer (a LoRA and a DoRA) run as PEFT's forward sums them
// and fuse in file order as PEFT's merge does: the two differ when the
// LoRA comes first, and agree when the DoRA does.
func TestDoraMatchesReference(t *testing.T) {
	cases := []struct {
		name   string
		target string
		files  []string
		print  []string // branch lines of the applied tree
	}{
		{"dora_kohya_linear", "Linear", nil, []string{"DoRA(rank=2, scale_mode=magnitude, eps=1.1920928955078125e-07, scale=0.75, name=lora, device=cpu, dtype=float32)"}},
		{"dora_kohya_conv", "Conv2d", nil, []string{"DoRA(rank=2, scale_mode=magnitude, eps=1.1920928955078125e-07, scale=0.75, name=lora"}},
		{"dora_kohya_linear_input", "Linear", nil, []string{"DoRA(rank=2, axis=input, scale_mode=magnitude"}},
		{"dora_kohya_conv_input", "Conv2d", nil, []string{"DoRA(rank=2, axis=input, scale_mode=magnitude"}},
		{"dora_peft_linear", "Linear", nil, []string{"DoRA(rank=2, scale=0.75, name=lora, device=cpu, dtype=float32)"}},
		{"dora_peft_conv", "Conv2d", nil, []string{"DoRA(rank=2, scale=0.75, name=lora"}},
		{"lora_dora_linear", "Linear", []string{"lora_dora_linear.0", "lora_dora_linear.1"},
			[]string{"LinearLora(in_features=6, out_features=8, name=lora_dora_linear.0)", "DoRA(rank=2, scale=0.75, name=lora_dora_linear.1"}},
		{"dora_lora_linear", "Linear", []string{"dora_lora_linear.0", "dora_lora_linear.1"},
			[]string{"DoRA(rank=2, scale=0.75, name=dora_lora_linear.0", "LinearLora(in_features=6, out_features=8, name=dora_lora_linear.1)"}},
	}
	files := testFiles(t, doraDir)
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
				wantFused := want
				if _, ok := ref.Info("expected_fused." + c.name); ok {
					wantFused = ref.Load(s, "expected_fused."+c.name)
					if d := maxAbsDiff(s, want, wantFused); d < 1e-2 {
						t.Errorf("the reference's runtime and merged outputs differ by only %g", d)
					}
				}
				if _, err := checkRuntimeAndFused(t, s, m, plan, files, target, x, want, wantFused, c.print); err != nil {
					return err
				}
				return s.Err()
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestBadDoraPlansChangeNothing: a plan with one bad DoRA patch (next to a
// good one) is refused by Apply and Fuse before anything changes, and the
// error names the patch and what is wrong with it.
func TestBadDoraPlansChangeNothing(t *testing.T) {
	files := testFiles(t, doraDir)
	edit := func(p sdk.Patch, f func(branch map[string]any)) sdk.Patch {
		b, err := BranchDescription(p.Branch) // a copy
		if err != nil {
			t.Fatal(err)
		}
		p.Branch, p.Bindings = b, slices.Clone(p.Bindings)
		if f != nil {
			f(b)
		}
		return p
	}
	drop := func(p sdk.Patch, param string) sdk.Patch {
		p = edit(p, nil)
		for i, b := range p.Bindings {
			if b.Param == param {
				p.Bindings = append(p.Bindings[:i], p.Bindings[i+1:]...)
				break
			}
		}
		return p
	}
	const linear = "patch 1 (TimestepEncoder.RangeEncoder.Linear_1): "
	cases := []struct {
		name string
		file string // the bad patch starts from this file's plan
		bad  func(p sdk.Patch) sdk.Patch
		want []string
	}{
		{"magnitude on the other axis", "dora_kohya_linear", func(p sdk.Patch) sdk.Patch {
			return edit(p, func(b map[string]any) { b["axis"] = "input" })
		}, []string{linear + "binding magnitude: ", "gives shape [8], the branch wants [6]"}},
		{"missing magnitude", "dora_peft_linear", func(p sdk.Patch) sdk.Patch { return drop(p, "magnitude") },
			[]string{linear + "branch parameter magnitude has no binding"}},
		{"wrong rank", "dora_peft_linear", func(p sdk.Patch) sdk.Patch {
			return edit(p, func(b map[string]any) { b["rank"] = 3 })
		}, []string{linear + "binding down: ", "gives shape [2 6], the branch wants [3 6]"}},
		{"Conv2d DoRA on a Linear", "dora_kohya_conv", func(p sdk.Patch) sdk.Patch {
			p = edit(p, nil)
			p.Target = deltaTargets["Linear"]
			return p
		}, []string{linear + `DoRA "lora" (for a Conv2d weight [6 4 3 3]) does not fit Linear`}},
		{"unknown scale mode", "dora_kohya_linear", func(p sdk.Patch) sdk.Patch {
			return edit(p, func(b map[string]any) { b["scale_mode"] = "both" })
		}, []string{linear + `branch: DoRA: scale_mode "both": want delta (PEFT) or magnitude (LyCORIS)`}},
		{"DoRA sent as a LoRA", "dora_peft_linear", func(p sdk.Patch) sdk.Patch {
			p = edit(p, nil)
			p.Kind = "lora"
			return p
		}, []string{linear + "branch DoRA(", "is not a lora branch (LinearLora, Conv2dLora)"}},
		{"unknown kind", "dora_peft_linear", func(p sdk.Patch) sdk.Patch {
			p = edit(p, nil)
			p.Kind = "dara"
			return p
		}, []string{linear + `patch kind "dara" is not supported by this host (supported: diff, dora, insert, loha, lokr, lora)`}},
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
				good := lycorisPlan(t, summary, files, "dora_peft_conv")
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
