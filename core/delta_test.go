package core

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core/tensor"
)

// TestDeltaBranchDescriptions builds weight-delta branches through the
// registry: their parameters (LyCORIS roles and shapes) follow the
// description, and impossible descriptions are refused with the reason.
func TestDeltaBranchDescriptions(t *testing.T) {
	lin, conv := []any{8, 6}, []any{6, 4, 3, 3}
	cases := []struct {
		name string
		desc map[string]any
		want string // "role shape; ..." or the error
	}{
		{"diff", map[string]any{"type": "WeightDelta", "target_type": "Linear", "weight_shape": lin},
			"weight [8 6]"},
		{"diff with bias", map[string]any{"type": "WeightDelta", "target_type": "Conv2d", "weight_shape": conv, "bias": true},
			"weight [6 4 3 3]; bias [6]"},
		{"LoHa Linear", map[string]any{"type": "LoHa", "target_type": "Linear", "weight_shape": lin, "rank": 2},
			"hada_w1_a [8 2]; hada_w1_b [2 6]; hada_w2_a [8 2]; hada_w2_b [2 6]"},
		{"LoHa Conv2d", map[string]any{"type": "LoHa", "target_type": "Conv2d", "weight_shape": conv, "rank": 2},
			"hada_w1_a [6 2]; hada_w1_b [2 36]; hada_w2_a [6 2]; hada_w2_b [2 36]"},
		{"LoHa Tucker", map[string]any{"type": "LoHa", "target_type": "Conv2d", "weight_shape": conv, "rank": 2, "tucker": true},
			"hada_t1 [2 2 3 3]; hada_w1_a [2 6]; hada_w1_b [2 4]; hada_t2 [2 2 3 3]; hada_w2_a [2 6]; hada_w2_b [2 4]"},
		{"LoKr whole", map[string]any{"type": "LoKr", "target_type": "Conv2d", "weight_shape": conv, "w1_shape": []any{2, 2}},
			"lokr_w1 [2 2]; lokr_w2 [3 2 3 3]"},
		{"LoKr factored", map[string]any{"type": "LoKr", "target_type": "Linear", "weight_shape": lin, "w1_shape": []any{4, 3},
			"rank": 2, "w1_factored": true, "w2_factored": true},
			"lokr_w1_a [4 2]; lokr_w1_b [2 3]; lokr_w2_a [2 2]; lokr_w2_b [2 2]"},
		{"LoKr w2 factored Conv2d", map[string]any{"type": "LoKr", "target_type": "Conv2d", "weight_shape": conv, "w1_shape": []any{3, 2},
			"rank": 2, "w2_factored": true},
			"lokr_w1 [3 2]; lokr_w2_a [2 2]; lokr_w2_b [2 18]"},
		{"LoKr Tucker", map[string]any{"type": "LoKr", "target_type": "Conv2d", "weight_shape": conv, "w1_shape": []any{2, 2},
			"rank": 2, "w2_factored": true, "tucker": true},
			"lokr_w1 [2 2]; lokr_t2 [2 2 3 3]; lokr_w2_a [2 3]; lokr_w2_b [2 2]"},
		{"Tucker on a Linear", map[string]any{"type": "LoHa", "target_type": "Linear", "weight_shape": lin, "rank": 2, "tucker": true},
			"LoHa: Tucker cores need a Conv2d target, not a Linear"},
		{"weight shape of the wrong rank", map[string]any{"type": "LoHa", "target_type": "Conv2d", "weight_shape": lin, "rank": 2},
			`LoHa: target_type "Conv2d" with weight_shape [8 6]: want a Linear (2 dimensions) or a Conv2d (4)`},
		{"unknown target type", map[string]any{"type": "WeightDelta", "target_type": "Embedding", "weight_shape": lin},
			`WeightDelta: target_type "Embedding"`},
		{"LoKr w1 not dividing", map[string]any{"type": "LoKr", "target_type": "Linear", "weight_shape": lin, "w1_shape": []any{3, 3}},
			"LoKr: w1 (3, 3) does not divide the weight shape (8, 6)"},
		{"LoKr factored without a rank", map[string]any{"type": "LoKr", "target_type": "Linear", "weight_shape": lin, "w1_shape": []any{2, 2}, "w1_factored": true},
			"LoKr: a rank (0) is needed exactly when w1 or w2 is factored"},
		{"LoKr Tucker with a whole w2", map[string]any{"type": "LoKr", "target_type": "Conv2d", "weight_shape": conv, "w1_shape": []any{2, 2},
			"rank": 2, "w1_factored": true, "tucker": true},
			"LoKr: a Tucker core needs a factored w2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.desc["name"] = "x"
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
			if !strings.HasPrefix(got, c.want) {
				t.Errorf("got  %s\nwant %s", got, c.want)
			}
		})
	}
}

