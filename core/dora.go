package core

import (
	"fmt"
	"slices"

	"github.com/refiners-go/refiners/core/tensor"
)

// DoRA (weight-decomposed low-rank adaptation): the target's weight W is
// read as a magnitude (one norm per output channel, or per input channel)
// times a direction. A low-rank change ΔW = up·down moves the direction and
// a learnt magnitude m replaces the norm:
//
//	V  = W + a·ΔW
//	W' = V · (1 + b·(m / (‖V‖ + eps) − 1))
//
// the norm and m taken per channel along the branch's axis. a and b come
// from the branch's scale and say where a user's scale acts, as the two
// reference libraries differ:
//
//   - "delta" (PEFT's use_dora): a = scale, b = 1, so W' = m·V/‖V‖ with
//     the scale inside the norm; PEFT adds no eps.
//   - "magnitude" (LyCORIS's dora_scale, the multiplier): a = 1, b =
//     scale, so ΔW enters whole and the scale moves the rescaling factor
//     from 1 towards m/‖V‖; LyCORIS adds float32's eps to the norm.
//
// At scale 1 both are W' = m·V/‖V‖. alpha/rank is folded into up by the
// planner, as for LoRAs.
//
// In a LoraAdapter the branch adds F(x, W' − W) to the target's output
// (no bias: the target keeps its own), computing W' from the target's
// weight at every forward. With other branches on the same layer, each
// DoRA branch rescales the target's own weight, not the other branches'
// changes: the sum PEFT's forward computes with several adapters active.

// DoraBranch is a DoRA branch of a Linear or Conv2d.
type DoraBranch struct {
	Label string
	// TargetType is "Linear" or "Conv2d"; WeightShape the target's weight
	// shape.
	TargetType  string
	WeightShape []int64
	Rank        int64
	Scale       float64
	// Axis is DoraOutput (a magnitude per output channel: PEFT, LyCORIS's
	// default) or DoraInput (per input channel: LyCORIS wd_on_out=False).
	Axis string
	// ScaleMode is DoraScaleDelta (PEFT) or DoraScaleMagnitude (LyCORIS).
	ScaleMode string
	// Eps is added to the norm.
	Eps float64
	Precision

	down, up, magnitude *tensor.Tensor
	target              Module // the adapted layer, once in an adapter
	conv                *tensor.Conv2dOptions
}

// DoRA axes and scale modes.
const (
	DoraOutput         = "output"
	DoraInput          = "input"
	DoraScaleDelta     = "delta"
	DoraScaleMagnitude = "magnitude"
)

// DoraOptions are a DoRA branch's conventions (zero values: per output
// channel, the scale on ΔW, no eps).
type DoraOptions struct {
	Axis, ScaleMode string
	Eps             float64
}

// NewDora makes a DoRA branch: down is [rank, in] for a Linear, [rank, in,
// kh, kw] for a Conv2d (the target's kernel); up is [out, rank] ([out,
// rank, 1, 1]); the magnitude has one value per channel of the axis.
func NewDora(name, targetType string, weightShape []int64, rank int64, o DoraOptions, scale float64) (*DoraBranch, error) {
	if o.Axis == "" {
		o.Axis = DoraOutput
	}
	if o.ScaleMode == "" {
		o.ScaleMode = DoraScaleDelta
	}
	b := &DoraBranch{Label: name, TargetType: targetType, WeightShape: slices.Clone(weightShape), Rank: rank,
		Axis: o.Axis, ScaleMode: o.ScaleMode, Eps: o.Eps, Scale: scale}
	switch {
	case targetType == "Linear" && len(weightShape) == 2:
	case targetType == "Conv2d" && len(weightShape) == 4:
	default:
		return nil, fmt.Errorf("DoRA: target_type %q with weight_shape %v: want a Linear (2 dimensions) or a Conv2d (4)", targetType, weightShape)
	}
	for _, d := range weightShape {
		if d < 1 {
			return nil, fmt.Errorf("DoRA: weight_shape %v has an empty dimension", weightShape)
		}
	}
	if rank < 1 {
		return nil, fmt.Errorf("DoRA: rank %d: want at least 1", rank)
	}
	if o.Axis != DoraOutput && o.Axis != DoraInput {
		return nil, fmt.Errorf("DoRA: axis %q: want %s or %s", o.Axis, DoraOutput, DoraInput)
	}
	if o.ScaleMode != DoraScaleDelta && o.ScaleMode != DoraScaleMagnitude {
		return nil, fmt.Errorf("DoRA: scale_mode %q: want %s (PEFT) or %s (LyCORIS)", o.ScaleMode, DoraScaleDelta, DoraScaleMagnitude)
	}
	if o.Eps < 0 {
		return nil, fmt.Errorf("DoRA: eps %g is negative", o.Eps)
	}
	return b, nil
}

