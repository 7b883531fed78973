package daemon

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	_ "image/jpeg" // init images and masks may be JPEG
	_ "image/png"
	"io"
	"math/rand/v2"
	"mime"
	"mime/multipart"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/hosts"
	"github.com/refiners-go/refiners/models/sd15/pipeline"
)

// mediaPNG is the answer of POST /v1/images with Accept: image/png.
const mediaPNG = "image/png"

// ImageRequest is the body of POST /v1/images and POST /v1/images/jobs
// (docs/api.md). Zero values take the pipeline's defaults.
type ImageRequest struct {
	Model          string              `json:"model"`
	Prompt         string              `json:"prompt"`
	NegativePrompt string              `json:"negative_prompt"`
	Seed           *int64              `json:"seed"` // absent or -1: a random one
	Steps          int                 `json:"steps"`
	Guidance       float64             `json:"guidance"`
	Solver         string              `json:"solver"`
	Width          int                 `json:"width"`
	Height         int                 `json:"height"`
	Batch          int                 `json:"batch"`
	InitImage      string              `json:"init_image"` // base64 PNG or JPEG (a data: URL is accepted)
	Strength       float64             `json:"strength"`
	Mask           string              `json:"mask"`
	Adapters       []AdapterRequest    `json:"adapters"`
	Controlnets    []ControlnetRequest `json:"controlnets"`
	Recipe         string              `json:"recipe"` // base64 PNG whose recipe to re-run
	Preview        bool                `json:"preview"`
}

// ControlnetRequest is one ControlNet of an image request: a plugin
// (default controlnet), a ControlNet file from the store (adapter name or
// blob digest) and its condition image, optionally Canny-preprocessed.
// Zero values take the defaults: scale 1, start 0, end 1, Canny
// thresholds 100 and 200.
type ControlnetRequest struct {
	Plugin     string         `json:"plugin"`
	Adapter    string         `json:"adapter"`
	Image      string         `json:"image"` // base64 PNG or JPEG, or multipart part controlnets.N.image
	Preprocess string         `json:"preprocess"`
	Low        float64        `json:"low"`
	High       float64        `json:"high"`
	Scale      float64        `json:"scale"`
	Start      float64        `json:"start"`
	End        float64        `json:"end"`
	Params     map[string]any `json:"params"` // more parameters for the plugin (e.g. name)
}

// ControlnetReport is what a ControlNet did in a generation.
type ControlnetReport struct {
	Plugin      string   `json:"plugin"`
	Adapter     string   `json:"adapter"`
	Digest      string   `json:"digest"`
	Name        string   `json:"name"`
	Format      string   `json:"format,omitempty"`
	Scale       float64  `json:"scale"`
	Start       float64  `json:"start"`
	End         float64  `json:"end"`
	Preprocess  string   `json:"preprocess,omitempty"`
	ActiveSteps int      `json:"active_steps"`
	Steps       int      `json:"steps"`
	Matched     int      `json:"matched"`
	Unmatched   []string `json:"unmatched,omitempty"`
	Warnings    []string `json:"warnings,omitempty"`
}

// ImageResponse is a finished image job, as JSON.
type ImageResponse struct {
	ID          string             `json:"id"`
	Model       string             `json:"model"`
	Images      []ImageOut         `json:"images"`
	Recipe      *pipeline.Recipe   `json:"recipe"` // of the first image; image i's PNG holds its own (index i)
	Warnings    []string           `json:"warnings"`
	Adapters    []AdapterReport    `json:"adapters,omitempty"`
	Controlnets []ControlnetReport `json:"controlnets,omitempty"`
	Seconds     float64            `json:"seconds"`
}

// ImageOut is one generated image.
type ImageOut struct {
	PNGBase64 string `json:"png_base64"`
	Seed      uint64 `json:"seed"`
}

