// Package predict is Segment Anything's predictor: Refiners 0.4.0's
// SegmentAnything.predict around the SAM specs (specs/sam*.yaml) and the
// layers of models/sam. It loads Refiners' converted weights
// (segment-anything-h.safetensors: keys image_encoder., point_encoder.,
// mask_encoder., mask_decoder.) or an official checkpoint
// (sam_vit_{h,l,b}_*.pth, read through torchfile), pre-processes an image as
// Refiners does (longest side to the encoder's size with PIL's bilinear
// resize, normalisation, zero padding), computes its embedding once
// (Embedding, reusable, cached by digest in a Cache), and turns point, box
// and low-res mask prompts into three masks with their IoU predictions.
package predict

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	_ "github.com/refiners-go/refiners/models/all" // the layers the specs use
	"github.com/refiners-go/refiners/models/sam"
	"github.com/refiners-go/refiners/spec"
	"github.com/refiners-go/refiners/specs"
)

// ErrInput marks errors caused by the request (a bad prompt, image or
// mask), as opposed to the model or the machine.
var ErrInput = errors.New("invalid input")

type inputError struct{ msg string }

func (e *inputError) Error() string        { return e.msg }
func (e *inputError) Is(target error) bool { return target == ErrInput }

func inputErr(format string, args ...any) error {
	return &inputError{msg: "sam: " + fmt.Sprintf(format, args...)}
}

// Model is a loaded Segment Anything: its four chains, built from the
// embedded specs with the sizes read from the weights.
type Model struct {
	ImageEncoder, PointEncoder, MaskEncoder, MaskDecoder *core.Chain
	// ImageSize is the side of the encoder's square input (1024 in SAM),
	// Grid the side of the image embedding (64) and Channels its channels
	// (256).
	ImageSize, Grid, Channels int64
	// EncoderParams and DecoderParams are the spec parameters the sizes
	// were read as (specs/sam.yaml, specs/sam_mask_decoder.yaml).
	EncoderParams, DecoderParams map[string]string
	// Format says which layout the weights were in: "refiners" or
	// "official".
	Format string
	Device tensor.Device
}

// Config says where the weights are.
type Config struct {
	// Weights is Refiners' converted SegmentAnything state dict
	// (.safetensors, keys image_encoder.*, point_encoder.*, mask_encoder.*,
	// mask_decoder.*) or an official segment_anything checkpoint (.pth,
	// keys image_encoder.*, prompt_encoder.*, mask_decoder.*).
	Weights string
	Device  tensor.Device
	// DecoderHeads is the mask decoder's number of attention heads, which
	// the weights do not tell: 8 (SAM's) when 0.
	DecoderHeads int
}

// The parts of Refiners' SegmentAnything state dict.
const (
	imagePrefix = "image_encoder."
	pointPrefix = "point_encoder."
	maskPrefix  = "mask_encoder."
	decodPrefix = "mask_decoder."
)

// Load builds the four models and loads their weights strictly: every key
// of every part present with its shape, none extra under the parts'
// prefixes. A file that is neither layout is refused with what is missing.
func Load(s *tensor.Scope, c Config) (*Model, error) {
	if c.Weights == "" {
		return nil, fmt.Errorf("sam: no weights given")
	}
	f, format, err := openWeights(c.Weights)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	shapes := map[string][]int64{}
	for _, k := range f.Keys() {
		info, _ := f.Info(k)
		shapes[k] = info.Shape
	}
	enc, dec, pointDim, maskDim, maskInner, err := inferSizes(shapes, c.DecoderHeads)
	if err != nil {
		return nil, fmt.Errorf("sam: %s: %w", c.Weights, err)
	}
	m := &Model{EncoderParams: enc, DecoderParams: dec, Format: format, Device: c.Device}
	m.ImageSize, _ = strconv.ParseInt(enc["image_size"], 10, 64)
	m.Grid, _ = strconv.ParseInt(dec["dense_side"], 10, 64)
	m.Channels, _ = strconv.ParseInt(enc["neck_dim"], 10, 64)
	if m.ImageEncoder, err = build("sam.yaml", enc); err != nil {
		return nil, fmt.Errorf("sam: image encoder: %w", err)
	}
	if m.PointEncoder, err = build("sam_point_encoder.yaml", map[string]string{"embedding_dim": fmt.Sprint(pointDim)}); err != nil {
		return nil, fmt.Errorf("sam: point encoder: %w", err)
	}
	// The mask encoder is built as the MaskEncoder chain itself (not
	// specs/sam_mask_encoder.yaml's root, which wraps it), so that its keys
	// are the file's mask_encoder.<key>.
	if m.MaskEncoder, err = sam.NewMaskEncoder(maskDim, maskInner); err != nil {
		return nil, fmt.Errorf("sam: mask encoder: %w", err)
	}
	if m.MaskDecoder, err = build("sam_mask_decoder.yaml", dec); err != nil {
		return nil, fmt.Errorf("sam: mask decoder: %w", err)
	}
	if m.Channels != maskDim || m.Channels != pointDim || dec["embedding_dim"] != fmt.Sprint(m.Channels) {
		return nil, fmt.Errorf("sam: %s: widths differ: image embedding %d, point encoder %d, mask encoder %d, mask decoder %s",
			c.Weights, m.Channels, pointDim, maskDim, dec["embedding_dim"])
	}
	var loaded []*core.Chain
	for _, part := range []struct {
		name, prefix string
		chain        *core.Chain
	}{
		{"image encoder", imagePrefix, m.ImageEncoder},
		{"point encoder", pointPrefix, m.PointEncoder},
		{"mask encoder", maskPrefix, m.MaskEncoder},
		{"mask decoder", decodPrefix, m.MaskDecoder},
	} {
		if _, err := core.LoadState(s, part.chain, f, core.LoadOptions{Strict: true, Prefix: part.prefix, Device: c.Device}); err != nil {
			for _, l := range loaded {
				core.ReleaseParams(l)
			}
			return nil, fmt.Errorf("sam: %s: %w", part.name, err)
		}
		loaded = append(loaded, part.chain)
	}
	var extra []string
	for _, k := range f.Keys() {
		if !strings.HasPrefix(k, imagePrefix) && !strings.HasPrefix(k, pointPrefix) && !strings.HasPrefix(k, maskPrefix) && !strings.HasPrefix(k, decodPrefix) {
			extra = append(extra, k)
		}
	}
	if len(extra) > 0 {
		m.Release()
		return nil, fmt.Errorf("sam: %s: %d keys belong to no part of SAM (first: %s)", c.Weights, len(extra), extra[0])
	}
	return m, nil
}