func (b *DoraBranch) TypeName() string { return "DoRA" }

// shapes of down, up and the magnitude.
func (b *DoraBranch) shapes() (down, up, magnitude []int64) {
	out, in := b.WeightShape[0], b.WeightShape[1]
	down, up = append([]int64{b.Rank, in}, b.WeightShape[2:]...), []int64{out, b.Rank}
	if b.TargetType == "Conv2d" {
		up = append(up, 1, 1)
	}
	if b.Axis == DoraInput {
		return down, up, []int64{in}
	}
	return down, up, []int64{out}
}

// Params are down, up and magnitude.
func (b *DoraBranch) Params() []Param {
	d, u, m := b.shapes()
	return []Param{
		{Name: "down", Shape: d, DType: b.DType, Value: &b.down},
		{Name: "up", Shape: u, DType: b.DType, Value: &b.up},
		{Name: "magnitude", Shape: m, DType: b.DType, Value: &b.magnitude},
	}
}

func (b *DoraBranch) Describe() string {
	kv := []any{"rank", b.Rank}
	if b.Axis != DoraOutput {
		kv = append(kv, "axis", b.Axis)
	}
	if b.ScaleMode != DoraScaleDelta {
		kv = append(kv, "scale_mode", b.ScaleMode)
	}
	if b.Eps != 0 {
		kv = append(kv, "eps", b.Eps)
	}
	kv = append(kv, "scale", b.Scale, "name", b.Label)
	return weighted(describe("DoRA", kv...), b.Params()[0])
}

// fits checks that the branch is for target's weight.
func (b *DoraBranch) fits(target Module) error {
	var shape []int64
	switch t := target.(type) {
	case *Linear:
		shape = t.Params()[0].Shape
	case *Conv2d:
		shape = t.Params()[0].Shape
	default:
		return fmt.Errorf("DoRA %q targets a Linear or a Conv2d, not %s", b.Label, Describe(target))
	}
	if TypeName(target) != b.TargetType || !slices.Equal(shape, b.WeightShape) {
		return fmt.Errorf("DoRA %q (for a %s weight %v) does not fit %s (weight %v)", b.Label, b.TargetType, b.WeightShape, Describe(target), shape)
	}
	return nil
}

// attach records the target, whose weight the branch reads at every
// forward, and a convolution's geometry.
func (b *DoraBranch) attach(target Module) {
	b.target = target
	if c, ok := target.(*Conv2d); ok {
		b.conv = &tensor.Conv2dOptions{Stride: c.Stride, Padding: c.Padding, Dilation: c.Dilation, Groups: c.Groups}
	}
}

// Delta is ΔW = up·down in the weight's shape, without any scale.
func (b *DoraBranch) Delta(s *tensor.Scope) *tensor.Tensor {
	return s.Reshape(s.Matmul(s.Reshape(b.up, b.WeightShape[0], b.Rank), s.Reshape(b.down, b.Rank, -1)), b.WeightShape...)
}

