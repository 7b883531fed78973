package daemon

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	_ "image/jpeg" // images may be JPEG
	"net/http"
	"regexp"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/internal/names"
	"github.com/refiners-go/refiners/models/sam/predict"
	"github.com/refiners-go/refiners/models/sd15/pipeline"
)

// SegmenterConfig is one Segment Anything model of the daemon (config
// key segmenters: NAME: {...}).
type SegmenterConfig struct {
	// Weights is a SAM file: Refiners' SegmentAnything layout
	// (segment-anything-h.safetensors) or an official sam_vit_*.pth.
	Weights string `yaml:"weights"`
	Device  string `yaml:"device"` // cpu (default), cuda, cuda:N
	// DecoderHeads is the mask decoder's attention heads (8 when 0).
	DecoderHeads int `yaml:"decoder_heads"`
	// CacheBytes bounds the image-embedding cache (least recently used
	// out); 256 MiB when 0 (64 ViT-H embeddings); -1 disables it.
	CacheBytes int64 `yaml:"cache_bytes"`
}

// defaultSegmentCache is the embedding cache's bound when none is set.
const defaultSegmentCache = 256 << 20

// Limits on a segmentation image (a decompression bomb is refused before
// its pixels are decoded).
const (
	maxSegmentSide   = 16384
	maxSegmentPixels = 64 << 20
)

// validateSegmenters checks the segmenters: section.
func (c *Config) validateSegmenters() error {
	for name, s := range c.Segmenters {
		if err := names.Check("segmenter", name); err != nil {
			return fmt.Errorf("segmenters: %w", err)
		}
		if s.Weights == "" {
			return fmt.Errorf("segmenters: %s: no weights", name)
		}
		if s.Device != "" {
			if _, err := tensor.ParseDevice(s.Device); err != nil {
				return fmt.Errorf("segmenters: %s: %w", name, err)
			}
		}
		if s.DecoderHeads < 0 || s.CacheBytes < -1 {
			return fmt.Errorf("segmenters: %s: decoder_heads and cache_bytes must not be negative (cache_bytes -1: no cache)", name)
		}
	}
	return nil
}

// segmenter is a SAM model loaded on first use, with its embedding cache.
// Requests on one segmenter run one at a time (sem).
type segmenter struct {
	name  string
	cfg   SegmenterConfig
	cache *predict.Cache
	sem   chan struct{}

	mu     sync.Mutex // guards model, closed
	model  *predict.Model
	closed bool

	// Embeddings counts image-encoder runs, Decodes prompt decodings.
	embeddings, decodes atomic.Int64
}

// segmenters holds the daemon's segmenters by name.
type segmenters struct {
	byName map[string]*segmenter
}

func newSegmenters(cfg Config) *segmenters {
	s := &segmenters{byName: map[string]*segmenter{}}
	for name, c := range cfg.Segmenters {
		bound := c.CacheBytes
		switch bound {
		case 0:
			bound = defaultSegmentCache
		case -1:
			bound = 0
		}
		s.byName[name] = &segmenter{name: name, cfg: c, cache: predict.NewCache(bound), sem: make(chan struct{}, 1)}
	}
	return s
}

// close releases the loaded models; requests still running finish first.
func (s *segmenters) close() {
	for _, g := range s.byName {
		g.sem <- struct{}{}
		g.mu.Lock()
		if g.model != nil {
			g.model.Release()
			g.model = nil
		}
		g.closed = true
		g.mu.Unlock()
		<-g.sem
	}
}

// load returns the model, loading it once (a failed load is retried by
// the next request).
func (g *segmenter) load(s *tensor.Scope) (*predict.Model, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, errorf(http.StatusServiceUnavailable, "segmenter %s: the daemon is shutting down", g.name)
	}
	if g.model != nil {
		return g.model, nil
	}
	dev := tensor.CPU
	if g.cfg.Device != "" {
		d, err := tensor.ParseDevice(g.cfg.Device)
		if err != nil {
			return nil, err
		}
		dev = d
	}
	m, err := predict.Load(s, predict.Config{Weights: g.cfg.Weights, Device: dev, DecoderHeads: g.cfg.DecoderHeads})
	if err != nil {
		return nil, errorf(http.StatusInternalServerError, "segmenter %s: %v", g.name, err)
	}
	g.model = m
	return m, nil
}

// SegmentPoint is a point prompt: pixels of the original image, label
// "fg" (default) or "bg".
type SegmentPoint struct {
	X     float64 `json:"x"`
	Y     float64 `json:"y"`
	Label string  `json:"label,omitempty"`
}