// imageJob is what an image job carries besides the common Job fields.
type imageJob struct {
	req      pipeline.Request // with its defaults; no Progress
	preview  bool
	index    int // -1: every image; else only this one (a recipe's)
	recipe   *pipeline.Recipe
	warnings []string // from parsing (e.g. a recipe made on other weights)
	// the ControlNets' files as requested, and their digests once resolved
	controlNames, controlDigests []string

	// results, under Job.mu
	pngs    [][]byte
	seeds   []uint64
	outWarn []string
	first   *pipeline.Recipe
	creps   []ControlnetReport
}

// parseImage reads an image request (JSON, or multipart/form-data with a
// "request" JSON part and image parts) and makes its job.
func (d *Daemon) parseImage(w http.ResponseWriter, r *http.Request) (*Job, error) {
	if r.ContentLength > d.cfg.MaxBody {
		return nil, &http.MaxBytesError{Limit: d.cfg.MaxBody}
	}
	select {
	case d.decodes <- struct{}{}:
	case <-r.Context().Done():
		return nil, errorf(http.StatusServiceUnavailable, "request canceled while waiting to be read: %v", r.Context().Err())
	}
	defer func() { <-d.decodes }()
	d.metrics.decoding.Inc()
	defer d.metrics.decoding.Dec()
	r.Body = http.MaxBytesReader(w, r.Body, d.cfg.MaxBody)

	var req ImageRequest
	parts := map[string][]byte{} // image parts of a multipart request
	mt, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch mt {
	case "application/json", "":
		if err := decodeStrict(r.Body, "request", &req); err != nil {
			return nil, badBody(err)
		}
	case "multipart/form-data":
		mr := multipart.NewReader(r.Body, params["boundary"])
		seen := map[string]bool{}
		for {
			part, err := mr.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, badBody(err)
			}
			name := part.FormName()
			if seen[name] {
				return nil, errorf(http.StatusBadRequest, "multipart part %q is given twice", name)
			}
			seen[name] = true
			switch name {
			case "request":
				if err := decodeStrict(part, "request", &req); err != nil {
					return nil, badBody(err)
				}
			case "init_image", "mask", "recipe":
				b, err := io.ReadAll(part)
				if err != nil {
					return nil, badBody(err)
				}
				parts[name] = b
			default:
				if !controlPartRE.MatchString(name) {
					return nil, errorf(http.StatusBadRequest, "multipart part %q: want request, init_image, mask, recipe or controlnets.N.image", name)
				}
				b, err := io.ReadAll(part)
				if err != nil {
					return nil, badBody(err)
				}
				parts[name] = b
			}
		}
		if !seen["request"] {
			return nil, errorf(http.StatusBadRequest, "multipart: no \"request\" part (the JSON request)")
		}
	default:
		return nil, errorf(http.StatusUnsupportedMediaType, "Content-Type %q: send application/json or multipart/form-data", mt)
	}
	return d.imageJob(&req, parts)
}

// controlPartRE matches the multipart parts of ControlNet condition images.
var controlPartRE = regexp.MustCompile(`^controlnets\.(0|[1-9][0-9]{0,2})\.image$`)

// decodeStrict reads one JSON object into v: unknown fields, a key given
// twice and anything after the object are errors.
func decodeStrict(r io.Reader, what string, v any) error {
	dec := newJSONDecoder(r)
	if err := dec.decodeRaw(what, v); err != nil {
		return err
	}
	if c, err := dec.peek(); err != io.EOF {
		if err != nil {
			return err
		}
		return dec.errorf("unexpected %q after the request object (send one JSON object)", c)
	}
	return nil
}

