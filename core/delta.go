package core

import (
	"fmt"
	"slices"

	"github.com/refiners-go/refiners/core/tensor"
)

// Weight-delta branches: LyCORIS's full-weight difference (WeightDelta),
// Hadamard-product (LoHa) and Kronecker-product (LoKr) adapters. Each holds
// the factors of a change ΔW of its target's weight, named by their LyCORIS
// roles (hada_w1_a, lokr_w2, ...) so a file's tensors bind to them by name.
// Its forward builds ΔW and runs the target's operation with it (a Linear's
// x·ΔWᵀ, or a convolution with the target's stride, padding, dilation and
// groups), times the branch's scale; in a LoraAdapter that output adds to
// the target's, exactly as a LoRA branch's does. The factors are never
// merged into the target: ejecting the adapter leaves its weights as they
// were. ΔW is rebuilt on every forward (as PEFT does).

// DeltaBranch is a WeightDelta, LoHa or LoKr branch.
type DeltaBranch struct {
	typeName string
	Label    string
	// TargetType is "Linear" or "Conv2d"; WeightShape the target's weight
	// shape, which ΔW takes.
	TargetType  string
	WeightShape []int64
	Scale       float64
	// Rank is the inner dimension of the low-rank factors (LoHa; LoKr's
	// factored w1 and w2). Tucker: LoHa's factors, or LoKr's w2, have a
	// core [rank, rank, kh, kw] (convolutions only).
	Rank   int64
	Tucker bool
	// LoKr: w1 is [W1[0], W1[1]], full or the product of two rank-Rank
	// factors; w2 fills the rest of the weight shape.
	W1                     [2]int64
	W1Factored, W2Factored bool
	// Bias: a WeightDelta also changes the target's bias.
	Bias bool
	Precision

	roles  []string
	shapes [][]int64
	values []*tensor.Tensor
	conv   *tensor.Conv2dOptions // the target's geometry, once attached to a Conv2d
}

// NewWeightDelta makes a full-weight delta branch (LyCORIS diff, diff_b).
func NewWeightDelta(name, targetType string, weightShape []int64, bias bool, scale float64) (*DeltaBranch, error) {
	b := &DeltaBranch{typeName: "WeightDelta", Label: name, TargetType: targetType, WeightShape: slices.Clone(weightShape), Bias: bias, Scale: scale}
	if err := b.checkTarget(); err != nil {
		return nil, err
	}
	b.add("weight", weightShape...)
	if bias {
		b.add("bias", weightShape[0])
	}
	return b, nil
}

// NewLoha makes a LoHa branch: ΔW = (w1_a·w1_b) ⊙ (w2_a·w2_b). Without
// Tucker cores w*_a is [out, rank] and w*_b [rank, in·kh·kw]; with them
// (convolutions) w*_a is [rank, out], w*_b [rank, in] and hada_t* [rank,
// rank, kh, kw].
func NewLoha(name, targetType string, weightShape []int64, rank int64, tucker bool, scale float64) (*DeltaBranch, error) {
	b := &DeltaBranch{typeName: "LoHa", Label: name, TargetType: targetType, WeightShape: slices.Clone(weightShape), Rank: rank, Tucker: tucker, Scale: scale}
	if err := b.checkTarget(); err != nil {
		return nil, err
	}
	out, in := weightShape[0], tensor.Numel(weightShape[1:])
	for _, i := range []string{"1", "2"} {
		if tucker {
			b.add("hada_t"+i, rank, rank, weightShape[2], weightShape[3])
			b.add("hada_w"+i+"_a", rank, out)
			b.add("hada_w"+i+"_b", rank, weightShape[1])
		} else {
			b.add("hada_w"+i+"_a", out, rank)
			b.add("hada_w"+i+"_b", rank, in)
		}
	}
	return b, nil
}

// LokrLayout says how a LoKr's factors are stored: w1 is [W1[0], W1[1]]
// (dividing the weight's first two dimensions), kept whole or as
// w1_a·w1_b of rank Rank; w2 is whole ([out/W1[0], in/W1[1], kh, kw]), or
// w2_a·w2_b ([b, rank]·[rank, d·kh·kw]), or with a Tucker core
// (lokr_t2 [rank, rank, kh, kw], w2_a [rank, b], w2_b [rank, d]).
type LokrLayout struct {
	W1                     [2]int64
	Rank                   int64
	W1Factored, W2Factored bool
	Tucker                 bool
}

