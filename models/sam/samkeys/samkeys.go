// Package samkeys maps the official Segment Anything checkpoints
// (segment_anything's sam_vit_{h,l,b}_*.pth state dicts) onto Refiners
// 0.4.0's SegmentAnything keys, the keys the SAM specs load
// (image_encoder.*, point_encoder.*, mask_encoder.*, mask_decoder.*), as
// Refiners' convert_segment_anything.py pairs them: most tensors are
// renamed; pos_embed loses its batch dimension; the positional-encoding
// Gaussian matrix is transposed; the four point embeddings and the
// not-a-point embedding are concatenated into the PointTypeEmbedding, the
// IoU token and the mask tokens into the IOUMaskEncoder. Sizes (layers,
// hypernetworks) are read from the keys, so ViT-H, ViT-L, ViT-B and small
// test models map alike.
//
// The package is plain Go (no tensors): the predictor applies the rules to
// tensor bytes, the SAM plugin returns them as a plan.
package samkeys

import (
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strconv"
)

// Op is how a rule makes its target from its sources.
type Op string

const (
	// Copy: one source, same elements and shape.
	Copy Op = "copy"
	// Reshape: one source, same elements in row-major order, the target's
	// Shape.
	Reshape Op = "reshape"
	// Transpose: one 2-D source, transposed.
	Transpose Op = "transpose"
	// Concat: the sources concatenated along dimension 0, in order.
	Concat Op = "concat"
)

// Rule makes one Refiners tensor from official ones.
type Rule struct {
	Target  string   `json:"target"`
	Sources []string `json:"sources"`
	Op      Op       `json:"op"`
	Shape   []int64  `json:"shape"` // the target's shape
}

// The official checkpoint's parts.
const (
	officialImage   = "image_encoder."
	officialPrompt  = "prompt_encoder."
	officialDecoder = "mask_decoder."
)