// imageBytes returns a field's image: a multipart part or base64 text.
func imageBytes(field, b64 string, parts map[string][]byte) ([]byte, error) {
	part, inPart := parts[field]
	switch {
	case inPart && b64 != "":
		return nil, errorf(http.StatusBadRequest, "%s: given both as a multipart part and in the JSON request", field)
	case inPart:
		return part, nil
	case b64 == "":
		return nil, nil
	}
	if rest, ok := strings.CutPrefix(b64, "data:"); ok { // a data: URL
		_, data, found := strings.Cut(rest, ";base64,")
		if !found {
			return nil, errorf(http.StatusBadRequest, "%s: a data: URL must be base64 (data:image/png;base64,...)", field)
		}
		b64 = data
	}
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "%s: not base64: %v", field, err)
	}
	return b, nil
}

// decodeImage decodes a PNG or JPEG, refusing sizes far over the
// pipeline's limits before decoding the pixels.
func decodeImage(field string, b []byte, p PipelineConfig) (image.Image, error) {
	cfg, _, err := image.DecodeConfig(bytes.NewReader(b))
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "%s: not a PNG or JPEG image: %v", field, err)
	}
	if cfg.Width > 4*p.MaxWidth || cfg.Height > 4*p.MaxHeight || cfg.Width < 1 || cfg.Height < 1 {
		return nil, errorf(http.StatusBadRequest, "%s: %dx%d is too large for this pipeline (at most %dx%d; images are resized to the output size)", field, cfg.Width, cfg.Height, 4*p.MaxWidth, 4*p.MaxHeight)
	}
	img, _, err := image.Decode(bytes.NewReader(b))
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "%s: %v", field, err)
	}
	return img, nil
}

