package core

import (
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core/tensor"
)

// TestDoraDescriptions builds DoRA branches through the registry: the
// parameters follow the target and the axis, and impossible descriptions
// are refused with the reason.
func TestDoraDescriptions(t *testing.T) {
	lin, conv := []any{8, 6}, []any{6, 4, 3, 3}
	cases := []struct {
		name string
		desc map[string]any
		want string // "param shape; ..." or the error
	}{
		{"Linear", map[string]any{"target_type": "Linear", "weight_shape": lin, "rank": 2},
			"down [2 6]; up [8 2]; magnitude [8]"},
		{"Conv2d", map[string]any{"target_type": "Conv2d", "weight_shape": conv, "rank": 3},
			"down [3 4 3 3]; up [6 3 1 1]; magnitude [6]"},
		{"Conv2d, magnitude per input channel", map[string]any{"target_type": "Conv2d", "weight_shape": conv, "rank": 2, "axis": "input"},
			"down [2 4 3 3]; up [6 2 1 1]; magnitude [4]"},
		{"unknown axis", map[string]any{"target_type": "Linear", "weight_shape": lin, "rank": 2, "axis": "rows"},
			`DoRA: axis "rows": want output or input`},
		{"unknown scale mode", map[string]any{"target_type": "Linear", "weight_shape": lin, "rank": 2, "scale_mode": "both"},
			`DoRA: scale_mode "both": want delta (PEFT) or magnitude (LyCORIS)`},
		{"negative eps", map[string]any{"target_type": "Linear", "weight_shape": lin, "rank": 2, "eps": -1.0},
			"DoRA: eps -1 is negative"},
		{"weight shape of the wrong rank", map[string]any{"target_type": "Linear", "weight_shape": conv, "rank": 2},
			`DoRA: target_type "Linear" with weight_shape [6 4 3 3]: want a Linear (2 dimensions) or a Conv2d (4)`},
		{"rank 0", map[string]any{"target_type": "Linear", "weight_shape": lin, "rank": 0},
			"rank"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.desc["type"], c.desc["name"] = "DoRA", "x"
			m, err := BuildLayer(c.desc)
			var got string
			if err != nil {
				got = err.Error()
			} else {
				var parts []string
				for _, e := range StateDict(m) {
					parts = append(parts, fmt.Sprintf("%s %v", e.Key, e.Shape))
				}
				got = strings.Join(parts, "; ")
				if !IsBranch(m) || IsLora(m) || BranchName(m) != "x" {
					t.Errorf("%s: IsBranch %v, IsLora %v, name %q", Describe(m), IsBranch(m), IsLora(m), BranchName(m))
				}
			}
			if !strings.Contains(got, c.want) {
				t.Errorf("got  %s\nwant %s", got, c.want)
			}
		})
	}
}

// doraWant is W' written as loops in float64 from the branch's float32
// values: V = W + a·up·down, n = ‖V‖ per channel of the axis (+ eps),
// W' = V·(1 + k·(m/n − 1)), with (a, k) = (scale, 1) in the delta mode and
// (1, scale) in the magnitude mode.
func doraWant(b *DoraBranch, w, down, up, mag []float32) []float64 {
	out, in := b.WeightShape[0], b.WeightShape[1]
	ks := tensor.Numel(b.WeightShape[2:]) // kernel positions
	a, k := b.Scale, 1.0
	if b.ScaleMode == DoraScaleMagnitude {
		a, k = 1, b.Scale
	}
	v := make([]float64, len(w))
	for p := int64(0); p < out; p++ {
		for q := int64(0); q < in*ks; q++ {
			var dw float64
			for r := int64(0); r < b.Rank; r++ {
				dw += float64(up[p*b.Rank+r]) * float64(down[r*in*ks+q])
			}
			v[p*in*ks+q] = float64(w[p*in*ks+q]) + a*dw
		}
	}
	channel := func(p, q int64) int64 { // the axis channel of element (p, q)
		if b.Axis == DoraInput {
			return q / ks
		}
		return p
	}
	norms := make([]float64, len(mag))
	for p := int64(0); p < out; p++ {
		for q := int64(0); q < in*ks; q++ {
			x := v[p*in*ks+q]
			norms[channel(p, q)] += x * x
		}
	}
	want := make([]float64, len(w))
	for p := int64(0); p < out; p++ {
		for q := int64(0); q < in*ks; q++ {
			c := channel(p, q)
			n := math.Sqrt(norms[c]) + b.Eps
			want[p*in*ks+q] = v[p*in*ks+q] * (1 + k*(float64(mag[c])/n-1))
		}
	}
	return want
}