// openWeights opens Refiners' safetensors, or an official checkpoint
// renamed to Refiners' keys in memory.
func openWeights(path string) (*weights.File, string, error) {
	if isTorchFile(path) {
		f, err := openOfficial(path)
		return f, "official", err
	}
	f, err := weights.Open(path)
	if err != nil {
		return nil, "", fmt.Errorf("sam: %w", err)
	}
	return f, "refiners", nil
}

// Release drops every weight; the model is unusable afterwards.
func (m *Model) Release() {
	for _, c := range []*core.Chain{m.ImageEncoder, m.PointEncoder, m.MaskEncoder, m.MaskDecoder} {
		if c != nil {
			core.ReleaseParams(c)
		}
	}
}

// build builds one embedded spec.
func build(name string, params map[string]string) (*core.Chain, error) {
	sp, err := spec.LoadFS(specs.FS, name)
	if err != nil {
		return nil, err
	}
	return sp.Build(params)
}

var (
	encoderLayerRE = regexp.MustCompile(`^image_encoder\.Transformer\.TransformerLayer_(\d+)\.Residual_1\.FusedSelfAttention\.RelativePositionAttention\.horizontal_embedding$`)
	decoderLayerRE = regexp.MustCompile(`^mask_decoder\.Transformer\.TwoWayTransformerLayer_(\d+)\.FeedForward\.Linear_1\.weight$`)
)

// inferSizes reads the spec parameters from the tensors' shapes (Refiners'
// keys): widths from the first layers, the grid from the positional
// embedding, heads from the relative-position tables ([2·side − 1,
// head_dim]), global layers as those whose table spans the whole grid.
func inferSizes(shapes map[string][]int64, decoderHeads int) (enc, dec map[string]string, pointDim, maskDim, maskInner int64, err error) {
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
		return nil, nil, 0, 0, 0, e
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
		return nil, nil, 0, 0, 0, fmt.Errorf("no transformer layers found in the image encoder or the mask decoder")
	}
	var globals []string
	window := int64(0)
	headDim := int64(0)
	for i := int64(1); i <= n; i++ {
		s, ok := layers[i]
		if !ok {
			return nil, nil, 0, 0, 0, fmt.Errorf("image encoder layer %d of %d is missing", i, n)
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
			return nil, nil, 0, 0, 0, fmt.Errorf("image encoder layer %d: window side %d, earlier layers %d", i, side, window)
		}
	}
	if len(globals) > 4 {
		return nil, nil, 0, 0, 0, fmt.Errorf("%d global-attention layers, the spec takes at most 4", len(globals))
	}
	if headDim <= 0 || width%headDim != 0 {
		return nil, nil, 0, 0, 0, fmt.Errorf("head width %d does not divide the image encoder's width %d", headDim, width)
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
			return nil, nil, 0, 0, 0, fmt.Errorf("mask decoder layers have different feed-forward widths")
		}
	}
	sort.Slice(keys, func(a, b int) bool { return keys[a] < keys[b] })
	if keys[len(keys)-1] != int64(len(keys)) {
		return nil, nil, 0, 0, 0, fmt.Errorf("mask decoder layers are not numbered 1..%d", len(keys))
	}
	if decoderHeads == 0 {
		decoderHeads = 8
	}
	dec = map[string]string{
		"embedding_dim": fmt.Sprint(decWidth), "feed_forward_dim": fmt.Sprint(ff), "num_layers": fmt.Sprint(len(keys)),
		"num_output_mask": fmt.Sprint(tokens - 2), "num_heads": fmt.Sprint(decoderHeads), "dense_side": fmt.Sprint(grid),
	}
	return enc, dec, pointDim, maskDim, maskInner, nil
}
