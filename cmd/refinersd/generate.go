package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"image"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/daemon"
	"github.com/refiners-go/refiners/hosts"
	"github.com/refiners-go/refiners/internal/atomicfile"
	"github.com/refiners-go/refiners/models/sd15/pipeline"
	"github.com/refiners-go/refiners/store"
)

// componentSets collects --set MODEL.name=value for the three models.
type componentSets map[string]map[string]string

var components = []string{"unet", "text_encoder", "autoencoder"}

func (c componentSets) String() string {
	var sets []string
	for _, model := range components {
		for k, v := range c[model] {
			sets = append(sets, model+"."+k+"="+v)
		}
	}
	sort.Strings(sets)
	return strings.Join(sets, " ")
}

func (c componentSets) Set(v string) error {
	model, rest, ok := strings.Cut(v, ".")
	name, val, ok2 := strings.Cut(rest, "=")
	if !ok || !ok2 || name == "" || c[model] == nil {
		return fmt.Errorf("--set wants MODEL.name=value with MODEL one of %s, got %q", strings.Join(components, ", "), v)
	}
	c[model][name] = val
	return nil
}

const generateUsage = `usage: refinersd generate --prompt TEXT --output OUT.png
         (--weights DIR | --unet W --text-encoder W --autoencoder W | --model NAME) [flags]

Stable Diffusion 1.5, as Refiners' StableDiffusion_1: text to image, image to
image (--init-image), inpainting (--init-image and --mask with an inpainting
U-Net), with adapters (--adapter) and ControlNets (--control, e.g.
--control canny:controlnet.safetensors:photo.png:scale=0.8,end=0.6). See
docs/generate.md.

`

