package predict

import (
	"bytes"
	"fmt"
	"image"
	"image/png"
	"math"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/models/sam"
	"github.com/refiners-go/refiners/models/sd15/pipeline"
)

// Normalisation of the resized image, in 0–255 units (Refiners'
// SegmentAnything.preprocess_image).
var (
	pixelMean = []float32{123.675, 116.28, 103.53}
	pixelStd  = []float32{58.395, 57.12, 57.375}
)

// MaskThreshold binarises mask logits (Refiners' mask_threshold).
const MaskThreshold = 0.0

// Embedding is an image's embedding: computed once by Model.Embed, then
// reused by any number of Predict calls. It holds its values in Go
// memory, so it may be kept (cached) across tensor.Run calls and workers.
type Embedding struct {
	// Features are the image encoder's output [1, Channels, Grid, Grid],
	// row-major.
	Features       []float32
	Channels, Grid int64
	// Width and Height are the original image's size in pixels.
	Width, Height int
}

// Bytes is the memory the embedding's values take.
func (e *Embedding) Bytes() int64 { return int64(len(e.Features)) * 4 }

// TargetSize is the size the image is resized to before padding: its
// longest side becomes size, the other is scaled alike and rounded half
// up (Refiners' compute_target_size).
func TargetSize(width, height int, size int64) (w, h int) {
	scale := float64(size) * 1.0 / float64(max(width, height))
	return int(float64(width)*scale + 0.5), int(float64(height)*scale + 0.5)
}

// Preprocess is Refiners' preprocess_image: the image resized to its
// target size (PIL bilinear), normalised, zero-padded right and bottom to
// [1, 3, ImageSize, ImageSize].
func (m *Model) Preprocess(s *tensor.Scope, img *pipeline.RGB) (*tensor.Tensor, error) {
	if img == nil || img.Width <= 0 || img.Height <= 0 || len(img.Pix) != 3*img.Width*img.Height {
		return nil, inputErr("empty or malformed image")
	}
	w, h := TargetSize(img.Width, img.Height, m.ImageSize)
	if w < 1 || h < 1 {
		return nil, inputErr("image %dx%d is too thin to resize to %d pixels", img.Width, img.Height, m.ImageSize)
	}
	r := resizeBilinear(img, w, h)
	planar := make([]float32, 3*w*h)
	for i := range w * h {
		for c := range 3 {
			planar[c*w*h+i] = float32(r.Pix[3*i+c])
		}
	}
	x := s.FromFloat32(planar, 1, 3, int64(h), int64(w))
	x = s.Div(s.Sub(x, s.FromFloat32(pixelMean, 3, 1, 1)), s.FromFloat32(pixelStd, 3, 1, 1))
	x = s.Pad(x, []int64{0, m.ImageSize - int64(w), 0, m.ImageSize - int64(h)}, "constant", 0)
	if m.Device != tensor.CPU {
		x = s.To(x, m.Device)
	}
	return x, s.Err()
}

// Embed computes an image's embedding (Refiners' compute_image_embedding):
// the expensive part of a prediction, done once per image.
func (m *Model) Embed(s *tensor.Scope, img *pipeline.RGB) (*Embedding, error) {
	c := s.Child()
	defer c.Close()
	x, err := m.Preprocess(c, img)
	if err != nil {
		return nil, err
	}
	out, err := core.Forward(c, m.ImageEncoder, x)
	if err != nil {
		return nil, fmt.Errorf("sam: image encoder: %w", err)
	}
	feats := out[0]
	if shape := feats.Shape(); len(shape) != 4 || shape[1] != m.Channels || shape[2] != m.Grid || shape[3] != m.Grid {
		return nil, fmt.Errorf("sam: image encoder gave %v, want [1, %d, %d, %d]", shape, m.Channels, m.Grid, m.Grid)
	}
	values := c.Float32s(c.To(c.ToDType(feats, tensor.Float32), tensor.CPU))
	if err := c.Err(); err != nil {
		return nil, fmt.Errorf("sam: image embedding: %w", err)
	}
	return &Embedding{Features: values, Channels: m.Channels, Grid: m.Grid, Width: img.Width, Height: img.Height}, nil
}

// Point is a point prompt in the original image's pixels (x to the right,
// y down); Foreground false marks a background point.
type Point struct {
	X, Y       float64
	Foreground bool
}

