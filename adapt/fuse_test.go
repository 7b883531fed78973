package adapt

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/sdk"
)

// TestFusedAgreesWithRuntimeAndUnfusesExactly applies the same plans both
// ways: fused outputs match runtime outputs within float32 rounding, and
// unfusing (like ejecting) restores every weight bit for bit.
func TestFusedAgreesWithRuntimeAndUnfusesExactly(t *testing.T) {
	cases := []struct {
		name   string
		model  func() *core.Chain
		target string
		branch map[string]any
		down   []int64
		up     []int64
		input  []int64
	}{
		{"linear", func() *core.Chain { return core.NewChain(core.NewLinear(6, 5, true), core.NewSiLU()) }, "Linear",
			map[string]any{"type": "LinearLora", "name": "a", "in_features": 6, "out_features": 5, "rank": 3, "scale": 0.75},
			[]int64{3, 6}, []int64{5, 3}, []int64{4, 6}},
		{"conv 1x1 down, 3x3 up", func() *core.Chain {
			return core.NewChain(core.NewConv2d(3, 4, 3, core.ConvOptions{Padding: 1}))
		}, "Conv2d",
			map[string]any{"type": "Conv2dLora", "name": "c", "in_channels": 3, "out_channels": 4, "rank": 2, "scale": 1.5},
			[]int64{2, 3, 1, 1}, []int64{4, 2, 3, 3}, []int64{2, 3, 6, 5}},
		{"conv 3x3 down, 1x1 up", func() *core.Chain {
			return core.NewChain(core.NewConv2d(3, 4, 3, core.ConvOptions{Padding: 1}))
		}, "Conv2d",
			map[string]any{"type": "Conv2dLora", "name": "d", "in_channels": 3, "out_channels": 4, "rank": 2,
				"kernel_size": []int{3, 1}, "padding": []int{1, 0}},
			[]int64{2, 3, 3, 3}, []int64{4, 2, 1, 1}, []int64{1, 3, 5, 5}},
		// LoCon on a downsampler: the down convolution takes the target's
		// stride; odd sizes check the padding.
		{"strided conv 3x3 down, 1x1 up", func() *core.Chain {
			return core.NewChain(core.NewConv2d(3, 4, 3, core.ConvOptions{Stride: 2, Padding: 1}))
		}, "Conv2d",
			map[string]any{"type": "Conv2dLora", "name": "e", "in_channels": 3, "out_channels": 4, "rank": 2, "scale": 0.5,
				"kernel_size": []int{3, 1}, "stride": []int{2, 1}, "padding": []int{1, 0}},
			[]int64{2, 3, 3, 3}, []int64{4, 2, 1, 1}, []int64{2, 3, 7, 5}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "lora.safetensors")
			err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
				m := c.model()
				if err := core.InitRandom(s, m, int64(i)); err != nil {
					return err
				}
				defer core.ReleaseParams(m)
				rnd := func(shape []int64, seed int64) *tensor.Tensor {
					l := core.NewParameter(shape...)
					core.InitRandom(s, l, seed)
					return s.ShallowCopy(l.Weight)
				}
				if err := weights.Save(s, path, map[string]*tensor.Tensor{"down": rnd(c.down, 10), "up": rnd(c.up, 11)}, nil); err != nil {
					return err
				}
				f, err := weights.Open(path)
				if err != nil {
					return err
				}
				defer f.Close()
				plan := &sdk.Plan{Report: &sdk.Report{}, Patches: []sdk.Patch{{Target: c.target, Kind: "lora", Branch: c.branch,
					Bindings: []sdk.Binding{{File: "f", Key: "down", Param: firstParam(0, c.branch)}, {File: "f", Key: "up", Param: firstParam(1, c.branch)}}}}}
				files := map[string]*weights.File{"f": f}
				n := int64(1)
				for _, d := range c.input {
					n *= d
				}
				vals := make([]float32, n)
				for j := range vals {
					vals[j] = float32(j%7) - 3
				}
				x := s.FromFloat32(vals, c.input...)
				_, before := print(s, m)

				applied, err := Apply(s, m, plan, files)
				if err != nil {
					return err
				}
				runtime, err := core.Forward(s, m, x)
				if err != nil {
					return err
				}
				if err := applied.Eject(); err != nil {
					return err
				}
				fused, err := Fuse(s, m, plan, files)
				if err != nil {
					return err
				}
				merged, err := core.Forward(s, m, x)
				if err != nil {
					return err
				}
				if !s.AllClose(merged[0], runtime[0], 1e-5, 1e-5) {
					t.Errorf("fused and runtime outputs differ: %v vs %v", s.Float32s(merged[0])[:4], s.Float32s(runtime[0])[:4])
				}
				if err := fused.Unfuse(); err != nil {
					return err
				}
				_, after := print(s, m)
				for k, v := range before {
					if !bytes.Equal(v, after[k]) {
						t.Errorf("%s differs after unfuse", k)
					}
				}
				return s.Err()
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// firstParam is the branch parameter that binding i fills: down, then up.
func firstParam(i int, branch map[string]any) string {
	kind := "Linear"
	if branch["type"] == "Conv2dLora" {
		kind = "Conv2d"
	}
	return fmt.Sprintf("%s_%d.weight", kind, i+1)
}

// TestStackedPlansEjectInAnyOrder applies two plans to the same layer (the
// second extends the first's adapter), checks that the output is the sum of
// both branches, and ejects them in either order back to the exact model.
func TestStackedPlansEjectInAnyOrder(t *testing.T) {
	for _, order := range []string{"last first", "first first"} {
		t.Run(order, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "lora.safetensors")
			err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
				m := core.NewChain(core.NewLinear(4, 3, true))
				if err := core.InitRandom(s, m, 3); err != nil {
					return err
				}
				defer core.ReleaseParams(m)
				ts := map[string]*tensor.Tensor{}
				for i, shape := range [][]int64{{2, 4}, {3, 2}, {1, 4}, {3, 1}} {
					p := core.NewParameter(shape...)
					core.InitRandom(s, p, int64(20+i))
					ts[fmt.Sprint("t", i)] = s.ShallowCopy(p.Weight)
					core.ReleaseParams(p)
				}
				if err := weights.Save(s, path, ts, nil); err != nil {
					return err
				}
				f, err := weights.Open(path)
				if err != nil {
					return err
				}
				defer f.Close()
				files := map[string]*weights.File{"f": f}
				plan := func(name string, rank int, down, up string) *sdk.Plan {
					b := map[string]any{"type": "LinearLora", "name": name, "in_features": 4, "out_features": 3, "rank": rank}
					return &sdk.Plan{Report: &sdk.Report{}, Patches: []sdk.Patch{{Target: "Linear", Branch: b,
						Bindings: []sdk.Binding{{File: "f", Key: down, Param: "Linear_1.weight"}, {File: "f", Key: up, Param: "Linear_2.weight"}}}}}
				}
				x := s.FromFloat32([]float32{1, -2, 0.5, 3}, 1, 4)
				tree, before := print(s, m)
				base, _ := core.Forward(s, m, x)
				a, err := Apply(s, m, plan("a", 2, "t0", "t1"), files)
				if err != nil {
					return err
				}
				withA, _ := core.Forward(s, m, x)
				b, err := Apply(s, m, plan("b", 1, "t2", "t3"), files)
				if err != nil {
					return err
				}
				if got := len(m.Layers("LinearLora")); got != 2 {
					t.Errorf("%d LoRA branches after stacking, want 2 in one adapter", got)
				}
				both, _ := core.Forward(s, m, x)
				onlyB := s.Sub(both[0], withA[0])
				want := s.Add(s.Add(base[0], s.Sub(withA[0], base[0])), onlyB)
				if !s.AllClose(both[0], want, 1e-6, 1e-6) || s.AllClose(both[0], withA[0], 1e-6, 1e-6) {
					t.Error("the second plan did not add its branch")
				}
				first, second := b, a
				if order == "first first" {
					first, second = a, b
				}
				if err := first.Eject(); err != nil {
					return err
				}
				if err := second.Eject(); err != nil {
					return err
				}
				after, params := print(s, m)
				if after != tree {
					t.Errorf("tree after ejecting both:\n%s\nbefore:\n%s", after, tree)
				}
				for k, v := range before {
					if !bytes.Equal(v, params[k]) {
						t.Errorf("%s changed", k)
					}
				}
				return s.Err()
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

func print(s *tensor.Scope, m *core.Chain) (string, map[string][]byte) {
	params := map[string][]byte{}
	for _, e := range core.StateDict(m) {
		params[e.Key] = s.Bytes(*e.Value)
	}
	return m.String(), params
}