// generate is `refinersd generate`.
func generate(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("generate", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), generateUsage)
		fs.PrintDefaults()
	}
	unet := fs.String("unet", "", "U-Net weights (Refiners' SD1UNet layout; in_channels 9 for inpainting)")
	textEncoder := fs.String("text-encoder", "", "CLIP text encoder weights (Refiners' CLIPTextEncoderL layout)")
	autoencoder := fs.String("autoencoder", "", "autoencoder weights (Refiners' SD1Autoencoder layout: Encoder.*, Decoder.*)")
	weightsDir := fs.String("weights", "", "a folder with unet.safetensors, text_encoder.safetensors and autoencoder.safetensors (as `refinersd convert SRC --to DIR` writes)")
	model := fs.String("model", "", "take the weights from the store: models NAME-unet, NAME-text_encoder, NAME-vae_encoder/-vae_decoder (`refinersd models add NAME --from SRC`)")
	storeDir := fs.String("store", defaultStoreDir(), "model store directory (for --model)")
	prompt := fs.String("prompt", "", "what to draw")
	negative := fs.String("negative-prompt", "", "what to steer away from")
	steps := fs.Int("steps", pipeline.DefaultSteps, "denoising steps of the full schedule")
	guidance := fs.Float64("guidance", pipeline.DefaultGuidance, "classifier-free guidance scale")
	seed := fs.Int64("seed", -1, "noise seed (-1: a random one, printed)")
	width := fs.Int("width", 0, "image width, a multiple of 8 (default 512, or the init image's)")
	height := fs.Int("height", 0, "image height, a multiple of 8 (default 512, or the init image's)")
	solver := fs.String("solver", pipeline.DefaultSolver, "dpm (DPM-Solver++ 2M), ddim or euler")
	batch := fs.Int("batch", 1, "number of images, seeds SEED, SEED+1, ...")
	initImage := fs.String("init-image", "", "PNG or JPEG to start from (image to image, or the image to inpaint)")
	strength := fs.Float64("strength", 0, "image to image: how much to change, in (0, 1] (default 0.6; 1 with --mask)")
	maskPath := fs.String("mask", "", "inpainting mask (PNG), white where to repaint, the output's size")
	var adapters adapterFlags
	fs.Var(&adapters, "adapter", "PLUGIN:FILE[:PARAMS_JSON], e.g. lora:style.safetensors:{\"scale\": 0.8} (repeatable)")
	var controls controlFlags
	fs.Var(&controls, "control", "a ControlNet: "+controlSyntax+", e.g. canny:cn.safetensors:photo.png:scale=0.8,end=0.5 (repeatable; plugin controlnet by default)")
	pluginsDir := fs.String("plugins-dir", defaultPluginsDir(), "plugins directory (for --adapter and --control)")
	device := fs.String("device", "cpu", "cpu, cuda or cuda:N")
	dtype := fs.String("dtype", "float32", "float32, float16 or bfloat16")
	output := fs.String("output", "", "PNG file to write (with --batch N: OUT-1.png ... OUT-N.png)")
	sets := componentSets{"unet": {}, "text_encoder": {}, "autoencoder": {}}
	fs.Var(sets, "set", "override a spec parameter of one model: MODEL.name=value, MODEL unet, text_encoder or autoencoder (repeatable)")
	quiet := fs.Bool("quiet", false, "no progress output")
	recipePath := fs.String("recipe", "", "a PNG made by refiners-go: generate its recipe again (the same PNG bytes on the same weights, software and CPU kernels); give the weights, and --init-image/--mask if the recipe names them")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil // the usage was printed
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("generate: unexpected argument %q (flags only; quote the prompt: --prompt \"...\")", fs.Arg(0))
	}
	var rec *pipeline.Recipe
	if *recipePath != "" {
		var err error
		if rec, err = readRecipeFlag(fs, *recipePath); err != nil {
			return err
		}
		*prompt, *negative, *steps, *guidance, *seed = rec.Prompt, rec.NegativePrompt, rec.Steps, rec.Guidance, int64(rec.Seed)
		*width, *height, *solver, *batch, *strength = rec.Width, rec.Height, rec.Solver, rec.Batch, rec.Strength
		if adapters, err = recipeAdapters(rec, adapters, *storeDir); err != nil {
			return err
		}
		if controls, err = recipeControls(rec, controls); err != nil {
			return err
		}
	}

	// Everything that can be checked before loading the models is.
	if *prompt == "" {
		return errors.New("generate: --prompt is required")
	}
	if *output == "" {
		return errors.New("generate: --output is required")
	}
	if ext := strings.ToLower(filepath.Ext(*output)); ext != ".png" {
		return fmt.Errorf("generate: --output %s: only PNG is written (use a .png name)", *output)
	}
	if st, err := os.Stat(filepath.Dir(*output)); err != nil || !st.IsDir() {
		return fmt.Errorf("generate: --output %s: the directory %s does not exist", *output, filepath.Dir(*output))
	}
	dev, err := tensor.ParseDevice(*device)
	if err != nil {
		return err
	}
	dt, err := tensor.ParseDType(*dtype)
	if err != nil {
		return err
	}
	cfg := pipeline.Config{UNet: *unet, TextEncoder: *textEncoder, Autoencoder: *autoencoder, Device: dev, DType: dt,
		UNetParams: sets["unet"], TextEncoderParams: sets["text_encoder"], AutoencoderParams: sets["autoencoder"]}
	if *weightsDir != "" {
		if *model != "" {
			return errors.New("generate: --weights or --model, not both")
		}
		if st, err := os.Stat(*weightsDir); err != nil || !st.IsDir() {
			return fmt.Errorf("generate: --weights %s: not a folder", *weightsDir)
		}
		for _, f := range []struct {
			path *string
			name string
		}{{&cfg.UNet, "unet"}, {&cfg.TextEncoder, "text_encoder"}, {&cfg.Autoencoder, "autoencoder"}} {
			if *f.path == "" { // a file flag wins over the folder
				*f.path = filepath.Join(*weightsDir, f.name+".safetensors")
			}
		}
	}
	var storeDigests pipeline.Digests
	if *model != "" {
		if *unet != "" || *textEncoder != "" || *autoencoder != "" {
			return errors.New("generate: --model or --unet/--text-encoder/--autoencoder, not both")
		}
		if storeDigests, err = fromStore(&cfg, *storeDir, *model); err != nil {
			return err
		}
	}
	for _, f := range []struct{ flag, path string }{{"--unet", cfg.UNet}, {"--text-encoder", cfg.TextEncoder}, {"--autoencoder", cfg.Autoencoder}} {
		if f.path == "" {
			return fmt.Errorf("generate: %s is required (or --weights DIR, or --model NAME)", f.flag)
		}
		if err := fileExists(f.flag, f.path); err != nil {
			return err
		}
	}
	for _, a := range adapters {
		if err := fileExists("--adapter", a.file); err != nil {
			return err
		}
	}
	var conditions []*pipeline.RGB
	for _, c := range controls {
		if err := fileExists("--control", c.file); err != nil {
			return err
		}
		img, err := readImageFlag("--control", c.condition)
		if err != nil {
			return err
		}
		conditions = append(conditions, pipeline.ToRGB(img))
	}
	if rec != nil {
		for i, c := range rec.Controlnets {
			if got := pipeline.PixelDigest(conditions[i].Pix); got != c.Image {
				return fmt.Errorf("generate: --control %d: %s is not the recipe's condition image (pixels %s, want %s)", i+1, controls[i].condition, got, c.Image)
			}
		}
	}

	// The library reads zero as "the default": a zero given here is a mistake.
	switch {
	case *steps < 1:
		return fmt.Errorf("generate: --steps %d: want 1 to 1000", *steps)
	case *batch < 1:
		return fmt.Errorf("generate: --batch %d: want at least 1", *batch)
	case *guidance == 0:
		return errors.New("generate: --guidance 0 would ignore the prompt: use a positive scale (1: the prompt alone, no guidance)")
	}
	if *seed < -1 {
		return fmt.Errorf("generate: --seed %d: want a seed ≥ 0 (or -1 for a random one)", *seed)
	}
	req := pipeline.Request{Prompt: *prompt, NegativePrompt: *negative, Steps: *steps, Guidance: *guidance, Seed: uint64(*seed),
		Width: *width, Height: *height, Solver: *solver, Batch: *batch, Strength: *strength}
	if *initImage != "" {
		img, err := readImageFlag("--init-image", *initImage)
		if err != nil {
			return err
		}
		req.InitImage = pipeline.ToRGB(img)
		if req.Width == 0 && req.Height == 0 {
			req.Width, req.Height = req.InitImage.Width, req.InitImage.Height
		}
	}
	if *maskPath != "" {
		if *initImage == "" {
			return errors.New("generate: --mask needs --init-image (the image to inpaint)")
		}
		img, err := readImageFlag("--mask", *maskPath)
		if err != nil {
			return err
		}
		req.Mask = pipeline.ToGray(img)
	}
	if req.Width == 0 {
		req.Width = pipeline.DefaultSize
	}
	if req.Height == 0 {
		req.Height = pipeline.DefaultSize
	}
	if *seed == -1 {
		req.Seed = rand.Uint64N(1 << 32)
	}
	if rec != nil {
		if err := rec.CheckImages(req.InitImage, req.Mask); err != nil {
			return fmt.Errorf("generate: --recipe %s: %w (--init-image and --mask)", *recipePath, err)
		}
	}
	for i, c := range controls {
		pc, err := c.request(conditions[i])
		if err != nil {
			return fmt.Errorf("generate: --control: %w", err)
		}
		req.Controls = append(req.Controls, pc)
	}
	if req, err = req.WithDefaults(); err != nil {
		return fmt.Errorf("generate: %w", err)
	}
	digests := storeDigests // for the recipes: the store knows them, files are hashed
	if *model == "" {
		if digests, err = pipeline.FileDigests(cfg); err != nil {
			return fmt.Errorf("generate: %w", err)
		}
	}
	var recAdapters []pipeline.RecipeAdapter
	for _, a := range adapters {
		sum, err := hosts.FileSHA256(a.file)
		if err != nil {
			return fmt.Errorf("generate: --adapter %s: %w", a.file, err)
		}
		ra := pipeline.RecipeAdapter{Plugin: a.plugin, File: a.file, Digest: "sha256:" + sum}
		if a.params != "" {
			var buf bytes.Buffer
			if err := json.Compact(&buf, []byte(a.params)); err != nil {
				return fmt.Errorf("generate: --adapter %s: parameters are not JSON: %w", a.file, err)
			}
			ra.Params = buf.Bytes()
		}
		recAdapters = append(recAdapters, ra)
	}
	var recControls []pipeline.RecipeControl
	for _, c := range req.Controls {
		sum, err := hosts.FileSHA256(c.File)
		if err != nil {
			return fmt.Errorf("generate: --control %s: %w", c.File, err)
		}
		recControls = append(recControls, pipeline.NewRecipeControl(c, c.File, "sha256:"+sum))
	}
	if rec != nil { // the recipe's own names and parameter text (the same values)
		for i := range recControls {
			recControls[i].Adapter, recControls[i].Params = rec.Controlnets[i].Adapter, rec.Controlnets[i].Params
		}
	}
	if rec != nil {
		recAdapters = rec.Adapters // digests checked by recipeAdapters; keep the recipe's names
		for _, w := range recipeWarnings(rec, digests, dev, dt) {
			fmt.Fprintln(os.Stderr, "warning:", w)
		}
	}
	for _, a := range adapters {
		req.Adapters = append(req.Adapters, pipeline.Adapter{Plugin: a.plugin, File: a.file, Params: a.params})
	}
	warnings, err := pipeline.PromptWarnings(req.Prompt, req.NegativePrompt)
	if err != nil {
		return fmt.Errorf("generate: %w", err)
	}
	for _, w := range warnings {
		fmt.Fprintln(os.Stderr, "warning:", w)
	}
	outputs := outputPaths(*output, req.Batch)
	if rec != nil {
		outputs = make([]string, req.Batch)
		outputs[rec.Index] = *output // the recipe's image alone
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var host *hosts.Host
	if len(req.Adapters) > 0 || len(req.Controls) > 0 {
		if host, err = hosts.New(*pluginsDir, hosts.Options{}); err != nil {
			return err
		}
		defer host.Close()
		for _, a := range req.Adapters { // before the slow part
			if _, err := host.Describe(ctx, a.Plugin); err != nil {
				return fmt.Errorf("generate: --adapter %s: %w", a.Plugin, err)
			}
		}
		for _, c := range req.Controls {
			if _, err := host.Describe(ctx, c.Plugin); err != nil {
				return fmt.Errorf("generate: --control %s: plugin %s: %w (install it: refinersd plugins install PATH)", c.File, c.Plugin, err)
			}
		}
	}
	stderr := os.Stderr
	bar := newProgressBar(stderr, isTerminal(stderr), *quiet)
	req.Progress = bar.update
	return tensor.Run(ctx, func(s *tensor.Scope) error {
		loadStart := time.Now()
		m, err := pipeline.Load(s, cfg)
		if err != nil {
			return err
		}
		defer m.Release()
		m.Plugins = host
		if !*quiet {
			fmt.Fprintf(stderr, "loaded in %.1fs: U-Net in_channels %d, %s on %s; seed %d, %dx%d, %s, %d steps\n",
				time.Since(loadStart).Seconds(), m.InChannels, dt, dev, req.Seed, req.Width, req.Height, req.Solver, req.Steps)
		}
		res, err := m.Generate(ctx, s, req)
		bar.done()
		if err != nil {
			return fmt.Errorf("generate: %w", err)
		}
		for _, a := range res.Adapters {
			fmt.Fprintf(out, "adapter %s (%s, format %s): %d U-Net layers, %d text encoder layers adapted; %d of %d keys matched\n",
				a.File, a.Plugin, a.Format, a.UNetLayers, a.TextEncoderLayers, a.Matched, a.Keys)
			if len(a.Unmatched) > 0 {
				fmt.Fprintf(stderr, "warning: adapter %s: %d keys matched no layer, e.g. %s\n", a.File, len(a.Unmatched), a.Unmatched[0])
			}
		}
		for _, c := range res.Controls {
			steps := "no step"
			if c.ActiveSteps > 0 {
				steps = fmt.Sprintf("steps %d-%d", c.FirstStep+1, c.LastStep+1)
			}
			fmt.Fprintf(out, "control %s (%s, name %s, format %s): scale %g on %s of %d; %d of %d keys matched\n",
				c.File, c.Plugin, c.Name, c.Format, c.Scale, steps, c.Steps, c.Matched, c.Keys)
			for _, w := range c.Warnings {
				fmt.Fprintf(stderr, "warning: control %s: %s\n", c.File, w)
			}
		}
		// Encode everything first, then write: a failure writes nothing.
		var pngs [][]byte
		for i, img := range res.Images {
			if outputs[i] == "" {
				pngs = append(pngs, nil)
				continue
			}
			b, err := img.EncodePNG()
			if err != nil {
				return err
			}
			r := pipeline.NewRecipe(req, m, digests, i)
			r.Model, r.Adapters, r.Controlnets = *model, recAdapters, recControls
			if rec != nil {
				r.Model = rec.Model
			}
			if b, err = r.Embed(b); err != nil {
				return err
			}
			pngs = append(pngs, b)
		}
		for i, b := range pngs {
			if b == nil {
				continue
			}
			if err := atomicfile.WriteFile(outputs[i], b, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(out, "%s (seed %d)\n", outputs[i], res.Seeds[i])
		}
		return nil
	})
}

// outputPaths names the files of a batch: OUT.png alone, or OUT-1.png ... OUT-N.png.
func outputPaths(output string, n int) []string {
	if n == 1 {
		return []string{output}
	}
	ext := filepath.Ext(output)
	stem := strings.TrimSuffix(output, ext)
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("%s-%d%s", stem, i+1, ext))
	}
	return out
}

