package daemon

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/internal/names"
	"github.com/refiners-go/refiners/models/sd15/pipeline"
	"github.com/refiners-go/refiners/store"
)

// PipelineConfig is one named Stable Diffusion 1.5 pipeline that the image
// endpoints serve (config key pipelines.NAME). Its weights come from one
// source: a folder (weights), three files, or the store (model).
type PipelineConfig struct {
	// Weights is a folder with unet.safetensors, text_encoder.safetensors
	// and autoencoder.safetensors, as `refinersd convert SRC --to DIR` and
	// `refinersd demo-weights` write them. UNet, TextEncoder and
	// Autoencoder name the files one by one instead (or override one of
	// the folder's).
	Weights     string `yaml:"weights"`
	UNet        string `yaml:"unet"`
	TextEncoder string `yaml:"text_encoder"`
	Autoencoder string `yaml:"autoencoder"`
	// Model takes the weights from the store: NAME-unet,
	// NAME-text_encoder, NAME-vae_encoder and NAME-vae_decoder, as
	// `refinersd models add NAME --from SRC` registers them.
	Model string `yaml:"model"`
	// Set overrides spec parameters per model (unet, text_encoder,
	// autoencoder), over the store's overrides: tiny test models.
	Set    map[string]map[string]string `yaml:"set"`
	Device string                       `yaml:"device"` // cpu (default), cuda, cuda:N
	DType  string                       `yaml:"dtype"`  // float32 (default), float16, bfloat16
	// Preload loads the pipeline when the daemon starts and keeps it
	// (keep_alive does not apply), as the top-level preload does for
	// models: /readyz fails until it is loaded.
	Preload bool `yaml:"preload"`
	// Defaults of a request that does not say (0: the pipeline's own,
	// 512×512 and 30 steps).
	Width  int `yaml:"width"`
	Height int `yaml:"height"`
	Steps  int `yaml:"steps"`
	// Admission: larger requests get 400 (0: 1024, 1024, 150, 4).
	MaxWidth  int `yaml:"max_width"`
	MaxHeight int `yaml:"max_height"`
	MaxSteps  int `yaml:"max_steps"`
	MaxBatch  int `yaml:"max_batch"`
}

// Admission defaults of a pipeline.
const (
	defaultMaxSide  = 1024
	defaultMaxSteps = 150
	defaultMaxBatch = 4
)

var pipelineModels = []string{"unet", "text_encoder", "autoencoder"}

// withDefaults fills the limits and checks what can be checked without
// reading any file.
func (p PipelineConfig) withDefaults(name string) (PipelineConfig, error) {
	if err := names.Check("pipeline", name); err != nil {
		return p, fmt.Errorf("pipelines: %w", err)
	}
	where := "pipelines." + name
	files := p.UNet != "" || p.TextEncoder != "" || p.Autoencoder != ""
	switch {
	case p.Model != "" && (p.Weights != "" || files):
		return p, fmt.Errorf("%s: model (the store) or weights/unet/text_encoder/autoencoder (files), not both", where)
	case p.Model == "" && p.Weights == "" && (p.UNet == "" || p.TextEncoder == "" || p.Autoencoder == ""):
		return p, fmt.Errorf("%s: no weights: set weights (a folder), unet + text_encoder + autoencoder (files), or model (a store name)", where)
	}
	if p.Model != "" {
		if err := names.Check("model", p.Model); err != nil {
			return p, fmt.Errorf("%s.model: %w", where, err)
		}
	}
	for k := range p.Set {
		if !slices.Contains(pipelineModels, k) {
			return p, fmt.Errorf("%s.set: unknown model %q (want %s)", where, k, strings.Join(pipelineModels, ", "))
		}
	}
	dev, err := tensor.ParseDevice(p.Device)
	if err != nil {
		return p, fmt.Errorf("%s.device: %w", where, err)
	}
	if p.DType != "" {
		dt, err := tensor.ParseDType(p.DType)
		if err != nil {
			return p, fmt.Errorf("%s.dtype: %w", where, err)
		}
		if !dt.IsFloat() {
			return p, fmt.Errorf("%s.dtype %s: want float32, float16 or bfloat16", where, p.DType)
		}
		if err := tensor.Supports(dt, dev); err != nil {
			return p, fmt.Errorf("%s.dtype %s on %s: %w", where, p.DType, dev, err)
		}
	}
	for _, l := range []struct {
		key string
		v   *int
		def int
	}{{"max_width", &p.MaxWidth, defaultMaxSide}, {"max_height", &p.MaxHeight, defaultMaxSide},
		{"max_steps", &p.MaxSteps, defaultMaxSteps}, {"max_batch", &p.MaxBatch, defaultMaxBatch}} {
		if *l.v < 0 {
			return p, fmt.Errorf("%s.%s %d: want a positive limit (0: %d)", where, l.key, *l.v, l.def)
		}
		if *l.v == 0 {
			*l.v = l.def
		}
	}
	if p.Width == 0 {
		p.Width = min(pipeline.DefaultSize, p.MaxWidth/8*8)
	}
	if p.Height == 0 {
		p.Height = min(pipeline.DefaultSize, p.MaxHeight/8*8)
	}
	if p.Steps == 0 {
		p.Steps = min(pipeline.DefaultSteps, p.MaxSteps)
	}
	if err := pipeline.CheckSize(p.Width, p.Height); err != nil {
		return p, fmt.Errorf("%s: default size: %w", where, err)
	}
	if p.Width > p.MaxWidth || p.Height > p.MaxHeight || p.Steps < 1 || p.Steps > p.MaxSteps {
		return p, fmt.Errorf("%s: the defaults (%dx%d, %d steps) are outside the limits (%dx%d, %d steps)", where, p.Width, p.Height, p.Steps, p.MaxWidth, p.MaxHeight, p.MaxSteps)
	}
	return p, nil
}

