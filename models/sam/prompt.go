package sam

import (
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