// TestDoraMath checks W' (Merged, and W + Change) against doraWant for
// Linear and Conv2d targets, both axes and both scale modes, and the
// branch in a LoraAdapter: the adapter's output is the target's op with
// W' (and the target's own bias), next to a LoRA as PEFT sums them.
func TestDoraMath(t *testing.T) {
	cases := []struct {
		name   string
		target Module
		shape  []int64
		o      DoraOptions
		scale  float64
		input  []int64
	}{
		{"Linear, delta mode", NewLinear(6, 5, true), []int64{5, 6}, DoraOptions{}, 0.8, []int64{3, 6}},
		{"Linear, magnitude mode, eps", NewLinear(6, 5, true), []int64{5, 6},
			DoraOptions{ScaleMode: DoraScaleMagnitude, Eps: 1.1920928955078125e-07}, 0.75, []int64{2, 4, 6}},
		{"Linear, input axis", NewLinear(6, 5, false), []int64{5, 6}, DoraOptions{Axis: DoraInput}, 1.5, []int64{3, 6}},
		{"Conv2d 3x3 stride 2, delta mode", NewConv2d(4, 6, 3, ConvOptions{Stride: 2, Padding: 1}), []int64{6, 4, 3, 3},
			DoraOptions{}, 0.6, []int64{2, 4, 7, 7}},
		{"Conv2d 1x1, input axis, magnitude mode", NewConv2d(4, 6, 1, ConvOptions{}), []int64{6, 4, 1, 1},
			DoraOptions{Axis: DoraInput, ScaleMode: DoraScaleMagnitude}, 0.5, []int64{2, 4, 3, 3}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			run(t, func(s *tensor.Scope) error {
				m := NewChain(c.target)
				if err := InitRandom(s, m, int64(i)); err != nil {
					return err
				}
				defer ReleaseParams(m)
				tree0, params0 := snapshot(s, m)
				d, err := NewDora("dora", TypeName(c.target), c.shape, 2, c.o, c.scale)
				if err != nil {
					return err
				}
				if err := InitRandom(s, d, int64(20+i)); err != nil {
					return err
				}
				defer ReleaseParams(d)
				w := c.target.(Weighted).Params()[0].Value
				want := doraWant(d, s.Float32s(*w), s.Float32s(d.down), s.Float32s(d.up), s.Float32s(d.magnitude))
				close64 := func(what string, got *tensor.Tensor) {
					t.Helper()
					g := s.Float32s(got)
					worst := 0.0
					for j := range want {
						worst = max(worst, math.Abs(float64(g[j])-want[j])/(1+math.Abs(want[j])))
					}
					if worst > 1e-5 {
						t.Errorf("%s: off by %.3g (relative) from the formula", what, worst)
					}
				}
				close64("Merged", d.Merged(s, *w))
				close64("W + Change", s.Add(*w, d.Change(s, *w)))

				// In an adapter, next to a LoRA: target(x) + lora(x) + F(x, W' − W).
				var lora *Chain
				if len(c.shape) == 2 {
					lora = NewLinearLora("l", c.shape[1], c.shape[0], 2, 0.5)
				} else {
					lora = NewConv2dLora("l", c.shape[1], c.shape[0], 2, 0.5, DefaultConv2dLora)
					if c.target.(*Conv2d).Stride != [2]int64{1, 1} {
						lora = NewConv2dLora("l", c.shape[1], c.shape[0], 2, 0.5, Conv2dLoraOptions{Kernel: [2]int64{3, 1}, Stride: [2]int64{2, 1}, Padding: [2]int64{1, 0}})
					}
				}
				if err := InitRandom(s, lora, 40); err != nil {
					return err
				}
				defer ReleaseParams(lora)
				x := s.Sin(s.Reshape(s.ToDType(s.Arange(tensor.Numel(c.input)), tensor.Float32), c.input...))
				if _, err := Forward(s, d, x); err == nil || !strings.Contains(err.Error(), "is in no adapter") {
					t.Errorf("a detached DoRA branch ran: %v", err)
				}
				adapter, err := NewLoraAdapter(c.target, lora, d)
				if err != nil {
					return err
				}
				if err := adapter.Inject(m); err != nil {
					return err
				}
				if !strings.Contains(m.String(), "DoRA(rank=2") || !strings.Contains(m.String(), "name=dora, device=cpu, dtype=float32)") {
					t.Errorf("tree lacks the DoRA branch:\n%s", m)
				}
				y := mustForward(t, s, m, x)
				merged := d.Merged(s, *w)
				var direct *tensor.Tensor
				switch tg := c.target.(type) {
				case *Linear:
					direct = s.Linear(x, merged, tg.Bias)
				case *Conv2d:
					direct = s.Conv2d(x, merged, tg.Bias, tensor.Conv2dOptions{Stride: tg.Stride, Padding: tg.Padding, Dilation: tg.Dilation, Groups: tg.Groups})
				}
				sum := s.Add(direct, mustForward(t, s, lora, x))
				if diff := s.Item(s.Max(s.Abs(s.Sub(y, sum)))); diff > 1e-5 {
					t.Errorf("adapter output is %.3g from F(x, W') + b + lora(x)", diff)
				}
				if LoraScale(d) != c.scale {
					t.Errorf("scale %v", LoraScale(d))
				}
				SetLoraScale(d, 0.25)
				if d.Scale != 0.25 {
					t.Error("SetLoraScale did not reach the DoRA branch")
				}
				if err := adapter.Eject(); err != nil {
					return err
				}
				tree, params := snapshot(s, m)
				if tree != tree0 {
					t.Errorf("tree after eject:\n%s", tree)
				}
				for k, v := range params0 {
					if string(v) != string(params[k]) {
						t.Errorf("%s changed", k)
					}
				}
				other, _ := NewDora("o", "Conv2d", []int64{5, 6, 1, 1}, 2, DoraOptions{}, 1)
				if err := CheckLoraFit(NewLinear(6, 5, true), other); err == nil || !strings.Contains(err.Error(), `DoRA "o" (for a Conv2d weight [5 6 1 1]) does not fit Linear`) {
					t.Errorf("a Conv2d DoRA fits a Linear: %v", err)
				}
				return s.Err()
			})
		})
	}
}
