package core

import "github.com/refiners-go/refiners/core/tensor"

// LayerNorm normalises over the trailing dims of Shape.
type LayerNorm struct {
	Shape  []int64
	Eps    float64
	Affine bool
	Precision
	Weight *tensor.Tensor
	Bias   *tensor.Tensor
}

// NewLayerNorm declares a LayerNorm over the last dim (eps 1e-5, affine).
func NewLayerNorm(dim int64) *LayerNorm {
	return &LayerNorm{Shape: []int64{dim}, Eps: 1e-5, Affine: true}
}

func (l *LayerNorm) Params() []Param {
	if !l.Affine {
		return nil
	}
	return []Param{
		{Name: "weight", Shape: l.Shape, DType: l.DType, Value: &l.Weight},
		{Name: "bias", Shape: l.Shape, DType: l.DType, Value: &l.Bias},
	}
}

func (l *LayerNorm) Describe() string {
	kv := []any{"normalized_shape", l.Shape}
	if l.Eps != 1e-5 {
		kv = append(kv, "eps", l.Eps)
	}
	if !l.Affine {
		return describe("LayerNorm", append(kv, "elementwise_affine", false)...)
	}
	return weighted(describe("LayerNorm", kv...), l.Params()[0])
}

func (l *LayerNorm) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	if err := loaded(l); err != nil {
		return nil, err
	}
	return unary(f, "LayerNorm", in, func(x *tensor.Tensor) *tensor.Tensor {
		return f.LayerNorm(x, l.Shape, l.Weight, l.Bias, l.Eps)
	})
}

// GroupNorm normalises [N, C, ...] over groups of channels.
type GroupNorm struct {
	Channels, Groups int64
	Eps              float64
	Affine           bool
	Precision
	Weight *tensor.Tensor
	Bias   *tensor.Tensor
}

// NewGroupNorm declares a GroupNorm (eps 1e-5, affine).
func NewGroupNorm(channels, groups int64) *GroupNorm {
	return &GroupNorm{Channels: channels, Groups: groups, Eps: 1e-5, Affine: true}
}

func (l *GroupNorm) Params() []Param {
	if !l.Affine {
		return nil
	}
	return []Param{
		{Name: "weight", Shape: []int64{l.Channels}, DType: l.DType, Value: &l.Weight},
		{Name: "bias", Shape: []int64{l.Channels}, DType: l.DType, Value: &l.Bias},
	}
}

func (l *GroupNorm) Describe() string {
	kv := []any{"num_groups", l.Groups}
	if l.Eps != 1e-5 {
		kv = append(kv, "eps", l.Eps)
	}
	kv = append(kv, "channels", l.Channels)
	if !l.Affine {
		return describe("GroupNorm", append(kv, "affine", false)...)
	}
	return weighted(describe("GroupNorm", kv...), l.Params()[0])
}

func (l *GroupNorm) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	if err := loaded(l); err != nil {
		return nil, err
	}
	return unary(f, "GroupNorm", in, func(x *tensor.Tensor) *tensor.Tensor {
		return f.GroupNorm(x, l.Groups, l.Weight, l.Bias, l.Eps)
	})
}

// LayerNorm2d normalises [N, C, H, W] over channels at each position, as in
// ConvNeXt and Segment Anything.
type LayerNorm2d struct {
	Channels int64
	Eps      float64
	Precision
	Weight *tensor.Tensor
	Bias   *tensor.Tensor
}

// NewLayerNorm2d declares a LayerNorm2d (eps 1e-6).
func NewLayerNorm2d(channels int64) *LayerNorm2d {
	return &LayerNorm2d{Channels: channels, Eps: 1e-6}
}

func (l *LayerNorm2d) Params() []Param {
	return []Param{
		{Name: "weight", Shape: []int64{l.Channels}, DType: l.DType, Value: &l.Weight},
		{Name: "bias", Shape: []int64{l.Channels}, DType: l.DType, Value: &l.Bias},
	}
}

func (l *LayerNorm2d) Describe() string {
	var kv []any
	if l.Eps != 1e-6 {
		kv = append(kv, "eps", l.Eps)
	}
	return weighted(describe("LayerNorm2d", kv...), l.Params()[0])
}

func (l *LayerNorm2d) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	if err := loaded(l); err != nil {
		return nil, err
	}
	return unary(f, "LayerNorm2d", in, func(x *tensor.Tensor) *tensor.Tensor {
		mean := f.Mean(x, true, 1)
		centered := f.Sub(x, mean)
		variance := f.Mean(f.Pow(centered, 2), true, 1)
		normed := f.Div(centered, f.Sqrt(f.AddScalar(variance, l.Eps)))
		w := f.Reshape(l.Weight, -1, 1, 1)
		b := f.Reshape(l.Bias, -1, 1, 1)
		return f.Add(f.Mul(normed, w), b)
	})
}

// InstanceNorm2d normalises each channel of each sample over H and W.
type InstanceNorm2d struct {
	Channels int64
	Eps      float64
	Affine   bool
	Precision
	Weight *tensor.Tensor
	Bias   *tensor.Tensor
}

// NewInstanceNorm2d declares an InstanceNorm2d (eps 1e-5, no affine).
func NewInstanceNorm2d(channels int64) *InstanceNorm2d {
	return &InstanceNorm2d{Channels: channels, Eps: 1e-5}
}

func (l *InstanceNorm2d) Params() []Param {
	if !l.Affine {
		return nil
	}
	return []Param{
		{Name: "weight", Shape: []int64{l.Channels}, DType: l.DType, Value: &l.Weight},
		{Name: "bias", Shape: []int64{l.Channels}, DType: l.DType, Value: &l.Bias},
	}
}

func (l *InstanceNorm2d) Describe() string {
	kv := []any{"num_features", l.Channels}
	if l.Eps != 1e-5 {
		kv = append(kv, "eps", l.Eps)
	}
	if l.Affine {
		return weighted(describe("InstanceNorm2d", append(kv, "affine", true)...), l.Params()[0])
	}
	return describe("InstanceNorm2d", kv...)
}

func (l *InstanceNorm2d) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	if err := loaded(l); err != nil {
		return nil, err
	}
	return unary(f, "InstanceNorm2d", in, func(x *tensor.Tensor) *tensor.Tensor {
		return f.InstanceNorm(x, l.Weight, l.Bias, l.Eps)
	})
}

// Embedding maps int64 indices to rows of a [Count, Dim] table.
type Embedding struct {
	Count, Dim int64
	Precision
	Weight *tensor.Tensor
}

// NewEmbedding declares an Embedding table.
func NewEmbedding(count, dim int64) *Embedding { return &Embedding{Count: count, Dim: dim} }

func (l *Embedding) Params() []Param {
	return []Param{{Name: "weight", Shape: []int64{l.Count, l.Dim}, DType: l.DType, Value: &l.Weight}}
}

func (l *Embedding) Describe() string {
	return weighted(describe("Embedding", "num_embeddings", l.Count, "embedding_dim", l.Dim), l.Params()[0])
}

func (l *Embedding) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	if err := loaded(l); err != nil {
		return nil, err
	}
	return unary(f, "Embedding", in, func(x *tensor.Tensor) *tensor.Tensor { return f.Embedding(l.Weight, x) })
}