// imageJob checks a request against its pipeline and makes the job.
func (d *Daemon) imageJob(req *ImageRequest, parts map[string][]byte) (*Job, error) {
	ij := &imageJob{index: -1, preview: req.Preview}
	recipeBytes, err := imageBytes("recipe", req.Recipe, parts)
	if err != nil {
		return nil, err
	}
	if recipeBytes != nil {
		rec, err := pipeline.ReadRecipe(recipeBytes)
		if err != nil {
			return nil, errorf(http.StatusBadRequest, "%v", err)
		}
		if err := fromRecipe(req, rec, d.cfg.Pipelines); err != nil {
			return nil, err
		}
		ij.recipe, ij.index = rec, rec.Index
	}
	if req.Model == "" && len(d.cfg.Pipelines) == 1 {
		req.Model = d.pipelineNames()[0]
	}
	if req.Model == "" {
		return nil, errorf(http.StatusBadRequest, "model: missing (a pipeline: %s)", strings.Join(d.pipelineNames(), ", "))
	}
	p, err := d.pipeline(req.Model)
	if err != nil {
		return nil, err
	}
	pr := pipeline.Request{Prompt: req.Prompt, NegativePrompt: req.NegativePrompt, Steps: req.Steps, Guidance: req.Guidance,
		Solver: req.Solver, Width: req.Width, Height: req.Height, Batch: req.Batch, Strength: req.Strength}
	for _, f := range []struct {
		field, b64 string
		set        func(image.Image)
	}{
		{"init_image", req.InitImage, func(img image.Image) { pr.InitImage = pipeline.ToRGB(img) }},
		{"mask", req.Mask, func(img image.Image) { pr.Mask = pipeline.ToGray(img) }},
	} {
		b, err := imageBytes(f.field, f.b64, parts)
		if err != nil {
			return nil, err
		}
		if b != nil {
			img, err := decodeImage(f.field, b, p)
			if err != nil {
				return nil, err
			}
			f.set(img)
		}
	}
	for name := range parts {
		if m := controlPartRE.FindStringSubmatch(name); m != nil {
			var i int
			fmt.Sscan(m[1], &i)
			if i >= len(req.Controlnets) {
				return nil, errorf(http.StatusBadRequest, "multipart part %s: the request has %d controlnets", name, len(req.Controlnets))
			}
		}
	}
	for i, c := range req.Controlnets {
		field := fmt.Sprintf("controlnets[%d]", i)
		if c.Plugin == "" {
			c.Plugin = "controlnet"
		}
		if c.Adapter == "" {
			return nil, errorf(http.StatusBadRequest, "%s.adapter: missing (a ControlNet file in the store: adapter name or sha256: digest)", field)
		}
		b, err := imageBytes(fmt.Sprintf("controlnets.%d.image", i), c.Image, parts)
		if err != nil {
			return nil, err
		}
		if b == nil {
			return nil, errorf(http.StatusBadRequest, "%s.image: missing (the condition image, base64 PNG or JPEG)", field)
		}
		img, err := decodeImage(field+".image", b, p)
		if err != nil {
			return nil, err
		}
		if c.Preprocess != "" && c.Preprocess != pipeline.ControlPreprocessCanny {
			return nil, errorf(http.StatusBadRequest, "%s.preprocess %q: want \"\" (the image is the condition) or \"canny\"", field, c.Preprocess)
		}
		end := c.End
		if end == 0 {
			end = 1
		}
		if c.Preprocess == pipeline.ControlPreprocessCanny { // one threshold given: the other's default
			switch {
			case c.Low != 0 && c.High == 0:
				c.High = pipeline.DefaultCannyHigh
			case c.High != 0 && c.Low == 0:
				c.Low = pipeline.DefaultCannyLow
			}
		}
		switch {
		case c.Scale < 0:
			return nil, errorf(http.StatusBadRequest, "%s.scale %g: want a value ≥ 0 (0: the default, 1)", field, c.Scale)
		case c.Start < 0 || end > 1 || c.Start >= end:
			return nil, errorf(http.StatusBadRequest, "%s.start %g, end %g: want 0 ≤ start < end ≤ 1 (fractions of the steps)", field, c.Start, c.End)
		case c.Preprocess == "" && (c.Low != 0 || c.High != 0):
			return nil, errorf(http.StatusBadRequest, "%s.low/high: Canny thresholds need \"preprocess\": \"canny\"", field)
		case c.Low < 0 || c.High < 0 || c.Low > c.High:
			return nil, errorf(http.StatusBadRequest, "%s.low %g, high %g: want 0 ≤ low ≤ high", field, c.Low, c.High)
		}
		if _, ok := c.Params["scale"]; ok {
			return nil, errorf(http.StatusBadRequest, "%s.params: give the scale as %s.scale", field, field)
		}
		var params []byte
		if len(c.Params) > 0 {
			if params, err = json.Marshal(c.Params); err != nil {
				return nil, errorf(http.StatusBadRequest, "%s.params: %v", field, err)
			}
		}
		pr.Controls = append(pr.Controls, pipeline.Control{Plugin: c.Plugin, File: c.Adapter, Params: string(params), Condition: pipeline.ToRGB(img),
			Preprocess: c.Preprocess, CannyLow: c.Low, CannyHigh: c.High, Scale: c.Scale, Start: c.Start, End: c.End})
		ij.controlNames = append(ij.controlNames, c.Adapter)
	}
	switch {
	case req.Seed == nil || *req.Seed == -1:
		pr.Seed = rand.Uint64N(1 << 32)
	case *req.Seed < 0:
		return nil, errorf(http.StatusBadRequest, "seed %d: want a seed ≥ 0 (or -1, or none, for a random one)", *req.Seed)
	default:
		pr.Seed = uint64(*req.Seed)
	}
	if pr.Width == 0 && pr.Height == 0 && pr.InitImage != nil {
		pr.Width, pr.Height = pr.InitImage.Width, pr.InitImage.Height
	}
	if pr.Width == 0 {
		pr.Width = p.Width
	}
	if pr.Height == 0 {
		pr.Height = p.Height
	}
	if pr.Steps == 0 {
		pr.Steps = p.Steps
	}
	for _, l := range []struct {
		field     string
		v, max    int
		configKey string
	}{{"width", pr.Width, p.MaxWidth, "max_width"}, {"height", pr.Height, p.MaxHeight, "max_height"},
		{"steps", pr.Steps, p.MaxSteps, "max_steps"}, {"batch", pr.Batch, p.MaxBatch, "max_batch"}} {
		if l.v > l.max {
			return nil, errorf(http.StatusBadRequest, "%s %d: over pipeline %s's limit of %d (%s)", l.field, l.v, req.Model, l.max, l.configKey)
		}
	}
	switch {
	case req.Steps < 0:
		return nil, errorf(http.StatusBadRequest, "steps %d: want 1 to %d", req.Steps, p.MaxSteps)
	case req.Batch < 0:
		return nil, errorf(http.StatusBadRequest, "batch %d: want 1 to %d", req.Batch, p.MaxBatch)
	case req.Guidance < 0:
		return nil, errorf(http.StatusBadRequest, "guidance %g: want a positive scale (1: the prompt alone)", req.Guidance)
	}
	if rec := ij.recipe; rec != nil {
		if err := rec.CheckImages(pr.InitImage, pr.Mask); err != nil {
			return nil, errorf(http.StatusBadRequest, "%v", err)
		}
		for i, c := range rec.Controlnets {
			if got := pipeline.PixelDigest(pr.Controls[i].Condition.Pix); got != c.Image {
				return nil, errorf(http.StatusBadRequest, "recipe: controlnets[%d].image is not the recipe's (pixels %s, want %s)", i, got, c.Image)
			}
		}
	}
	full, err := pr.WithDefaults()
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "%v", err)
	}
	for i, a := range req.Adapters {
		if a.Operation != "" {
			return nil, errorf(http.StatusBadRequest, "adapters[%d].operation: images apply each adapter with its plugin's first operation; leave operation out", i)
		}
	}
	ij.req = full
	j := newJob(context.Background())
	j.Model, j.Adapters, j.image = req.Model, req.Adapters, ij
	return j, nil
}

