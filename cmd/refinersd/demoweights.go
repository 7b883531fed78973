package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	"github.com/refiners-go/refiners/core"
	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
	"github.com/refiners-go/refiners/daemon"
	"github.com/refiners-go/refiners/internal/atomicfile"
	"github.com/refiners-go/refiners/spec"
	"github.com/refiners-go/refiners/specs"
	"github.com/refiners-go/refiners/store"
)

// The demo's tiny SD 1.5: the real topology at small widths (the sizes of
// the pipeline conformance cases, with a 2-layer text encoder).
var (
	demoUNet = map[string]string{"in_channels": "4", "out_channels": "4", "channels_1": "4", "channels_2": "8", "channels_3": "12",
		"sinusoidal_embedding_dim": "4", "timestep_embedding_dim": "16", "clip_embedding_dim": "4", "num_heads": "2", "num_groups": "2"}
	demoTextEncoder = map[string]string{"embedding_dim": "4", "max_sequence_length": "77", "vocabulary_size": "49408",
		"num_layers": "2", "num_attention_heads": "2", "feedforward_dim": "8"}
	demoAutoencoder = map[string]string{"channels_1": "4", "channels_2": "8", "channels_3": "8", "channels_4": "8", "num_groups": "2"}
	// The ControlNet fits demoUNet; its condition encoder is narrowed too.
	demoControlnet = map[string]string{"channels_1": "4", "channels_2": "8", "channels_3": "12", "sinusoidal_embedding_dim": "4",
		"timestep_embedding_dim": "16", "clip_embedding_dim": "4", "num_heads": "2", "num_groups": "2",
		"condition_channels_1": "4", "condition_channels_2": "8", "condition_channels_3": "8", "condition_channels_4": "16"}
	// A tiny Segment Anything in Refiners' layout (the SAM predictor's
	// tiny test model's sizes): a 3-layer ViT of width 16 on 128×128
	// images (8×8 patches of 16), windows of 3, layer 1 global; 32-wide
	// embedding, prompt encoders and mask decoder (8 heads, SAM's).
	demoSAMEncoder = map[string]string{"embedding_dim": "16", "num_layers": "3", "num_heads": "2", "global_1": "1", "global_2": "-1",
		"global_3": "-1", "global_4": "-1", "image_size": "128", "patch_size": "16", "window_size": "3", "neck_dim": fmt.Sprint(demoSAMWidth)}
	demoSAMPoint   = map[string]string{"embedding_dim": fmt.Sprint(demoSAMWidth)}
	demoSAMMask    = map[string]string{"embedding_dim": fmt.Sprint(demoSAMWidth), "intermediate_channels": fmt.Sprint(demoSAMMaskInner)}
	demoSAMDecoder = map[string]string{"embedding_dim": fmt.Sprint(demoSAMWidth), "feed_forward_dim": "64", "num_layers": "2", "num_output_mask": "3",
		"num_heads": "8", "dense_side": "8"}
)

// The tiny SAM's embedding width (neck, prompt encoders, mask decoder) and
// its mask encoder's inner width (Refiners' 16).
const (
	demoSAMWidth     = 32
	demoSAMMaskInner = 16
)

const demoWeightsUsage = `usage: refinersd demo-weights DIR [--force]

Writes a tiny Stable Diffusion 1.5 with random weights (the real topology at
small widths) and a daemon configuration, so that a fresh clone can serve
images without downloading anything:

  DIR/sd15/unet.safetensors, text_encoder.safetensors, autoencoder.safetensors
  DIR/controlnet.safetensors   a tiny ControlNet, also in the store as demo-controlnet
  DIR/sam.safetensors          a tiny Segment Anything (Refiners' layout), segmenter demo-sam
                               when the daemon serves POST /v1/segment
  DIR/store/                   the model store
  DIR/config.yaml              refinersd serve --config DIR/config.yaml
                               (pipeline "demo": 64x64, 8 steps; plugins from DIR/plugins)

The images are noise-like (random weights), but every endpoint works.
make serve-demo builds and installs the plugins, runs this and serves.

`