// NewLokr makes a LoKr branch: ΔW = kron(w1, w2) in the weight's shape.
func NewLokr(name, targetType string, weightShape []int64, l LokrLayout, scale float64) (*DeltaBranch, error) {
	b := &DeltaBranch{typeName: "LoKr", Label: name, TargetType: targetType, WeightShape: slices.Clone(weightShape),
		Rank: l.Rank, Tucker: l.Tucker, W1: l.W1, W1Factored: l.W1Factored, W2Factored: l.W2Factored, Scale: scale}
	if err := b.checkTarget(); err != nil {
		return nil, err
	}
	a, c := l.W1[0], l.W1[1]
	if a < 1 || c < 1 || weightShape[0]%a != 0 || weightShape[1]%c != 0 {
		return nil, fmt.Errorf("LoKr: w1 %v does not divide the weight shape %v", formatArg(l.W1), formatArg(weightShape))
	}
	if (l.W1Factored || l.W2Factored) != (l.Rank > 0) {
		return nil, fmt.Errorf("LoKr: a rank (%d) is needed exactly when w1 or w2 is factored", l.Rank)
	}
	if l.Tucker && !l.W2Factored {
		return nil, fmt.Errorf("LoKr: a Tucker core needs a factored w2")
	}
	bb, d, k := weightShape[0]/a, weightShape[1]/c, weightShape[2:]
	if l.W1Factored {
		b.add("lokr_w1_a", a, l.Rank)
		b.add("lokr_w1_b", l.Rank, c)
	} else {
		b.add("lokr_w1", a, c)
	}
	switch {
	case l.Tucker:
		b.add("lokr_t2", l.Rank, l.Rank, k[0], k[1])
		b.add("lokr_w2_a", l.Rank, bb)
		b.add("lokr_w2_b", l.Rank, d)
	case l.W2Factored:
		b.add("lokr_w2_a", bb, l.Rank)
		b.add("lokr_w2_b", l.Rank, d*tensor.Numel(k))
	default:
		b.add("lokr_w2", append([]int64{bb, d}, k...)...)
	}
	return b, nil
}

func (b *DeltaBranch) checkTarget() error {
	switch {
	case b.TargetType == "Linear" && len(b.WeightShape) == 2:
	case b.TargetType == "Conv2d" && len(b.WeightShape) == 4:
	default:
		return fmt.Errorf("%s: target_type %q with weight_shape %v: want a Linear (2 dimensions) or a Conv2d (4)", b.typeName, b.TargetType, b.WeightShape)
	}
	for _, d := range b.WeightShape {
		if d < 1 {
			return fmt.Errorf("%s: weight_shape %v has an empty dimension", b.typeName, b.WeightShape)
		}
	}
	if b.Tucker && b.TargetType != "Conv2d" {
		return fmt.Errorf("%s: Tucker cores need a Conv2d target, not a %s", b.typeName, b.TargetType)
	}
	return nil
}

// add declares a factor; only constructors call it, before Params hands
// out pointers into values.
func (b *DeltaBranch) add(role string, shape ...int64) {
	b.roles = append(b.roles, role)
	b.shapes = append(b.shapes, shape)
	b.values = append(b.values, nil)
}

func (b *DeltaBranch) TypeName() string { return b.typeName }

// Params are the factors, named by role.
func (b *DeltaBranch) Params() []Param {
	ps := make([]Param, len(b.roles))
	for i, r := range b.roles {
		ps[i] = Param{Name: r, Shape: b.shapes[i], DType: b.DType, Value: &b.values[i]}
	}
	return ps
}

func (b *DeltaBranch) factor(role string) *tensor.Tensor {
	if i := slices.Index(b.roles, role); i >= 0 {
		return b.values[i]
	}
	return nil
}

func (b *DeltaBranch) Describe() string {
	var kv []any
	switch b.typeName {
	case "LoHa":
		kv = append(kv, "rank", b.Rank)
	case "LoKr":
		kv = append(kv, "w1", b.W1)
		if b.Rank > 0 {
			kv = append(kv, "rank", b.Rank)
		}
	}
	if b.Tucker {
		kv = append(kv, "tucker", true)
	}
	if b.Bias {
		kv = append(kv, "bias", true)
	}
	kv = append(kv, "scale", b.Scale, "name", b.Label)
	return weighted(describe(b.typeName, kv...), b.Params()[0])
}

