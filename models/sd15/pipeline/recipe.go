package pipeline

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"

	"github.com/refiners-go/refiners/hosts"
	"github.com/refiners-go/refiners/internal/pngtext"
)

// RecipeKey is the keyword of the PNG text chunk (iTXt, UTF-8 JSON) that
// holds an image's Recipe.
const RecipeKey = "refiners-recipe"

// RecipeVersion is the recipe format's version; a newer one is refused.
const RecipeVersion = 1

// Recipe is everything that made one image, written into its PNG: the
// request, the weights' and adapters' digests, the precision and the
// software. The same recipe on the same weights, software and CPU kernels
// gives the same PNG bytes. Images (init image, mask, ControlNet
// conditions) are named by the sha256 of their RGB (mask: gray) pixels,
// not embedded: re-running a recipe that has them needs them again.
type Recipe struct {
	Version        int     `json:"refiners_recipe"`
	Software       string  `json:"software"`
	Model          string  `json:"model,omitempty"` // the daemon pipeline's name, a label
	Weights        Digests `json:"weights"`
	Device         string  `json:"device"`
	DType          string  `json:"dtype"`
	Prompt         string  `json:"prompt"`
	NegativePrompt string  `json:"negative_prompt"`
	Seed           uint64  `json:"seed"`
	Steps          int     `json:"steps"`
	Guidance       float64 `json:"guidance"`
	Solver         string  `json:"solver"`
	Width          int     `json:"width"`
	Height         int     `json:"height"`
	// Batch and Index: the image is image Index of a batch of Batch made
	// together (seed Seed+Index); the batch is re-run to get it bit for bit.
	Batch       int             `json:"batch"`
	Index       int             `json:"index"`
	Strength    float64         `json:"strength,omitempty"`
	InitImage   string          `json:"init_image,omitempty"` // sha256 of the RGB pixels
	Mask        string          `json:"mask,omitempty"`       // sha256 of the gray pixels
	Adapters    []RecipeAdapter `json:"adapters,omitempty"`
	Controlnets []RecipeControl `json:"controlnets,omitempty"`
}

// Digests are the sha256 digests ("sha256:<hex>") of the weight files.
type Digests struct {
	UNet        string `json:"unet"`
	TextEncoder string `json:"text_encoder"`
	Autoencoder string `json:"autoencoder"`
}

// RecipeAdapter is one adapter of a recipe: the plugin, the file as the
// request named it (a path, a store name or a digest), its digest and its
// parameters.
type RecipeAdapter struct {
	Plugin string          `json:"plugin"`
	File   string          `json:"file,omitempty"`
	Digest string          `json:"digest"`
	Params json.RawMessage `json:"params,omitempty"`
}

// RecipeControl is one ControlNet of a recipe.
type RecipeControl struct {
	Plugin     string          `json:"plugin"`
	Adapter    string          `json:"adapter,omitempty"` // as the request named it
	Digest     string          `json:"digest"`
	Image      string          `json:"image"` // sha256 of the condition's RGB pixels, before preprocessing
	Preprocess string          `json:"preprocess,omitempty"`
	Low        float64         `json:"low,omitempty"`
	High       float64         `json:"high,omitempty"`
	Scale      float64         `json:"scale"`
	Start      float64         `json:"start"`
	End        float64         `json:"end"`
	Params     json.RawMessage `json:"params,omitempty"`
}

// NewRecipeControl describes a Control of a request with its defaults
// (Request.WithDefaults), its file as the request named it and the file's
// digest.
func NewRecipeControl(c Control, adapter, digest string) RecipeControl {
	rc := RecipeControl{Plugin: c.Plugin, Adapter: adapter, Digest: digest, Preprocess: c.Preprocess,
		Low: c.CannyLow, High: c.CannyHigh, Scale: c.Scale, Start: c.Start, End: c.End}
	if c.Condition != nil {
		rc.Image = PixelDigest(c.Condition.Pix)
	}
	if c.Params != "" {
		rc.Params = json.RawMessage(c.Params)
	}
	return rc
}

// Software names this program: the module and its VCS revision as the Go
// toolchain stamped them (with "+dirty" for a modified work tree), or
// "devel" when it did not.
func Software() string {
	v := "devel"
	if bi, ok := debug.ReadBuildInfo(); ok {
		var rev, dirty string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "+dirty"
				}
			}
		}
		switch {
		case rev != "":
			v = rev + dirty
		case bi.Main.Version != "" && bi.Main.Version != "(devel)":
			v = bi.Main.Version
		}
	}
	return "refiners-go " + v
}

