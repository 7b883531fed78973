package sam

import (
	"fmt"
	"math"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
)

func init() {
	core.RegisterLeaf("RelativePositionAttention", "SAM's multi-head self-attention over a [B, H, W, 3C] fused q/k/v map, with decomposed relative-position terms", []core.ArgSpec{
		core.AtLeast(1, core.RequiredArg("embedding_dim", core.IntArg, "C, divisible by num_heads")),
		core.AtLeast(1, core.RequiredArg("num_heads", core.IntArg, "")),
		core.AtLeast(1, core.RequiredArg("spatial_size", core.IntsArg, "(height, width) of the maps attended over")),
	}, func(a *core.Args) (core.Module, error) {
		size := a.Ints("spatial_size")
		if len(size) != 2 {
			return nil, fmt.Errorf("RelativePositionAttention: spatial_size must have 2 values, got %v", size)
		}
		return NewRelativePositionAttention(a.Int("embedding_dim"), a.Int("num_heads"), [2]int64{size[0], size[1]})
	})
	ws := []core.ArgSpec{core.AtLeast(1, core.RequiredArg("window_size", core.IntArg, "side of the square windows (Refiners: the window_partition context TransformerLayer sets)"))}
	core.RegisterLeaf("WindowPartition", "pads a [B, H, W, C] map to whole windows and stacks the windows as [B·n, window, window, C]", ws,
		func(a *core.Args) (core.Module, error) {
			return &WindowPartition{WindowSize: a.Int("window_size")}, nil
		})
	core.RegisterLeaf("WindowMerge", "puts windows back into a [B, H, W, C] map and crops the padding WindowPartition added", ws,
		func(a *core.Args) (core.Module, error) { return &WindowMerge{WindowSize: a.Int("window_size")}, nil })
	core.RegisterLeaf("PointTypeEmbedding", "point types [B, N] (1 background, 2 foreground, 3 box top-left, 4 box bottom-right, 5 not a point) to float32 [B, N, embedding_dim]; other values give zeros",
		[]core.ArgSpec{core.AtLeast(1, core.RequiredArg("embedding_dim", core.IntArg, ""))},
		func(a *core.Args) (core.Module, error) { return &PointTypeEmbedding{Dim: a.Int("embedding_dim")}, nil })
}

// RelativePositionAttention is Refiners' RelativePositionAttention: x is
// [B, H, W, 3C] (a fused q/k/v projection); each head attends over the H·W
// positions with scores q·kᵀ/√d plus the decomposed relative-position terms
// of the vertical_embedding and horizontal_embedding tables, and the result
// is [B, H, W, C].
type RelativePositionAttention struct {
	Dim, Heads  int64
	SpatialSize [2]int64
	core.Precision
	Horizontal *tensor.Tensor // [2·spatial_size[0] − 1, head_dim]
	Vertical   *tensor.Tensor // [2·spatial_size[1] − 1, head_dim]
}

// NewRelativePositionAttention declares the layer; the tables come from a
// state dict.
func NewRelativePositionAttention(dim, heads int64, size [2]int64) (*RelativePositionAttention, error) {
	if heads <= 0 || dim%heads != 0 {
		return nil, fmt.Errorf("RelativePositionAttention: embedding_dim %d is not divisible by num_heads %d", dim, heads)
	}
	if size[0] != size[1] {
		// Refiners contracts the horizontal table against the second
		// spatial dim: only square maps are meaningful (SAM's are).
		return nil, fmt.Errorf("RelativePositionAttention: spatial_size must be square, got %v", size)
	}
	return &RelativePositionAttention{Dim: dim, Heads: heads, SpatialSize: size}, nil
}

func (l *RelativePositionAttention) headDim() int64 { return l.Dim / l.Heads }

func (l *RelativePositionAttention) Params() []core.Param {
	return []core.Param{
		{Name: "horizontal_embedding", Shape: []int64{2*l.SpatialSize[0] - 1, l.headDim()}, DType: l.DType, Value: &l.Horizontal},
		{Name: "vertical_embedding", Shape: []int64{2*l.SpatialSize[1] - 1, l.headDim()}, DType: l.DType, Value: &l.Vertical},
	}
}

func (l *RelativePositionAttention) Describe() string {
	return core.DescribeWeighted(fmt.Sprintf("RelativePositionAttention(embedding_dim=%d, num_heads=%d, spatial_size=(%d, %d))", l.Dim, l.Heads, l.SpatialSize[0], l.SpatialSize[1]), l.Params()[0])
}