// TestDeltaMath checks ΔW against the formulas written as loops: LoHa's
// Hadamard product, the Tucker rebuild einsum("i j k l, j r, i p -> p r k
// l"), and LoKr's Kronecker product with w1 padded to w2's dimensions.
func TestDeltaMath(t *testing.T) {
	run(t, func(s *tensor.Scope) error {
		vals := func(seed int64, shape ...int64) ([]float32, *tensor.Tensor) {
			p := NewParameter(shape...)
			if err := InitRandom(s, p, seed); err != nil {
				t.Fatal(err)
			}
			defer ReleaseParams(p)
			return s.Float32s(p.Weight), s.Clone(p.Weight)
		}
		load := func(b *DeltaBranch) map[string][]float32 {
			out := map[string][]float32{}
			for i, p := range b.Params() {
				v, tt := vals(int64(i+1), p.Shape...)
				*p.Value = s.Escape(tt)
				out[p.Name] = v
			}
			return out
		}
		check := func(name string, b *DeltaBranch, want []float32) {
			t.Helper()
			got, _ := b.Delta(s)
			if !slices.Equal(got.Shape(), b.WeightShape) {
				t.Errorf("%s: ΔW shape %v, want %v", name, got.Shape(), b.WeightShape)
			}
			if g := s.Float32s(got); !closeEnough(g, want) {
				t.Errorf("%s: ΔW\n got %v\nwant %v", name, g[:4], want[:4])
			}
		}
		const o, i, kh, kw, r = 6, 4, 3, 3, 2
		idx := func(shape []int64, at ...int64) int64 {
			n := int64(0)
			for d := range shape {
				n = n*shape[d] + at[d]
			}
			return n
		}
		// tucker[p, q, k, l] = Σ_ij t[i, j, k, l]·wb[j, q]·wa[i, p]
		tucker := func(t, wa, wb []float32, out, in int64) []float32 {
			res := make([]float32, out*in*kh*kw)
			for p := int64(0); p < out; p++ {
				for q := int64(0); q < in; q++ {
					for k := int64(0); k < kh; k++ {
						for l := int64(0); l < kw; l++ {
							var sum float32
							for a := int64(0); a < r; a++ {
								for b := int64(0); b < r; b++ {
									sum += t[idx([]int64{r, r, kh, kw}, a, b, k, l)] * wb[idx([]int64{r, in}, b, q)] * wa[idx([]int64{r, out}, a, p)]
								}
							}
							res[idx([]int64{out, in, kh, kw}, p, q, k, l)] = sum
						}
					}
				}
			}
			return res
		}

		loha, _ := NewLoha("h", "Conv2d", []int64{o, i, kh, kw}, r, true, 1)
		f := load(loha)
		p1, p2 := tucker(f["hada_t1"], f["hada_w1_a"], f["hada_w1_b"], o, i), tucker(f["hada_t2"], f["hada_w2_a"], f["hada_w2_b"], o, i)
		want := make([]float32, len(p1))
		for n := range want {
			want[n] = p1[n] * p2[n]
		}
		check("LoHa Tucker", loha, want)
		ReleaseParams(loha)

		plain, _ := NewLoha("h", "Linear", []int64{o, i}, r, false, 1)
		f = load(plain)
		want = make([]float32, o*i)
		for p := int64(0); p < o; p++ {
			for q := int64(0); q < i; q++ {
				var a, b float32
				for k := int64(0); k < r; k++ {
					a += f["hada_w1_a"][p*r+k] * f["hada_w1_b"][k*i+q]
					b += f["hada_w2_a"][p*r+k] * f["hada_w2_b"][k*i+q]
				}
				want[p*i+q] = a * b
			}
		}
		check("LoHa", plain, want)
		ReleaseParams(plain)

		// LoKr, w1 [3, 2] whole, w2 with a Tucker core: out = 3·2, in = 2·2.
		lokr, _ := NewLokr("k", "Conv2d", []int64{o, i, kh, kw}, LokrLayout{W1: [2]int64{3, 2}, Rank: r, W2Factored: true, Tucker: true}, 1)
		f = load(lokr)
		w2 := tucker(f["lokr_t2"], f["lokr_w2_a"], f["lokr_w2_b"], 2, 2)
		want = make([]float32, o*i*kh*kw)
		for a := int64(0); a < 3; a++ {
			for c := int64(0); c < 2; c++ {
				for b := int64(0); b < 2; b++ {
					for d := int64(0); d < 2; d++ {
						for k := int64(0); k < kh*kw; k++ {
							want[idx([]int64{o, i, kh * kw}, a*2+b, c*2+d, k)] = f["lokr_w1"][a*2+c] * w2[idx([]int64{2, 2, kh * kw}, b, d, k)]
						}
					}
				}
			}
		}
		check("LoKr Tucker", lokr, want)
		ReleaseParams(lokr)
		return s.Err()
	})
}