// Box is a box prompt in the original image's pixels: top-left (X0, Y0),
// bottom-right (X1, Y1).
type Box struct{ X0, Y0, X1, Y1 float64 }

// Prompt is what to segment: points and/or a box, and optionally a
// low-res mask (logits, [LowResSide × LowResSide] row-major, such as a
// previous Prediction's LowRes[i]) to refine.
type Prompt struct {
	Points []Point
	Box    *Box
	Mask   []float32
}

// Prediction is the result of one prompt: NumMasks masks (Refiners' SAM
// always gives its three multimask outputs) as logits at the original
// size (Masks[i], Height×Width row-major; a pixel belongs to the mask
// when its logit is > MaskThreshold), the IoU predictions, and the
// low-res logits (LowRes[i], LowResSide² row-major) to feed back as a
// mask prompt.
type Prediction struct {
	Width, Height int
	Masks         [][]float32
	IoU           []float32
	LowRes        [][]float32
	LowResSide    int
}

// Binary is mask i binarised at MaskThreshold.
func (p *Prediction) Binary(i int) []bool {
	out := make([]bool, len(p.Masks[i]))
	for j, v := range p.Masks[i] {
		out[j] = v > MaskThreshold
	}
	return out
}

// MaskPNG is mask i binarised (Binary) as an 8-bit gray PNG, 255 inside
// and 0 outside, with the number of pixels inside.
func (p *Prediction) MaskPNG(i int) (data []byte, pixels int, err error) {
	img := image.NewGray(image.Rect(0, 0, p.Width, p.Height))
	for j, in := range p.Binary(i) {
		if in {
			img.Pix[j] = 255
			pixels++
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil, 0, fmt.Errorf("mask %d: %w", i, err)
	}
	return buf.Bytes(), pixels, nil
}

// Best is the index of the mask with the highest IoU prediction.
func (p *Prediction) Best() int {
	best := 0
	for i, v := range p.IoU {
		if v > p.IoU[best] {
			best = i
		}
	}
	return best
}

// LowResSide is the side of the low-res masks (256 in SAM).
func (m *Model) LowResSide() int64 { return 4 * m.Grid }

// Predict runs one prompt on an embedding and copies the results to Go
// memory.
func (m *Model) Predict(s *tensor.Scope, e *Embedding, p Prompt) (*Prediction, error) {
	c := s.Child()
	defer c.Close()
	masks, iou, low, err := m.PredictTensors(c, e, p)
	if err != nil {
		return nil, err
	}
	n := masks.Shape()[1]
	toGo := func(t *tensor.Tensor) []float32 { return c.Float32s(c.To(c.ToDType(t, tensor.Float32), tensor.CPU)) }
	all, lowAll, scores := toGo(masks), toGo(low), toGo(iou)
	if err := c.Err(); err != nil {
		return nil, fmt.Errorf("sam: %w", err)
	}
	out := &Prediction{Width: e.Width, Height: e.Height, IoU: scores, LowResSide: int(m.LowResSide())}
	hw, lw := e.Width*e.Height, int(m.LowResSide()*m.LowResSide())
	for i := range int(n) {
		out.Masks = append(out.Masks, all[i*hw:(i+1)*hw])
		out.LowRes = append(out.LowRes, lowAll[i*lw:(i+1)*lw])
	}
	return out, nil
}

// PredictTensors is Refiners' SegmentAnything.predict(binarize=False) on
// an embedding: the high-res mask logits [1, masks, Height, Width], the
// IoU predictions [1, masks] and the low-res logits [1, masks, 4·Grid,
// 4·Grid], in s.
func (m *Model) PredictTensors(s *tensor.Scope, e *Embedding, p Prompt) (masks, iou, lowRes *tensor.Tensor, err error) {
	if e == nil || e.Channels != m.Channels || e.Grid != m.Grid || int64(len(e.Features)) != m.Channels*m.Grid*m.Grid {
		return nil, nil, nil, inputErr("the embedding was not made by this model (want %d channels on a %d grid)", m.Channels, m.Grid)
	}
	coords, types, err := m.points(e.Width, e.Height, p)
	if err != nil {
		return nil, nil, nil, err
	}
	n := int64(len(types))
	pts := s.FromFloat32(coords, 1, n, 2)
	typ := s.FromInt64(types, 1, n)
	emb := s.FromFloat32(e.Features, 1, m.Channels, m.Grid, m.Grid)
	var lowIn *tensor.Tensor
	if p.Mask != nil {
		side := m.LowResSide()
		if int64(len(p.Mask)) != side*side {
			return nil, nil, nil, inputErr("mask prompt has %d values, want %d×%d low-res logits", len(p.Mask), side, side)
		}
		for _, v := range p.Mask {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return nil, nil, nil, inputErr("mask prompt holds a NaN or infinite logit")
			}
		}
		lowIn = s.FromFloat32(p.Mask, 1, 1, side, side)
	}
	if m.Device != tensor.CPU {
		pts, typ, emb = s.To(pts, m.Device), s.To(typ, m.Device), s.To(emb, m.Device)
		if lowIn != nil {
			lowIn = s.To(lowIn, m.Device)
		}
	}
	if err := s.Err(); err != nil {
		return nil, nil, nil, fmt.Errorf("sam: %w", err)
	}
	low, scores, err := sam.Decode(s, sam.Parts{PointEncoder: m.PointEncoder, MaskEncoder: m.MaskEncoder, MaskDecoder: m.MaskDecoder}, emb, pts, typ, lowIn)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("sam: %w", err)
	}
	high := m.Postprocess(s, low, e.Width, e.Height)
	if err := s.Err(); err != nil {
		return nil, nil, nil, fmt.Errorf("sam: postprocess: %w", err)
	}
	return high, scores, low, nil
}

