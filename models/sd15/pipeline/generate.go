package pipeline

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/diffusion"
	"github.com/refiners-go/refiners/models/clip"
)

// Request is one generation. Zero values take the defaults of Refiners'
// StableDiffusion_1 (30 DPM-Solver++ steps, guidance 7.5, 512×512).
type Request struct {
	Prompt, NegativePrompt string
	Steps                  int     // denoising steps of the full schedule (0: 30)
	Guidance               float64 // classifier-free guidance scale (0: 7.5)
	Seed                   uint64
	Width, Height          int    // multiples of 8 (512)
	Solver                 string // "dpm" (default), "ddim" or "euler"
	// Batch is the number of images (1): image i starts from the noise of
	// seed Seed+i, so it is the image a batch of one with that seed gives.
	Batch int

	// InitImage turns on image to image: it is resized to Width×Height
	// (PIL's bicubic), encoded, and noised to the first step the strength
	// gives. With Mask, it is the image to inpaint.
	InitImage *RGB
	// Strength in (0, 1]: how much of the schedule runs. The first step is
	// Steps − ⌊Steps·Strength⌋, as diffusers computes it, and the encoded
	// image is noised to it (at strength 1 a trace of the image remains,
	// as in Refiners and diffusers). Default 0.6 for image to image; for
	// inpainting 1, which starts from pure noise as Refiners' inpainting
	// runs do.
	Strength float64
	// Mask (Width×Height) selects the pixels to repaint (> 127) for an
	// inpainting U-Net (in_channels 9).
	Mask *Gray

	// Adapters are planned by Model.Plugins and applied to the U-Net and
	// the text encoder for this generation only.
	Adapters []Adapter
	// Controls are ControlNets inserted into the U-Net for this
	// generation only (after the adapters, so adapters never touch them),
	// each with its condition image, scale and range of steps.
	Controls []Control
	// Progress, if set, is called after every denoising step.
	Progress func(Progress)
}

// Progress reports a finished denoising step.
type Progress struct {
	Step, Steps int           // Step of Steps steps done (img2img runs fewer than Request.Steps)
	Timestep    float64       // the training timestep of the step done
	Elapsed     time.Duration // since the first step began
	// Latents are the batch's latents after the step [Batch, 4, h, w],
	// valid during the call only (see Preview).
	Latents *tensor.Tensor
}

// Result is what Generate made.
type Result struct {
	Images []*RGB
	// Latents are the final latents [Batch, 4, Height/8, Width/8] before
	// decoding, on the model's device and dtype, in the caller's scope.
	Latents  *tensor.Tensor
	Seeds    []uint64
	Warnings []string // e.g. a prompt cut to the tokenizer's limit
	Adapters []AdapterReport
	Controls []ControlReport
}

// Defaults of a request.
const (
	DefaultSteps    = 30
	DefaultGuidance = 7.5
	DefaultSize     = 512
	DefaultSolver   = "dpm"
	// DefaultStrength is the image-to-image strength when none is given.
	DefaultStrength = 0.6
)

// ErrInput marks errors in a request (sizes, strengths, images), as
// opposed to failures while running it.
var ErrInput = errors.New("invalid request")

// inputError is an error in a request; errors.Is(err, ErrInput) holds.
type inputError struct{ msg string }

func (e *inputError) Error() string        { return e.msg }
func (e *inputError) Is(target error) bool { return target == ErrInput }

func inputErr(format string, args ...any) error {
	return &inputError{msg: fmt.Sprintf(format, args...)}
}

