package sam

import (
	"errors"
	"fmt"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
)

// Point types, as Refiners' PointType enum numbers them.
const (
	Background     = 1
	Foreground     = 2
	BoxTopLeft     = 3
	BoxBottomRight = 4
	NotAPoint      = 5
)

// The prompt encoder's context: the point types [B, N] of the points it
// encodes, which the caller sets (Refiners' PointEncoder.set_type_mask).
const pointContext, typeMaskKey = "point_encoder", "type_mask"

func init() {
	core.RegisterLeaf("PointPadding", "PointEncoder's pad: when no box corner is among the point types, appends a zero point and a not-a-point type (Refiners: Lambda(pad))", nil,
		func(*core.Args) (core.Module, error) { return NewPointPadding(), nil })
}

// NewPointPadding is the Lambda(pad) of Refiners' PointEncoder: when the
// type mask (context point_encoder/type_mask) has no box corner, it appends
// a float32 zero point to the encoded points x [B, N, C] and the type
// NotAPoint to the mask, which it stores back; with a box it passes x on.
func NewPointPadding() *core.Func {
	return core.NewFunc("pad", func(f *core.Frame, in core.Tensors) (core.Tensors, error) {
		x, err := core.OneInput("PointPadding", in)
		if err != nil {
			return nil, err
		}
		mask, err := f.UseContext(pointContext, typeMaskKey)
		if err != nil {
			return nil, fmt.Errorf("PointPadding: %w (set the point types first)", err)
		}
		if mask.DType().IsFloat() || len(mask.Shape()) != 2 {
			return nil, fmt.Errorf("PointPadding: type mask must be integers [B, N], got %s %v", mask.DType(), mask.Shape())
		}
		for _, t := range f.Int64s(f.To(f.ToDType(mask, tensor.Int64), tensor.CPU)) {
			if t == BoxTopLeft || t == BoxBottomRight {
				return core.Tensors{x}, f.Err()
			}
		}
		shape := x.Shape()
		if len(shape) != 3 || shape[0] != mask.Shape()[0] {
			return nil, fmt.Errorf("PointPadding: points %v do not match the type mask %v", shape, mask.Shape())
		}
		b := shape[0]
		pad := f.ToDType(f.Full(NotAPoint, tensor.Int64, b, 1), mask.DType())
		zeros := f.Zeros(tensor.Float32, b, 1, shape[2])
		if dev := x.Device(); dev != tensor.CPU {
			zeros = f.To(zeros, dev)
		}
		if dev := mask.Device(); dev != tensor.CPU {
			pad = f.To(pad, dev)
		}
		f.SetContext(pointContext, typeMaskKey, f.Cat([]*tensor.Tensor{mask, pad}, 1))
		return core.Tensors{f.Cat([]*tensor.Tensor{x, f.ToDType(zeros, x.DType())}, 1)}, f.Err()
	})
}

func init() {
	core.RegisterLeaf("MaskEncoder", "SAM's mask prompt encoder: a [B, 1, 4h, 4w] low-res mask to [B, embedding_dim, h, w] (two strided 2×2 convs with LayerNorm2d and GeLU, then a 1×1 conv); owns the no_mask_embedding [1, embedding_dim] used when there is no mask", []core.ArgSpec{
		core.AtLeast(1, core.OptionalArg("embedding_dim", core.IntArg, int64(256), "")),
		core.AtLeast(4, core.OptionalArg("intermediate_channels", core.IntArg, int64(16), "")),
	}, func(a *core.Args) (core.Module, error) {
		return NewMaskEncoder(a.Int("embedding_dim"), a.Int("intermediate_channels"))
	})
}

