package sam

import (
	"fmt"
	"slices"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
)

// The mask decoder reads its inputs from the "mask_decoder" context, as in
// Refiners (MaskDecoder.set_image_embedding and friends): image_embedding
// and mask_embedding [B, C, h, w], point_embedding [B, N, C] and
// dense_positional_embedding [B, C, h, w]. EmbeddingsAggregator derives the
// token streams the TwoWayTransformer layers read and update.
const decoderContext = "mask_decoder"

func init() {
	dim := core.AtLeast(1, core.RequiredArg("embedding_dim", core.IntArg, ""))
	core.RegisterLeaf("IOUMaskEncoder", "the IoU token and the mask tokens, a learned [num_mask_tokens + 1, embedding_dim] weight output as [1, num_mask_tokens + 1, embedding_dim]", []core.ArgSpec{
		dim, core.AtLeast(1, core.OptionalArg("num_mask_tokens", core.IntArg, int64(4), "mask tokens (the single-mask one included)")),
	}, func(a *core.Args) (core.Module, error) {
		return &IOUMaskEncoder{Dim: a.Int("embedding_dim"), MaskTokens: a.Int("num_mask_tokens")}, nil
	})
	core.RegisterLeaf("EmbeddingsAggregator", "joins the tokens with the point embedding (sparse) and the image and mask embeddings (dense, as tokens) and stores them in the mask_decoder context", []core.ArgSpec{
		core.AtLeast(1, core.OptionalArg("num_output_mask", core.IntArg, int64(3), "")),
	}, func(a *core.Args) (core.Module, error) {
		return &EmbeddingsAggregator{OutputMasks: a.Int("num_output_mask")}, nil
	})
	core.RegisterLeaf("Hypernetworks", "one MultiLinear per mask token (tokens 1..num_mask_tokens+1 of the sparse stream), concatenated along the tokens", []core.ArgSpec{
		dim, core.AtLeast(1, core.OptionalArg("num_layers", core.IntArg, int64(3), "")),
		core.AtLeast(1, core.OptionalArg("num_mask_tokens", core.IntArg, int64(3), "")),
	}, func(a *core.Args) (core.Module, error) {
		return NewHypernetworks(a.Int("embedding_dim"), a.Int("num_layers"), a.Int("num_mask_tokens"))
	})
}

// IOUMaskEncoder is Refiners' IOUMaskEncoder: it ignores its inputs and
// outputs its weight [MaskTokens + 1, Dim] as [1, MaskTokens + 1, Dim].
type IOUMaskEncoder struct {
	Dim, MaskTokens int64
	core.Precision
	Weight *tensor.Tensor
}

func (l *IOUMaskEncoder) Params() []core.Param {
	return []core.Param{{Name: "weight", Shape: []int64{l.MaskTokens + 1, l.Dim}, DType: l.DType, Value: &l.Weight}}
}

func (l *IOUMaskEncoder) Describe() string {
	return core.DescribeWeighted(core.DescribeArgs("IOUMaskEncoder", "embedding_dim", l.Dim, "num_mask_tokens", l.MaskTokens), l.Params()[0])
}

func (l *IOUMaskEncoder) Forward(f *core.Frame, _ ...*tensor.Tensor) (core.Tensors, error) {
	if !l.Weight.Valid() {
		return nil, fmt.Errorf("IOUMaskEncoder: parameter \"weight\" is not loaded")
	}
	return core.Tensors{f.Unsqueeze(l.Weight, 0)}, f.Err()
}

// EmbeddingsAggregator is Refiners' EmbeddingsAggregator: from the tokens
// [B, T, C] and the mask_decoder context it makes the sparse stream
// cat(tokens, point_embedding) [B, T+N, C], the dense stream (image +
// mask embedding as tokens [B, h·w, C]) and the dense positional embedding
// as tokens, stores all three in the context and returns the sparse one.
type EmbeddingsAggregator struct{ OutputMasks int64 }

func (l *EmbeddingsAggregator) Describe() string { return "EmbeddingsAggregator()" }

func (l *EmbeddingsAggregator) Forward(f *core.Frame, in ...*tensor.Tensor) (core.Tensors, error) {
	tokens, err := core.OneInput("EmbeddingsAggregator", in)
	if err != nil {
		return nil, err
	}
	get := map[string]*tensor.Tensor{}
	for _, key := range []string{"image_embedding", "point_embedding", "mask_embedding", "dense_positional_embedding"} {
		if get[key], err = f.UseContext(decoderContext, key); err != nil {
			return nil, fmt.Errorf("EmbeddingsAggregator: %w", err)
		}
	}
	sparse := f.Cat([]*tensor.Tensor{tokens, get["point_embedding"]}, 1)
	dense := f.Transpose(f.Flatten(f.Add(get["image_embedding"], get["mask_embedding"]), 2, -1), 1, 2)
	if f.Err() != nil {
		return nil, fmt.Errorf("EmbeddingsAggregator: %w", f.Err())
	}
	pos := get["dense_positional_embedding"]
	if !slices.Equal(pos.Shape(), dense.Shape()) {
		pos = f.Transpose(f.Flatten(pos, 2, -1), 1, 2)
	}
	f.SetContext(decoderContext, "dense_embedding", dense)
	f.SetContext(decoderContext, "dense_positional_embedding", pos)
	f.SetContext(decoderContext, "sparse_embedding", sparse)
	return core.Tensors{sparse}, f.Err()
}

// NewHypernetworks is Refiners' Hypernetworks: for each mask token i
// (tokens 1..maskTokens+1 of the sparse stream [B, T, C]) a MultiLinear
// C → C/8, their outputs concatenated along the tokens [B, maskTokens+1, C/8].
func NewHypernetworks(dim, layers, maskTokens int64) (*core.Chain, error) {
	var children []core.Module
	for i := int64(0); i <= maskTokens; i++ {
		ml, err := core.NewMultiLinear(dim, dim/8, dim, layers)
		if err != nil {
			return nil, fmt.Errorf("Hypernetworks: %w", err)
		}
		children = append(children, core.NewChain(core.NewSlicing(1, i+1, i+2, 1), ml))
	}
	c := core.NewNamed("Hypernetworks", core.Concatenate, children...)
	c.Dim = 1
	return c, nil
}