// WithDefaults fills the zero fields and checks what can be checked
// without the model: sizes, steps, strength, the mask's size. Generate
// calls it; a caller may call it first to fail before loading anything.
func (r Request) WithDefaults() (_ Request, err error) {
	if r.Steps == 0 {
		r.Steps = DefaultSteps
	}
	if r.Guidance == 0 {
		r.Guidance = DefaultGuidance
	}
	if r.Width == 0 {
		r.Width = DefaultSize
	}
	if r.Height == 0 {
		r.Height = DefaultSize
	}
	if r.Solver == "" {
		r.Solver = DefaultSolver
	}
	if r.Batch == 0 {
		r.Batch = 1
	}
	if !slices.Contains(diffusion.SolverNames, r.Solver) {
		return r, inputErr("unknown solver %q (want %s)", r.Solver, strings.Join(diffusion.SolverNames, ", "))
	}
	if err := CheckSize(r.Width, r.Height); err != nil {
		return r, err
	}
	if r.Steps < 1 || r.Steps > 1000 {
		return r, inputErr("steps %d: want 1 to 1000", r.Steps)
	}
	if r.Batch < 1 {
		return r, inputErr("batch %d: want at least 1", r.Batch)
	}
	if math.IsNaN(r.Guidance) || math.IsInf(r.Guidance, 0) {
		return r, inputErr("guidance %v is not a number", r.Guidance)
	}
	if r.Mask != nil && r.InitImage == nil {
		return r, inputErr("a mask needs an init image (the image to inpaint)")
	}
	switch {
	case r.InitImage == nil && r.Strength != 0:
		return r, inputErr("strength %g without an init image", r.Strength)
	case r.Strength == 0 && r.Mask != nil:
		r.Strength = 1
	case r.Strength == 0 && r.InitImage != nil:
		r.Strength = DefaultStrength
	}
	if r.InitImage != nil && !(r.Strength > 0 && r.Strength <= 1) {
		return r, inputErr("strength %g: want a value in (0, 1]", r.Strength)
	}
	if r.InitImage != nil && FirstStep(r.Steps, r.Strength) >= r.Steps {
		return r, inputErr("strength %g runs no step of %d (⌊%d·%g⌋ = 0): raise the strength or the steps", r.Strength, r.Steps, r.Steps, r.Strength)
	}
	if r.Solver == "euler" && r.InitImage != nil && (r.Mask == nil || r.Strength < 1) {
		return r, inputErr("the euler solver cannot start from an init image (Refiners' Euler cannot noise an image: its add_noise indexes the schedule with fractional timesteps and fails): use dpm or ddim")
	}
	if r.Mask != nil && (r.Mask.Width != r.Width || r.Mask.Height != r.Height) {
		return r, inputErr("the mask is %dx%d, the image to generate %dx%d: they must be the same size", r.Mask.Width, r.Mask.Height, r.Width, r.Height)
	}
	r.Controls = slices.Clone(r.Controls)
	for i, c := range r.Controls {
		if r.Controls[i], err = c.withDefaults(i); err != nil {
			return r, err
		}
	}
	return r, nil
}

// check checks a request (with its defaults) against the model.
func (m *Model) check(r Request) error {
	if r.Mask != nil && m.InChannels != 9 {
		return inputErr("a mask needs an inpainting U-Net (in_channels 9); this U-Net takes %d channels", m.InChannels)
	}
	if r.Mask == nil && m.InChannels == 9 {
		return inputErr("this U-Net is an inpainting one (in_channels 9): it needs an init image and a mask")
	}
	if len(r.Adapters) > 0 && m.Plugins == nil {
		return inputErr("adapters given but no plugin host to plan them")
	}
	if len(r.Controls) > 0 && m.Plugins == nil {
		return inputErr("ControlNets given but no plugin host to plan them")
	}
	return nil
}

// CheckSize says whether width×height can be generated: positive multiples of 8.
func CheckSize(width, height int) error {
	for _, d := range []struct {
		name string
		v    int
	}{{"width", width}, {"height", height}} {
		if d.v < 8 || d.v%8 != 0 {
			lo := max(d.v/8*8, 8)
			return inputErr("%s %d is not a positive multiple of 8 (the autoencoder works on 8×8 blocks): try %d or %d", d.name, d.v, lo, lo+8)
		}
	}
	return nil
}

// FirstStep is the first step an image-to-image run of strength in (0, 1]
// starts at: steps − ⌊steps·strength⌋ (diffusers' rule; Refiners takes the
// first step itself, set_inference_steps(steps, first_step)).
func FirstStep(steps int, strength float64) int {
	return steps - min(int(float64(steps)*strength), steps)
}

