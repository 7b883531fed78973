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
	"strconv"
	"strings"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	_ "github.com/refiners-go/refiners/models/all" // the layers the specs use
	"github.com/refiners-go/refiners/models/sam/samkeys"
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
	sz, err := samkeys.ReadSizes(shapes, c.DecoderHeads)
	if err != nil {
		return nil, fmt.Errorf("sam: %s: %w", c.Weights, err)
	}
	enc, dec, pointDim, maskDim, maskInner := sz.Encoder, sz.Decoder, sz.PointDim, sz.MaskDim, sz.MaskInner
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
	// specs/sam_mask_encoder.yaml unwraps its MaskEncoder: its keys are
	// the file's mask_encoder.<key>.
	if m.MaskEncoder, err = build("sam_mask_encoder.yaml", map[string]string{
		"embedding_dim": fmt.Sprint(maskDim), "intermediate_channels": fmt.Sprint(maskInner)}); err != nil {
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
