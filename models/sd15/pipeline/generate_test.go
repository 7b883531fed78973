package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"path/filepath"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/core/weights"
)

// The tiny models of the pipeline conformance cases
// (conformance/generate_pipeline.py): SD 1.5's topology at small widths,
// 64x48 images.
const tinyDir = "../../../conformance/testdata/pipeline"

func tinyConfig(t *testing.T, inpainting bool) Config {
	t.Helper()
	f, err := weights.Open(filepath.Join(tinyDir, "txt2img_dpm.case.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var files map[string]string
	var overrides map[string]map[string]string
	meta := f.Metadata()
	if err := json.Unmarshal([]byte(meta["weights"]), &files); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(meta["overrides"]), &overrides); err != nil {
		t.Fatal(err)
	}
	unet := files["unet"]
	if inpainting {
		unet = files["unet_inpainting"]
	}
	return Config{UNet: filepath.Join(tinyDir, unet), TextEncoder: filepath.Join(tinyDir, files["text_encoder"]),
		Autoencoder: filepath.Join(tinyDir, files["autoencoder"]), UNetParams: overrides["unet"],
		TextEncoderParams: overrides["text_encoder"], AutoencoderParams: overrides["autoencoder"]}
}

// withTiny runs f with the tiny model loaded, on a tensor worker.
func withTiny(t *testing.T, inpainting bool, f func(s *tensor.Scope, m *Model) error) {
	t.Helper()
	cfg := tinyConfig(t, inpainting)
	err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
		m, err := Load(s, cfg)
		if err != nil {
			return err
		}
		defer m.Release()
		return f(s, m)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func tinyRequest() Request {
	return Request{Prompt: "a red cube on a table", Steps: 4, Seed: 3, Width: 64, Height: 48}
}

func TestLoad(t *testing.T) {
	for _, inpainting := range []bool{false, true} {
		withTiny(t, inpainting, func(s *tensor.Scope, m *Model) error {
			want := int64(4)
			if inpainting {
				want = 9
			}
			if m.InChannels != want {
				t.Errorf("in_channels %d, want %d (read from the weights)", m.InChannels, want)
			}
			return nil
		})
	}
	// Errors name the model and the file.
	cfg := tinyConfig(t, false)
	for _, c := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"missing file", func(c *Config) { c.TextEncoder = "nope.safetensors" }, "text encoder"},
		{"wrong file", func(c *Config) { c.UNet = c.Autoencoder }, "not an SD 1.5 U-Net"},
		{"wrong sizes", func(c *Config) {
			c.TextEncoderParams = maps.Clone(c.TextEncoderParams)
			c.TextEncoderParams["embedding_dim"] = "8"
		}, "text encoder: load"},
		{"no file", func(c *Config) { c.Autoencoder = "" }, "no autoencoder weights"},
		{"bad in_channels", func(c *Config) { c.UNetParams = map[string]string{"in_channels": "5"} }, "want 4 (text to image) or 9"},
	} {
		cc := cfg
		c.edit(&cc)
		err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
			m, err := Load(s, cc)
			if err == nil {
				m.Release()
			}
			return err
		})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error containing %q", c.name, err, c.want)
		}
	}
}

// TestSameSeedSameImage: a seed gives the same bytes every time; another
// seed another image.
func TestSameSeedSameImage(t *testing.T) {
	withTiny(t, false, func(s *tensor.Scope, m *Model) error {
		var pngs [][]byte
		for _, seed := range []uint64{3, 3, 4} {
			r := tinyRequest()
			r.Seed = seed
			res, err := m.Generate(context.Background(), s, r)
			if err != nil {
				return err
			}
			b, err := res.Images[0].EncodePNG()
			if err != nil {
				return err
			}
			pngs = append(pngs, b)
		}
		if !bytes.Equal(pngs[0], pngs[1]) {
			t.Error("the same seed gave different images")
		}
		if bytes.Equal(pngs[0], pngs[2]) {
			t.Error("different seeds gave the same image")
		}
		return nil
	})
}

// TestBatchIsSeedsInARow: image i of a batch is the image of seed Seed+i.
func TestBatchIsSeedsInARow(t *testing.T) {
	withTiny(t, false, func(s *tensor.Scope, m *Model) error {
		r := tinyRequest()
		r.Batch = 3
		batch, err := m.Generate(context.Background(), s, r)
		if err != nil {
			return err
		}
		if len(batch.Images) != 3 || len(batch.Seeds) != 3 || batch.Seeds[2] != r.Seed+2 {
			t.Fatalf("%d images, seeds %v", len(batch.Images), batch.Seeds)
		}
		if got := batch.Latents.Shape(); got[0] != 3 {
			t.Errorf("latents %v", got)
		}
		for i := range 3 {
			one := tinyRequest()
			one.Seed = r.Seed + uint64(i)
			res, err := m.Generate(context.Background(), s, one)
			if err != nil {
				return err
			}
			// Kernels may sum differently for another batch size: allow
			// float32 noise on the latents and one level on a few bytes.
			if !s.AllClose(s.Narrow(batch.Latents, 0, int64(i), 1), res.Latents, 1e-4, 1e-4) {
				t.Errorf("image %d: latents differ from seed %d alone", i, one.Seed)
			}
			off := 0
			for j, v := range res.Images[0].Pix {
				d := int(v) - int(batch.Images[i].Pix[j])
				if d > 1 || d < -1 {
					t.Fatalf("image %d: byte %d is %d alone, %d in the batch", i, j, v, batch.Images[i].Pix[j])
				}
				if d != 0 {
					off++
				}
			}
			if off > len(res.Images[0].Pix)/200 {
				t.Errorf("image %d: %d bytes differ from seed %d alone", i, off, one.Seed)
			}
		}
		return s.Err()
	})
}