// Generate runs one request in s. It checks ctx between denoising steps
// (and the U-Net between its layers); on cancellation it returns ctx's
// error. Adapters are ejected before it returns, whatever happens.
func (m *Model) Generate(ctx context.Context, s *tensor.Scope, req Request) (res *Result, err error) {
	r, err := req.WithDefaults()
	if err != nil {
		return nil, err
	}
	if err := m.check(r); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	first := 0
	if r.InitImage != nil {
		first = FirstStep(r.Steps, r.Strength)
	}
	solver, err := diffusion.NewSolver(r.Solver, r.Steps, first)
	if err != nil {
		return nil, inputErr("%v", err)
	}
	defer solver.Close()
	res = &Result{}

	if len(r.Adapters) > 0 {
		reports, eject, aerr := m.applyAdapters(ctx, s, r.Adapters)
		if aerr != nil {
			return nil, aerr
		}
		defer func() { // err and res are Generate's results here
			if eerr := eject(); eerr != nil && err == nil {
				res, err = nil, fmt.Errorf("ejecting adapters: %w", eerr)
			}
		}()
		res.Adapters = reports
	}
	steps := r.Steps - first
	var controls []activeControl
	if len(r.Controls) > 0 {
		active, reports, eject, cerr := m.applyControls(ctx, s, r.Controls, r.Width, r.Height, steps)
		if cerr != nil {
			return nil, cerr
		}
		defer func() { // before the adapters' eject (deferred earlier)
			if eerr := eject(); eerr != nil && err == nil {
				res, err = nil, fmt.Errorf("ejecting ControlNets: %w", eerr)
			}
		}()
		controls, res.Controls = active, reports
	}

	emb, warnings, err := m.textEmbedding(ctx, s, r.Prompt, r.NegativePrompt, r.Batch)
	if err != nil {
		return nil, err
	}
	res.Warnings = warnings

	h, w := int64(r.Height/8), int64(r.Width/8)
	noise := make([]*tensor.Tensor, r.Batch)
	for i := range noise {
		seed := r.Seed + uint64(i)
		res.Seeds = append(res.Seeds, seed)
		noise[i] = s.Randn(seed, tensor.Float32, 1, 4, h, w)
	}
	x := m.toModel(s, s.Cat(noise, 0))

	var maskLatents, targetLatents *tensor.Tensor
	var image *tensor.Tensor
	if r.InitImage != nil {
		image = m.toModel(s, imageTensor(s, r.InitImage.Resize(r.Width, r.Height), nil))
	}
	if r.Mask != nil {
		// StableDiffusion_1_Inpainting.set_inpainting_conditions.
		mask := m.toModel(s, maskTensor(s, r.Mask))
		maskLatents = repeat(s, s.Interpolate(mask, [2]int64{h, w}, tensor.Nearest), r.Batch)
		masked := m.toModel(s, imageTensor(s, r.InitImage.Resize(r.Width, r.Height), r.Mask))
		if targetLatents, err = m.encode(ctx, s, masked); err != nil {
			return nil, err
		}
		targetLatents = repeat(s, targetLatents, r.Batch)
	}
	if r.InitImage != nil && (r.Mask == nil || first > 0) {
		// LatentDiffusionModel.init_latents: encode, then noise to the
		// first step (even step 0, where a trace of the image remains).
		// Inpainting at full strength starts from pure noise instead, as
		// Refiners' own inpainting runs and diffusers' do.
		z, err := m.encode(ctx, s, image)
		if err != nil {
			return nil, err
		}
		x = solver.AddNoise(s, repeat(s, z, r.Batch), x, first)
	}
	x = s.Scale(x, solver.InitNoiseSigma()) // scale_model_input(x, step=-1)
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("initial latents: %w", err)
	}

	start := time.Now()
	for i, step := 0, first; step < r.Steps; i, step = i+1, step+1 {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		c := s.Child()
		contexts := core.Contexts{}
		setControls(contexts, controls, i, steps)
		restore, err := m.detachOff(controls, i, steps)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("step %d of %d: %w", i+1, steps, err)
		}
		next, err := m.denoise(ctx, c, solver, x, emb, maskLatents, targetLatents, step, r.Guidance, contexts)
		if rerr := restore(); rerr != nil && err == nil {
			c.TakeErr()
			c.Close()
			return nil, fmt.Errorf("step %d of %d: %w", i+1, steps, rerr)
		}
		if err != nil {
			c.TakeErr()
			c.Close()
			return nil, fmt.Errorf("step %d of %d: %w", i+1, steps, err)
		}
		c.Close(next)
		s.Release(x) // the previous latents: memory stays flat over the steps
		x = next
		if r.Progress != nil {
			r.Progress(Progress{Step: i + 1, Steps: steps, Timestep: solver.Timestep(step), Elapsed: time.Since(start), Latents: x})
		}
	}
	res.Latents = x

	for i := range r.Batch {
		img, err := m.decode(ctx, s, s.Narrow(x, 0, int64(i), 1))
		if err != nil {
			return nil, err
		}
		res.Images = append(res.Images, img)
	}
	return res, nil
}