// SegmentRequest is the body of POST /v1/segment.
type SegmentRequest struct {
	Model string `json:"model"`
	// Image is the image file (PNG or JPEG), base64; or ImageDigest names
	// one sent before ("sha256:<hex>" of its bytes, as answered), whose
	// embedding is in the cache.
	Image       string         `json:"image,omitempty"`
	ImageDigest string         `json:"image_digest,omitempty"`
	Points      []SegmentPoint `json:"points,omitempty"`
	Box         []float64      `json:"box,omitempty"` // x0, y0, x1, y1
	// MaskInput is low-res logits to refine, base64 of little-endian
	// float32 [low_res_side²] row-major: an earlier answer's
	// low_res_logits_base64.
	MaskInput string `json:"mask_input,omitempty"`
	// Multimask answers the three masks; otherwise the best one only.
	Multimask bool `json:"multimask,omitempty"`
	// LowResLogits includes low_res_logits_base64 in the answer (default
	// true).
	LowResLogits *bool `json:"low_res_logits,omitempty"`
}

// SegmentMask is one mask of an answer: a PNG (8-bit gray, 255 inside) at
// the image's size and its IoU prediction.
type SegmentMask struct {
	PNGBase64 string  `json:"png_base64"`
	Score     float32 `json:"score"`
	Index     int     `json:"index"`
	Pixels    int     `json:"pixels"`
}

// SegmentResponse is the answer of POST /v1/segment.
type SegmentResponse struct {
	ImageDigest string `json:"image_digest"`
	// Cached says the image embedding came from the cache: only the
	// prompt side ran.
	Cached bool          `json:"cached"`
	Width  int           `json:"width"`
	Height int           `json:"height"`
	Best   int           `json:"best"` // index (0..2) of the best mask among SAM's three
	Masks  []SegmentMask `json:"masks"`
	// LowResLogitsBase64 is the best mask's low-res logits (little-endian
	// float32, LowResSide² row-major), to send back as mask_input.
	LowResLogitsBase64 string  `json:"low_res_logits_base64,omitempty"`
	LowResSide         int     `json:"low_res_side,omitempty"`
	Seconds            float64 `json:"seconds"`
}

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// segment is POST /v1/segment.
func (d *Daemon) segment(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if d.Draining() {
		writeError(w, http.StatusServiceUnavailable, errors.New("segment: shutting down"))
		return
	}
	var req SegmentRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, d.cfg.MaxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			d.fail(w, err)
			return
		}
		writeError(w, http.StatusBadRequest, fmt.Errorf("segment: request body: %v", err))
		return
	}
	if dec.More() {
		writeError(w, http.StatusBadRequest, errors.New("segment: request body: more than one JSON value"))
		return
	}
	g, ok := d.segs.byName[req.Model]
	if !ok {
		known := make([]string, 0, len(d.segs.byName))
		for n := range d.segs.byName {
			known = append(known, n)
		}
		sort.Strings(known)
		writeError(w, http.StatusNotFound, fmt.Errorf("segment: no segmenter %q (configured: %v)", req.Model, known))
		return
	}
	prompt, raw, digest, err := parseSegmentRequest(&req)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	select {
	case g.sem <- struct{}{}:
	case <-r.Context().Done():
		writeError(w, http.StatusServiceUnavailable, errors.New("segment: the client left while waiting"))
		return
	}
	defer func() { <-g.sem }()
	res, err := g.run(r.Context(), prompt, raw, digest, req.Multimask, req.LowResLogits == nil || *req.LowResLogits)
	if err != nil {
		switch {
		case errors.Is(err, predict.ErrInput):
			writeError(w, http.StatusBadRequest, err)
		default:
			d.fail(w, err)
		}
		return
	}
	res.Seconds = time.Since(start).Seconds()
	writeJSON(w, http.StatusOK, res)
}

// parseSegmentRequest checks a request and decodes its image bytes and
// mask; digest is the image's (computed, or as given).
func parseSegmentRequest(req *SegmentRequest) (prompt predict.Prompt, raw []byte, digest string, err error) {
	bad := func(format string, args ...any) error {
		return errorf(http.StatusBadRequest, "segment: "+format, args...)
	}
	switch {
	case req.Image == "" && req.ImageDigest == "":
		return prompt, nil, "", bad("give image (base64 PNG or JPEG) or image_digest")
	case req.ImageDigest != "" && !digestRE.MatchString(req.ImageDigest):
		return prompt, nil, "", bad("image_digest %q: want sha256:<64 lower-case hex digits>", req.ImageDigest)
	}
	if req.Image != "" {
		if raw, err = base64.StdEncoding.DecodeString(req.Image); err != nil {
			return prompt, nil, "", bad("image: not base64: %v", err)
		}
		digest = predict.Digest(raw)
		if req.ImageDigest != "" && req.ImageDigest != digest {
			return prompt, nil, "", bad("image_digest %s is not the image's (%s)", req.ImageDigest, digest)
		}
	} else {
		digest = req.ImageDigest
	}
	for i, p := range req.Points {
		fg := true
		switch p.Label {
		case "", "fg":
		case "bg":
			fg = false
		default:
			return prompt, nil, "", bad("points[%d]: label %q: want fg or bg", i, p.Label)
		}
		prompt.Points = append(prompt.Points, predict.Point{X: p.X, Y: p.Y, Foreground: fg})
	}
	if req.Box != nil {
		if len(req.Box) != 4 {
			return prompt, nil, "", bad("box: want [x0, y0, x1, y1], got %d numbers", len(req.Box))
		}
		prompt.Box = &predict.Box{X0: req.Box[0], Y0: req.Box[1], X1: req.Box[2], Y1: req.Box[3]}
	}
	if len(prompt.Points) == 0 && prompt.Box == nil {
		return prompt, nil, "", bad("give at least one point or a box")
	}
	if req.MaskInput != "" {
		b, err := base64.StdEncoding.DecodeString(req.MaskInput)
		if err == nil {
			prompt.Mask, err = weights.Float32sFromBytes(b)
		}
		if err != nil {
			return prompt, nil, "", bad("mask_input: want base64 of little-endian float32 values")
		}
	}
	return prompt, raw, digest, nil
}