// files resolves a file-based pipeline's weight paths and checks that they
// are regular files.
func (p PipelineConfig) files(name string) (pipeline.Config, error) {
	c := pipeline.Config{UNet: p.UNet, TextEncoder: p.TextEncoder, Autoencoder: p.Autoencoder}
	if p.Weights != "" {
		for _, f := range []struct {
			dst  *string
			base string
		}{{&c.UNet, "unet"}, {&c.TextEncoder, "text_encoder"}, {&c.Autoencoder, "autoencoder"}} {
			if *f.dst == "" {
				*f.dst = filepath.Join(p.Weights, f.base+".safetensors")
			}
		}
	}
	for _, f := range []struct{ key, path string }{{"unet", c.UNet}, {"text_encoder", c.TextEncoder}, {"autoencoder", c.Autoencoder}} {
		st, err := os.Stat(f.path)
		if err != nil {
			return c, fmt.Errorf("pipelines.%s: %s weights: %w", name, f.key, err)
		}
		if !st.Mode().IsRegular() {
			return c, fmt.Errorf("pipelines.%s: %s weights %s: not a regular file", name, f.key, f.path)
		}
	}
	return c, nil
}

// pipelineConfig builds the pipeline's load configuration and the digests
// of its weights: from the store (the manifests' digests) or from files
// (hashed here, once per load).
func (d *Daemon) pipelineConfig(name string, p PipelineConfig) (pipeline.Config, pipeline.Digests, error) {
	var c pipeline.Config
	var dg pipeline.Digests
	sets := map[string]map[string]string{}
	for _, k := range pipelineModels {
		sets[k] = map[string]string{}
		for kk, v := range p.Set[k] {
			sets[k][kk] = v
		}
	}
	if p.Model != "" {
		sc, sdg, err := StorePipeline(d.store, p.Model)
		if err != nil {
			return c, dg, fmt.Errorf("pipelines.%s: %w", name, err)
		}
		c, dg = sc, sdg
		for k, params := range map[string]map[string]string{"unet": sc.UNetParams, "text_encoder": sc.TextEncoderParams, "autoencoder": sc.AutoencoderParams} {
			for kk, v := range params {
				if _, set := sets[k][kk]; !set {
					sets[k][kk] = v
				}
			}
		}
	} else {
		var err error
		if c, err = p.files(name); err != nil {
			return c, dg, err
		}
		if dg, err = pipeline.FileDigests(c); err != nil {
			return c, dg, fmt.Errorf("pipelines.%s: %w", name, err)
		}
	}
	c.UNetParams, c.TextEncoderParams, c.AutoencoderParams = sets["unet"], sets["text_encoder"], sets["autoencoder"]
	c.Device, _ = tensor.ParseDevice(p.Device)
	c.DType = tensor.Float32
	if p.DType != "" {
		c.DType, _ = tensor.ParseDType(p.DType)
	}
	return c, dg, nil
}

