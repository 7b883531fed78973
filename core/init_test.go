package core

import (
	"context"
	"math"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core/tensor"
)

// TestInitBounds: the rules are PyTorch's formulas (kaiming_uniform with
// a=√5 is ±1/√fan_in; the bias bound uses the weight's fan-in, which for a
// transposed convolution is out/groups·k·k).
func TestInitBounds(t *testing.T) {
	for _, c := range []struct {
		name  string
		m     Weighted
		bound float64 // of weight and bias
	}{
		{"Linear", NewLinear(64, 48, true), 1.0 / 8},
		{"Conv2d", NewConv2d(8, 16, 3, ConvOptions{Groups: 2}), 1 / math.Sqrt(4*9)},
		{"ConvTranspose2d", NewConvTranspose2d(16, 8, 2, ConvOptions{}), 1 / math.Sqrt(8*4)},
	} {
		for _, p := range c.m.Params() {
			got := c.m.(Initializer).InitOf(p)
			if got.Kind != tensor.FillUniform || math.Abs(got.B-c.bound) > 1e-15 || got.A != -got.B {
				t.Errorf("%s.%s: %+v, want uniform ±%g", c.name, p.Name, got, c.bound)
			}
		}
	}
}

// TestInitDistributions: drawn values follow the rules: uniform values in
// their bounds with the mean and variance of the uniform law, normal ones
// with mean 0, variance 1 and 68% within one deviation, constants exact;
// the same seed draws the same values, another seed others.
func TestInitDistributions(t *testing.T) {
	norm := NewGroupNorm(16, 4)
	m := NewChain(
		NewLinear(64, 48, true),
		NewConv2d(8, 16, 3, ConvOptions{Groups: 2}),
		NewConvTranspose2d(16, 8, 2, ConvOptions{}),
		NewLayerNorm(48), norm,
		NewEmbedding(500, 16),
		NewParameter(40, 50),
	)
	values := func(seed uint64) map[string][]float32 {
		out := map[string][]float32{}
		err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
			if err := InitLikeTorch(s, m, seed); err != nil {
				return err
			}
			defer ReleaseParams(m)
			for _, e := range StateDict(m) {
				out[e.Key] = s.Float32s(*e.Value)
			}
			return s.Err()
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	got := values(1)
	_, inits, err := InitRules(m)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range StateDict(m) {
		v, in := got[e.Key], inits[i]
		n := float64(len(v))
		mean, sq := 0.0, 0.0
		for _, x := range v {
			mean += float64(x)
		}
		mean /= n
		for _, x := range v {
			sq += (float64(x) - mean) * (float64(x) - mean)
		}
		variance := sq / (n - 1)
		switch in.Kind {
		case tensor.FillConstant:
			for _, x := range v {
				if float64(x) != in.A {
					t.Errorf("%s: %g, want the constant %g", e.Key, x, in.A)
					break
				}
			}
		case tensor.FillUniform:
			lo, hi := in.A, in.B
			wantVar := (hi - lo) * (hi - lo) / 12
			most := 0.0
			for _, x := range v {
				if float64(x) < lo || float64(x) >= hi {
					t.Errorf("%s: %g outside [%g, %g)", e.Key, x, lo, hi)
					break
				}
				most = math.Max(most, math.Abs(float64(x)))
			}
			// Five standard errors: a fair draw fails about once in 10⁶.
			if math.Abs(mean) > 5*math.Sqrt(wantVar/n) {
				t.Errorf("%s: mean %g of %v values, want 0 ± %g", e.Key, mean, n, 5*math.Sqrt(wantVar/n))
			}
			if math.Abs(variance-wantVar) > 5*wantVar*math.Sqrt(0.8/n) {
				t.Errorf("%s: variance %g, want %g (uniform ±%g)", e.Key, variance, wantVar, hi)
			}
			if most < hi*(1-10/n) {
				t.Errorf("%s: largest |value| %g, want close to the bound %g", e.Key, most, hi)
			}
		case tensor.FillNormal:
			within := 0
			for _, x := range v {
				if math.Abs(float64(x)-in.A) < in.B {
					within++
				}
			}
			p := 0.682689492
			if math.Abs(mean-in.A) > 5*in.B/math.Sqrt(n) || math.Abs(variance-in.B*in.B) > 5*in.B*in.B*math.Sqrt(2/n) ||
				math.Abs(float64(within)/n-p) > 5*math.Sqrt(p*(1-p)/n) {
				t.Errorf("%s: mean %g, variance %g, %.4f within one deviation; want normal(%g, %g)", e.Key, mean, variance, float64(within)/n, in.A, in.B)
			}
		}
	}
	for key, want := range map[string]tensor.FillKind{
		"Linear.weight": tensor.FillUniform, "Linear.bias": tensor.FillUniform, "Conv2d.weight": tensor.FillUniform,
		"ConvTranspose2d.bias": tensor.FillUniform, "LayerNorm.weight": tensor.FillConstant, "GroupNorm.bias": tensor.FillConstant,
		"Embedding.weight": tensor.FillNormal, "Parameter.weight": tensor.FillNormal,
	} {
		for i, e := range StateDict(m) {
			if e.Key == key && inits[i].Kind != want {
				t.Errorf("%s: fill kind %d, want %d", key, inits[i].Kind, want)
			}
		}
	}
	again, other := values(1), values(2)
	for k := range got {
		if !equal32(got[k], again[k]) {
			t.Errorf("%s: seed 1 drew different values twice", k)
		}
		if inits := len(got[k]); inits > 1 && !strings.Contains(k, "Norm") && equal32(got[k], other[k]) {
			t.Errorf("%s: seeds 1 and 2 drew the same values", k)
		}
	}
}

func equal32(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestInitRefusesUnknownLayers(t *testing.T) {
	d, err := NewWeightDelta("d", "Linear", []int64{4, 4}, false, 1)
	if err != nil {
		t.Fatal(err)
	}
	err = tensor.Run(context.Background(), func(s *tensor.Scope) error { return InitLikeTorch(s, NewChain(d), 0) })
	if err == nil || !strings.Contains(err.Error(), "has no known initialisation") {
		t.Errorf("init of a weight delta: %v", err)
	}
}

// TestTraceNamesEveryLayer: Call.Trace sees every layer below the called
// module, by path, with its outputs, children before their chain.
func TestTraceNamesEveryLayer(t *testing.T) {
	m := NewChain(NewLinear(4, 8, true), NewResidual(NewLinear(8, 8, false), NewReLU()), NewLinear(8, 2, true))
	var got []string
	err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
		if err := InitLikeTorch(s, m, 0); err != nil {
			return err
		}
		defer ReleaseParams(m)
		call := Call{Trace: func(path string, x Module, out Tensors) {
			got = append(got, path+" "+TypeName(x)+" "+FormatShape(out[0].Shape()))
		}}
		_, err := call.Forward(s, m, s.Zeros(tensor.Float32, 3, 4))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"Linear_1 Linear [3, 8]", "Residual.Linear Linear [3, 8]", "Residual.ReLU ReLU [3, 8]", "Residual Residual [3, 8]", "Linear_2 Linear [3, 2]"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("trace:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
