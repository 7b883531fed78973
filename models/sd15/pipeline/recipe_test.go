package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/refiners-go/refiners/core/tensor"
	"github.com/refiners-go/refiners/internal/pngtext"
)

// TestRecipeRoundTrip: an image's PNG carries its recipe, and generating
// from the recipe read back gives the same PNG bytes, for text to image
// and for an image of a batch (the batch is re-run).
func TestRecipeRoundTrip(t *testing.T) {
	cfg := tinyConfig(t, false)
	digests, err := FileDigests(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(digests.UNet, "sha256:") || digests.UNet == digests.TextEncoder {
		t.Fatalf("digests %+v", digests)
	}
	withTiny(t, false, func(s *tensor.Scope, m *Model) error {
		for _, c := range []struct {
			name  string
			edit  func(*Request)
			index int
		}{
			{"txt2img", func(r *Request) { r.NegativePrompt = "flou, 模糊" }, 0},
			{"batch image 1", func(r *Request) { r.Batch, r.Solver, r.Guidance = 2, "ddim", 5 }, 1},
			{"img2img", func(r *Request) {
				r.InitImage = NewRGB(64, 48)
				for i := range r.InitImage.Pix {
					r.InitImage.Pix[i] = uint8(i)
				}
				r.Strength = 0.7
			}, 0},
		} {
			r := tinyRequest()
			c.edit(&r)
			first, err := generatePNG(s, m, r, digests, c.index)
			if err != nil {
				return err
			}
			rec, err := ReadRecipe(first)
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			again := rec.Request()
			if err := rec.CheckImages(r.InitImage, r.Mask); err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			again.InitImage, again.Mask = r.InitImage, r.Mask
			second, err := generatePNG(s, m, again, rec.Weights, rec.Index)
			if err != nil {
				return err
			}
			if !bytes.Equal(first, second) {
				t.Errorf("%s: the recipe's PNG differs from the original (%d and %d bytes)", c.name, len(first), len(second))
			}
			if rec.Index != c.index || rec.Seed != r.Seed || rec.Weights != digests || rec.Software == "" || rec.DType != "float32" {
				t.Errorf("%s: recipe %+v", c.name, rec)
			}
		}
		return nil
	})
}

// generatePNG generates r and returns image index as PNG with its recipe.
func generatePNG(s *tensor.Scope, m *Model, r Request, d Digests, index int) ([]byte, error) {
	res, err := m.Generate(context.Background(), s, r)
	if err != nil {
		return nil, err
	}
	full, err := r.WithDefaults()
	if err != nil {
		return nil, err
	}
	b, err := res.Images[index].EncodePNG()
	if err != nil {
		return nil, err
	}
	return NewRecipe(full, m, d, index).Embed(b)
}

func TestReadRecipeErrors(t *testing.T) {
	plain, err := NewRGB(8, 8).EncodePNG()
	if err != nil {
		t.Fatal(err)
	}
	good := &Recipe{Version: 1, Software: "x", Prompt: "p", Seed: 1, Steps: 4, Guidance: 7.5, Solver: "dpm", Width: 64, Height: 48, Batch: 1}
	with := func(edit func(map[string]any)) []byte {
		b, _ := json.Marshal(good)
		var m map[string]any
		json.Unmarshal(b, &m)
		edit(m)
		b, _ = json.Marshal(m)
		out, err := pngtext.SetText(plain, RecipeKey, string(b))
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	if _, err := ReadRecipe(with(func(map[string]any) {})); err != nil {
		t.Fatalf("good recipe: %v", err)
	}
	for _, c := range []struct {
		name string
		png  []byte
		want string
	}{
		{"no chunk", plain, "has no refiners-recipe"},
		{"not png", []byte("nope"), "not a PNG"},
		{"newer", with(func(m map[string]any) { m["refiners_recipe"] = 2 }), "version 2 is newer"},
		{"no version", with(func(m map[string]any) { delete(m, "refiners_recipe") }), "no refiners_recipe version"},
		{"unknown field", with(func(m map[string]any) { m["sampler"] = "x" }), `unknown field "sampler"`},
		{"index", with(func(m map[string]any) { m["index"] = 1 }), "image 1 of a batch of 1"},
		{"size", with(func(m map[string]any) { m["width"] = 60 }), "width 60 is not a positive multiple of 8"},
		{"solver", with(func(m map[string]any) { m["solver"] = "heun" }), `unknown solver "heun"`},
		{"no steps", with(func(m map[string]any) { m["steps"] = 0 }), "steps, size, solver and guidance must all be set"},
		{"strength without image", with(func(m map[string]any) { m["strength"] = 0.5 }), "without an init image"},
	} {
		_, err := ReadRecipe(c.png)
		if err == nil || !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want ErrInput containing %q", c.name, err, c.want)
		}
	}
}

func TestRecipeCheckImages(t *testing.T) {
	img, other := NewRGB(8, 8), NewRGB(8, 8)
	other.Pix[0] = 1
	mask := &Gray{Width: 8, Height: 8, Pix: make([]uint8, 64)}
	rec := &Recipe{InitImage: PixelDigest(img.Pix)}
	for _, c := range []struct {
		name string
		rec  *Recipe
		img  *RGB
		mask *Gray
		want string
	}{
		{"same", rec, img, nil, ""},
		{"missing", rec, nil, nil, "was made with an init_image"},
		{"other", rec, other, nil, "is not the recipe's"},
		{"extra mask", rec, img, mask, "has no mask"},
		{"extra image", &Recipe{}, img, nil, "has no init_image"},
	} {
		err := c.rec.CheckImages(c.img, c.mask)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
	}
}

// TestPreview: the projection of known latents, and previews of every
// step of a real run from the progress callback.
func TestPreview(t *testing.T) {
	err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
		// Two pixels: latents (1, 0, 0, 0) and (0, 0, 0, 1) in image 1 of 2.
		vals := make([]float32, 2*4*1*2)
		vals[8+0] = 1 // image 1, channel 0, pixel 0
		vals[8+7] = 1 // image 1, channel 3, pixel 1
		img, err := Preview(s, s.FromFloat32(vals, 2, 4, 1, 2), 1)
		if err != nil {
			return err
		}
		b := func(v float32) uint8 { return uint8((v + 1) / 2 * 255) }
		want := []uint8{b(0.3512), b(0.2297), b(0.3227), b(-0.2120), b(-0.2616), b(-0.7177)}
		if img.Width != 2 || img.Height != 1 || !bytes.Equal(img.Pix, want) {
			t.Errorf("preview %dx%d %v, want 2x1 %v", img.Width, img.Height, img.Pix, want)
		}
		if _, err := Preview(s, s.FromFloat32(vals, 2, 4, 1, 2), 2); err == nil {
			t.Error("image 2 of a batch of 2 accepted")
		}
		if _, err := Preview(s, s.FromFloat32(vals[:12], 1, 3, 2, 2), 0); err == nil {
			t.Error("3-channel latents accepted")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	withTiny(t, false, func(s *tensor.Scope, m *Model) error {
		r := tinyRequest()
		var previews []*RGB
		r.Progress = func(p Progress) {
			img, err := Preview(s, p.Latents, 0)
			if err != nil {
				t.Error(err)
				return
			}
			previews = append(previews, img)
		}
		if _, err := m.Generate(context.Background(), s, r); err != nil {
			return err
		}
		if len(previews) != r.Steps {
			t.Fatalf("%d previews for %d steps", len(previews), r.Steps)
		}
		if p := previews[0]; p.Width != 8 || p.Height != 6 || bytes.Equal(p.Pix, previews[len(previews)-1].Pix) {
			t.Errorf("previews: %dx%d (want 8x6), first equal to last: %v", p.Width, p.Height, bytes.Equal(p.Pix, previews[len(previews)-1].Pix))
		}
		return nil
	})
}