// decodeSegmentImage decodes a PNG or JPEG within the size limits.
func decodeSegmentImage(raw []byte) (*pipeline.RGB, error) {
	cfg, _, err := image.DecodeConfig(bytes.NewReader(raw))
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "segment: image: %v", err)
	}
	if cfg.Width < 1 || cfg.Height < 1 || cfg.Width > maxSegmentSide || cfg.Height > maxSegmentSide || cfg.Width*cfg.Height > maxSegmentPixels {
		return nil, errorf(http.StatusBadRequest, "segment: image %dx%d: want sides of 1 to %d pixels and at most %d pixels", cfg.Width, cfg.Height, maxSegmentSide, maxSegmentPixels)
	}
	img, _, err := image.Decode(bytes.NewReader(raw))
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "segment: image: %v", err)
	}
	return pipeline.ToRGB(img), nil
}

// run answers one prompt: the embedding from the cache or computed (and
// cached), then the decoder.
func (g *segmenter) run(ctx context.Context, prompt predict.Prompt, raw []byte, digest string, multimask, lowRes bool) (*SegmentResponse, error) {
	emb, cached := g.cache.Get(digest)
	var rgb *pipeline.RGB
	if !cached {
		if raw == nil {
			return nil, errorf(http.StatusNotFound, "segment: no embedding cached for %s: send the image", digest)
		}
		var err error
		if rgb, err = decodeSegmentImage(raw); err != nil {
			return nil, err
		}
	}
	var p *predict.Prediction
	var side int
	err := tensor.Run(ctx, func(s *tensor.Scope) error {
		m, err := g.load(s)
		if err != nil {
			return err
		}
		side = int(m.LowResSide())
		if !cached {
			if emb, err = m.Embed(s, rgb); err != nil {
				return err
			}
			g.embeddings.Add(1)
			g.cache.Add(digest, emb)
		}
		p, err = m.Predict(s, emb, prompt)
		if err != nil {
			return err
		}
		g.decodes.Add(1)
		return nil
	})
	if err != nil {
		return nil, err
	}
	res := &SegmentResponse{ImageDigest: digest, Cached: cached, Width: p.Width, Height: p.Height, Best: p.Best()}
	indices := []int{res.Best}
	if multimask {
		indices = indices[:0]
		for i := range p.Masks {
			indices = append(indices, i)
		}
	}
	for _, i := range indices {
		b, n, err := p.MaskPNG(i)
		if err != nil {
			return nil, err
		}
		res.Masks = append(res.Masks, SegmentMask{PNGBase64: base64.StdEncoding.EncodeToString(b), Score: p.IoU[i], Index: i, Pixels: n})
	}
	if lowRes {
		res.LowResLogitsBase64 = base64.StdEncoding.EncodeToString(weights.Float32Bytes(p.LowRes[res.Best]))
		res.LowResSide = side
	}
	return res, nil
}

// SegmenterInfo is a segmenter as GET /v1/segmenters shows it.
type SegmenterInfo struct {
	Name       string        `json:"name"`
	Loaded     bool          `json:"loaded"`
	Format     string        `json:"format,omitempty"` // of the weights: refiners or official
	ImageSize  int64         `json:"image_size,omitempty"`
	Cache      predict.Stats `json:"cache"`
	Embeddings int64         `json:"embeddings"` // image-encoder runs
	Decodes    int64         `json:"decodes"`    // prompts answered
}

// listSegmenters is GET /v1/segmenters.
func (d *Daemon) listSegmenters(w http.ResponseWriter, r *http.Request) {
	out := []SegmenterInfo{}
	for _, g := range d.segs.byName {
		info := SegmenterInfo{Name: g.name, Cache: g.cache.Stats(), Embeddings: g.embeddings.Load(), Decodes: g.decodes.Load()}
		g.mu.Lock()
		if g.model != nil {
			info.Loaded, info.Format, info.ImageSize = true, g.model.Format, g.model.ImageSize
		}
		g.mu.Unlock()
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	writeJSON(w, http.StatusOK, map[string]any{"segmenters": out})
}