// TestProgressAndCancel: the callback sees every step; canceling the
// context stops the loop before the next step.
func TestProgressAndCancel(t *testing.T) {
	withTiny(t, false, func(s *tensor.Scope, m *Model) error {
		r := tinyRequest()
		r.Steps = 6
		var seen []int
		r.Progress = func(p Progress) {
			if p.Steps != 6 || p.Elapsed <= 0 {
				t.Errorf("progress %+v", p)
			}
			seen = append(seen, p.Step)
		}
		if _, err := m.Generate(context.Background(), s, r); err != nil {
			return err
		}
		if len(seen) != 6 || seen[0] != 1 || seen[5] != 6 {
			t.Errorf("progress steps %v", seen)
		}

		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		seen = nil
		r.Progress = func(p Progress) {
			seen = append(seen, p.Step)
			if p.Step == 2 {
				cancel()
			}
		}
		res, err := m.Generate(ctx, s, r)
		if !errors.Is(err, context.Canceled) || res != nil {
			t.Errorf("canceled run: %v, %v", res, err)
		}
		if len(seen) != 2 {
			t.Errorf("ran %v after cancel at step 2", seen)
		}

		// Image to image runs only the steps after the first one.
		r = tinyRequest()
		r.Steps, r.Strength = 10, 0.3
		r.InitImage = NewRGB(64, 48)
		seen = nil
		r.Progress = func(p Progress) { seen = append(seen, p.Steps) }
		if _, err := m.Generate(context.Background(), s, r); err != nil {
			return err
		}
		if len(seen) != 3 || seen[0] != 3 {
			t.Errorf("img2img at strength 0.3 of 10 steps: progress %v", seen)
		}
		return nil
	})
}

func TestFirstStep(t *testing.T) {
	for _, c := range []struct {
		steps    int
		strength float64
		want     int
	}{{30, 1, 0}, {30, 0.6, 12}, {8, 0.6, 4}, {8, 0.5, 4}, {10, 0.35, 7}, {30, 0.01, 30}, {1, 1, 0}} {
		if got := FirstStep(c.steps, c.strength); got != c.want {
			t.Errorf("FirstStep(%d, %g) = %d, want %d", c.steps, c.strength, got, c.want)
		}
	}
}

// TestRequestErrors: bad requests fail before any work with ErrInput and
// a message that says what is wrong.
func TestRequestErrors(t *testing.T) {
	img := NewRGB(64, 48)
	mask := &Gray{Width: 64, Height: 48, Pix: make([]uint8, 64*48)}
	small := &Gray{Width: 32, Height: 48, Pix: make([]uint8, 32*48)}
	for _, c := range []struct {
		name       string
		inpainting bool
		edit       func(*Request)
		want       string
	}{
		{"width", false, func(r *Request) { r.Width = 60 }, "width 60 is not a positive multiple of 8"},
		{"height", false, func(r *Request) { r.Height = -8 }, "height -8 is not a positive multiple of 8"},
		{"steps", false, func(r *Request) { r.Steps = -1 }, "steps -1"},
		{"batch", false, func(r *Request) { r.Batch = -2 }, "batch -2"},
		{"solver", false, func(r *Request) { r.Solver = "heun" }, `unknown solver "heun"`},
		{"strength alone", false, func(r *Request) { r.Strength = 0.5 }, "strength 0.5 without an init image"},
		{"strength range", false, func(r *Request) { r.InitImage, r.Strength = img, 1.5 }, "want a value in (0, 1]"},
		{"strength too low", false, func(r *Request) { r.InitImage, r.Strength = img, 0.1 }, "runs no step of 4"},
		{"euler img2img", false, func(r *Request) { r.InitImage, r.Solver = img, "euler" }, "euler solver cannot start from an init image"},
		{"mask alone", true, func(r *Request) { r.Mask = mask }, "a mask needs an init image"},
		{"mask size", true, func(r *Request) { r.InitImage, r.Mask = img, small }, "the mask is 32x48, the image to generate 64x48"},
		{"mask on txt2img U-Net", false, func(r *Request) { r.InitImage, r.Mask = img, mask }, "needs an inpainting U-Net"},
		{"inpainting U-Net without mask", true, func(r *Request) {}, "it needs an init image and a mask"},
		{"adapters without host", false, func(r *Request) { r.Adapters = []Adapter{{Plugin: "lora", File: "x"}} }, "no plugin host"},
	} {
		withTiny(t, c.inpainting, func(s *tensor.Scope, m *Model) error {
			r := tinyRequest()
			c.edit(&r)
			res, err := m.Generate(context.Background(), s, r)
			if err == nil || !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), c.want) || res != nil {
				t.Errorf("%s: got %v, want ErrInput containing %q", c.name, err, c.want)
			}
			return nil
		})
	}
}

// TestLongPromptWarns: a prompt over 75 tokens is cut, with a warning
// saying by how much.
func TestLongPromptWarns(t *testing.T) {
	withTiny(t, false, func(s *tensor.Scope, m *Model) error {
		r := tinyRequest()
		r.Prompt = strings.Repeat("red cube ", 40) // 80 tokens
		r.Steps = 1
		res, err := m.Generate(context.Background(), s, r)
		if err != nil {
			return err
		}
		if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "the prompt is 5 tokens over the limit of 75") {
			t.Errorf("warnings %q", res.Warnings)
		}
		return nil
	})
}