func fileExists(flag, path string) error {
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("generate: %s %s: no such file", flag, path)
		}
		return fmt.Errorf("generate: %s: %w", flag, err)
	}
	if st.IsDir() {
		return fmt.Errorf("generate: %s %s is a directory, not a file", flag, path)
	}
	return nil
}

func readImageFlag(flag, path string) (image.Image, error) {
	if err := fileExists(flag, path); err != nil {
		return nil, err
	}
	img, err := pipeline.ReadImage(path)
	if err != nil {
		return nil, fmt.Errorf("generate: %s: %w", flag, err)
	}
	return img, nil
}

// fromStore fills the weight paths and parameters from the store's models
// NAME-unet, NAME-text_encoder and NAME-vae_encoder / NAME-vae_decoder (the
// names `refinersd models add NAME --from SRC` gives; daemon.StorePipeline,
// which the daemon's pipelines use too). --set flags win over the store's
// overrides. It returns the weights' digests, which the store knows.
func fromStore(cfg *pipeline.Config, dir, name string) (pipeline.Digests, error) {
	st, err := store.Open(dir)
	if err != nil {
		return pipeline.Digests{}, err
	}
	sc, digests, err := daemon.StorePipeline(st, name)
	if err != nil {
		return digests, fmt.Errorf("generate: --model %s: %w", name, err)
	}
	cfg.UNet, cfg.TextEncoder, cfg.Autoencoder = sc.UNet, sc.TextEncoder, sc.Autoencoder
	for _, m := range []struct{ dst, src map[string]string }{{cfg.UNetParams, sc.UNetParams},
		{cfg.TextEncoderParams, sc.TextEncoderParams}, {cfg.AutoencoderParams, sc.AutoencoderParams}} {
		for k, v := range m.src {
			if _, set := m.dst[k]; !set {
				m.dst[k] = v
			}
		}
	}
	return digests, nil
}