// fromRecipe fills a request from a recipe. A request that re-runs a
// recipe gives only the model, preview and the images the recipe names.
func fromRecipe(req *ImageRequest, rec *pipeline.Recipe, cfgPipelines map[string]PipelineConfig) error {
	var set []string
	for _, f := range []struct {
		name string
		set  bool
	}{{"prompt", req.Prompt != ""}, {"negative_prompt", req.NegativePrompt != ""}, {"seed", req.Seed != nil}, {"steps", req.Steps != 0},
		{"guidance", req.Guidance != 0}, {"solver", req.Solver != ""}, {"width", req.Width != 0}, {"height", req.Height != 0},
		{"batch", req.Batch != 0}, {"strength", req.Strength != 0}, {"adapters", len(req.Adapters) > 0}} {
		if f.set {
			set = append(set, f.name)
		}
	}
	if len(set) > 0 {
		return errorf(http.StatusBadRequest, "recipe: a recipe gives the whole request; leave out %s (give only model, preview and the images the recipe names)", strings.Join(set, ", "))
	}
	// ControlNets: the request gives their condition images alone (as
	// controlnets[i].image or parts controlnets.N.image), the recipe the rest.
	given := req.Controlnets
	if len(given) > 0 && len(given) != len(rec.Controlnets) {
		return errorf(http.StatusBadRequest, "recipe: it has %d controlnets, the request %d (give each one's image, in the recipe's order)", len(rec.Controlnets), len(given))
	}
	for i, g := range given {
		if g.Plugin != "" || g.Adapter != "" || g.Preprocess != "" || g.Low != 0 || g.High != 0 || g.Scale != 0 || g.Start != 0 || g.End != 0 || len(g.Params) > 0 {
			return errorf(http.StatusBadRequest, "recipe: controlnets[%d]: give only its image (the recipe gives the rest)", i)
		}
	}
	req.Controlnets = nil
	for i, c := range rec.Controlnets {
		cr := ControlnetRequest{Plugin: c.Plugin, Adapter: c.Digest, Preprocess: c.Preprocess, Low: c.Low, High: c.High, Scale: c.Scale, Start: c.Start, End: c.End}
		if i < len(given) {
			cr.Image = given[i].Image
		}
		if len(c.Params) > 0 {
			if err := json.Unmarshal(c.Params, &cr.Params); err != nil {
				return errorf(http.StatusBadRequest, "recipe: controlnets[%d].params: %v", i, err)
			}
		}
		req.Controlnets = append(req.Controlnets, cr)
	}
	if _, ok := cfgPipelines[rec.Model]; req.Model == "" && ok {
		req.Model = rec.Model // else the request's, or the one pipeline there is
	}
	seed := int64(rec.Seed)
	if rec.Seed > 1<<62 {
		return errorf(http.StatusBadRequest, "recipe: seed %d out of range", rec.Seed)
	}
	req.Prompt, req.NegativePrompt, req.Seed, req.Steps, req.Guidance = rec.Prompt, rec.NegativePrompt, &seed, rec.Steps, rec.Guidance
	req.Solver, req.Width, req.Height, req.Batch, req.Strength = rec.Solver, rec.Width, rec.Height, rec.Batch, rec.Strength
	for i, a := range rec.Adapters {
		var params map[string]any
		if len(a.Params) > 0 {
			if err := json.Unmarshal(a.Params, &params); err != nil {
				return errorf(http.StatusBadRequest, "recipe: adapters[%d].params: %v", i, err)
			}
		}
		req.Adapters = append(req.Adapters, AdapterRequest{Plugin: a.Plugin, File: a.Digest, Params: params})
	}
	return nil
}