// PixelDigest is "sha256:<hex>" of an image's pixel bytes.
func PixelDigest(pix []byte) string {
	sum := sha256.Sum256(pix)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// FileDigests hashes a configuration's three weight files.
func FileDigests(c Config) (Digests, error) {
	var d Digests
	for _, f := range []struct {
		path string
		dst  *string
	}{{c.UNet, &d.UNet}, {c.TextEncoder, &d.TextEncoder}, {c.Autoencoder, &d.Autoencoder}} {
		sum, err := hosts.FileSHA256(f.path)
		if err != nil {
			return d, fmt.Errorf("digest of %s: %w", f.path, err)
		}
		*f.dst = "sha256:" + sum
	}
	return d, nil
}

// NewRecipe describes image index of a request (with its defaults filled
// in by WithDefaults) made by a model with the given weight digests. The
// caller adds Model, Adapters and Controlnets.
func NewRecipe(r Request, m *Model, weights Digests, index int) *Recipe {
	rec := &Recipe{Version: RecipeVersion, Software: Software(), Weights: weights, Device: m.Device.String(), DType: m.DType.String(),
		Prompt: r.Prompt, NegativePrompt: r.NegativePrompt, Seed: r.Seed, Steps: r.Steps, Guidance: r.Guidance, Solver: r.Solver,
		Width: r.Width, Height: r.Height, Batch: r.Batch, Index: index, Strength: r.Strength}
	if r.InitImage != nil {
		rec.InitImage = PixelDigest(r.InitImage.Pix)
	}
	if r.Mask != nil {
		rec.Mask = PixelDigest(r.Mask.Pix)
	}
	return rec
}

// Request is the generation the recipe describes, without its images and
// adapters (the caller supplies and checks those).
func (rec *Recipe) Request() Request {
	return Request{Prompt: rec.Prompt, NegativePrompt: rec.NegativePrompt, Seed: rec.Seed, Steps: rec.Steps,
		Guidance: rec.Guidance, Solver: rec.Solver, Width: rec.Width, Height: rec.Height, Batch: rec.Batch, Strength: rec.Strength}
}

// Embed returns png with the recipe in its text chunk.
func (rec *Recipe) Embed(png []byte) ([]byte, error) {
	b, err := json.Marshal(rec) // struct order: the same recipe, the same bytes
	if err != nil {
		return nil, err
	}
	return pngtext.SetText(png, RecipeKey, string(b))
}

// ErrNoRecipe is returned by ReadRecipe for a PNG without a recipe chunk.
var ErrNoRecipe = errors.New("the PNG has no " + RecipeKey + " text chunk (it was not made by refiners-go, or its metadata was stripped)")

// ReadRecipe reads the recipe of a PNG file and checks it: a known
// version, no unknown fields, values a request accepts (see
// Request.WithDefaults), an index within the batch.
func ReadRecipe(png []byte) (*Recipe, error) {
	texts, err := pngtext.Texts(png)
	if err != nil {
		return nil, inputErr("recipe: %v", err)
	}
	text, ok := texts[RecipeKey]
	if !ok {
		return nil, &inputError{msg: ErrNoRecipe.Error()}
	}
	dec := json.NewDecoder(bytes.NewReader([]byte(text)))
	dec.DisallowUnknownFields()
	var rec Recipe
	if err := dec.Decode(&rec); err != nil {
		return nil, inputErr("recipe: %v", err)
	}
	switch {
	case rec.Version < 1:
		return nil, inputErr("recipe: no refiners_recipe version")
	case rec.Version > RecipeVersion:
		return nil, inputErr("recipe: version %d is newer than this program's %d (%s)", rec.Version, RecipeVersion, Software())
	case rec.Batch < 1 || rec.Index < 0 || rec.Index >= rec.Batch:
		return nil, inputErr("recipe: image %d of a batch of %d", rec.Index, rec.Batch)
	case rec.Steps < 1 || rec.Width < 1 || rec.Height < 1 || rec.Solver == "" || rec.Guidance == 0:
		return nil, inputErr("recipe: steps, size, solver and guidance must all be set (got steps %d, %dx%d, solver %q, guidance %g)",
			rec.Steps, rec.Width, rec.Height, rec.Solver, rec.Guidance)
	}
	if _, err := rec.Request().withImagesFor(&rec).WithDefaults(); err != nil {
		return nil, inputErr("recipe: %v", err)
	}
	return &rec, nil
}

// withImagesFor puts placeholder images where the recipe names some, so
// that WithDefaults checks the strength and mask rules.
func (r Request) withImagesFor(rec *Recipe) Request {
	if rec.InitImage != "" {
		r.InitImage = NewRGB(rec.Width, rec.Height)
	}
	if rec.Mask != "" {
		r.Mask = &Gray{Width: rec.Width, Height: rec.Height, Pix: make([]uint8, rec.Width*rec.Height)}
	}
	return r
}

// CheckImages checks that the images given to re-run a recipe are the
// ones it names (by pixel digest); the error says which is missing or
// different.
func (rec *Recipe) CheckImages(init *RGB, mask *Gray) error {
	for _, c := range []struct {
		what, want string
		pix        []byte
		given      bool
	}{{"init_image", rec.InitImage, pixOf(init), init != nil}, {"mask", rec.Mask, grayPix(mask), mask != nil}} {
		switch {
		case c.want == "" && c.given:
			return inputErr("recipe: the recipe has no %s, but one was given", c.what)
		case c.want != "" && !c.given:
			return inputErr("recipe: the recipe was made with an %s (pixels %s): give it again", c.what, c.want)
		case c.want != "" && PixelDigest(c.pix) != c.want:
			return inputErr("recipe: the %s given is not the recipe's (pixels %s, want %s)", c.what, PixelDigest(c.pix), c.want)
		}
	}
	return nil
}

func pixOf(m *RGB) []byte {
	if m == nil {
		return nil
	}
	return m.Pix
}

func grayPix(m *Gray) []byte {
	if m == nil {
		return nil
	}
	return m.Pix
}
