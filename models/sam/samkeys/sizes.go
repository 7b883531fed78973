package samkeys

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
)

var (
	encoderLayerRE = regexp.MustCompile(`^image_encoder\.Transformer\.TransformerLayer_(\d+)\.Residual_1\.FusedSelfAttention\.RelativePositionAttention\.horizontal_embedding$`)
	decoderLayerRE = regexp.MustCompile(`^mask_decoder\.Transformer\.TwoWayTransformerLayer_(\d+)\.FeedForward\.Linear_1\.weight$`)
)

// Sizes are the spec parameters of the four SAM models, read from a
// state dict in Refiners' layout.
type Sizes struct {
	// Encoder and Decoder are the parameters of specs/sam.yaml and
	// specs/sam_mask_decoder.yaml.
	Encoder, Decoder map[string]string
	// PointDim is the point encoder's embedding_dim; MaskDim and MaskInner
	// the MaskEncoder's embedding_dim and intermediate_channels.
	PointDim, MaskDim, MaskInner int64
}

// ReadSizes reads the spec parameters from the tensors' shapes (Refiners'
// keys): widths from the first layers, the grid from the positional
// embedding, heads from the relative-position tables ([2·side − 1,
// head_dim]), global layers as those whose table spans the whole grid.
// The mask decoder's heads are in no shape: decoderHeads, 8 (SAM's) when 0.
func ReadSizes(shapes map[string][]int64, decoderHeads int) (*Sizes, error) {
	sz, err := readSizes(shapes, decoderHeads)
	if err != nil {
		return nil, err
	}
	return sz, nil
}

func readSizes(shapes map[string][]int64, decoderHeads int) (*Sizes, error) {
	var enc, dec map[string]string
	var pointDim, maskDim, maskInner int64
	dim := func(key string, i int) (int64, error) {
		s, ok := shapes[key]
		if !ok {
			return 0, fmt.Errorf("no %s: not Segment Anything weights in Refiners' layout", key)
		}
		if i >= len(s) {
			return 0, fmt.Errorf("%s has shape %v", key, s)
		}
		return s[i], nil
	}
	var e error
	get := func(key string, i int) int64 {
		v, err := dim(key, i)
		if err != nil && e == nil {
			e = err
		}
		return v
	}
	width := get("image_encoder.PatchEncoder.Conv2d.weight", 0)
	patch := get("image_encoder.PatchEncoder.Conv2d.weight", 2)
	grid := get("image_encoder.PositionalEncoder.Parameter.weight", 0)
	neck := get("image_encoder.Neck.Conv2d_1.weight", 0)
	pointDim = get("point_encoder.Residual.PointTypeEmbedding.weight", 1)
	maskDim = get("mask_encoder.Conv2d_3.weight", 0)
	maskInner = get("mask_encoder.Conv2d_2.weight", 0)
	decWidth := get("mask_decoder.IOUMaskEncoder.weight", 1)
	tokens := get("mask_decoder.IOUMaskEncoder.weight", 0)
	if e != nil {
		return nil, e
	}
	layers := map[int64][]int64{}
	decLayers := map[int64]int64{}
	for k, s := range shapes {
		if m := encoderLayerRE.FindStringSubmatch(k); m != nil && len(s) == 2 {
			i, _ := strconv.ParseInt(m[1], 10, 64)
			layers[i] = s
		}
		if m := decoderLayerRE.FindStringSubmatch(k); m != nil && len(s) == 2 {
			i, _ := strconv.ParseInt(m[1], 10, 64)
			decLayers[i] = s[0]
		}
	}
	n := int64(len(layers))
	if n == 0 || len(decLayers) == 0 {
		return nil, fmt.Errorf("no transformer layers found in the image encoder or the mask decoder")
	}
	var globals []string
	window := int64(0)
	headDim := int64(0)
	for i := int64(1); i <= n; i++ {
		s, ok := layers[i]
		if !ok {
			return nil, fmt.Errorf("image encoder layer %d of %d is missing", i, n)
		}
		if headDim == 0 {
			headDim = s[1]
		}
		side := (s[0] + 1) / 2
		switch {
		case side == grid:
			globals = append(globals, strconv.FormatInt(i-1, 10))
		case window == 0 || window == side:
			window = side
		default:
			return nil, fmt.Errorf("image encoder layer %d: window side %d, earlier layers %d", i, side, window)
		}
	}
	if len(globals) > 4 {
		return nil, fmt.Errorf("%d global-attention layers, the spec takes at most 4", len(globals))
	}
	if headDim <= 0 || width%headDim != 0 {
		return nil, fmt.Errorf("head width %d does not divide the image encoder's width %d", headDim, width)
	}
	if window == 0 {
		window = 14
	}
	enc = map[string]string{
		"embedding_dim": fmt.Sprint(width), "num_layers": fmt.Sprint(n), "num_heads": fmt.Sprint(width / headDim),
		"image_size": fmt.Sprint(grid * patch), "patch_size": fmt.Sprint(patch), "window_size": fmt.Sprint(window),
		"neck_dim": fmt.Sprint(neck),
	}
	for i := range 4 {
		g := "-1"
		if i < len(globals) {
			g = globals[i]
		}
		enc[fmt.Sprintf("global_%d", i+1)] = g
	}
	ff := int64(-1)
	keys := make([]int64, 0, len(decLayers))
	for i, v := range decLayers {
		keys = append(keys, i)
		if ff == -1 {
			ff = v
		} else if ff != v {
			return nil, fmt.Errorf("mask decoder layers have different feed-forward widths")
		}
	}
	sort.Slice(keys, func(a, b int) bool { return keys[a] < keys[b] })
	if keys[len(keys)-1] != int64(len(keys)) {
		return nil, fmt.Errorf("mask decoder layers are not numbered 1..%d", len(keys))
	}
	if decoderHeads == 0 {
		decoderHeads = 8
	}
	dec = map[string]string{
		"embedding_dim": fmt.Sprint(decWidth), "feed_forward_dim": fmt.Sprint(ff), "num_layers": fmt.Sprint(len(keys)),
		"num_output_mask": fmt.Sprint(tokens - 2), "num_heads": fmt.Sprint(decoderHeads), "dense_side": fmt.Sprint(grid),
	}
	return &Sizes{Encoder: enc, Decoder: dec, PointDim: pointDim, MaskDim: maskDim, MaskInner: maskInner}, nil
}