// warmPipeline is a pipeline kept in memory (a warm whose pipe is set).
type warmPipeline struct {
	name    string
	cfg     PipelineConfig
	model   *pipeline.Model
	digests pipeline.Digests
}

// pipelineKey names a pipeline in Daemon.models, apart from store models
// (names never hold a slash).
func pipelineKey(name string) string { return "pipeline/" + name }

// pipeline returns a configured pipeline, or 404.
func (d *Daemon) pipeline(name string) (PipelineConfig, error) {
	if err := names.Check("pipeline", name); err != nil {
		return PipelineConfig{}, errorf(http.StatusBadRequest, "model: %v", err)
	}
	p, ok := d.cfg.Pipelines[name]
	if !ok {
		return p, errorf(http.StatusNotFound, "model %q: no such pipeline (configured: %s)", name, strings.Join(d.pipelineNames(), ", "))
	}
	return p, nil
}

func (d *Daemon) pipelineNames() []string {
	var out []string
	for k := range d.cfg.Pipelines {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// warmPipelineLocked returns the pipeline's warm entry, starting to load it
// if needed.
func (d *Daemon) warmPipelineLocked(name string, p PipelineConfig) *warm {
	key := pipelineKey(name)
	if w, ok := d.models[key]; ok {
		return w
	}
	w := &warm{name: key, pipe: &warmPipeline{name: name, cfg: p}, ready: make(chan struct{}), wake: make(chan struct{}, 1), quit: make(chan struct{}), lastUsed: time.Now()}
	d.models[key] = w
	d.workers.Add(1)
	go d.worker(w)
	return w
}

// loadPipeline loads a pipeline's weights (the worker's first task).
func (d *Daemon) loadPipeline(w *warm) error {
	p := w.pipe
	c, digests, err := d.pipelineConfig(p.name, p.cfg)
	if err != nil {
		return err
	}
	return tensor.Run(context.Background(), func(s *tensor.Scope) error {
		m, err := pipeline.Load(s, c)
		if err != nil {
			return err
		}
		m.Plugins = d.host
		p.model, p.digests = m, digests
		return nil
	})
}

// LoadPipeline makes a pipeline warm and waits until it is.
func (d *Daemon) LoadPipeline(ctx context.Context, name string) error {
	p, err := d.pipeline(name)
	if err != nil {
		return err
	}
	return d.warmAndWait(ctx, func() *warm { return d.warmPipelineLocked(name, p) })
}

// UnloadPipeline unloads a pipeline as Unload does a model.
func (d *Daemon) UnloadPipeline(name string) error {
	if _, err := d.pipeline(name); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	w, ok := d.models[pipelineKey(name)]
	if !ok {
		return errorf(http.StatusNotFound, "pipeline %q is not loaded", name)
	}
	d.retireLocked(w, errorf(http.StatusServiceUnavailable, "pipeline %s was unloaded", name))
	return nil
}

// PipelineInfo is a pipeline as GET /v1/pipelines shows it.
type PipelineInfo struct {
	Name      string     `json:"name"`
	State     ModelState `json:"state"`
	Width     int        `json:"width"`
	Height    int        `json:"height"`
	Steps     int        `json:"steps"`
	MaxWidth  int        `json:"max_width"`
	MaxHeight int        `json:"max_height"`
	MaxSteps  int        `json:"max_steps"`
	MaxBatch  int        `json:"max_batch"`
	// Known once loaded: whether the U-Net is an inpainting one (it then
	// needs init_image and mask), and the weights' digests.
	Inpainting *bool             `json:"inpainting,omitempty"`
	Weights    *pipeline.Digests `json:"weights,omitempty"`
	Device     string            `json:"device"`
	DType      string            `json:"dtype"`
}

func (d *Daemon) pipelineInfo(name string) PipelineInfo {
	p := d.cfg.Pipelines[name]
	info := PipelineInfo{Name: name, State: d.modelState(pipelineKey(name)), Width: p.Width, Height: p.Height, Steps: p.Steps,
		MaxWidth: p.MaxWidth, MaxHeight: p.MaxHeight, MaxSteps: p.MaxSteps, MaxBatch: p.MaxBatch, Device: "cpu", DType: "float32"}
	if p.Device != "" {
		info.Device = p.Device
	}
	if p.DType != "" {
		info.DType = p.DType
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if w, ok := d.models[pipelineKey(name)]; ok {
		select {
		case <-w.ready:
			if w.loadErr == nil && w.pipe.model != nil {
				inp := w.pipe.model.InChannels == 9
				dg := w.pipe.digests
				info.Inpainting, info.Weights = &inp, &dg
			}
		default:
		}
	}
	return info
}

func (d *Daemon) listPipelines(w http.ResponseWriter, r *http.Request) {
	out := []PipelineInfo{}
	for _, name := range d.pipelineNames() {
		out = append(out, d.pipelineInfo(name))
	}
	writeJSON(w, 200, map[string]any{"pipelines": out})
}

func (d *Daemon) loadPipelineRoute(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := d.LoadPipeline(r.Context(), name); err != nil {
		d.fail(w, err)
		return
	}
	writeJSON(w, 200, d.pipelineInfo(name))
}

func (d *Daemon) unloadPipelineRoute(w http.ResponseWriter, r *http.Request) {
	if err := d.UnloadPipeline(r.PathValue("name")); err != nil {
		d.fail(w, err)
		return
	}
	writeJSON(w, 200, map[string]string{"status": "unloading"})
}

// StorePipeline resolves the SD 1.5 pipeline the store holds as NAME-unet,
// NAME-text_encoder, NAME-vae_encoder and NAME-vae_decoder (the models
// `refinersd models add NAME --from SRC` registers): the weight files, the
// store's spec overrides per model and the weights' digests. The key
// prefixes must be the pipeline's: none for the U-Net and the text
// encoder, Encoder. and Decoder. for the autoencoder's halves, which must
// share one file.
func StorePipeline(st *store.Store, name string) (pipeline.Config, pipeline.Digests, error) {
	c := pipeline.Config{UNetParams: map[string]string{}, TextEncoderParams: map[string]string{}, AutoencoderParams: map[string]string{}}
	var dg pipeline.Digests
	var decoderDigest string
	for _, part := range []struct {
		suffix, prefix string
		path, digest   *string
		params         map[string]string
	}{{"-unet", "", &c.UNet, &dg.UNet, c.UNetParams}, {"-text_encoder", "", &c.TextEncoder, &dg.TextEncoder, c.TextEncoderParams},
		{"-vae_encoder", "Encoder.", &c.Autoencoder, &dg.Autoencoder, c.AutoencoderParams}, {"-vae_decoder", "Decoder.", nil, &decoderDigest, c.AutoencoderParams}} {
		m, err := st.Model(name + part.suffix)
		if err != nil {
			return c, dg, fmt.Errorf("model %s: %w", name, err)
		}
		if m.Prefix != part.prefix {
			return c, dg, fmt.Errorf("model %s: store model %s has key prefix %q; the pipeline reads it under %q", name, m.Name, m.Prefix, part.prefix)
		}
		if part.path != nil {
			if *part.path, err = st.BlobPath(m.Weights.Digest); err != nil {
				return c, dg, fmt.Errorf("model %s: %w", name, err)
			}
		}
		*part.digest = m.Weights.Digest
		for k, v := range m.Overrides {
			if old, set := part.params[k]; set && old != v {
				return c, dg, fmt.Errorf("model %s: %s-vae_encoder and %s-vae_decoder override %s differently (%s, %s)", name, name, name, k, old, v)
			}
			part.params[k] = v
		}
	}
	if decoderDigest != dg.Autoencoder {
		return c, dg, fmt.Errorf("model %s: %s-vae_encoder and %s-vae_decoder hold different weight files; the pipeline takes one autoencoder file", name, name, name)
	}
	return c, dg, nil
}
