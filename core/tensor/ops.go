package tensor

import (
	"fmt"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// Every op here is a method on Scope: the result belongs to the scope, and a
// failure is recorded in the scope (see Scope). Inputs are never consumed.

// To moves t to a device.
func (s *Scope) To(t *Tensor, d Device) *Tensor {
	return s.op("to "+d.String(), func() (*ts.Tensor, error) { return t.h.To(d.gotch(), false) }, t)
}

// ToDType converts t's elements.
func (s *Scope) ToDType(t *Tensor, d DType) *Tensor {
	return s.op("to "+d.String(), func() (*ts.Tensor, error) { return t.h.Totype(d.kind(), false) }, t)
}

// Contiguous returns t laid out row-major (t itself, shallow-copied, if it
// already is).
func (s *Scope) Contiguous(t *Tensor) *Tensor {
	return s.op("contiguous", func() (*ts.Tensor, error) { return t.h.Contiguous(false) }, t)
}

// --- arithmetic -----------------------------------------------------------

// Add returns a + b with broadcasting.
func (s *Scope) Add(a, b *Tensor) *Tensor {
	return s.op("add", func() (*ts.Tensor, error) { return a.h.Add(b.h, false) }, a, b)
}

// Sub returns a - b with broadcasting.
func (s *Scope) Sub(a, b *Tensor) *Tensor {
	return s.op("sub", func() (*ts.Tensor, error) { return a.h.Sub(b.h, false) }, a, b)
}

// Mul returns a * b with broadcasting.
func (s *Scope) Mul(a, b *Tensor) *Tensor {
	return s.op("mul", func() (*ts.Tensor, error) { return a.h.Mul(b.h, false) }, a, b)
}

// Div returns a / b with broadcasting.
func (s *Scope) Div(a, b *Tensor) *Tensor {
	return s.op("div", func() (*ts.Tensor, error) { return a.h.Div(b.h, false) }, a, b)
}

// Scale returns t * k.
func (s *Scope) Scale(t *Tensor, k float64) *Tensor {
	return s.op("scale", func() (*ts.Tensor, error) {
		sc := ts.FloatScalar(k)
		defer sc.Drop()
		return t.h.MulScalar(sc, false)
	}, t)
}

// AddScalar returns t + k.
func (s *Scope) AddScalar(t *Tensor, k float64) *Tensor {
	return s.op("add scalar", func() (*ts.Tensor, error) {
		sc := ts.FloatScalar(k)
		defer sc.Drop()
		return t.h.AddScalar(sc, false)
	}, t)
}

// Pow returns t ** k.
func (s *Scope) Pow(t *Tensor, k float64) *Tensor {
	return s.op("pow", func() (*ts.Tensor, error) {
		sc := ts.FloatScalar(k)
		defer sc.Drop()
		return t.h.PowTensorScalar(sc, false)
	}, t)
}

// Neg returns -t.
func (s *Scope) Neg(t *Tensor) *Tensor {
	return s.op("neg", func() (*ts.Tensor, error) { return t.h.Neg(false) }, t)
}

// Sqrt returns the element-wise square root.
func (s *Scope) Sqrt(t *Tensor) *Tensor {
	return s.op("sqrt", func() (*ts.Tensor, error) { return t.h.Sqrt(false) }, t)
}

// Exp returns the element-wise exponential.
func (s *Scope) Exp(t *Tensor) *Tensor {
	return s.op("exp", func() (*ts.Tensor, error) { return t.h.Exp(false) }, t)
}

// Log returns the element-wise natural logarithm.
func (s *Scope) Log(t *Tensor) *Tensor {
	return s.op("log", func() (*ts.Tensor, error) { return t.h.Log(false) }, t)
}

// Sin returns the element-wise sine.
func (s *Scope) Sin(t *Tensor) *Tensor {
	return s.op("sin", func() (*ts.Tensor, error) { return t.h.Sin(false) }, t)
}

// Cos returns the element-wise cosine.
func (s *Scope) Cos(t *Tensor) *Tensor {
	return s.op("cos", func() (*ts.Tensor, error) { return t.h.Cos(false) }, t)
}

// Abs returns the element-wise absolute value.
func (s *Scope) Abs(t *Tensor) *Tensor {
	return s.op("abs", func() (*ts.Tensor, error) { return t.h.Abs(false) }, t)
}

// Maximum returns the element-wise maximum of a and b.
func (s *Scope) Maximum(a, b *Tensor) *Tensor {
	return s.op("maximum", func() (*ts.Tensor, error) { return a.h.Maximum(b.h, false) }, a, b)
}

// Matmul is torch.matmul (batched, broadcasting).
func (s *Scope) Matmul(a, b *Tensor) *Tensor {
	return s.op("matmul", func() (*ts.Tensor, error) { return a.h.Matmul(b.h, false) }, a, b)
}

// --- reductions -----------------------------------------------------------

// Sum adds over dims (all dims when none are given).
func (s *Scope) Sum(t *Tensor, keepDim bool, dims ...int64) *Tensor {
	if len(dims) == 0 {
		return s.op("sum", func() (*ts.Tensor, error) { return t.h.Sum(gotch.Invalid, false) }, t)
	}
	return s.op("sum", func() (*ts.Tensor, error) { return t.h.SumDimIntlist(dims, keepDim, gotch.Invalid, false) }, t)
}

// Cumprod is the running product along dim, in t's dtype.
func (s *Scope) Cumprod(t *Tensor, dim int64) *Tensor {
	return s.op("cumprod", func() (*ts.Tensor, error) { return t.h.Cumprod(dim, gotch.Invalid, false) }, t)
}

// Mean averages over dims (all dims when none are given).
func (s *Scope) Mean(t *Tensor, keepDim bool, dims ...int64) *Tensor {
	if len(dims) == 0 {
		return s.op("mean", func() (*ts.Tensor, error) { return t.h.Mean(gotch.Invalid, false) }, t)
	}
	return s.op("mean", func() (*ts.Tensor, error) { return t.h.MeanDim(dims, keepDim, gotch.Invalid, false) }, t)
}

// Max returns the largest element.
func (s *Scope) Max(t *Tensor) *Tensor {
	return s.op("max", func() (*ts.Tensor, error) { return t.h.Max(false) }, t)
}

// Amax is the maximum over dims.
func (s *Scope) Amax(t *Tensor, keepDim bool, dims ...int64) *Tensor {
	return s.op("amax", func() (*ts.Tensor, error) { return t.h.Amax(dims, keepDim, false) }, t)
}

// Argmax returns the index of the maximum along dim.
func (s *Scope) Argmax(t *Tensor, dim int64, keepDim bool) *Tensor {
	return s.op("argmax", func() (*ts.Tensor, error) { return t.h.Argmax([]int64{dim}, keepDim, false) }, t)
}

// --- neural-network ops -----------------------------------------------------

// Linear is x @ w.T + b, with w shaped [out, in]; b may be nil.
func (s *Scope) Linear(x, w, b *Tensor) *Tensor {
	return s.op("linear", func() (*ts.Tensor, error) { return ts.Linear(x.h, w.h, optional(b)) }, x, w)
}

// Conv2dOptions are torch.nn.functional.conv2d's hyper-parameters.
type Conv2dOptions struct {
	Stride, Padding, Dilation [2]int64
	Groups                    int64
}

// Conv2d convolves x [N,C,H,W] with w [O,C/groups,kH,kW]; b may be nil.
func (s *Scope) Conv2d(x, w, b *Tensor, o Conv2dOptions) *Tensor {
	return s.op("conv2d", func() (*ts.Tensor, error) {
		return ts.Conv2d(x.h, w.h, optional(b), o.Stride[:], o.Padding[:], o.Dilation[:], o.Groups)
	}, x, w)
}

// ConvTranspose2d is the transposed convolution; w is [C,O/groups,kH,kW].
func (s *Scope) ConvTranspose2d(x, w, b *Tensor, o Conv2dOptions, outputPadding [2]int64) *Tensor {
	return s.op("conv_transpose2d", func() (*ts.Tensor, error) {
		return ts.ConvTranspose2d(x.h, w.h, optional(b), o.Stride[:], o.Padding[:], outputPadding[:], o.Groups, o.Dilation[:])
	}, x, w)
}

// LayerNorm normalises over the trailing len(normalized) dims; w, b may be nil.
func (s *Scope) LayerNorm(x *Tensor, normalized []int64, w, b *Tensor, eps float64) *Tensor {
	return s.op("layer_norm", func() (*ts.Tensor, error) {
		return ts.LayerNorm(x.h, normalized, optional(w), optional(b), eps, false)
	}, x)
}

// GroupNorm normalises [N,C,...] in groups of channels; w, b may be nil.
func (s *Scope) GroupNorm(x *Tensor, groups int64, w, b *Tensor, eps float64) *Tensor {
	return s.op("group_norm", func() (*ts.Tensor, error) {
		return ts.GroupNorm(x.h, groups, optional(w), optional(b), eps, false)
	}, x)
}

// InstanceNorm normalises each channel of each sample; w, b may be nil.
func (s *Scope) InstanceNorm(x *Tensor, w, b *Tensor, eps float64) *Tensor {
	return s.op("instance_norm", func() (*ts.Tensor, error) {
		return ts.InstanceNorm(x.h, optional(w), optional(b), ts.None, ts.None, true, 0.1, eps, false)
	}, x)
}

// Softmax along dim.
func (s *Scope) Softmax(t *Tensor, dim int64) *Tensor {
	return s.op("softmax", func() (*ts.Tensor, error) { return t.h.Softmax(dim, gotch.Invalid, false) }, t)
}

// GeLU with approximate "none" or "tanh".
func (s *Scope) GeLU(t *Tensor, approximate string) *Tensor {
	if approximate != "none" && approximate != "tanh" {
		s.Failf("gelu: approximate must be none or tanh, got %q", approximate)
		return nil
	}
	return s.op("gelu", func() (*ts.Tensor, error) { return t.h.Gelu(approximate, false) }, t)
}

// SiLU is x * sigmoid(x).
func (s *Scope) SiLU(t *Tensor) *Tensor {
	return s.op("silu", func() (*ts.Tensor, error) { return t.h.Silu(false) }, t)
}

// ReLU is max(x, 0).
func (s *Scope) ReLU(t *Tensor) *Tensor {
	return s.op("relu", func() (*ts.Tensor, error) { return t.h.Relu(false) }, t)
}

// Sigmoid is 1 / (1 + exp(-x)).
func (s *Scope) Sigmoid(t *Tensor) *Tensor {
	return s.op("sigmoid", func() (*ts.Tensor, error) { return t.h.Sigmoid(false) }, t)
}

// Tanh is the hyperbolic tangent.
func (s *Scope) Tanh(t *Tensor) *Tensor {
	return s.op("tanh", func() (*ts.Tensor, error) { return t.h.Tanh(false) }, t)
}

// GLU splits dim in halves a, b and returns a * sigmoid(b).
func (s *Scope) GLU(t *Tensor, dim int64) *Tensor {
	return s.op("glu", func() (*ts.Tensor, error) { return t.h.Glu(dim, false) }, t)
}

// Attention is scaled dot-product attention over [..., L, E] query and
// [..., S, E] key/value. mask may be nil, boolean (true = attend) or additive.
// scale <= 0 means 1/sqrt(E).
func (s *Scope) Attention(q, k, v, mask *Tensor, causal bool, scale float64) *Tensor {
	var sc []float64
	if scale > 0 {
		sc = []float64{scale}
	}
	if s.meter != nil && q.Valid() && k.Valid() && (mask != nil || q.DType() == Float16) {
		// With a mask (or in float16), libtorch 2.1 takes its math path:
		// the score matrix [..., L, S], its masked and softmaxed copies
		// exist at once inside the op (measured: 2.3 times the scores).
		// Without, its fused kernel works in small blocks.
		qs, ks := q.Shape(), k.Shape()
		if len(qs) >= 2 && len(ks) >= 2 {
			scores := s.meter.Bytes(append(append([]int64(nil), qs[:len(qs)-1]...), ks[len(ks)-2]), q.DType())
			s.meter.transient(satMul(scores, 5) / 2)
		}
	}
	return s.op("scaled_dot_product_attention", func() (*ts.Tensor, error) {
		return ts.ScaledDotProductAttention(q.h, k.h, v.h, optional(mask), 0, causal, sc)
	}, q, k, v)
}

// Embedding looks up rows of w [V,D] by int64 indices.
func (s *Scope) Embedding(w, indices *Tensor) *Tensor {
	return s.op("embedding", func() (*ts.Tensor, error) { return ts.Embedding(w.h, indices.h, -1, false, false) }, w, indices)
}

// MaxPool2d pools [N,C,H,W].
func (s *Scope) MaxPool2d(t *Tensor, kernel, stride, padding, dilation [2]int64, ceilMode bool) *Tensor {
	return s.op("max_pool2d", func() (*ts.Tensor, error) {
		return t.h.MaxPool2d(kernel[:], stride[:], padding[:], dilation[:], ceilMode, false)
	}, t)
}

// Interpolation modes for Interpolate.
const (
	Nearest  = "nearest"
	Bilinear = "bilinear"
)

// Interpolate resizes the spatial dims of [N,C,H,W] to size, like
// torch.nn.functional.interpolate with align_corners=False.
func (s *Scope) Interpolate(t *Tensor, size [2]int64, mode string) *Tensor {
	switch mode {
	case Nearest:
		return s.op("interpolate nearest", func() (*ts.Tensor, error) { return t.h.UpsampleNearest2d(size[:], nil, nil, false) }, t)
	case Bilinear:
		return s.op("interpolate bilinear", func() (*ts.Tensor, error) {
			return t.h.UpsampleBilinear2d(size[:], false, nil, nil, false)
		}, t)
	}
	s.Failf("interpolate: unknown mode %q (want nearest or bilinear)", mode)
	return nil
}

// Pad pads the trailing dims: pad lists (before, after) pairs starting from
// the last dim, as torch.nn.functional.pad. mode is constant, reflect,
// replicate or circular.
func (s *Scope) Pad(t *Tensor, pad []int64, mode string, value float64) *Tensor {
	if len(pad) == 0 || len(pad)%2 != 0 {
		s.Failf("pad: want a non-empty even number of sizes, got %v", pad)
		return nil
	}
	var val []float64
	if mode == "constant" {
		val = []float64{value}
	}
	return s.op("pad "+mode, func() (*ts.Tensor, error) { return t.h.Pad(pad, mode, val, false) }, t)
}

// PixelUnshuffle moves r×r spatial blocks into channels.
func (s *Scope) PixelUnshuffle(t *Tensor, r int64) *Tensor {
	return s.op("pixel_unshuffle", func() (*ts.Tensor, error) { return t.h.PixelUnshuffle(r, false) }, t)
}

// --- shape ops ------------------------------------------------------------

// Reshape returns t with a new shape (one dim may be -1; none makes a
// scalar of a one-element tensor).
func (s *Scope) Reshape(t *Tensor, shape ...int64) *Tensor {
	if len(shape) == 0 {
		return s.scalar(s.Reshape(t, 1))
	}
	if s.meter != nil && t.Valid() && t.Numel() == 0 {
		shape = resolveEmptyReshape(t.Shape(), shape)
	}
	return s.op("reshape", func() (*ts.Tensor, error) { return t.h.Reshape(shape, false) }, t)
}

// Permute reorders dims.
func (s *Scope) Permute(t *Tensor, order ...int64) *Tensor {
	return s.view("permute", func() (*ts.Tensor, error) { return t.h.Permute(order, false) }, t)
}

// Transpose swaps two dims.
func (s *Scope) Transpose(t *Tensor, a, b int64) *Tensor {
	return s.view("transpose", func() (*ts.Tensor, error) { return t.h.Transpose(a, b, false) }, t)
}

// Flatten merges dims start..end (inclusive; negatives count from the end).
func (s *Scope) Flatten(t *Tensor, start, end int64) *Tensor {
	return s.op("flatten", func() (*ts.Tensor, error) { return t.h.Flatten(start, end, false) }, t)
}

// Unflatten splits dim into sizes.
func (s *Scope) Unflatten(t *Tensor, dim int64, sizes ...int64) *Tensor {
	return s.op("unflatten", func() (*ts.Tensor, error) { return t.h.Unflatten(dim, sizes, false) }, t)
}

// Squeeze removes dim if its size is 1.
func (s *Scope) Squeeze(t *Tensor, dim int64) *Tensor {
	return s.view("squeeze", func() (*ts.Tensor, error) { return t.h.SqueezeDim(dim, false) }, t)
}

// Unsqueeze inserts a dim of size 1.
func (s *Scope) Unsqueeze(t *Tensor, dim int64) *Tensor {
	return s.view("unsqueeze", func() (*ts.Tensor, error) { return t.h.Unsqueeze(dim, false) }, t)
}

// Expand broadcasts t to shape without copying (-1 keeps a dim).
func (s *Scope) Expand(t *Tensor, shape ...int64) *Tensor {
	return s.view("expand", func() (*ts.Tensor, error) { return t.h.Expand(shape, false, false) }, t)
}

// Slice takes elements start, start+step, ... below end along dim, with
// Python's clamping and negative indices.
func (s *Scope) Slice(t *Tensor, dim, start, end, step int64) *Tensor {
	if step <= 0 {
		s.Failf("slice: step must be positive, got %d", step)
		return nil
	}
	return s.view("slice", func() (*ts.Tensor, error) {
		return t.h.Slice(dim, []int64{start}, []int64{end}, step, false)
	}, t)
}

// Narrow takes length elements from start along dim.
func (s *Scope) Narrow(t *Tensor, dim, start, length int64) *Tensor {
	return s.view("narrow", func() (*ts.Tensor, error) { return t.h.Narrow(dim, start, length, false) }, t)
}

// Select takes index along dim, removing that dim.
func (s *Scope) Select(t *Tensor, dim, index int64) *Tensor {
	return s.view("select", func() (*ts.Tensor, error) { return t.h.Select(dim, index, false) }, t)
}

// Cat concatenates along dim.
func (s *Scope) Cat(ts_ []*Tensor, dim int64) *Tensor {
	if len(ts_) == 0 {
		s.Failf("cat: no tensors")
		return nil
	}
	return s.op("cat", func() (*ts.Tensor, error) { return ts.Cat(handles(ts_), dim) }, ts_...)
}

// Stack joins along a new dim.
func (s *Scope) Stack(ts_ []*Tensor, dim int64) *Tensor {
	if len(ts_) == 0 {
		s.Failf("stack: no tensors")
		return nil
	}
	return s.op("stack", func() (*ts.Tensor, error) { return ts.Stack(handles(ts_), dim) }, ts_...)
}

// Chunk splits t into n nearly equal parts along dim.
func (s *Scope) Chunk(t *Tensor, n, dim int64) []*Tensor {
	if n <= 0 {
		s.Failf("chunk: chunks must be positive, got %d", n)
		return nil
	}
	return s.ops("chunk", func() ([]*ts.Tensor, error) { return t.h.Chunk(n, dim) }, t)
}

// Split cuts t along dim into parts of the given sizes (which must add up to
// the dim's size), or into parts of sizes[0] each when only one is given.
func (s *Scope) Split(t *Tensor, dim int64, sizes ...int64) []*Tensor {
	switch len(sizes) {
	case 0:
		s.Failf("split: no sizes")
		return nil
	case 1:
		return s.ops("split", func() ([]*ts.Tensor, error) { return t.h.Split(sizes[0], dim) }, t)
	}
	return s.ops("split", func() ([]*ts.Tensor, error) { return t.h.SplitWithSizes(sizes, dim) }, t)
}

func handles(ts_ []*Tensor) []*ts.Tensor {
	hs := make([]*ts.Tensor, len(ts_))
	for i, t := range ts_ {
		if t.Valid() {
			hs[i] = t.h
		}
	}
	return hs
}

func optional(t *Tensor) *ts.Tensor {
	if !t.Valid() {
		return ts.None
	}
	return t.h
}

// --- comparison -------------------------------------------------------------

// AllClose reports whether |a-b| <= atol + rtol*|b| everywhere.
func (s *Scope) AllClose(a, b *Tensor, rtol, atol float64) bool {
	if s.err != nil {
		return false
	}
	if fmt.Sprint(a.Shape()) != fmt.Sprint(b.Shape()) {
		return false
	}
	c := s.Child()
	defer c.Close()
	af, bf := c.ToDType(a, Float32), c.ToDType(b, Float32)
	diff := c.Abs(c.Sub(af, bf))
	bound := c.AddScalar(c.Scale(c.Abs(bf), rtol), atol)
	excess := c.Max(c.Sub(diff, bound))
	v := c.Item(excess)
	return c.err == nil && v <= 0
}