// NewMaskEncoder is Refiners' MaskEncoder. Its no_mask_embedding is a
// parameter of the chain itself (key MaskEncoder's path + .no_mask_embedding);
// NoMaskEmbedding reads it.
func NewMaskEncoder(dim, intermediate int64) (*core.Chain, error) {
	quarter := intermediate / 4
	gelu1, err1 := core.NewGeLU(core.GeLUExact)
	gelu2, err2 := core.NewGeLU(core.GeLUExact)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("MaskEncoder: %w", err)
	}
	c := core.NewNamed("MaskEncoder", core.Sequence,
		core.NewConv2d(1, quarter, 2, core.ConvOptions{Stride: 2}),
		core.NewLayerNorm2d(quarter),
		gelu1,
		core.NewConv2d(quarter, intermediate, 2, core.ConvOptions{Stride: 2}),
		core.NewLayerNorm2d(intermediate),
		gelu2,
		core.NewConv2d(intermediate, dim, 1, core.ConvOptions{}),
	)
	c.Own = []core.Param{{Name: "no_mask_embedding", Shape: []int64{1, dim}, DType: tensor.Float32, Value: new(*tensor.Tensor)}}
	// Refiners prints the arguments that differ from their defaults.
	var kv []any
	if dim != 256 {
		kv = append(kv, "embedding_dim", dim)
	}
	if intermediate != 16 {
		kv = append(kv, "intermediate_channels", intermediate)
	}
	d := core.DescribeArgs("", kv...)
	c.Args = d[1 : len(d)-1]
	return c, nil
}

// NoMaskEmbedding returns the dense embedding used when no mask is given,
// Refiners' get_no_mask_dense_embedding: no_mask_embedding expanded to
// [batch, embedding_dim, height, width]. encoder is a MaskEncoder chain.
func NoMaskEmbedding(s *tensor.Scope, encoder *core.Chain, batch, height, width int64) (*tensor.Tensor, error) {
	for _, p := range encoder.Own {
		if p.Name != "no_mask_embedding" {
			continue
		}
		w := *p.Value
		if !w.Valid() {
			return nil, fmt.Errorf("MaskEncoder: no_mask_embedding is not loaded")
		}
		dim := p.Shape[1]
		out := s.Expand(s.Reshape(w, 1, dim, 1, 1), batch, dim, height, width)
		return out, s.Err()
	}
	return nil, fmt.Errorf("%s is not a MaskEncoder (no no_mask_embedding)", encoder.TypeName())
}

// DensePositionalEmbedding is Refiners' PointEncoder.get_dense_positional_embedding:
// the point encoder's CoordinateEncoder applied to the centres of a
// height × width grid ((j + 0.5)/width, (i + 0.5)/height), computed in
// float32 as Refiners does, as [1, C, height, width]. pointEncoder is a
// point encoder built from specs/sam_point_encoder.yaml (or any chain with
// a CoordinateEncoder in it).
func DensePositionalEmbedding(s *tensor.Scope, pointEncoder *core.Chain, height, width int64) (*tensor.Tensor, error) {
	if height <= 0 || width <= 0 {
		return nil, fmt.Errorf("dense positional embedding: grid %dx%d", height, width)
	}
	var encoder core.Module
	pointEncoder.Walk(func(m core.Module, _ *core.Chain, _ string) bool {
		if encoder == nil && core.TypeName(m) == "CoordinateEncoder" {
			encoder = m
		}
		return encoder == nil
	})
	if encoder == nil {
		return nil, fmt.Errorf("dense positional embedding: %s has no CoordinateEncoder", pointEncoder.TypeName())
	}
	grid := make([]float32, 0, height*width*2)
	for i := int64(0); i < height; i++ {
		for j := int64(0); j < width; j++ {
			// cumsum of ones minus 0.5 is exact; the division rounds as
			// torch's float32 division does.
			grid = append(grid, (float32(j+1)-0.5)/float32(width), (float32(i+1)-0.5)/float32(height))
		}
	}
	x := s.FromFloat32(grid, height, width, 2)
	for _, e := range core.StateDict(encoder) {
		if w := *e.Value; w.Valid() && w.Device() != tensor.CPU {
			x = s.To(x, w.Device())
		}
		break
	}
	out, err := core.Forward(s, encoder, x)
	if err != nil {
		return nil, fmt.Errorf("dense positional embedding: %w", err)
	}
	return s.Unsqueeze(s.Permute(out[0], 2, 0, 1), 0), s.Err()
}