// toModel moves a float32 CPU tensor to the model's device and dtype.
func (m *Model) toModel(s *tensor.Scope, t *tensor.Tensor) *tensor.Tensor {
	if m.DType != tensor.Float32 {
		t = s.ToDType(t, m.DType)
	}
	if m.Device != tensor.CPU {
		t = s.To(t, m.Device)
	}
	return t
}

// repeat stacks n copies of a batch-of-one tensor.
func repeat(s *tensor.Scope, t *tensor.Tensor, n int) *tensor.Tensor {
	if n == 1 {
		return t
	}
	ts := make([]*tensor.Tensor, n)
	for i := range ts {
		ts[i] = t
	}
	return s.Cat(ts, 0)
}

// denoise is one step of LatentDiffusionModel.forward with classifier-free
// guidance: the U-Net on cat(x, x) (with the mask and masked-image latents
// appended for inpainting), then uncond + guidance·(cond − uncond), then
// the solver. contexts may hold more of the U-Net call's contexts (the
// ControlNets').
func (m *Model) denoise(ctx context.Context, s *tensor.Scope, solver diffusion.Solver, x, emb, maskLatents, targetLatents *tensor.Tensor, step int, guidance float64, contexts core.Contexts) (*tensor.Tensor, error) {
	in := x
	if maskLatents != nil {
		in = s.Cat([]*tensor.Tensor{x, maskLatents, targetLatents}, 1)
	}
	latents := solver.ScaleModelInput(s, s.Cat([]*tensor.Tensor{in, in}, 0), step)
	// solver.timesteps[step].unsqueeze(0): int64 for DPM and DDIM, float32
	// for Euler (which Refiners never converts to the model's dtype).
	var t *tensor.Tensor
	if ts := solver.Timestep(step); ts == math.Trunc(ts) && solver.Name() != "euler" {
		t = s.FromInt64([]int64{int64(ts)}, 1)
	} else {
		t = s.FromFloat32([]float32{float32(ts)}, 1)
	}
	if m.Device != tensor.CPU {
		t = s.To(t, m.Device)
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	if contexts == nil {
		contexts = core.Contexts{}
	}
	contexts["diffusion"] = map[string]any{"timestep": t}
	contexts["cross_attention_block"] = map[string]any{"clip_text_embedding": emb}
	out, err := core.Call{Ctx: ctx, Contexts: contexts}.Forward(s, m.UNet, latents)
	if err != nil {
		return nil, fmt.Errorf("U-Net: %w", err)
	}
	halves := s.Chunk(out[0], 2, 0)
	if err := s.Err(); err != nil {
		return nil, err
	}
	uncond, cond := halves[0], halves[1]
	eps := s.Add(uncond, s.Scale(s.Sub(cond, uncond), guidance))
	next := solver.Step(s, x, eps, step)
	return next, s.Err()
}

// textEmbedding is StableDiffusion_1.compute_clip_text_embedding: the
// negative prompt's embedding first, then the prompt's, each [1, 77, D]
// (encoded one at a time, as Refiners does), repeated for the batch:
// [2·batch, 77, D].
func (m *Model) textEmbedding(ctx context.Context, s *tensor.Scope, prompt, negative string, batch int) (*tensor.Tensor, []string, error) {
	toks, warnings, err := tokenize(m.Tokenizer, prompt, negative)
	if err != nil {
		return nil, nil, err
	}
	var embs []*tensor.Tensor
	for i, p := range []struct{ what, text string }{{"negative prompt", negative}, {"prompt", prompt}} {
		ids := s.FromInt64(toks[i].IDs, 1, int64(len(toks[i].IDs)))
		if m.Device != tensor.CPU {
			ids = s.To(ids, m.Device)
		}
		out, err := core.Call{Ctx: ctx}.Forward(s, m.TextEncoder, ids)
		if err != nil {
			return nil, nil, fmt.Errorf("text encoder (%s): %w", p.what, err)
		}
		embs = append(embs, repeat(s, out[0], batch))
	}
	emb := s.Cat(embs, 0)
	return emb, warnings, s.Err()
}

// tokenize encodes the negative prompt and the prompt, with a warning for
// each that was cut to the tokenizer's limit.
func tokenize(tok *clip.Tokenizer, prompt, negative string) ([2]clip.Tokens, []string, error) {
	var out [2]clip.Tokens
	var warnings []string
	for i, p := range []struct{ what, text string }{{"negative prompt", negative}, {"prompt", prompt}} {
		t, err := tok.Encode(p.text)
		if err != nil {
			return out, nil, inputErr("%s: %v", p.what, err)
		}
		if t.Truncated > 0 {
			warnings = append(warnings, fmt.Sprintf("the %s is %d tokens over the limit of %d: they were cut", p.what, t.Truncated, clip.MaxTokens))
		}
		out[i] = t
	}
	return out, warnings, nil
}

// PromptWarnings tokenizes the prompts as Generate will and returns its
// warnings (a prompt over the limit, and by how many tokens), so that a
// caller can show them before loading the models.
func PromptWarnings(prompt, negative string) ([]string, error) {
	tok, err := clip.NewTokenizer()
	if err != nil {
		return nil, err
	}
	_, warnings, err := tokenize(tok, prompt, negative)
	return warnings, err
}

// encode is SD1Autoencoder.encode: LatentScale × Encoder(x), x in [−1, 1].
func (m *Model) encode(ctx context.Context, s *tensor.Scope, x *tensor.Tensor) (*tensor.Tensor, error) {
	out, err := core.Call{Ctx: ctx}.Forward(s, m.Encoder, x)
	if err != nil {
		return nil, fmt.Errorf("autoencoder encoder: %w", err)
	}
	z := s.Scale(out[0], LatentScale)
	return z, s.Err()
}

// decode is SD1Autoencoder.latents_to_image for a batch of one:
// Decoder(x ÷ LatentScale), (y + 1) / 2, then as tensor_to_image: clamp to
// [0, 1], × 255 in float32, truncated to uint8 (numpy's astype).
func (m *Model) decode(ctx context.Context, s *tensor.Scope, x *tensor.Tensor) (*RGB, error) {
	c := s.Child()
	defer c.Close()
	out, err := core.Call{Ctx: ctx}.Forward(c, m.Decoder, c.DivScalar(x, LatentScale))
	if err != nil {
		c.TakeErr()
		return nil, fmt.Errorf("autoencoder decoder: %w", err)
	}
	y := c.DivScalar(c.AddScalar(out[0], 1), 2)
	// Clamping commutes with the exact upcast from a half type, so it can
	// happen in float32 here.
	if y.DType() != tensor.Float32 {
		y = c.ToDType(y, tensor.Float32)
	}
	if y.Device() != tensor.CPU {
		y = c.To(y, tensor.CPU)
	}
	shape := y.Shape()
	vals := c.Float32s(c.Contiguous(y))
	if err := c.Err(); err != nil {
		c.TakeErr()
		return nil, fmt.Errorf("decode: %w", err)
	}
	return toRGB(vals, int(shape[2]), int(shape[3])), nil
}

// toRGB converts a [3, h, w] float32 image in about [0, 1] to bytes as
// Refiners' tensor_to_image does.
func toRGB(vals []float32, h, w int) *RGB {
	img := NewRGB(w, h)
	plane := h * w
	for c := range 3 {
		for i := range plane {
			v := min(max(vals[c*plane+i], 0), 1)
			img.Pix[3*i+c] = uint8(float32(v * 255))
		}
	}
	return img
}

// imageTensor is image_to_tensor(image)·2 − 1 as a [1, 3, H, W] float32
// CPU tensor: each byte /255, ×2, −1, rounded to float32 at each step as
// numpy and torch do. With a mask, pixels where the mask is > 127 are
// multiplied by 0 (StableDiffusion_1_Inpainting's masked image).
func imageTensor(s *tensor.Scope, img *RGB, mask *Gray) *tensor.Tensor {
	plane := img.Width * img.Height
	vals := make([]float32, 3*plane)
	for i := range plane {
		keep := float32(1)
		if mask != nil && mask.Pix[i] > 127 {
			keep = 0
		}
		for c := range 3 {
			v := float32(img.Pix[3*i+c]) / 255
			v = float32(v*2) - 1
			vals[c*plane+i] = float32(v * keep)
		}
	}
	return s.FromFloat32(vals, 1, 3, int64(img.Height), int64(img.Width))
}

// maskTensor is (mask/255 > 0.5) as a [1, 1, H, W] float32 tensor of 0 and 1:
// a byte v passes when v/255 > 0.5 in float32, that is v ≥ 128.
func maskTensor(s *tensor.Scope, mask *Gray) *tensor.Tensor {
	vals := make([]float32, len(mask.Pix))
	for i, v := range mask.Pix {
		if float32(v)/255 > 0.5 {
			vals[i] = 1
		}
	}
	return s.FromFloat32(vals, 1, 1, int64(mask.Height), int64(mask.Width))
}