// TestDeltaBranchesInLoraAdapter: weight-delta branches join a LoraAdapter
// with LoRAs, run with the target's geometry (a stride-2 convolution), are
// named, rescaled, added and removed like LoRAs, and ejecting restores the
// tree and weights exactly.
func TestDeltaBranchesInLoraAdapter(t *testing.T) {
	run(t, func(s *tensor.Scope) error {
		conv := NewConv2d(4, 6, 3, ConvOptions{Stride: 2, Padding: 1})
		m := NewChain(conv, NewSiLU())
		if err := InitRandom(s, m, 1); err != nil {
			return err
		}
		defer ReleaseParams(m)
		tree0, params0 := snapshot(s, m)
		shape := []int64{6, 4, 3, 3}
		loha, _ := NewLoha("h", "Conv2d", shape, 2, true, 0.5)
		diff, _ := NewWeightDelta("d", "Conv2d", shape, true, 2)
		lokr, _ := NewLokr("k", "Conv2d", shape, LokrLayout{W1: [2]int64{2, 2}, Rank: 2, W1Factored: true, W2Factored: true}, 1)
		lora := NewConv2dLora("l", 4, 6, 2, 1, Conv2dLoraOptions{Kernel: [2]int64{3, 1}, Stride: [2]int64{2, 1}, Padding: [2]int64{1, 0}})
		for i, b := range []Module{loha, diff, lokr, lora} {
			if err := InitRandom(s, b, int64(10+i)); err != nil {
				return err
			}
			defer ReleaseParams(b)
		}
		x := s.Sin(s.Reshape(s.ToDType(s.Arange(2*4*7*7), tensor.Float32), 2, 4, 7, 7))
		if _, err := Forward(s, loha, x); err == nil || !strings.Contains(err.Error(), "geometry is unknown") {
			t.Errorf("a detached Conv2d delta branch ran: %v", err)
		}
		adapter, err := NewLoraAdapter(conv, loha, lora)
		if err != nil {
			return err
		}
		if err := adapter.Inject(m); err != nil {
			return err
		}
		if err := AddLora(adapter, diff); err != nil {
			return err
		}
		if err := AddLora(adapter, lokr); err != nil {
			return err
		}
		if got := strings.Join(LoraNames(adapter), ","); got != "h,l,d,k" {
			t.Errorf("names %s", got)
		}
		for _, line := range []string{"LoHa(rank=2, tucker=True, scale=0.5, name=h, device=cpu, dtype=float32)",
			"WeightDelta(bias=True, scale=2.0, name=d", "LoKr(w1=(2, 2), rank=2, scale=1.0, name=k"} {
			if !strings.Contains(m.String(), line) {
				t.Errorf("tree lacks %q:\n%s", line, m)
			}
		}
		// The adapter's output is the target's plus each branch's, and a
		// branch's is its target's op with ΔW (and Δb), times its scale.
		y := mustForward(t, s, adapter, x)
		parts := mustForward(t, s, conv, x)
		for _, b := range []Module{loha, lora, diff, lokr} {
			parts = s.Add(parts, mustForward(t, s, b, x))
		}
		if !s.AllClose(y, parts, 1e-5, 1e-5) {
			t.Error("adapter output is not target + branches")
		}
		o := tensor.Conv2dOptions{Stride: conv.Stride, Padding: conv.Padding, Dilation: conv.Dilation, Groups: conv.Groups}
		dw, db := diff.Delta(s)
		if want := s.Scale(s.Conv2d(x, dw, db, o), 2); !s.AllClose(mustForward(t, s, diff, x), want, 1e-5, 1e-5) {
			t.Error("WeightDelta is not 2·conv(x, ΔW, Δb) with the target's geometry")
		}
		SetLoraScale(lokr, 0)
		if LoraScale(lokr) != 0 || LoraScale(loha) != 0.5 {
			t.Errorf("scales %v %v", LoraScale(lokr), LoraScale(loha))
		}
		if _, err := RemoveLora(adapter, "d"); err != nil {
			return err
		}
		y = mustForward(t, s, adapter, x)
		want := s.Add(s.Add(mustForward(t, s, conv, x), mustForward(t, s, loha, x)), mustForward(t, s, lora, x))
		if !s.AllClose(y, want, 1e-5, 1e-5) {
			t.Error("after removing d and zeroing k, the output is not target + h + l")
		}
		dup, _ := NewWeightDelta("h", "Conv2d", shape, false, 1)
		other, _ := NewWeightDelta("e", "Conv2d", []int64{6, 4, 1, 1}, false, 1)
		noBias := NewConv2d(4, 6, 3, ConvOptions{NoBias: true})
		biasDelta, _ := NewWeightDelta("b", "Conv2d", shape, true, 1)
		for _, c := range []struct {
			name string
			err  error
			want string
		}{
			{"duplicate name", AddLora(adapter, dup), `already has a branch named "h"`},
			{"wrong shape", AddLora(adapter, other), `WeightDelta "e" (for a Conv2d weight [6 4 1 1]) does not fit Conv2d`},
			{"Linear target", CheckLoraFit(NewLinear(4, 6, true), loha), `LoHa "h" (for a Conv2d weight [6 4 3 3]) does not fit Linear`},
			{"bias delta, no bias", CheckLoraFit(noBias, biasDelta), `WeightDelta "b" changes a bias`},
		} {
			if c.err == nil || !strings.Contains(c.err.Error(), c.want) {
				t.Errorf("%s: got %v, want %q", c.name, c.err, c.want)
			}
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
		return s.Err()
	})
}