// readRecipeFlag reads --recipe's PNG; the flags the recipe replaces must
// not be given too.
func readRecipeFlag(fs *flag.FlagSet, path string) (*pipeline.Recipe, error) {
	var clash []string
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "prompt", "negative-prompt", "steps", "guidance", "seed", "width", "height", "solver", "batch", "strength":
			clash = append(clash, "--"+f.Name)
		}
	})
	if len(clash) > 0 {
		return nil, fmt.Errorf("generate: --recipe gives the whole request; leave out %s", strings.Join(clash, ", "))
	}
	if err := fileExists("--recipe", path); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("generate: --recipe: %w", err)
	}
	rec, err := pipeline.ReadRecipe(b)
	if err != nil {
		return nil, fmt.Errorf("generate: --recipe %s: %w", path, err)
	}
	return rec, nil
}

// recipeAdapters finds the recipe's adapter files: the --adapter flags in
// the recipe's order, or else the store's blobs of their digests; each
// file's digest must be the recipe's.
func recipeAdapters(rec *pipeline.Recipe, given adapterFlags, storeDir string) (adapterFlags, error) {
	if len(given) > 0 && len(given) != len(rec.Adapters) {
		return nil, fmt.Errorf("generate: --recipe has %d adapters, %d --adapter flags given (give all of them, in the recipe's order, or none to take them from the store)", len(rec.Adapters), len(given))
	}
	var st *store.Store
	var out adapterFlags
	for i, a := range rec.Adapters {
		var path string
		if len(given) > 0 {
			if given[i].plugin != a.Plugin {
				return nil, fmt.Errorf("generate: --adapter %d is for plugin %s, the recipe's adapter %d for %s", i+1, given[i].plugin, i+1, a.Plugin)
			}
			path = given[i].file
		} else {
			if st == nil {
				var err error
				if st, err = store.Open(storeDir); err != nil {
					return nil, fmt.Errorf("generate: --recipe's adapters: %w", err)
				}
			}
			p, err := st.BlobPath(a.Digest)
			if err == nil {
				_, err = os.Stat(p)
			}
			if err != nil {
				return nil, fmt.Errorf("generate: --recipe's adapter %d (%s, %s) is not in the store %s: give it with --adapter %s:FILE", i+1, a.File, a.Digest, storeDir, a.Plugin)
			}
			path = p
		}
		sum, err := hosts.FileSHA256(path)
		if err != nil {
			return nil, fmt.Errorf("generate: adapter %s: %w", path, err)
		}
		if "sha256:"+sum != a.Digest {
			return nil, fmt.Errorf("generate: adapter %s has digest sha256:%s, the recipe's adapter %d %s", path, sum, i+1, a.Digest)
		}
		out = append(out, adapter{plugin: a.Plugin, file: path, params: string(a.Params)})
	}
	return out, nil
}