// Postprocess is Refiners' postprocess_masks: low-res logits bilinear to
// ImageSize², the padding cropped off, bilinear to the original size.
func (m *Model) Postprocess(s *tensor.Scope, low *tensor.Tensor, width, height int) *tensor.Tensor {
	w, h := TargetSize(width, height, m.ImageSize)
	x := s.Interpolate(low, [2]int64{m.ImageSize, m.ImageSize}, tensor.Bilinear)
	x = s.Slice(s.Slice(x, 2, 0, int64(h), 1), 3, 0, int64(w), 1)
	return s.Interpolate(x, [2]int64{int64(height), int64(width)}, tensor.Bilinear)
}

// points is Refiners' points_to_tensor then normalize: background points,
// foreground points, the box's top-left then bottom-right corner, each
// (p·target/original + 0.5)/ImageSize computed in float32 as torch does.
func (m *Model) points(width, height int, p Prompt) ([]float32, []int64, error) {
	if len(p.Points) == 0 && p.Box == nil {
		return nil, nil, inputErr("a prompt needs at least one point or a box")
	}
	check := func(what string, vs ...float64) error {
		for _, v := range vs {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return inputErr("%s has a coordinate that is not a finite number", what)
			}
		}
		return nil
	}
	type pt struct {
		x, y float64
		t    int64
	}
	var all []pt
	for _, want := range []bool{false, true} {
		for i, q := range p.Points {
			if err := check(fmt.Sprintf("point %d", i), q.X, q.Y); err != nil {
				return nil, nil, err
			}
			if q.Foreground == want {
				t := int64(sam.Background)
				if want {
					t = sam.Foreground
				}
				all = append(all, pt{q.X, q.Y, t})
			}
		}
	}
	if b := p.Box; b != nil {
		if err := check("the box", b.X0, b.Y0, b.X1, b.Y1); err != nil {
			return nil, nil, err
		}
		all = append(all, pt{b.X0, b.Y0, sam.BoxTopLeft}, pt{b.X1, b.Y1, sam.BoxBottomRight})
	}
	tw, th := TargetSize(width, height, m.ImageSize)
	rx, ry := float32(float64(tw)/float64(width)), float32(float64(th)/float64(height))
	size := float32(m.ImageSize)
	coords := make([]float32, 0, 2*len(all))
	types := make([]int64, 0, len(all))
	for _, q := range all {
		// Explicit conversions round each operation as torch's float32
		// kernels do (and keep the compiler from fusing them).
		x := float32(float32(float32(q.x)*rx) + 0.5)
		y := float32(float32(float32(q.y)*ry) + 0.5)
		coords = append(coords, x/size, y/size)
		types = append(types, q.t)
	}
	return coords, types, nil
}