// applyPipelineAdapters applies a job's adapters to a pipeline's U-Net and
// text encoder (as a set that stays on for the job's group).
func (d *Daemon) applyPipelineAdapters(s *tensor.Scope, m *pipeline.Model, j *Job, set *appliedSet) error {
	var as []pipeline.Adapter
	for _, a := range j.resolved {
		as = append(as, pipeline.Adapter{Plugin: a.req.Plugin, File: a.path, Params: a.params})
	}
	reports, eject, err := m.ApplyAdapters(j.ctx, s, as)
	if err != nil {
		switch {
		case j.ctx.Err() != nil:
			return err
		case errors.Is(err, pipeline.ErrInput):
			return errorf(http.StatusBadRequest, "adapters: %v", err)
		}
		var ce *hosts.CallError
		if errors.As(err, &ce) {
			return errorf(pluginStatus(err), "adapters: %v", err)
		}
		return errorf(http.StatusUnprocessableEntity, "adapters: %v", err)
	}
	set.undo = append(set.undo, eject)
	for i, r := range reports {
		a := j.resolved[i]
		set.reports = append(set.reports, AdapterReport{Plugin: a.req.Plugin, File: a.req.File, Digest: a.digest, Format: r.Format,
			LayersAdapted: r.UNetLayers + r.TextEncoderLayers, Matched: r.Matched, Unmatched: r.Unmatched, Warnings: r.Warnings})
	}
	return nil
}