// demoWeights is `refinersd demo-weights DIR`.
func demoWeights(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("demo-weights", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), demoWeightsUsage)
		fs.PrintDefaults()
	}
	force := fs.Bool("force", false, "overwrite an earlier demo in DIR")
	rest, err := parseInterleaved(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if len(rest) != 1 {
		return errors.New("demo-weights: want one DIR (refinersd demo-weights -h)")
	}
	dir, err := filepath.Abs(rest[0])
	if err != nil {
		return err
	}
	cfgPath := filepath.Join(dir, "config.yaml")
	if _, err := os.Stat(cfgPath); err == nil && !*force {
		return fmt.Errorf("demo-weights: %s exists (an earlier demo): use --force to write it again", cfgPath)
	}
	sd := filepath.Join(dir, "sd15")
	for _, d := range []string{sd, filepath.Join(dir, "plugins")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("demo-weights: %w", err)
		}
	}
	cn := filepath.Join(dir, "controlnet.safetensors")
	err = tensor.Run(context.Background(), func(s *tensor.Scope) error {
		for _, w := range []struct {
			path  string
			parts []randomPart
		}{
			{filepath.Join(sd, "unet.safetensors"), []randomPart{{"sd15_unet.yaml", demoUNet, "", 1}}},
			{filepath.Join(sd, "text_encoder.safetensors"), []randomPart{{"clip_text.yaml", demoTextEncoder, "", 2}}},
			{filepath.Join(sd, "autoencoder.safetensors"), []randomPart{{"sd15_vae_encoder.yaml", demoAutoencoder, "Encoder.", 3},
				{"sd15_vae_decoder.yaml", demoAutoencoder, "Decoder.", 4}}},
			{cn, []randomPart{{"sd15_controlnet.yaml", demoControlnet, "", 5}}},
			{filepath.Join(dir, "sam.safetensors"), []randomPart{{"sam.yaml", demoSAMEncoder, "image_encoder.", 6},
				{"sam_point_encoder.yaml", demoSAMPoint, "point_encoder.", 7}, {"sam_mask_encoder.yaml", demoSAMMask, "mask_encoder.", 8},
				{"sam_mask_decoder.yaml", demoSAMDecoder, "mask_decoder.", 9}}},
		} {
			if err := writeRandomWeights(s, w.path, w.parts...); err != nil {
				return fmt.Errorf("demo-weights: %s: %w", w.path, err)
			}
			fmt.Fprintf(out, "wrote %s\n", w.path)
		}
		return nil
	})
	if err != nil {
		return err
	}
	st, err := store.Open(filepath.Join(dir, "store"))
	if err != nil {
		return err
	}
	if _, err := st.AddAdapter("demo-controlnet", cn); err != nil {
		return fmt.Errorf("demo-weights: %w", err)
	}
	if err := atomicfile.WriteFile(cfgPath, []byte(demoConfig(dir)), 0o644); err != nil {
		return fmt.Errorf("demo-weights: %w", err)
	}
	fmt.Fprintf(out, "wrote %s\n\nnext:  refinersd plugins install DIR_OF_PLUGIN_BINARIES --dir %s  (lora, controlnet; make serve-demo does it)\n       refinersd serve --config %s\n",
		cfgPath, filepath.Join(dir, "plugins"), cfgPath)
	return nil
}

// demoConfig is the demo's daemon configuration.
func demoConfig(dir string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `# Written by refinersd demo-weights: a tiny random-weight SD 1.5.
addr: 127.0.0.1:8642
store: %s
plugins_dir: %s
pipelines:
  demo:
    weights: %s
    preload: true
    width: 64
    height: 64
    steps: 8
    max_width: 256
    max_height: 256
    max_steps: 50
    max_batch: 4
    set:
`, filepath.Join(dir, "store"), filepath.Join(dir, "plugins"), filepath.Join(dir, "sd15"))
	for _, m := range []struct {
		name   string
		params map[string]string
	}{{"unet", demoUNet}, {"text_encoder", demoTextEncoder}, {"autoencoder", demoAutoencoder}} {
		keys := make([]string, 0, len(m.params))
		for k := range m.params {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var kv []string
		for _, k := range keys {
			kv = append(kv, fmt.Sprintf("%s: %q", k, m.params[k]))
		}
		fmt.Fprintf(&b, "      %s: {%s}\n", m.name, strings.Join(kv, ", "))
	}
	if configHasKey("segmenters") { // POST /v1/segment (docs/api.md)
		fmt.Fprintf(&b, "segmenters:\n  demo-sam:\n    weights: %s\n", filepath.Join(dir, "sam.safetensors"))
	}
	return b.String()
}

// randomPart is an embedded spec to fill with seeded random weights,
// stored under prefix.
type randomPart struct {
	spec   string
	params map[string]string
	prefix string
	seed   int64
}

// writeRandomWeights builds each part, fills it with random values
// (core.InitRandom) and saves them all in one safetensors file.
func writeRandomWeights(s *tensor.Scope, path string, parts ...randomPart) error {
	all := map[string]*tensor.Tensor{}
	for _, p := range parts {
		var m *core.Chain
		sp, err := spec.LoadFS(specs.FS, p.spec)
		if err == nil {
			m, err = sp.Build(p.params)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", p.spec, err)
		}
		if err := core.InitRandom(s, m, p.seed); err != nil {
			return fmt.Errorf("%s: %w", p.spec, err)
		}
		defer core.ReleaseParams(m)
		for _, e := range core.StateDict(m) {
			all[p.prefix+e.Key] = *e.Value
		}
	}
	return weights.Save(s, path, all, map[string]string{"refiners-go": "demo-weights: random values, not a trained model"})
}

// configHasKey reports whether the daemon's configuration has a top-level
// key (a feature another branch adds, e.g. segmenters).
func configHasKey(key string) bool {
	t := reflect.TypeOf(daemon.Config{})
	for i := range t.NumField() {
		if t.Field(i).Tag.Get("yaml") == key {
			return true
		}
	}
	return false
}