func (l *RelativePositionAttention) Forward(f *core.Frame, in ...*tensor.Tensor) (core.Tensors, error) {
	for _, p := range l.Params() {
		if !(*p.Value).Valid() {
			return nil, fmt.Errorf("RelativePositionAttention: parameter %q is not loaded", p.Name)
		}
	}
	return core.Unary(f, "RelativePositionAttention", in, func(x *tensor.Tensor) *tensor.Tensor {
		shape := x.Shape()
		if len(shape) != 4 || shape[3] != 3*l.Dim {
			f.Failf("RelativePositionAttention: input shape %v, want [B, H, W, %d]", shape, 3*l.Dim)
			return nil
		}
		b, h, w := shape[0], shape[1], shape[2]
		if h != l.SpatialSize[0] || w != l.SpatialSize[1] {
			f.Failf("RelativePositionAttention: input map %dx%d, the tables are for %dx%d", h, w, l.SpatialSize[0], l.SpatialSize[1])
			return nil
		}
		hd, bh, n := l.headDim(), b*l.Heads, h*w
		qkv := f.Reshape(f.Permute(f.Reshape(x, b, n, 3, l.Heads, hd), 2, 0, 3, 1, 4), 3, bh, n, hd)
		q, k, v := f.Select(qkv, 0, 0), f.Select(qkv, 0, 1), f.Select(qkv, 0, 2)
		vertical, horizontal := l.relative(f, q)
		scores := f.Matmul(f.Scale(q, math.Pow(float64(hd), -0.5)), f.Transpose(k, -2, -1))
		// Vertical then horizontal, in Refiners' order.
		scores = f.Add(f.Add(f.Reshape(scores, -1, h, w, h, w), vertical), horizontal)
		attn := f.Matmul(f.Softmax(f.Reshape(scores, bh, n, n), -1), v)
		return f.Reshape(f.Permute(f.Reshape(attn, b, l.Heads, h, w, hd), 0, 2, 3, 1, 4), b, h, w, l.Dim)
	})
}

// relative returns the vertical [B', s0, s1, s0, 1] and horizontal
// [B', s0, s1, 1, s1] score terms for queries q [B', s0·s1, d]:
// vertical[b,i,j,k] = Σ_c q[b,i,j,c]·V[i−k+s1−1, c] and
// horizontal[b,i,j,k] = Σ_c q[b,i,j,c]·H[j−k+s0−1, c] (Refiners' two
// einsums, written as batched matmuls).
func (l *RelativePositionAttention) relative(f *core.Frame, q *tensor.Tensor) (*tensor.Tensor, *tensor.Tensor) {
	s0, s1 := l.SpatialSize[0], l.SpatialSize[1]
	hd := l.headDim()
	bh := q.Shape()[0]
	hTable := f.Embedding(l.Horizontal, f.FromInt64(relativeCoords(s0), s0, s0)) // [s0, s0, d]
	vTable := f.Embedding(l.Vertical, f.FromInt64(relativeCoords(s1), s1, s1))   // [s1, s1, d]
	if dev := q.Device(); dev != tensor.CPU {
		hTable, vTable = f.To(hTable, dev), f.To(vTable, dev)
	}
	grid := f.Reshape(q, bh, s0, s1, hd)
	// horizontal: contract along c for each column j (dim 2).
	byCol := f.Reshape(f.Permute(grid, 2, 0, 1, 3), s1, bh*s0, hd)
	horizontal := f.Matmul(byCol, f.Transpose(hTable, 1, 2)) // [s1, B'·s0, k]
	horizontal = f.Permute(f.Reshape(horizontal, s1, bh, s0, s0), 1, 2, 0, 3)
	// vertical: for each row i (dim 1).
	byRow := f.Reshape(f.Permute(grid, 1, 0, 2, 3), s0, bh*s1, hd)
	vertical := f.Matmul(byRow, f.Transpose(vTable, 1, 2)) // [s0, B'·s1, k]
	vertical = f.Permute(f.Reshape(vertical, s0, bh, s1, s1), 1, 0, 2, 3)
	return f.Unsqueeze(vertical, -1), f.Unsqueeze(horizontal, -2)
}

// relativeCoords is [size, size] with (i, j) ↦ i − j + size − 1.
func relativeCoords(size int64) []int64 {
	out := make([]int64, 0, size*size)
	for i := int64(0); i < size; i++ {
		for j := int64(0); j < size; j++ {
			out = append(out, i-j+size-1)
		}
	}
	return out
}

// NewPositionalEncoder is the image encoder's PositionalEncoder: a
// residual adding a learned [height, width, embedding_dim] Parameter to
// the patch embeddings. It is registered as SAMPositionalEncoder because
// CLIP's PositionalEncoder (models/clip) holds Refiners' name in the
// registry; the tree and the keys read PositionalEncoder.Parameter.weight
// as in Refiners.
func NewPositionalEncoder(dim int64, size [2]int64) *core.Chain {
	c := core.NewNamed("PositionalEncoder", core.Residual, core.NewParameter(size[0], size[1], dim))
	c.Args = fmt.Sprintf("embedding_dim=%d, image_embedding_size=(%d, %d)", dim, size[0], size[1])
	return c
}

func init() {
	core.RegisterLeaf("SAMPositionalEncoder", "SAM's PositionalEncoder: adds a learned [height, width, embedding_dim] parameter (printed and keyed PositionalEncoder)", []core.ArgSpec{
		core.AtLeast(1, core.RequiredArg("embedding_dim", core.IntArg, "")),
		core.AtLeast(1, core.RequiredArg("image_embedding_size", core.IntsArg, "(height, width) of the patch grid")),
	}, func(a *core.Args) (core.Module, error) {
		size := a.Ints("image_embedding_size")
		if len(size) != 2 {
			return nil, fmt.Errorf("SAMPositionalEncoder: image_embedding_size must have 2 values, got %v", size)
		}
		return NewPositionalEncoder(a.Int("embedding_dim"), [2]int64{size[0], size[1]}), nil
	})
}
