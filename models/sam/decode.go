package sam

import (
	"fmt"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
)

// Parts are the prompt side of SAM, each loaded with its weights:
// PointEncoder from specs/sam_point_encoder.yaml, MaskEncoder a
// MaskEncoder chain (specs/sam_mask_encoder.yaml, which unwraps it, or
// NewMaskEncoder; a chain holding one also works) and MaskDecoder from
// specs/sam_mask_decoder.yaml. In Refiners' converted weights they are the
// keys under point_encoder., mask_encoder. and mask_decoder.
type Parts struct {
	PointEncoder, MaskEncoder, MaskDecoder *core.Chain
}

// Decode is the middle of Refiners' SegmentAnything.predict, from an
// image embedding [1, C, h, w] to masks: points [1, N, 2] already
// normalised to 0..1 and their types [1, N] (integers, see Background...),
// lowResMask [1, 1, 4h, 4w] or nil (then the no-mask embedding is used).
// It returns the low-res mask logits [1, masks, 4h, 4w] and the IoU
// predictions [1, masks]. Image pre-processing and mask post-processing
// are the caller's.
func Decode(s *tensor.Scope, p Parts, imageEmbedding, points, types, lowResMask *tensor.Tensor) (masks, iou *tensor.Tensor, err error) {
	shape := imageEmbedding.Shape()
	if len(shape) != 4 {
		return nil, nil, fmt.Errorf("sam decode: image embedding shape %v, want [1, C, h, w]", shape)
	}
	h, w := shape[2], shape[3]
	var maskEmbedding *tensor.Tensor
	if lowResMask != nil {
		out, err := core.Forward(s, p.MaskEncoder, lowResMask)
		if err != nil {
			return nil, nil, fmt.Errorf("sam decode: mask encoder: %w", err)
		}
		maskEmbedding = out[0]
	} else {
		enc, err := findMaskEncoder(p.MaskEncoder)
		if err != nil {
			return nil, nil, fmt.Errorf("sam decode: %w", err)
		}
		if maskEmbedding, err = NoMaskEmbedding(s, enc, 1, h, w); err != nil {
			return nil, nil, fmt.Errorf("sam decode: %w", err)
		}
	}
	pointCall := core.Call{Contexts: core.Contexts{pointContext: {typeMaskKey: types}}}
	sparse, err := pointCall.Forward(s, p.PointEncoder, points)
	if err != nil {
		return nil, nil, fmt.Errorf("sam decode: point encoder: %w", err)
	}
	dense, err := DensePositionalEmbedding(s, p.PointEncoder, h, w)
	if err != nil {
		return nil, nil, fmt.Errorf("sam decode: %w", err)
	}
	decoderCall := core.Call{Contexts: core.Contexts{decoderContext: {
		"image_embedding": imageEmbedding, "point_embedding": sparse[0],
		"mask_embedding": maskEmbedding, "dense_positional_embedding": dense,
	}}}
	out, err := decoderCall.Forward(s, p.MaskDecoder)
	if err != nil {
		return nil, nil, fmt.Errorf("sam decode: mask decoder: %w", err)
	}
	if len(out) != 2 {
		return nil, nil, fmt.Errorf("sam decode: the mask decoder gave %d outputs, want masks and IoU predictions", len(out))
	}
	return out[0], out[1], nil
}

// findMaskEncoder returns m if it owns no_mask_embedding, else the first
// chain below it that does.
func findMaskEncoder(m *core.Chain) (*core.Chain, error) {
	owns := func(c *core.Chain) bool {
		for _, p := range c.Own {
			if p.Name == "no_mask_embedding" {
				return true
			}
		}
		return false
	}
	if owns(m) {
		return m, nil
	}
	var found *core.Chain
	m.Walk(func(x core.Module, _ *core.Chain, _ string) bool {
		if c, ok := x.(*core.Chain); ok && found == nil && owns(c) {
			found = c
		}
		return found == nil
	})
	if found == nil {
		return nil, fmt.Errorf("%s holds no MaskEncoder (no no_mask_embedding)", m.TypeName())
	}
	return found, nil
}