// recipeWarnings says how a re-run differs from the recipe's run.
func recipeWarnings(rec *pipeline.Recipe, d pipeline.Digests, dev tensor.Device, dt tensor.DType) []string {
	var out []string
	if rec.Weights != d {
		out = append(out, "the recipe was made with other weights: the image will differ")
	}
	if rec.Device != dev.String() || rec.DType != dt.String() {
		out = append(out, fmt.Sprintf("the recipe ran in %s on %s, this run in %s on %s: expect small differences", rec.DType, rec.Device, dt, dev))
	}
	if rec.Software != pipeline.Software() {
		out = append(out, fmt.Sprintf("the recipe was made by %s, this is %s: the image may differ", rec.Software, pipeline.Software()))
	}
	return out
}

// recipeControls makes the --control flags of a recipe's ControlNets: the
// flags give each one's FILE:CONDITION (in the recipe's order; the file's
// digest is checked here, the condition's pixels once read), the recipe
// the rest.
func recipeControls(rec *pipeline.Recipe, given controlFlags) (controlFlags, error) {
	if len(given) != len(rec.Controlnets) {
		return nil, fmt.Errorf("generate: --recipe has %d ControlNets, %d --control flags given: give each as --control FILE:CONDITION.png, in the recipe's order", len(rec.Controlnets), len(given))
	}
	var out controlFlags
	for i, rc := range rec.Controlnets {
		g := given[i]
		if g.preprocess != "" || g.scale != 0 || g.start != 0 || g.end != 0 || g.low != 0 || g.high != 0 || len(g.params) > 0 || g.plugin != "controlnet" {
			return nil, fmt.Errorf("generate: --control %d: with --recipe give only FILE:CONDITION.png (the recipe gives the plugin, preprocessing and options)", i+1)
		}
		sum, err := hosts.FileSHA256(g.file)
		if err != nil {
			return nil, fmt.Errorf("generate: --control %s: %w", g.file, err)
		}
		if "sha256:"+sum != rc.Digest {
			return nil, fmt.Errorf("generate: --control %s has digest sha256:%s, the recipe's ControlNet %d %s", g.file, sum, i+1, rc.Digest)
		}
		var params map[string]any
		if len(rc.Params) > 0 {
			if err := json.Unmarshal(rc.Params, &params); err != nil {
				return nil, fmt.Errorf("generate: --recipe's ControlNet %d: params: %w", i+1, err)
			}
		}
		out = append(out, control{plugin: rc.Plugin, file: g.file, condition: g.condition, preprocess: rc.Preprocess,
			low: rc.Low, high: rc.High, scale: rc.Scale, start: rc.Start, end: rc.End, params: params})
	}
	return out, nil
}