// generate runs an image job on its warm pipeline: step events (with
// previews when asked), then the PNGs, each with its recipe.
func (d *Daemon) generate(w *warm, j *Job) error {
	ij, p := j.image, w.pipe
	m := p.model
	req := ij.req
	warnings := append([]string(nil), ij.warnings...)
	if rec := ij.recipe; rec != nil {
		if rec.Weights != p.digests {
			warnings = append(warnings, fmt.Sprintf("the recipe was made with other weights (U-Net %s, text encoder %s, autoencoder %s); this pipeline's differ, so the image will too",
				short(rec.Weights.UNet), short(rec.Weights.TextEncoder), short(rec.Weights.Autoencoder)))
		}
		if rec.DType != m.DType.String() || rec.Device != m.Device.String() {
			warnings = append(warnings, fmt.Sprintf("the recipe ran in %s on %s, this pipeline in %s on %s: expect small differences", rec.DType, rec.Device, m.DType, m.Device))
		}
		if rec.Software != pipeline.Software() {
			warnings = append(warnings, fmt.Sprintf("the recipe was made by %s, this is %s: the image may differ", rec.Software, pipeline.Software()))
		}
	}
	steps := d.metrics.stepSeconds.WithLabelValues(p.name)
	var last time.Duration
	var pngs [][]byte
	var recipes []*pipeline.Recipe
	var res *pipeline.Result
	err := tensor.Run(j.ctx, func(s *tensor.Scope) error {
		req.Progress = func(pr pipeline.Progress) {
			steps.Observe((pr.Elapsed - last).Seconds())
			last = pr.Elapsed
			e := Event{Type: "step", Step: pr.Step, Steps: pr.Steps}
			if ij.preview {
				if img, err := pipeline.Preview(s, pr.Latents, max(ij.index, 0)); err == nil {
					if b, err := img.EncodePNG(); err == nil {
						e.PreviewPNG = base64.StdEncoding.EncodeToString(b)
					}
				} else {
					d.log.Warn("preview failed", "job", j.ID, "error", err)
				}
			}
			j.emitStep(e)
		}
		var err error
		res, err = m.Generate(j.ctx, s, req)
		if err != nil {
			return err
		}
		for i, img := range res.Images {
			if ij.index >= 0 && i != ij.index {
				continue
			}
			b, err := img.EncodePNG()
			if err != nil {
				return err
			}
			rec := pipeline.NewRecipe(ij.req, m, p.digests, i)
			rec.Model = p.name
			for k, a := range j.resolved {
				ra := pipeline.RecipeAdapter{Plugin: a.req.Plugin, File: a.req.File, Digest: a.digest, Params: json.RawMessage(a.params)}
				if ij.recipe != nil { // the recipe's own name and parameter text (the same values)
					ra.File, ra.Params = ij.recipe.Adapters[k].File, ij.recipe.Adapters[k].Params
				}
				rec.Adapters = append(rec.Adapters, ra)
			}
			for k, c := range ij.req.Controls {
				rc := pipeline.NewRecipeControl(c, ij.controlNames[k], ij.controlDigests[k])
				if ij.recipe != nil { // the recipe's own name and parameter text
					rc.Adapter, rc.Params = ij.recipe.Controlnets[k].Adapter, ij.recipe.Controlnets[k].Params
				}
				rec.Controlnets = append(rec.Controlnets, rc)
			}
			if b, err = rec.Embed(b); err != nil {
				return err
			}
			pngs, recipes = append(pngs, b), append(recipes, rec)
		}
		return nil
	})
	if err != nil {
		switch {
		case j.ctx.Err() != nil:
			return err
		case errors.Is(err, pipeline.ErrInput):
			return errorf(http.StatusBadRequest, "%v", err)
		}
		return errorf(http.StatusUnprocessableEntity, "%v", err)
	}
	var creps []ControlnetReport
	for k, c := range res.Controls {
		creps = append(creps, ControlnetReport{Plugin: c.Plugin, Adapter: ij.controlNames[k], Digest: ij.controlDigests[k], Name: c.Name,
			Format: c.Format, Scale: c.Scale, Start: c.Start, End: c.End, Preprocess: c.Preprocess, ActiveSteps: c.ActiveSteps,
			Steps: c.Steps, Matched: c.Matched, Unmatched: c.Unmatched, Warnings: c.Warnings})
	}
	var seeds []uint64
	for _, rec := range recipes {
		seeds = append(seeds, rec.Seed+uint64(rec.Index))
	}
	j.mu.Lock()
	ij.pngs, ij.seeds, ij.outWarn, ij.first, ij.creps = pngs, seeds, append(warnings, res.Warnings...), recipes[0], creps
	j.mu.Unlock()
	return nil
}