// IsOfficial reports whether keys look like an official checkpoint (its
// prompt encoder is one part, where Refiners has two).
func IsOfficial(shapes map[string][]int64) bool {
	_, a := shapes["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]
	_, b := shapes["image_encoder.patch_embed.proj.weight"]
	return a && b
}

var (
	blockRE = regexp.MustCompile(`^image_encoder\.blocks\.(\d+)\.`)
	layerRE = regexp.MustCompile(`^mask_decoder\.transformer\.layers\.(\d+)\.`)
	hyperRE = regexp.MustCompile(`^mask_decoder\.output_hypernetworks_mlps\.(\d+)\.layers\.(\d+)\.`)
	iouRE   = regexp.MustCompile(`^mask_decoder\.iou_prediction_head\.layers\.(\d+)\.`)
)

// count returns 1 + the largest index the pattern's first group takes (0
// when none), and checks that every index below it occurs.
func count(shapes map[string][]int64, re *regexp.Regexp, group int) (int, error) {
	seen := map[int]bool{}
	for k := range shapes {
		if m := re.FindStringSubmatch(k); m != nil {
			i, err := strconv.Atoi(m[group])
			if err != nil {
				return 0, fmt.Errorf("key %s: index %q", k, m[group])
			}
			seen[i] = true
		}
	}
	for i := range len(seen) {
		if !seen[i] {
			return 0, fmt.Errorf("%s: index %d is missing (have %d)", re, i, len(seen))
		}
	}
	return len(seen), nil
}

// Official returns the rules that make Refiners' state dict from an
// official checkpoint with these keys and shapes. Every official key must
// be used and every source must exist: otherwise the error lists what is
// missing or left over.
func Official(shapes map[string][]int64) ([]Rule, error) {
	if !IsOfficial(shapes) {
		return nil, fmt.Errorf("not an official Segment Anything checkpoint (no image_encoder.patch_embed.proj.weight and prompt_encoder.pe_layer.positional_encoding_gaussian_matrix)")
	}
	blocks, err := count(shapes, blockRE, 1)
	if err != nil {
		return nil, err
	}
	layers, err := count(shapes, layerRE, 1)
	if err != nil {
		return nil, err
	}
	hypers, err := count(shapes, hyperRE, 1)
	if err != nil {
		return nil, err
	}
	hyperDepth, err := count(shapes, hyperRE, 2)
	if err != nil {
		return nil, err
	}
	iouDepth, err := count(shapes, iouRE, 1)
	if err != nil {
		return nil, err
	}
	if blocks == 0 || layers == 0 || hypers == 0 {
		return nil, fmt.Errorf("official checkpoint without image-encoder blocks, decoder layers or hypernetworks (%d, %d, %d)", blocks, layers, hypers)
	}
	var rules []Rule
	var missing []string
	used := map[string]bool{}
	add := func(op Op, target string, sources ...string) {
		for _, s := range sources {
			if _, ok := shapes[s]; !ok {
				missing = append(missing, s)
				return
			}
			used[s] = true
		}
		rules = append(rules, Rule{Target: target, Sources: sources, Op: op})
	}
	wb := func(target, source string) { // weight and bias
		add(Copy, target+".weight", source+".weight")
		add(Copy, target+".bias", source+".bias")
	}

	// Image encoder.
	wb("image_encoder.PatchEncoder.Conv2d", "image_encoder.patch_embed.proj")
	add(Reshape, "image_encoder.PositionalEncoder.Parameter.weight", "image_encoder.pos_embed")
	for i := range blocks {
		src := fmt.Sprintf("image_encoder.blocks.%d.", i)
		dst := fmt.Sprintf("image_encoder.Transformer.TransformerLayer_%d.", i+1)
		wb(dst+"Residual_1.LayerNorm", src+"norm1")
		wb(dst+"Residual_1.FusedSelfAttention.Linear_1", src+"attn.qkv")
		add(Copy, dst+"Residual_1.FusedSelfAttention.RelativePositionAttention.horizontal_embedding", src+"attn.rel_pos_w")
		add(Copy, dst+"Residual_1.FusedSelfAttention.RelativePositionAttention.vertical_embedding", src+"attn.rel_pos_h")
		wb(dst+"Residual_1.FusedSelfAttention.Linear_2", src+"attn.proj")
		wb(dst+"Residual_2.LayerNorm", src+"norm2")
		wb(dst+"Residual_2.FeedForward.Linear_1", src+"mlp.lin1")
		wb(dst+"Residual_2.FeedForward.Linear_2", src+"mlp.lin2")
	}
	add(Copy, "image_encoder.Neck.Conv2d_1.weight", "image_encoder.neck.0.weight")
	wb("image_encoder.Neck.LayerNorm2d_1", "image_encoder.neck.1")
	add(Copy, "image_encoder.Neck.Conv2d_2.weight", "image_encoder.neck.2.weight")
	wb("image_encoder.Neck.LayerNorm2d_2", "image_encoder.neck.3")

	// Prompt encoder: points, then the mask.
	add(Transpose, "point_encoder.CoordinateEncoder.Linear.weight", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix")
	var pointTypes []string
	for i := range 4 {
		pointTypes = append(pointTypes, fmt.Sprintf("prompt_encoder.point_embeddings.%d.weight", i))
	}
	add(Concat, "point_encoder.Residual.PointTypeEmbedding.weight", append(pointTypes, "prompt_encoder.not_a_point_embed.weight")...)
	wb("mask_encoder.Conv2d_1", "prompt_encoder.mask_downscaling.0")
	wb("mask_encoder.LayerNorm2d_1", "prompt_encoder.mask_downscaling.1")
	wb("mask_encoder.Conv2d_2", "prompt_encoder.mask_downscaling.3")
	wb("mask_encoder.LayerNorm2d_2", "prompt_encoder.mask_downscaling.4")
	wb("mask_encoder.Conv2d_3", "prompt_encoder.mask_downscaling.6")
	add(Copy, "mask_encoder.no_mask_embedding", "prompt_encoder.no_mask_embed.weight")

	// Mask decoder.
	attention := func(dst, src string) {
		for j, p := range []string{"q_proj", "k_proj", "v_proj"} {
			wb(fmt.Sprintf("%sDistribute.Linear_%d", dst, j+1), src+p)
		}
		wb(dst+"Linear", src+"out_proj")
	}
	for i := range layers {
		src := fmt.Sprintf("mask_decoder.transformer.layers.%d.", i)
		dst := fmt.Sprintf("mask_decoder.Transformer.TwoWayTransformerLayer_%d.", i+1)
		if i == 0 {
			attention(dst+"SelfAttention.", src+"self_attn.")
		} else {
			attention(dst+"SparseSelfAttention.Attention.", src+"self_attn.")
		}
		wb(dst+"LayerNorm_1", src+"norm1")
		attention(dst+"SparseCrossDenseAttention.Attention.", src+"cross_attn_token_to_image.")
		wb(dst+"LayerNorm_2", src+"norm2")
		wb(dst+"FeedForward.Linear_1", src+"mlp.lin1")
		wb(dst+"FeedForward.Linear_2", src+"mlp.lin2")
		wb(dst+"LayerNorm_3", src+"norm3")
		attention(dst+"Passthrough.Sum.DenseCrossSparseAttention.Attention.", src+"cross_attn_image_to_token.")
		wb(dst+"Passthrough.LayerNorm", src+"norm4")
	}
	attention("mask_decoder.Transformer.SparseCrossDenseAttention.Attention.", "mask_decoder.transformer.final_attn_token_to_image.")
	wb("mask_decoder.Transformer.LayerNorm", "mask_decoder.transformer.norm_final_attn")
	add(Concat, "mask_decoder.IOUMaskEncoder.weight", "mask_decoder.iou_token.weight", "mask_decoder.mask_tokens.weight")
	up := "mask_decoder.Parallel.MaskPrediction.Matmul."
	wb(up+"DenseEmbeddingUpscaling.ConvTranspose2d_1", "mask_decoder.output_upscaling.0")
	wb(up+"DenseEmbeddingUpscaling.LayerNorm2d", "mask_decoder.output_upscaling.1")
	wb(up+"DenseEmbeddingUpscaling.ConvTranspose2d_2", "mask_decoder.output_upscaling.3")
	for h := range hypers {
		for l := range hyperDepth {
			wb(fmt.Sprintf("%sHypernetworks.Chain_%d.MultiLinear.Linear_%d", up, h+1, l+1),
				fmt.Sprintf("mask_decoder.output_hypernetworks_mlps.%d.layers.%d", h, l))
		}
	}
	for l := range iouDepth {
		wb(fmt.Sprintf("mask_decoder.Parallel.IOUPrediction.MultiLinear.Linear_%d", l+1), fmt.Sprintf("mask_decoder.iou_prediction_head.layers.%d", l))
	}

	if len(missing) > 0 {
		return nil, fmt.Errorf("official checkpoint: %d keys missing (first: %s)", len(missing), missing[0])
	}
	var extra []string
	for k := range shapes {
		if !used[k] {
			extra = append(extra, k)
		}
	}
	if len(extra) > 0 {
		sort.Strings(extra)
		return nil, fmt.Errorf("official checkpoint: %d keys not part of SAM (first: %s)", len(extra), extra[0])
	}
	for i := range rules {
		if err := rules[i].shape(shapes); err != nil {
			return nil, err
		}
	}
	return rules, nil
}

// shape fills r.Shape from the sources' shapes and checks they fit.
func (r *Rule) shape(shapes map[string][]int64) error {
	src := shapes[r.Sources[0]]
	switch r.Op {
	case Copy:
		r.Shape = slices.Clone(src)
	case Reshape: // pos_embed [1, g, g, C] -> [g, g, C]
		if len(src) != 4 || src[0] != 1 {
			return fmt.Errorf("%s: shape %v, want [1, grid, grid, channels]", r.Sources[0], src)
		}
		r.Shape = slices.Clone(src[1:])
	case Transpose:
		if len(src) != 2 {
			return fmt.Errorf("%s: shape %v, want 2 dimensions", r.Sources[0], src)
		}
		r.Shape = []int64{src[1], src[0]}
	case Concat:
		rows := int64(0)
		for _, s := range r.Sources {
			sh := shapes[s]
			if len(sh) != 2 || sh[1] != src[1] {
				return fmt.Errorf("%s: shape %v, want [rows, %d] as %s", s, sh, src[1], r.Sources[0])
			}
			rows += sh[0]
		}
		r.Shape = []int64{rows, src[1]}
	default:
		return fmt.Errorf("%s: unknown op %q", r.Target, r.Op)
	}
	return nil
}

// Parts are the prefixes of Refiners' SegmentAnything state dict, one per
// model, in SegmentAnything's order.
var Parts = []string{"image_encoder.", "point_encoder.", "mask_encoder.", "mask_decoder."}

// Plan says how to make Refiners' state dict from a file with these keys:
// its format ("refiners": Refiners' SegmentAnything layout, each key
// copied; "official": segment_anything's, see Official), the rules, and
// the file's keys no rule uses (keys outside the four parts of a Refiners
// file; an official file must have none).
func Plan(shapes map[string][]int64) (format string, rules []Rule, unused []string, err error) {
	if IsOfficial(shapes) {
		rules, err := Official(shapes)
		return "official", rules, nil, err
	}
	keys := make([]string, 0, len(shapes))
	for k := range shapes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		part := false
		for _, p := range Parts {
			part = part || len(k) > len(p) && k[:len(p)] == p
		}
		if !part {
			unused = append(unused, k)
			continue
		}
		rules = append(rules, Rule{Target: k, Sources: []string{k}, Op: Copy, Shape: slices.Clone(shapes[k])})
	}
	if len(rules) == 0 {
		return "", nil, nil, fmt.Errorf("not Segment Anything weights: no key under %v (Refiners' layout) and not an official checkpoint", Parts)
	}
	return "refiners", rules, unused, nil
}

// Targets is the Refiners state dict's shapes the rules make.
func Targets(rules []Rule) map[string][]int64 {
	out := make(map[string][]int64, len(rules))
	for _, r := range rules {
		out[r.Target] = r.Shape
	}
	return out
}
