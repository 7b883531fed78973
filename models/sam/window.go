package sam

import (
	"fmt"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
)

// Refiners' WindowPartition and WindowMerge share the "window_partition"
// context: the TransformerLayer around them puts the window size there, the
// partition records the original and padded sizes, the merge reads them.
// Here the window size is an argument of both layers (a spec gives the
// same value to both), and the partition stores the sizes it used at
// context window_partition/sizes for the merge that follows.

// windowSizes is what a WindowPartition records for its WindowMerge.
type windowSizes struct {
	window, height, width, paddedHeight, paddedWidth int64
}

const windowContext, windowKey = "window_partition", "sizes"

// WindowPartition pads x [B, H, W, C] at the bottom and right to whole
// windows and returns the windows [B·(H'/w)·(W'/w), w, w, C], row by row.
type WindowPartition struct{ WindowSize int64 }

func (l *WindowPartition) Describe() string { return "WindowPartition()" }

func (l *WindowPartition) Forward(f *core.Frame, in ...*tensor.Tensor) (core.Tensors, error) {
	x, err := core.OneInput("WindowPartition", in)
	if err != nil {
		return nil, err
	}
	shape := x.Shape()
	if len(shape) != 4 {
		return nil, fmt.Errorf("WindowPartition: input shape %v, want [B, H, W, C]", shape)
	}
	w := l.WindowSize
	b, h, wd, c := shape[0], shape[1], shape[2], shape[3]
	ph, pw := (w-h%w)%w, (w-wd%w)%w
	if ph > 0 || pw > 0 {
		x = f.Pad(x, []int64{0, 0, 0, pw, 0, ph}, "constant", 0)
	}
	sizes := &windowSizes{window: w, height: h, width: wd, paddedHeight: h + ph, paddedWidth: wd + pw}
	f.SetContext(windowContext, windowKey, sizes)
	x = f.Reshape(x, b, sizes.paddedHeight/w, w, sizes.paddedWidth/w, w, c)
	out := f.Reshape(f.Contiguous(f.Permute(x, 0, 1, 3, 2, 4, 5)), -1, w, w, c)
	return core.Tensors{out}, f.Err()
}

// WindowMerge undoes the last WindowPartition: windows [B·n, w, w, C] back
// to [B, H, W, C], the padding cropped.
type WindowMerge struct{ WindowSize int64 }

func (l *WindowMerge) Describe() string { return "WindowMerge()" }

func (l *WindowMerge) Forward(f *core.Frame, in ...*tensor.Tensor) (core.Tensors, error) {
	x, err := core.OneInput("WindowMerge", in)
	if err != nil {
		return nil, err
	}
	v, ok := f.LookupContext(windowContext, windowKey)
	sizes, isSizes := v.(*windowSizes)
	if !ok || !isSizes {
		return nil, fmt.Errorf("WindowMerge: no WindowPartition ran before it (context %q key %q holds %T)", windowContext, windowKey, v)
	}
	w := l.WindowSize
	if sizes.window != w {
		return nil, fmt.Errorf("WindowMerge: window size %d, the partition used %d", w, sizes.window)
	}
	shape := x.Shape()
	perImage := sizes.paddedHeight * sizes.paddedWidth / w / w
	if len(shape) != 4 || shape[1] != w || shape[2] != w || shape[0]%perImage != 0 {
		return nil, fmt.Errorf("WindowMerge: input shape %v, want [B·%d, %d, %d, C]", shape, perImage, w, w)
	}
	b := shape[0] / perImage
	x = f.Reshape(x, b, sizes.paddedHeight/w, sizes.paddedWidth/w, w, w, -1)
	x = f.Reshape(f.Contiguous(f.Permute(x, 0, 1, 3, 2, 4, 5)), b, sizes.paddedHeight, sizes.paddedWidth, -1)
	if sizes.paddedHeight > sizes.height || sizes.paddedWidth > sizes.width {
		x = f.Contiguous(f.Narrow(f.Narrow(x, 1, 0, sizes.height), 2, 0, sizes.width))
	}
	return core.Tensors{x}, f.Err()
}

// PointTypeEmbedding is Refiners' PointTypeEmbedding: row t−1 of weight
// [5, Dim] for each point of type t in 1..5 (background, foreground, box
// top-left, box bottom-right, not a point), zeros for any other value; the
// output is float32, as Refiners fills a float32 zeros tensor.
type PointTypeEmbedding struct {
	Dim int64
	core.Precision
	Weight *tensor.Tensor
}

// NumPointTypes is the number of point types (rows of the weight).
const NumPointTypes = 5

func (l *PointTypeEmbedding) Params() []core.Param {
	return []core.Param{{Name: "weight", Shape: []int64{NumPointTypes, l.Dim}, DType: l.DType, Value: &l.Weight}}
}

func (l *PointTypeEmbedding) Describe() string {
	return core.DescribeWeighted(core.DescribeArgs("PointTypeEmbedding", "embedding_dim", l.Dim), l.Params()[0])
}

func (l *PointTypeEmbedding) Forward(f *core.Frame, in ...*tensor.Tensor) (core.Tensors, error) {
	if !l.Weight.Valid() {
		return nil, fmt.Errorf("PointTypeEmbedding: parameter \"weight\" is not loaded")
	}
	return core.Unary(f, "PointTypeEmbedding", in, func(types *tensor.Tensor) *tensor.Tensor {
		if types.DType().IsFloat() {
			f.Failf("PointTypeEmbedding: point types must be integers, got %s", types.DType())
			return nil
		}
		// Row 0 of the table is the zeros of an unknown type; types
		// 1..5 index their own rows.
		ids := f.Int64s(f.To(f.ToDType(types, tensor.Int64), tensor.CPU))
		for i, t := range ids {
			if t < 1 || t > NumPointTypes {
				ids[i] = 0
			}
		}
		weight := f.ToDType(l.Weight, tensor.Float32)
		table := f.Cat([]*tensor.Tensor{f.Zeros(tensor.Float32, 1, l.Dim), f.To(weight, tensor.CPU)}, 0)
		out := f.Embedding(table, f.FromInt64(ids, types.Shape()...))
		if dev := types.Device(); dev != tensor.CPU {
			out = f.To(out, dev)
		}
		return out
	})
}