// short abbreviates a digest for messages.
func short(digest string) string {
	if len(digest) > 19 {
		return digest[:19]
	}
	return digest
}

// images answers POST /v1/images: it waits for the job (or streams its
// events with Accept: application/x-ndjson or text/event-stream) and
// answers with the PNG (Accept: image/png, one image) or JSON.
func (d *Daemon) images(w http.ResponseWriter, r *http.Request) {
	j, ok := d.acceptImage(w, r)
	if !ok {
		return
	}
	defer d.jobs.remove(j.ID)
	if d.awaitJob(w, r, j) {
		d.writeImageResult(w, r, j)
	}
}

// submitImageJob answers POST /v1/images/jobs: 202 with the job's status.
func (d *Daemon) submitImageJob(w http.ResponseWriter, r *http.Request) {
	if j, ok := d.acceptImage(w, r); ok {
		writeAccepted(w, j)
	}
}

// acceptImage parses and queues an image request, answering the error if
// any.
func (d *Daemon) acceptImage(w http.ResponseWriter, r *http.Request) (*Job, bool) {
	j, err := d.parseImage(w, r)
	if err == nil {
		w.Header().Set(AdapterSetHeader, AdapterSetDigest(pipelineKey(j.Model), j.Adapters, false))
		err = d.Submit(j)
	}
	if err != nil {
		d.fail(w, err)
		return nil, false
	}
	return j, true
}

// imageResponse is a finished image job's answer (nil if it failed).
func (j *Job) imageResponse() *ImageResponse {
	j.mu.Lock()
	defer j.mu.Unlock()
	ij := j.image
	if j.state != Done || ij == nil {
		return nil
	}
	resp := &ImageResponse{ID: j.ID, Model: j.Model, Recipe: ij.first, Warnings: ij.outWarn, Adapters: j.reports, Controlnets: ij.creps,
		Seconds: j.finished.Sub(j.started).Seconds()}
	if resp.Warnings == nil {
		resp.Warnings = []string{}
	}
	for i, b := range ij.pngs {
		resp.Images = append(resp.Images, ImageOut{PNGBase64: base64.StdEncoding.EncodeToString(b), Seed: ij.seeds[i]})
	}
	return resp
}

// writeImageResult answers with a finished image job's PNG or JSON, or
// its error.
func (d *Daemon) writeImageResult(w http.ResponseWriter, r *http.Request, j *Job) {
	j.mu.Lock()
	jerr, code := j.err, j.code
	var png []byte
	if len(j.image.pngs) == 1 {
		png = j.image.pngs[0]
	}
	j.mu.Unlock()
	if jerr != nil {
		if code == 499 {
			code = http.StatusConflict
		}
		writeError(w, code, fmt.Errorf("job %s: %w", j.ID, jerr))
		return
	}
	if png != nil && accepts(r, mediaPNG) {
		w.Header().Set("Content-Type", mediaPNG)
		w.Header().Set("Content-Length", fmt.Sprint(len(png)))
		w.Header().Set("X-Refiners-Job", j.ID)
		w.WriteHeader(200)
		w.Write(png)
		return
	}
	writeJSON(w, 200, j.imageResponse())
}

// resolveControls checks an image job's ControlNets against the plugins
// and the store, and points them at their files.
func (d *Daemon) resolveControls(j *Job, installed []hosts.Entry) error {
	ij := j.image
	ij.controlDigests = nil
	for i := range ij.req.Controls {
		c := &ij.req.Controls[i]
		field := fmt.Sprintf("controlnets[%d]", i)
		if err := checkPlugin(field, c.Plugin, installed); err != nil {
			return err
		}
		digest, path, err := d.storeFile(field+".adapter", ij.controlNames[i])
		if err != nil {
			return err
		}
		c.File = path
		ij.controlDigests = append(ij.controlDigests, digest)
	}
	return nil
}