// fits checks that the branch's ΔW fits target.
func (b *DeltaBranch) fits(target Module) error {
	var shape []int64
	hasBias := false
	switch t := target.(type) {
	case *Linear:
		shape, hasBias = t.Params()[0].Shape, t.UseBias
	case *Conv2d:
		shape, hasBias = t.Params()[0].Shape, t.UseBias
	default:
		return fmt.Errorf("%s %q targets a Linear or a Conv2d, not %s", b.typeName, b.Label, Describe(target))
	}
	if TypeName(target) != b.TargetType || !slices.Equal(shape, b.WeightShape) {
		return fmt.Errorf("%s %q (for a %s weight %v) does not fit %s (weight %v)", b.typeName, b.Label, b.TargetType, b.WeightShape, Describe(target), shape)
	}
	if b.Bias && !hasBias {
		return fmt.Errorf("%s %q changes a bias, and %s has none", b.typeName, b.Label, Describe(target))
	}
	return nil
}

// attach records the target's convolution geometry, which the branch's
// forward uses.
func (b *DeltaBranch) attach(target Module) {
	if c, ok := target.(*Conv2d); ok {
		b.conv = &tensor.Conv2dOptions{Stride: c.Stride, Padding: c.Padding, Dilation: c.Dilation, Groups: c.Groups}
	}
}

// Delta builds ΔW in the target weight's shape, and the bias change (nil
// unless a WeightDelta has one), without the branch's scale.
func (b *DeltaBranch) Delta(s *tensor.Scope) (weight, bias *tensor.Tensor) {
	f := b.factor
	switch b.typeName {
	case "WeightDelta":
		if b.Bias {
			bias = s.ShallowCopy(f("bias"))
		}
		return s.ShallowCopy(f("weight")), bias
	case "LoHa":
		var p [2]*tensor.Tensor
		for i, n := range []string{"1", "2"} {
			if b.Tucker {
				p[i] = tuckerRebuild(s, f("hada_t"+n), f("hada_w"+n+"_a"), f("hada_w"+n+"_b"))
			} else {
				p[i] = s.Matmul(f("hada_w"+n+"_a"), f("hada_w"+n+"_b"))
			}
		}
		return s.Reshape(s.Mul(p[0], p[1]), b.WeightShape...), nil
	case "LoKr":
		w1 := f("lokr_w1")
		if b.W1Factored {
			w1 = s.Matmul(f("lokr_w1_a"), f("lokr_w1_b"))
		}
		w2 := f("lokr_w2")
		switch {
		case b.Tucker:
			w2 = tuckerRebuild(s, f("lokr_t2"), f("lokr_w2_a"), f("lokr_w2_b"))
		case b.W2Factored:
			w2 = s.Matmul(f("lokr_w2_a"), f("lokr_w2_b"))
		}
		return s.Reshape(kron(s, w1, w2), b.WeightShape...), nil
	}
	panic("core: unknown delta branch " + b.typeName)
}

// tuckerRebuild is LyCORIS's einsum("i j k l, j r, i p -> p r k l", t,
// wb, wa): t [R1, R2, kh, kw], wa [R1, out], wb [R2, in] give [out, in, kh, kw].
func tuckerRebuild(s *tensor.Scope, t, wa, wb *tensor.Tensor) *tensor.Tensor {
	sh := t.Shape()
	if len(sh) != 4 {
		s.Failf("Tucker core of shape %v: want 4 dimensions", sh)
		return t
	}
	r1, r2, kh, kw := sh[0], sh[1], sh[2], sh[3]
	in, out := wb.Shape()[1], wa.Shape()[1]
	x := s.Matmul(s.Reshape(s.Permute(t, 0, 2, 3, 1), r1*kh*kw, r2), wb) // [i k l, r]
	x = s.Matmul(s.Transpose(wa, 0, 1), s.Reshape(x, r1, kh*kw*in))      // [p, k l r]
	return s.Permute(s.Reshape(x, out, kh, kw, in), 0, 3, 1, 2)
}