// decompose returns V = W + a·ΔW and d = b·(m − n)/n with n = ‖V‖ + eps,
// shaped to broadcast over the weight, so that W' = V·(1 + d). w is taken
// in the branch's dtype.
func (b *DoraBranch) decompose(s *tensor.Scope, w *tensor.Tensor) (v, d, aDelta *tensor.Tensor) {
	a, k := b.Scale, 1.0
	if b.ScaleMode == DoraScaleMagnitude {
		a, k = 1, b.Scale
	}
	aDelta = b.Delta(s)
	if a != 1 {
		aDelta = s.Scale(aDelta, a)
	}
	v = s.Add(w, aDelta)
	// Reduce over every dimension but the axis; keep the dimensions so the
	// result broadcasts over the weight.
	axis := int64(0)
	if b.Axis == DoraInput {
		axis = 1
	}
	var dims []int64
	for i := range int64(len(b.WeightShape)) {
		if i != axis {
			dims = append(dims, i)
		}
	}
	n := s.Sqrt(s.Sum(s.Mul(v, v), true, dims...))
	if b.Eps != 0 {
		n = s.AddScalar(n, b.Eps)
	}
	shape := make([]int64, len(b.WeightShape))
	for i := range shape {
		shape[i] = 1
	}
	shape[axis] = b.WeightShape[axis]
	m := s.Reshape(b.magnitude, shape...)
	d = s.Div(s.Sub(m, n), n)
	if k != 1 {
		d = s.Scale(d, k)
	}
	return v, d, aDelta
}

// Merged is W' for the weight w: what fusing the branch into w writes.
func (b *DoraBranch) Merged(s *tensor.Scope, w *tensor.Tensor) *tensor.Tensor {
	dt := w.DType()
	v, d, _ := b.decompose(s, s.ToDType(w, b.DType))
	return s.ToDType(s.Add(v, s.Mul(v, d)), dt)
}

// Change is W' − W for the weight w, computed as W·d + a·ΔW·(1 + d): the
// difference is never taken between two rounded weights.
func (b *DoraBranch) Change(s *tensor.Scope, w *tensor.Tensor) *tensor.Tensor {
	dt := w.DType()
	w = s.ToDType(w, b.DType)
	_, d, aDelta := b.decompose(s, w)
	return s.ToDType(s.Add(s.Mul(w, d), s.Add(aDelta, s.Mul(aDelta, d))), dt)
}

// targetWeight is the adapted layer's weight.
func (b *DoraBranch) targetWeight() *tensor.Tensor {
	switch t := b.target.(type) {
	case *Linear:
		return t.Weight
	case *Conv2d:
		return t.Weight
	}
	return nil
}

func (b *DoraBranch) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	if err := loaded(b); err != nil {
		return nil, err
	}
	w := b.targetWeight()
	if w == nil || !w.Valid() {
		return nil, fmt.Errorf("DoRA %q rescales its target's weight and is in no adapter (or its target is not loaded)", b.Label)
	}
	return unary(f, "DoRA", in, func(x *tensor.Tensor) *tensor.Tensor {
		dw := b.Change(f.Scope, w)
		if b.TargetType == "Linear" {
			return f.Linear(x, dw, nil)
		}
		return f.Conv2d(x, dw, nil, *b.conv)
	})
}

func init() {
	leaf("DoRA", "weight-decomposed low-rank branch of a Linear or Conv2d (DoRA: PEFT use_dora, LyCORIS dora_scale)", []ArgSpec{
		req("name", StringArg, "the branch's name in its adapter"),
		req("target_type", StringArg, "Linear or Conv2d"),
		atLeast(1, req("weight_shape", IntsArg, "the target's weight shape")),
		atLeast(1, req("rank", IntArg, "")),
		opt("axis", StringArg, DoraOutput, "the magnitude's channels: output (PEFT, LyCORIS default) or input (LyCORIS wd_on_out=False)"),
		opt("scale_mode", StringArg, DoraScaleDelta, "delta: the scale multiplies ΔW inside the norm (PEFT); magnitude: it moves the rescaling factor (LyCORIS)"),
		opt("eps", FloatArg, 0.0, "added to the norm (LyCORIS: float32's eps)"),
		opt("scale", FloatArg, 1.0, ""),
	}, func(a *Args) (Module, error) {
		return NewDora(a.String("name"), a.String("target_type"), a.Ints("weight_shape"), a.Int("rank"),
			DoraOptions{Axis: a.String("axis"), ScaleMode: a.String("scale_mode"), Eps: a.Float("eps")}, a.Float("scale"))
	})
}