// kron is torch.kron after LyCORIS's make_kron: a's dimensions are padded
// with trailing 1s to b's; out[i0·b0+j0, i1·b1+j1, ...] = a[i0, i1, ...]·b[j0, j1, ...].
func kron(s *tensor.Scope, a, b *tensor.Tensor) *tensor.Tensor {
	as, bs := a.Shape(), b.Shape()
	for len(as) < len(bs) {
		as = append(as, 1)
	}
	if len(as) != len(bs) {
		s.Failf("kron: %v has more dimensions than %v", a.Shape(), bs)
		return a
	}
	va, vb, out := make([]int64, 0, 2*len(as)), make([]int64, 0, 2*len(as)), make([]int64, len(as))
	for i := range as {
		va = append(va, as[i], 1)
		vb = append(vb, 1, bs[i])
		out[i] = as[i] * bs[i]
	}
	return s.Reshape(s.Mul(s.Reshape(a, va...), s.Reshape(b, vb...)), out...)
}

func (b *DeltaBranch) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	if err := loaded(b); err != nil {
		return nil, err
	}
	if b.TargetType == "Conv2d" && b.conv == nil {
		return nil, fmt.Errorf("%s %q runs a convolution and is in no adapter: its target's geometry is unknown", b.typeName, b.Label)
	}
	return unary(f, b.typeName, in, func(x *tensor.Tensor) *tensor.Tensor {
		w, bias := b.Delta(f.Scope)
		var y *tensor.Tensor
		if b.TargetType == "Linear" {
			y = f.Linear(x, w, bias)
		} else {
			y = f.Conv2d(x, w, bias, *b.conv)
		}
		if b.Scale != 1 {
			y = f.Scale(y, b.Scale)
		}
		return y
	})
}

func init() {
	base := func(extra ...ArgSpec) []ArgSpec {
		return append([]ArgSpec{
			req("name", StringArg, "the branch's name in its adapter"),
			req("target_type", StringArg, "Linear or Conv2d"),
			atLeast(1, req("weight_shape", IntsArg, "the target's weight shape")),
		}, append(extra, opt("scale", FloatArg, 1.0, ""))...)
	}
	leaf("WeightDelta", "full-weight delta of a Linear or Conv2d (LyCORIS diff, diff_b)", base(
		opt("bias", BoolArg, false, "also a bias delta"),
	), func(a *Args) (Module, error) {
		return NewWeightDelta(a.String("name"), a.String("target_type"), a.Ints("weight_shape"), a.Bool("bias"), a.Float("scale"))
	})
	leaf("LoHa", "Hadamard product of two low-rank deltas of a Linear or Conv2d weight (LyCORIS LoHa)", base(
		atLeast(1, req("rank", IntArg, "")), opt("tucker", BoolArg, false, "Tucker cores hada_t1, hada_t2 (Conv2d)"),
	), func(a *Args) (Module, error) {
		return NewLoha(a.String("name"), a.String("target_type"), a.Ints("weight_shape"), a.Int("rank"), a.Bool("tucker"), a.Float("scale"))
	})
	leaf("LoKr", "Kronecker product delta of a Linear or Conv2d weight (LyCORIS LoKr)", base(
		atLeast(1, req("w1_shape", IntsArg, "w1's shape [a, c]: a divides out, c divides in")),
		atLeast(0, opt("rank", IntArg, int64(0), "rank of the factored w1 / w2 (0: both whole)")),
		opt("w1_factored", BoolArg, false, "w1 = lokr_w1_a·lokr_w1_b"),
		opt("w2_factored", BoolArg, false, "w2 = lokr_w2_a·lokr_w2_b"),
		opt("tucker", BoolArg, false, "w2 with a Tucker core lokr_t2 (Conv2d)"),
	), func(a *Args) (Module, error) {
		w1 := a.Ints("w1_shape")
		if len(w1) != 2 {
			return nil, fmt.Errorf("LoKr: w1_shape wants 2 values, got %v", w1)
		}
		return NewLokr(a.String("name"), a.String("target_type"), a.Ints("weight_shape"), LokrLayout{
			W1: [2]int64{w1[0], w1[1]}, Rank: a.Int("rank"), W1Factored: a.Bool("w1_factored"), W2Factored: a.Bool("w2_factored"), Tucker: a.Bool("tucker"),
		}, a.Float("scale"))
	})
}
